"""The monitor's state: regions joined with the pods of this node, stale-dir cleanup and the feedback loop.

`Monitor.snapshot()` reads every mapped region and pairs it with its pod. A container of a live pod is
reported as soon as the pod carries its allocation (`hami.io/vgpu-devices-allocated`, slot order), with
its limits and zero usage, before its first CUDA call (HAMi#1814); once its region appears, the region's
values (what libvgpu enforces) take over. Devices are matched by UUID: a region lists devices in the
container's CUDA order, which need not be the annotation's order.

A region's values are the container's word: any above what the device can hold is reported as the device's
bound (`services.monitor.bounds`), logged once per container, device and field while it lasts, and counted
(`hami_vgpu_region_values_clamped_total`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.log import get_logger
from services.monitor.bounds import Clamp, clamp_device, device_bounds
from services.monitor.codec import (
    RECENT_KERNEL,
    UTILIZATION_SWITCH,
    DeviceReading,
    RegionReading,
)
from services.monitor.feedback import FeedbackInput, feedback_pass
from services.monitor.podresources import PodResourcesSource
from services.monitor.pods import PodContainer, PodIndex, PodInfo
from services.monitor.regions import DirInfo, RegionStore

log = get_logger("monitor")

MIB = 1024 * 1024
# A UUID slot of the region holds a NUL-terminated string; HAMi compares its first 40 characters.
UUID_LEN = 40


@dataclass(frozen=True, slots=True)
class DeviceView:
    vindex: int  # index inside the container (HAMi's vdevice_index)
    uuid: str
    host_index: str  # index on the host ("" when unknown)
    memory_used_bytes: int
    memory_limit_bytes: int
    context_bytes: int
    module_bytes: int
    buffer_bytes: int
    core_used_percent: int
    core_limit_percent: int  # 0 = not limited


@dataclass(frozen=True, slots=True)
class ClampedValue:
    """A region value of one device of the container that was above the device's bound (reported clamped)."""

    device_uuid: str
    clamp: Clamp


@dataclass(frozen=True, slots=True)
class ContainerView:
    pod_uid: str
    namespace: str
    pod: str
    container: str
    devices: tuple[DeviceView, ...]
    has_region: bool
    last_kernel_time: int = 0  # Unix seconds, 0 = never
    priority: int | None = None
    attributed: bool = True  # False: a region whose pod is not known (yet)
    clamped: tuple[ClampedValue, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.pod_uid}_{self.container}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    node: str
    taken_at: float
    containers: tuple[ContainerView, ...]


@dataclass(frozen=True, slots=True)
class _CachedView:
    pod: PodInfo | None
    dir_info: DirInfo | None
    region: RegionReading | None
    kubelet: tuple[str, ...]
    view: ContainerView


# `hami_vgpu_region_values_clamped_total` labels: node, namespace, pod, container, device_uuid, field.
ClampLabels = tuple[str, str, str, str, str, str]


@dataclass(slots=True)
class MonitorStats:
    stale_removed: int = 0
    feedback_writes: int = 0
    # Clamp episodes per label set, for the containers of the last snapshot.
    clamped: dict[ClampLabels, int] = field(default_factory=dict)


def _short_uuid(uuid: str) -> str:
    return uuid[:UUID_LEN]


def _merge_devices(
    container: PodContainer | None,
    region: RegionReading | None,
    kubelet_uuids: tuple[str, ...],
    host_index: dict[str, int],
    memory_totals: dict[str, int],
    clamped: list[ClampedValue],
) -> tuple[DeviceView, ...]:
    """Annotation devices (limits known from allocation) merged with region devices (usage), by UUID; region
    values above the device's bounds are clamped and appended to `clamped`."""
    allocated = list(container.devices) if container is not None else []
    by_uuid: dict[str, DeviceReading] = {}
    if region is not None:
        for device in region.devices:
            by_uuid.setdefault(_short_uuid(device.uuid), device)
    views: list[DeviceView] = []
    seen: set[str] = set()

    def index_of(uuid: str) -> str:
        idx = host_index.get(uuid)
        return "" if idx is None else str(idx)

    def from_region(device: DeviceReading, mem_limit: int) -> DeviceView:
        # The region holds what libvgpu enforces: its SM limit wins (0 or >= 100: not limited); a memory
        # limit of 0 there means none was set, so the allocation's is reported.
        uuid = _short_uuid(device.uuid)
        device, clamps = clamp_device(device, device_bounds(memory_totals.get(uuid), mem_limit))
        clamped.extend(ClampedValue(uuid, c) for c in clamps)
        return DeviceView(
            vindex=device.index,
            uuid=uuid,
            host_index=index_of(uuid),
            memory_used_bytes=device.used_bytes,
            memory_limit_bytes=device.limit_bytes or mem_limit,
            context_bytes=device.context_bytes,
            module_bytes=device.module_bytes,
            buffer_bytes=device.buffer_bytes,
            core_used_percent=device.sm_util,
            core_limit_percent=device.sm_limit if 0 < device.sm_limit < 100 else 0,
        )

    for position, alloc in enumerate(allocated):
        uuid = _short_uuid(alloc.uuid)
        if uuid in seen:
            continue
        seen.add(uuid)
        mem_limit = alloc.usedmem * MIB
        core_limit = alloc.usedcores if 0 < alloc.usedcores < 100 else 0
        reading = by_uuid.get(uuid)
        if reading is not None:
            views.append(from_region(reading, mem_limit))
        else:
            views.append(
                DeviceView(
                    vindex=position,
                    uuid=uuid,
                    host_index=index_of(uuid),
                    memory_used_bytes=0,
                    memory_limit_bytes=mem_limit,
                    context_bytes=0,
                    module_bytes=0,
                    buffer_bytes=0,
                    core_used_percent=0,
                    core_limit_percent=core_limit,
                )
            )
    if not allocated:
        for position, uuid in enumerate(kubelet_uuids):
            short = _short_uuid(uuid)
            if short in seen or short in by_uuid:
                continue
            seen.add(short)
            views.append(DeviceView(position, short, index_of(short), 0, 0, 0, 0, 0, 0, 0))
    if region is not None:
        for device in region.devices:
            uuid = _short_uuid(device.uuid)
            if uuid in seen:
                continue
            seen.add(uuid)
            views.append(from_region(device, 0))
    views.sort(key=lambda v: v.vindex)
    return tuple(views)


def build_view(
    pod: PodInfo | None,
    dir_info: DirInfo | None,
    container_name: str,
    region: RegionReading | None,
    kubelet_uuids: tuple[str, ...],
    host_index: dict[str, int],
    memory_totals: dict[str, int] | None = None,
) -> ContainerView:
    spec = pod.container(container_name) if pod is not None else None
    clamped: list[ClampedValue] = []
    devices = _merge_devices(spec, region, kubelet_uuids, host_index, memory_totals or {}, clamped)
    return ContainerView(
        pod_uid=pod.uid if pod is not None else (dir_info.pod_uid if dir_info else ""),
        namespace=pod.namespace if pod is not None else "",
        pod=pod.name if pod is not None else "",
        container=container_name,
        devices=devices,
        has_region=region is not None,
        last_kernel_time=region.last_kernel_time if region is not None else 0,
        priority=region.priority if region is not None else None,
        attributed=pod is not None,
        clamped=tuple(clamped),
    )


class Monitor:
    def __init__(
        self,
        node_name: str,
        store: RegionStore,
        pods: PodIndex,
        *,
        podresources: PodResourcesSource | None = None,
        stale_grace_seconds: float = 300.0,
        mig_apply_lock_file: str | None = None,
        host_index: Callable[[], dict[str, int]] | None = None,
        memory_totals: Callable[[], dict[str, int]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_name = node_name
        self.store = store
        self.pods = pods
        self.podresources = podresources
        self.stale_grace_seconds = stale_grace_seconds
        self.mig_apply_lock_file = mig_apply_lock_file
        self._host_index = host_index
        self._memory_totals = memory_totals
        self.clock = clock
        self.stats = MonitorStats()
        self._lock = threading.Lock()  # one scan / feedback pass at a time
        self._mig_paused = False
        # The last snapshot's views by (pod UID, container, attributed), with what each was built from: a view
        # whose inputs are the same objects (frozen PodInfo, cached RegionReading) is reused, not rebuilt.
        # Replaced whole at each snapshot (no lock: concurrent snapshots each leave a valid cache).
        self._views: dict[tuple[str, str, bool], _CachedView] = {}
        self._views_host_index: dict[str, int] | None = None
        self._views_memory_totals: dict[str, int] | None = None
        # Clamped values being reported now, by (pod UID, container, device, field): each is logged and
        # counted when it first appears, and forgotten when the region's value is within bounds again.
        self._clamp_lock = threading.Lock()
        self._clamps_now: set[tuple[str, str, str, str]] = set()
        self._clamp_counts: dict[tuple[str, str], dict[ClampLabels, int]] = {}

    # --- scan ------------------------------------------------------------------------------------------

    def scan(self) -> None:
        """List the container dirs (mapping new caches, unmapping gone ones), then remove stale dirs."""
        with self._lock:
            if self.podresources is not None:
                self.podresources.refresh()
            self.store.scan()
            self.remove_stale_dirs()

    def remove_stale_dirs(self) -> list[str]:
        """Dirs whose pod UID is unknown to a synced pod source and whose mtime is older than the grace."""
        if not self.pods.has_source or not self.pods.synced:
            return []  # an empty or partial pod list must never look like "every pod is gone"
        now = self.clock()
        removed: list[str] = []
        for info in self.store.dirs():
            if info.pod_uid in self.pods:
                continue
            try:
                mtime = os.lstat(info.path).st_mtime
            except OSError:
                continue
            if now - mtime < self.stale_grace_seconds:
                continue
            if info.pod_uid in self.pods:  # the pod appeared while we looked
                continue
            if self.store.remove_dir(info.name):
                removed.append(info.name)
                self.stats.stale_removed += 1
                log.info("stale_dir_removed", dir=info.name, age_s=round(now - mtime))
        return removed

    # --- snapshot --------------------------------------------------------------------------------------

    def host_index(self) -> dict[str, int]:
        if self._host_index is not None:
            return self._host_index()
        return {uuid: gpu.index for uuid, gpu in self.pods.registered().items()}

    def memory_totals(self) -> dict[str, int]:
        """Bytes per GPU (short UUID) that bound a region's memory values (services.monitor.bounds)."""
        if self._memory_totals is not None:
            return self._memory_totals()
        return {
            _short_uuid(uuid): gpu.devmem_mib * MIB
            for uuid, gpu in self.pods.registered().items()
            if gpu.devmem_mib > 0
        }

    def snapshot(self) -> Snapshot:
        readings = list(self.store.read_all())
        pods = self.pods.pods()
        host_index = self.host_index()
        memory_totals = self.memory_totals()
        same_inputs = host_index == self._views_host_index and memory_totals == self._views_memory_totals
        old = self._views if same_inputs else {}
        cache: dict[tuple[str, str, bool], _CachedView] = {}

        def view_of(
            pod: PodInfo | None,
            uid: str,
            dir_info: DirInfo | None,
            container: str,
            region: RegionReading | None,
            kubelet: tuple[str, ...],
        ) -> ContainerView:
            key = (uid, container, pod is not None)
            hit = old.get(key)
            if (
                hit is not None
                and hit.pod is pod
                and hit.region is region
                and hit.dir_info == dir_info
                and hit.kubelet == kubelet
            ):
                cache[key] = hit
                return hit.view
            view = build_view(pod, dir_info, container, region, kubelet, host_index, memory_totals)
            cache[key] = _CachedView(pod, dir_info, region, kubelet, view)
            return view

        by_dir: dict[tuple[str, str], tuple[DirInfo, RegionReading | None]] = {
            (info.pod_uid, info.container): (info, reading) for info, reading in readings
        }
        views: list[ContainerView] = []
        for uid, pod in pods.items():
            if pod.terminal:
                continue
            for spec in pod.containers:
                if not spec.reported:
                    continue
                dir_info, region = by_dir.pop((uid, spec.name), (None, None))
                kubelet = (
                    self.podresources.devices(pod.namespace, pod.name, spec.name)
                    if self.podresources is not None
                    else ()
                )
                if not spec.devices and region is None and not kubelet:
                    continue
                views.append(view_of(pod, uid, dir_info, spec.name, region, kubelet))
        for (uid, container), (dir_info, region) in by_dir.items():
            if region is None or uid in pods:
                continue  # no cache yet, or a finished init container / a terminal pod
            views.append(view_of(None, uid, dir_info, container, region, ()))
        views.sort(key=lambda v: (not v.attributed, v.namespace, v.pod, v.container, v.pod_uid))
        self._views, self._views_host_index, self._views_memory_totals = cache, host_index, memory_totals
        self._note_clamps(views)
        return Snapshot(node=self.node_name, taken_at=self.clock(), containers=tuple(views))

    def _note_clamps(self, views: list[ContainerView]) -> None:
        """Log and count the clamped values that appeared since the last snapshot; forget the counts of
        containers no longer reported (their series go, as every series of a gone container does)."""
        now: set[tuple[str, str, str, str]] = set()
        with self._clamp_lock:
            for view in views:
                if not view.attributed:
                    continue  # named and counted once its pod is known (same key)
                for value in view.clamped:
                    key = (view.pod_uid, view.container, value.device_uuid, value.clamp.field)
                    now.add(key)
                    if key in self._clamps_now:
                        continue
                    log.warning(
                        "region_value_clamped",
                        pod=f"{view.namespace}/{view.pod}",
                        container=view.container,
                        device=value.device_uuid,
                        field=value.clamp.field,
                        claimed=value.clamp.claimed,
                        reported=value.clamp.bound,
                        dir=view.key,
                    )
                    labels: ClampLabels = (
                        self.node_name,
                        view.namespace,
                        view.pod,
                        view.container,
                        value.device_uuid,
                        value.clamp.field,
                    )
                    counts = self._clamp_counts.setdefault((view.pod_uid, view.container), {})
                    counts[labels] = counts.get(labels, 0) + 1
            self._clamps_now = now
            if not self._clamp_counts:
                return  # the usual case: no region ever claimed too much
            live = {(v.pod_uid, v.container) for v in views if v.attributed}
            for gone in self._clamp_counts.keys() - live:
                del self._clamp_counts[gone]
            self.stats.clamped = {
                labels: count for counts in self._clamp_counts.values() for labels, count in counts.items()
            }

    # --- feedback --------------------------------------------------------------------------------------

    def feedback(self) -> int:
        """One pass of the priority feedback loop over the regions of known pods; returns fields written."""
        with self._lock:
            if self.mig_apply_lock_file and Path(self.mig_apply_lock_file).exists():
                if not self._mig_paused:
                    log.info("feedback_paused", lock_file=self.mig_apply_lock_file)
                self._mig_paused = True
                return 0
            if self._mig_paused:
                log.info("feedback_resumed")
                self._mig_paused = False
            inputs: list[FeedbackInput] = []
            for info, reading in self.store.read_all():
                if reading is None or info.pod_uid not in self.pods:
                    continue
                uuids = tuple(_short_uuid(d.uuid) for d in reading.devices if d.uuid and d.uuid[0] != "\0")
                inputs.append(
                    FeedbackInput(
                        key=info.name,
                        uuids=uuids,
                        priority=reading.priority,
                        recent_kernel=reading.recent_kernel,
                        utilization_switch=reading.utilization_switch,
                    )
                )
            written = 0
            for write in feedback_pass(inputs):
                name = str(write.key)
                if write.recent_kernel is not None and self.store.write_int32(
                    name, RECENT_KERNEL, write.recent_kernel
                ):
                    written += 1
                if write.utilization_switch is not None and self.store.write_int32(
                    name, UTILIZATION_SWITCH, write.utilization_switch
                ):
                    written += 1
            self.stats.feedback_writes += written
            return written
