"""The monitor's `/metrics` (docs/hami-wire.md#monitor-metrics), built at scrape time from a fresh snapshot.

Container series (one per container and GPU), all with the constant label `zone="vGPU"`:

| name | value |
|---|---|
| `hami_vgpu_memory_used_bytes` | device memory in use (sum over the container's live processes) |
| `hami_vgpu_memory_limit_bytes` | memory limit (the region's; before the region exists, the allocation's) |
| `hami_vgpu_core_used_percent` | SM utilisation of the container, percent of one GPU |
| `hami_vgpu_core_limit_percent` | SM limit, percent of one GPU (100 = not limited) |
| `hami_container_device_memory_bytes` | = memory used (HAMi's name) |
| `hami_container_device_utilization_ratio` | = SM utilisation, 0-100 (HAMi's name and scale) |
| `hami_container_last_kernel_elapsed_seconds` | now - last kernel time (only once a kernel ran) |
| `hami_vgpu_memory_{context,module,buffer}_bytes` | the parts of memory used |

**Labels (the name clash).** HAMi's monitor labels `hami_vgpu_memory_used_bytes` / `_limit_bytes` with
`namespace, pod, container, vdevice_index, device_uuid`; kube-vgpu's own list has `node, namespace, pod,
container, device_uuid, device_index`. One family must have one label set, so every container family carries
the union: `zone, node, namespace, pod, container, vdevice_index, device_index, device_uuid`.
`vdevice_index` is the device's index inside the container (HAMi's meaning), `device_index` the GPU's index
on the host (from NVML, else the node's registered inventory; "" when unknown). Every HAMi label keeps its
name and meaning, so HAMi's dashboards and alerts keep matching; the extra labels only add detail.

Host series (only where NVML answers): `hami_host_gpu_memory_used_bytes`, `hami_host_gpu_utilization_ratio`,
`hami_host_gpu_memory_controller_utilization_ratio` with `zone, node, device_index, device_uuid, device_type`
(HAMi leaves `node` off the last one; it is added here for the same reason). `hami_build_info` has no zone.

Region values above the device's bound (services.monitor.bounds) are exported clamped and counted in
`hami_vgpu_region_values_clamped_total{zone, node, namespace, pod, container, device_uuid, field}`: +1 each
time a field of a container's device starts claiming more than the device holds (`field` is the region
value: used_bytes, limit_bytes, context_bytes, module_bytes, buffer_bytes, sm_util). HAMi has no such
metric; the name extends its `hami_vgpu_` family. A container's series go with the container.

Monitor health: `kube_vgpu_monitor_region_errors_total{reason}` (skipped cache files, counted once per file
version), `kube_vgpu_monitor_regions_mapped`, `kube_vgpu_monitor_container_dirs`,
`kube_vgpu_monitor_stale_dirs_removed_total`, `kube_vgpu_monitor_feedback_writes_total`.

The same families feed a dedicated `CollectorRegistry` (`MonitorMetrics.registry`) and the direct text writer
of `services.common.prom_text` that `/metrics` uses: prometheus_client's generic writer needs about 0.1 s for
the 10,000 series of 1,000 containers, the direct one a fraction of that, and tests check both give the same
families.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics import build_info_family, build_info_labels
from services.common.prom_text import (
    CONTENT_TYPE,
    COUNTER,
    Family,
    FamilySamples,
    LabelSet,
    LineCache,
    exact_number,
    render_text,
)
from services.monitor.hostgpu import HostGpuStat
from services.monitor.monitor import ClampLabels, ContainerView, DeviceView, Snapshot

__all__ = [
    "CLAMP_LABELS",
    "CONTAINER_LABELS",
    "HOST_LABELS",
    "ZONE",
    "ErrorCounts",
    "MonitorCounters",
    "MonitorMetrics",
    "metrics_app",
]

ZONE: Final = "vGPU"
CONTAINER_LABELS: Final = (
    "zone",
    "node",
    "namespace",
    "pod",
    "container",
    "vdevice_index",
    "device_index",
    "device_uuid",
)
HOST_LABELS: Final = ("zone", "node", "device_index", "device_uuid", "device_type")
CLAMP_LABELS: Final = ("zone", "node", "namespace", "pod", "container", "device_uuid", "field")


def _to_metric(fam: FamilySamples) -> Metric:
    family = fam.family
    metric: GaugeMetricFamily | CounterMetricFamily
    if family.type == COUNTER:
        metric = CounterMetricFamily(family.name, family.help, labels=list(family.label_names))
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=list(family.label_names))
    for labels, value in fam.samples:
        metric.add_metric(list(labels.values), value)
    return metric


class ErrorCounts:
    """`kube_vgpu_monitor_region_errors_total` by reason; thread-safe."""

    def __init__(self, known_reasons: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(known_reasons, 0)

    def __call__(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# The container families, in output order. The one at _ELAPSED depends on the scrape time.
_CONTAINER_FAMILIES: Final = tuple(
    Family(name, help_text, label_names=CONTAINER_LABELS)
    for name, help_text in (
        ("hami_vgpu_memory_used_bytes", "vGPU device memory used by the container"),
        ("hami_vgpu_memory_limit_bytes", "vGPU device memory limit of the container"),
        ("hami_vgpu_core_used_percent", "vGPU SM utilisation of the container, percent of a GPU"),
        ("hami_vgpu_core_limit_percent", "vGPU SM limit of the container, percent of a GPU"),
        ("hami_container_device_memory_bytes", "Container device memory usage"),
        ("hami_container_device_utilization_ratio", "Container device SM utilisation (0-100)"),
        ("hami_container_last_kernel_elapsed_seconds", "Seconds since the container's last kernel launch"),
        ("hami_vgpu_memory_context_bytes", "vGPU device memory used by CUDA contexts"),
        ("hami_vgpu_memory_module_bytes", "vGPU device memory used by loaded modules"),
        ("hami_vgpu_memory_buffer_bytes", "vGPU device memory used by allocations"),
    )
)
_ELAPSED: Final = 6


def _device_labels(node: str, view: ContainerView, device: DeviceView) -> LabelSet:
    return LabelSet(
        CONTAINER_LABELS,
        (
            ZONE,
            node,
            view.namespace,
            view.pod,
            view.container,
            str(device.vindex),
            device.host_index,
            device.uuid,
        ),
    )


def _device_values(device: DeviceView) -> tuple[int, ...]:
    """The values of every container family but _ELAPSED, in _CONTAINER_FAMILIES order."""
    return (
        device.memory_used_bytes,
        device.memory_limit_bytes,
        device.core_used_percent,
        device.core_limit_percent or 100,
        device.memory_used_bytes,
        device.core_used_percent,
        device.context_bytes,
        device.module_bytes,
        device.buffer_bytes,
    )


def container_families(snapshot: Snapshot, now: float) -> list[FamilySamples]:
    families = [FamilySamples(family) for family in _CONTAINER_FAMILIES]
    fixed = families[:_ELAPSED] + families[_ELAPSED + 1 :]
    last_kernel = families[_ELAPSED]
    for view in snapshot.containers:
        if not view.attributed:
            continue
        elapsed = now - view.last_kernel_time if view.last_kernel_time > 0 else None
        for device in view.devices:
            labels = _device_labels(snapshot.node, view, device)
            for fam, value in zip(fixed, _device_values(device), strict=True):
                fam.add(labels, value)
            if elapsed is not None:
                last_kernel.add(labels, max(0.0, elapsed))
    return families


_FIXED_NAMES: Final = tuple(family.name for i, family in enumerate(_CONTAINER_FAMILIES) if i != _ELAPSED)


def _label_key(node: str, view: ContainerView) -> tuple[object, ...]:
    """Everything a container's label text depends on."""
    return (
        node,
        view.namespace,
        view.pod,
        view.container,
        tuple((d.vindex, d.host_index, d.uuid) for d in view.devices),
    )


@dataclass(frozen=True, slots=True)
class _ContainerText:
    """One container's rendered lines: per fixed family (bytes), and the line prefixes of every family."""

    label_key: tuple[object, ...]
    prefixes: tuple[tuple[str, ...], ...]  # per device: the fixed families' "name{labels} ", then _ELAPSED's
    fixed: tuple[bytes, ...]


def _container_text(node: str, view: ContainerView, old: _ContainerText | None) -> _ContainerText:
    label_key = _label_key(node, view)
    if old is not None and old.label_key == label_key:
        prefixes = old.prefixes
    else:
        elapsed_name = _CONTAINER_FAMILIES[_ELAPSED].name
        texts = [_device_labels(node, view, device).text for device in view.devices]
        prefixes = tuple(
            (*(f"{name}{text} " for name in _FIXED_NAMES), f"{elapsed_name}{text} ") for text in texts
        )
    lines = [
        [
            prefix + (str(value) if value.__class__ is int else exact_number(value)) + "\n"
            for prefix, value in zip(device_prefixes, _device_values(device), strict=False)
        ]
        for device, device_prefixes in zip(view.devices, prefixes, strict=True)
    ]
    if len(lines) == 1:  # the common case: one GPU
        fixed = tuple(line.encode() for line in lines[0])
    else:
        fixed = tuple("".join(device[i] for device in lines).encode() for i in range(len(_FIXED_NAMES)))
    return _ContainerText(label_key, prefixes, fixed)


class _ContainerRenderer:
    """The container families as text, each container's lines rendered once per change of its view.

    A container whose view equals the last scrape's costs a dict lookup; only the elapsed-time family is
    formatted at each scrape. The output is byte for byte `render_text(container_families(...))`."""

    def __init__(self) -> None:
        self._headers = tuple(family.header().encode() for family in _CONTAINER_FAMILIES)
        self._for_node("")

    def _for_node(self, node: str) -> None:
        """Forget every kept line: the node's name is in each of them."""
        self._node = node
        self._texts: LineCache[tuple[str, str], ContainerView, _ContainerText] = LineCache(
            partial(_container_text, node), reuse_equal=True
        )

    def render(self, snapshot: Snapshot, now: float) -> list[bytes]:
        if snapshot.node != self._node:
            self._for_node(snapshot.node)
        views = [view for view in snapshot.containers if view.attributed]
        texts = self._texts.refresh([((v.pod_uid, v.container), v) for v in views])
        elapsed_lines: list[str] = []
        for view, text in zip(views, texts, strict=True):
            if view.last_kernel_time > 0:
                value = exact_number(max(0.0, now - view.last_kernel_time))
                elapsed_lines.extend(f"{prefix[-1]}{value}\n" for prefix in text.prefixes)
        out: list[bytes] = []
        headers = self._headers
        for i in range(_ELAPSED):
            out.append(headers[i])
            out.append(b"".join([t.fixed[i] for t in texts]))
        out.append(headers[_ELAPSED])
        out.append("".join(elapsed_lines).encode())
        for i in range(_ELAPSED, len(_CONTAINER_FAMILIES) - 1):
            out.append(headers[i + 1])
            out.append(b"".join([t.fixed[i] for t in texts]))
        return out


def host_families(node: str, stats: Sequence[HostGpuStat]) -> list[FamilySamples]:
    if not stats:
        return []
    memory = FamilySamples(
        Family("hami_host_gpu_memory_used_bytes", "GPU device memory used", label_names=HOST_LABELS)
    )
    util = FamilySamples(
        Family("hami_host_gpu_utilization_ratio", "GPU utilisation (0-100)", label_names=HOST_LABELS)
    )
    mem_util = FamilySamples(
        Family(
            "hami_host_gpu_memory_controller_utilization_ratio",
            "GPU memory controller utilisation (0-100)",
            label_names=HOST_LABELS,
        )
    )
    for gpu in stats:
        labels = LabelSet(HOST_LABELS, (ZONE, node, str(gpu.index), gpu.uuid, gpu.type))
        memory.add(labels, gpu.memory_used_bytes)
        util.add(labels, gpu.utilization_percent)
        mem_util.add(labels, gpu.memory_utilization_percent)
    return [memory, util, mem_util]


@dataclass(frozen=True, slots=True)
class MonitorCounters:
    region_errors: dict[str, int]
    regions_mapped: int
    container_dirs: int
    stale_removed: int
    feedback_writes: int
    clamped_values: Mapping[ClampLabels, int] = field(default_factory=dict)


_REGION_ERRORS: Final = Family(
    "kube_vgpu_monitor_region_errors_total",
    "Cache files skipped as truncated, corrupt or foreign (once per file version), by reason",
    COUNTER,
    ("reason",),
)
_REGIONS_MAPPED: Final = Family("kube_vgpu_monitor_regions_mapped", "Container caches mapped now")
_CONTAINER_DIRS: Final = Family(
    "kube_vgpu_monitor_container_dirs", "Container cache dirs seen by the last scan"
)
_STALE_REMOVED: Final = Family(
    "kube_vgpu_monitor_stale_dirs_removed_total", "Cache dirs of gone pods removed", COUNTER
)
_FEEDBACK_WRITES: Final = Family(
    "kube_vgpu_monitor_feedback_writes_total",
    "Region fields written by the feedback loop (recent_kernel, utilization_switch)",
    COUNTER,
)
_CLAMPED: Final = Family(
    "hami_vgpu_region_values_clamped_total",
    "Region values above what the device holds, reported as the device's bound (each time one appears)",
    COUNTER,
    CLAMP_LABELS,
)
_NO_LABELS: Final = LabelSet((), ())


def own_families(counters: MonitorCounters) -> list[FamilySamples]:
    errors = FamilySamples(_REGION_ERRORS)
    for reason, count in sorted(counters.region_errors.items()):
        errors.add(LabelSet(("reason",), (reason,)), count)
    clamped = FamilySamples(_CLAMPED)
    for labels, count in sorted(counters.clamped_values.items()):
        clamped.add(LabelSet(CLAMP_LABELS, (ZONE, *labels)), count)
    return [
        errors,
        clamped,
        FamilySamples(_REGIONS_MAPPED, [(_NO_LABELS, counters.regions_mapped)]),
        FamilySamples(_CONTAINER_DIRS, [(_NO_LABELS, counters.container_dirs)]),
        FamilySamples(_STALE_REMOVED, [(_NO_LABELS, counters.stale_removed)]),
        FamilySamples(_FEEDBACK_WRITES, [(_NO_LABELS, counters.feedback_writes)]),
    ]


def _build_info(labels: dict[str, str]) -> FamilySamples:
    return FamilySamples(build_info_family(labels), [(LabelSet(tuple(labels), tuple(labels.values())), 1)])


class MonitorMetrics:
    """Everything `/metrics` shows, computed at each scrape from the callables given."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        host_stats: Callable[[], Sequence[HostGpuStat]],
        counters: Callable[[], MonitorCounters],
        *,
        clock: Callable[[], float] = time.time,
        build_info: dict[str, str] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._host_stats = host_stats
        self._counters = counters
        self._clock = clock
        self._build_info = build_info or build_info_labels()
        self._containers = _ContainerRenderer()
        self._render_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RegistryBridge(self))

    def families(self) -> list[FamilySamples]:
        snapshot = self._snapshot()
        return [
            *container_families(snapshot, self._clock()),
            *host_families(snapshot.node, self._host_stats()),
            _build_info(self._build_info),
            *own_families(self._counters()),
        ]

    def render(self) -> bytes:
        """The `/metrics` body (direct writer; container lines cached, see _ContainerRenderer)."""
        snapshot = self._snapshot()
        with self._render_lock:
            parts = self._containers.render(snapshot, self._clock())
        rest = [
            *host_families(snapshot.node, self._host_stats()),
            _build_info(self._build_info),
            *own_families(self._counters()),
        ]
        parts.append(render_text(rest).encode())
        return b"".join(parts)

    def render_uncached(self) -> bytes:
        """The same body from freshly built families, without any cache (tests compare the two)."""
        return render_text(self.families()).encode()

    def render_with_registry(self) -> bytes:
        """The same families through prometheus_client's writer (slower; used to cross-check)."""
        return generate_latest(self.registry)


class _RegistryBridge(Collector):
    def __init__(self, metrics: MonitorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for fam in self._metrics.families():
            yield _to_metric(fam)


def metrics_app(render: Callable[[], bytes], *, offload: bool = True) -> web.Application:
    """`GET /metrics`; the snapshot is read in a worker thread so the event loop keeps serving."""

    async def serve(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(render) if offload else render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", serve)
    app.router.add_get("/healthz", healthz)
    return app
