"""Scheduler metrics on `/metrics` (docs/hami-wire.md#scheduler-metrics): HAMi's gauges, built from the cache
at scrape time, plus kube-vgpu's verb latency histograms, all in one dedicated registry.

Every `hami_*` series carries the constant label `zone="vGPU"` (except `hami_build_info`) and memory is
reported in bytes (MiB x 1048576), so HAMi's dashboards keep working.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from services.common.metrics import build_info_family, build_info_labels
from services.common.prom_text import Family, LineCache, go_float
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import PodUsage
from services.scheduler.fit import NodeSnapshot

__all__ = ["SchedulerMetrics", "UsageText", "build_info_labels", "metrics_app"]

MIB: Final = 1024 * 1024
ZONE: Final = "vGPU"
_DEVICE_LABELS: Final = ("zone", "node", "device_uuid", "device_index", "device_type")
_POD_LABELS: Final = ("zone", "namespace", "node", "pod", "container_index", "device_uuid")
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_DEVICE_FAMILIES: Final = (
    Family("hami_gpu_memory_limit_bytes", "GPU device memory limit", label_names=_DEVICE_LABELS),
    Family("hami_gpu_core_limit_ratio", "GPU device core limit", label_names=_DEVICE_LABELS),
    Family(
        "hami_gpu_memory_allocated_bytes",
        "GPU device memory allocated",
        label_names=("zone", "node", "device_uuid", "device_index", "device_cores", "device_type"),
    ),
    Family("hami_gpu_shared_count", "Number of tasks sharing the GPU", label_names=_DEVICE_LABELS),
    Family("hami_gpu_core_allocated_ratio", "GPU device cores allocated", label_names=_DEVICE_LABELS),
    Family(
        "hami_node_gpu_overview",
        "GPU overview on a node",
        label_names=(
            "zone",
            "node",
            "device_uuid",
            "device_index",
            "device_cores",
            "device_memory_limit",
            "device_type",
        ),
    ),
    Family("hami_node_gpu_memory_allocated_ratio", "GPU memory allocated ratio", label_names=_DEVICE_LABELS),
)
_POD_FAMILIES: Final = (
    Family("hami_vgpu_memory_allocated_bytes", "vGPU memory allocated to a pod", label_names=_POD_LABELS),
    Family("hami_vgpu_core_allocated_ratio", "vGPU cores allocated to a pod", label_names=_POD_LABELS),
)
_QUOTA_USED: Final = Family(
    "hami_resource_quota_used",
    "Namespace quota usage",
    label_names=("zone", "namespace", "quota_name", "limit"),
)
_QUOTA_LIMIT: Final = Family(
    "hami_resource_quota_limit", "Namespace quota limit", label_names=("zone", "namespace", "quota_name")
)


def _node_lines(snapshot: NodeSnapshot) -> tuple[str, ...]:
    """The node's samples of each `_DEVICE_FAMILIES` entry, in that order."""
    lines: list[list[str]] = [[] for _ in _DEVICE_FAMILIES]
    for device in snapshot.devices:
        base = [ZONE, snapshot.name, device.id, str(device.index)]
        labels = [*base, device.type]
        cores = str(device.usedcores)
        ratio = device.usedmem / device.totalmem if device.totalmem else 0.0
        samples = (
            (labels, device.totalmem * MIB),
            (labels, device.totalcore),
            ([*base, cores, device.type], device.usedmem * MIB),
            (labels, device.used),
            (labels, device.usedcores),
            ([*base, cores, str(device.totalmem), device.type], device.usedmem * MIB),
            (labels, ratio),
        )
        for i, (values, value) in enumerate(samples):
            lines[i].append(_DEVICE_FAMILIES[i].line(values, go_float(value)))
    return tuple("".join(block) for block in lines)


def _pod_lines(pod: PodUsage) -> tuple[str, str]:
    memory, cores = _POD_FAMILIES
    memory_lines, core_lines = [], []
    for use in pod.collapsed():
        # Usage is collapsed per pod (docs/hami-wire.md#node-usage), so HAMi reports it under container index
        # 0.
        values = [ZONE, pod.namespace, pod.node, pod.name, "0", use.uuid]
        memory_lines.append(memory.line(values, go_float(use.usedmem * MIB)))
        core_lines.append(cores.line(values, go_float(use.usedcores)))
    return "".join(memory_lines), "".join(core_lines)


class UsageText:
    """HAMi's scheduler gauges from a `UsageCache` as exposition text, computed when Prometheus scrapes.

    At 1000 nodes x 8 GPUs and 10,000 pods a scrape is ~80,000 samples; formatting them all through
    prometheus-client's collectors took most of a second of the scheduler's one interpreter on every scrape.
    The cache replaces a node's snapshot (and a pod's usage) whenever it changes, so the lines rendered from
    one are kept next to it and only changed nodes and pods are formatted again.
    """

    def __init__(self, cache: UsageCache, build_info: dict[str, str] | None = None) -> None:
        self._cache = cache
        self._build_info = build_info or build_info_labels()
        self._nodes: LineCache[str, NodeSnapshot, tuple[str, ...]] = LineCache(
            lambda snapshot, _: _node_lines(snapshot)
        )
        self._pods: LineCache[str, PodUsage, tuple[str, str]] = LineCache(lambda pod, _: _pod_lines(pod))
        self._lock = threading.Lock()  # scrapes may overlap (each runs in a worker thread)

    def render(self) -> str:
        with self._lock:
            return self._render()

    def _snapshots(self) -> list[tuple[str, NodeSnapshot]]:
        found: list[tuple[str, NodeSnapshot]] = []
        for state in self._cache.nodes():
            snapshot = self._cache.snapshot(state.name)
            if snapshot is not None:  # like HAMi: only registered, healthy nodes are reported
                found.append((state.name, snapshot))
        return found

    def _render(self) -> str:
        node_blocks = self._nodes.refresh(self._snapshots())
        pod_blocks = self._pods.refresh((pod.uid, pod) for pod in self._cache.pods())

        out: list[str] = []
        for i, family in enumerate(_DEVICE_FAMILIES):
            out.append(family.header())
            out.extend(block[i] for block in node_blocks)
        for i, family in enumerate(_POD_FAMILIES):
            out.append(family.header())
            out.extend(block[i] for block in pod_blocks)
        out.append(_QUOTA_USED.header())
        limits: list[str] = [_QUOTA_LIMIT.header()]
        view = self._cache.quota_view()
        for namespace in sorted(view.namespaces):
            for key, limit in sorted(view.namespaces[namespace].resources.items()):
                resource = key.removeprefix("limits.")
                out.append(
                    _QUOTA_USED.line([ZONE, namespace, resource, str(limit.limit)], go_float(limit.used))
                )
                if limit.limit_set:
                    limits.append(_QUOTA_LIMIT.line([ZONE, namespace, resource], go_float(limit.limit)))
        out.extend(limits)
        info = build_info_family(self._build_info)
        out.append(info.header())
        out.append(info.line(list(self._build_info.values()), go_float(1)))
        return "".join(out)


class SchedulerMetrics:
    """The registry `/metrics` serves: HAMi's gauges plus `kube_vgpu_scheduler_*_duration_seconds`."""

    def __init__(self, cache: UsageCache | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.filter_seconds = Histogram(
            "kube_vgpu_scheduler_filter_duration_seconds",
            "Time to answer an extender filter call",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prioritize_seconds = Histogram(
            "kube_vgpu_scheduler_prioritize_duration_seconds",
            "Time to answer an extender prioritize call",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bind_seconds = Histogram(
            "kube_vgpu_scheduler_bind_duration_seconds",
            "Time to answer an extender bind call (node lock wait included)",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.usage = UsageText(cache) if cache is not None else None

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        if self.usage is not None:
            text = self.usage.render().encode() + text
        return text


def metrics_app(metrics: SchedulerMetrics) -> web.Application:
    async def serve(_: web.Request) -> web.Response:
        # A scrape over 1000 nodes takes most of a second; off the loop, filter and bind keep answering.
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app
