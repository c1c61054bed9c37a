"""Scheduler metrics on `/metrics` (spec §3.12): HAMi's gauges, built from the cache at scrape time, plus
kube-vgpu's verb latency histograms, all in one dedicated registry.

Every `hami_*` series carries the constant label `zone="vGPU"` (except `hami_build_info`) and memory is
reported in bytes (MiB x 1048576), so HAMi's dashboards keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.metrics import build_info_labels
from services.scheduler.cache import UsageCache

__all__ = ["SchedulerMetrics", "UsageCollector", "build_info_labels", "metrics_app"]

MIB: Final = 1024 * 1024
ZONE: Final = "vGPU"
_DEVICE_LABELS: Final = ["zone", "node", "device_uuid", "device_index", "device_type"]
_POD_LABELS: Final = ["zone", "namespace", "node", "pod", "container_index", "device_uuid"]
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class UsageCollector(Collector):
    """HAMi's scheduler gauges from a `UsageCache`, computed when Prometheus scrapes."""

    def __init__(self, cache: UsageCache, build_info: dict[str, str] | None = None) -> None:
        self._cache = cache
        self._build_info = build_info or build_info_labels()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memory_limit = GaugeMetricFamily(
            "hami_gpu_memory_limit_bytes", "GPU device memory limit", labels=_DEVICE_LABELS
        )
        core_limit = GaugeMetricFamily(
            "hami_gpu_core_limit_ratio", "GPU device core limit", labels=_DEVICE_LABELS
        )
        memory_allocated = GaugeMetricFamily(
            "hami_gpu_memory_allocated_bytes",
            "GPU device memory allocated",
            labels=["zone", "node", "device_uuid", "device_index", "device_cores", "device_type"],
        )
        shared = GaugeMetricFamily(
            "hami_gpu_shared_count", "Number of tasks sharing the GPU", labels=_DEVICE_LABELS
        )
        core_allocated = GaugeMetricFamily(
            "hami_gpu_core_allocated_ratio", "GPU device cores allocated", labels=_DEVICE_LABELS
        )
        overview = GaugeMetricFamily(
            "hami_node_gpu_overview",
            "GPU overview on a node",
            labels=[
                "zone",
                "node",
                "device_uuid",
                "device_index",
                "device_cores",
                "device_memory_limit",
                "device_type",
            ],
        )
        memory_ratio = GaugeMetricFamily(
            "hami_node_gpu_memory_allocated_ratio", "GPU memory allocated ratio", labels=_DEVICE_LABELS
        )
        for state in self._cache.nodes():
            snapshot = self._cache.snapshot(state.name)
            if snapshot is None:
                continue  # like HAMi: only registered, healthy nodes are reported
            for device in snapshot.devices:
                base = [ZONE, snapshot.name, device.id, str(device.index)]
                labels = [*base, device.type]
                memory_limit.add_metric(labels, device.totalmem * MIB)
                core_limit.add_metric(labels, device.totalcore)
                memory_allocated.add_metric([*base, str(device.usedcores), device.type], device.usedmem * MIB)
                shared.add_metric(labels, device.used)
                core_allocated.add_metric(labels, device.usedcores)
                overview.add_metric(
                    [*base, str(device.usedcores), str(device.totalmem), device.type], device.usedmem * MIB
                )
                memory_ratio.add_metric(labels, device.usedmem / device.totalmem if device.totalmem else 0.0)
        yield from (
            memory_limit,
            core_limit,
            memory_allocated,
            shared,
            core_allocated,
            overview,
            memory_ratio,
        )

        vgpu_memory = GaugeMetricFamily(
            "hami_vgpu_memory_allocated_bytes", "vGPU memory allocated to a pod", labels=_POD_LABELS
        )
        vgpu_cores = GaugeMetricFamily(
            "hami_vgpu_core_allocated_ratio", "vGPU cores allocated to a pod", labels=_POD_LABELS
        )
        for pod in self._cache.pods():
            for use in pod.collapsed():
                # Usage is collapsed per pod (spec §3.4), so HAMi reports it under container index 0.
                labels = [ZONE, pod.namespace, pod.node, pod.name, "0", use.uuid]
                vgpu_memory.add_metric(labels, use.usedmem * MIB)
                vgpu_cores.add_metric(labels, use.usedcores)
        yield vgpu_memory
        yield vgpu_cores

        quota_used = GaugeMetricFamily(
            "hami_resource_quota_used",
            "Namespace quota usage",
            labels=["zone", "namespace", "quota_name", "limit"],
        )
        quota_limit = GaugeMetricFamily(
            "hami_resource_quota_limit", "Namespace quota limit", labels=["zone", "namespace", "quota_name"]
        )
        view = self._cache.quota_view()
        for namespace in sorted(view.namespaces):
            for key, entry in sorted(view.namespaces[namespace].resources.items()):
                resource = key.removeprefix("limits.")
                quota_used.add_metric([ZONE, namespace, resource, str(entry.limit)], entry.used)
                if entry.limit_set:
                    quota_limit.add_metric([ZONE, namespace, resource], entry.limit)
        yield quota_used
        yield quota_limit

        info = GaugeMetricFamily("hami_build_info", "Build information", labels=list(self._build_info))
        info.add_metric(list(self._build_info.values()), 1)
        yield info


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
        if cache is not None:
            self.registry.register(UsageCollector(cache))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(metrics: SchedulerMetrics) -> web.Application:
    async def serve(_: web.Request) -> web.Response:
        # A scrape over 1000 nodes takes most of a second; off the loop, filter and bind keep answering.
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app
