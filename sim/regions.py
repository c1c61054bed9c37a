"""Container caches written the way libvgpu lays them out, for tests, the benchmark and local demos.

The bytes come from `services.common.shared_region.encode_region`; this module only builds the regions and
puts them where the device plugin and libvgpu would (`<containers>/<podUID>_<container>/<uuid>.cache`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common import shared_region as sr

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcUse:
    """One process of the container: memory per device (bytes) and SM utilisation per device."""

    pid: int
    context: Sequence[int] = ()
    module: Sequence[int] = ()
    buffer: Sequence[int] = ()
    sm_util: Sequence[int] = ()
    status: int = 1


def _pad(values: Sequence[int], n: int = sr.DEVICES) -> tuple[int, ...]:
    return (tuple(values) + (0,) * n)[:n]


def make_region(
    uuids: Sequence[str],
    *,
    limits: Sequence[int] = (),
    sm_limits: Sequence[int] = (),
    procs: Sequence[ProcUse] = (),
    priority: int = 1,
    recent_kernel: int = 2,
    utilization_switch: int = 1,
    last_kernel_time: int | None = None,
    version: sr.RegionVersion = sr.RegionVersion.V1,
    proc_num: int | None = None,
) -> sr.SharedRegion:
    slots = []
    for proc in procs:
        context, module, buffer = _pad(proc.context), _pad(proc.module), _pad(proc.buffer)
        used = tuple(
            sr.DeviceMemory(
                context_size=context[i],
                module_size=module[i],
                data_size=buffer[i],
                total=context[i] + module[i] + buffer[i],
            )
            for i in range(sr.DEVICES)
        )
        util = tuple(sr.DeviceUtil(sm_util=u) for u in _pad(proc.sm_util))
        slots.append(
            sr.ProcSlot(pid=proc.pid, hostpid=proc.pid, used=used, device_util=util, status=proc.status)
        )
    v1 = version is sr.RegionVersion.V1
    return sr.SharedRegion(
        version=version,
        major_version=1 if v1 else 0,
        minor_version=2 if v1 else 0,
        device_num=len(uuids),
        uuids=(tuple(uuids) + ("",) * sr.DEVICES)[: sr.DEVICES],
        limits=_pad(limits),
        sm_limits=_pad(sm_limits),
        proc_num=len(slots) if proc_num is None else proc_num,
        procs=tuple(slots),
        utilization_switch=utilization_switch,
        recent_kernel=recent_kernel,
        priority=priority,
        last_kernel_time=(int(time.time()) if last_kernel_time is None else last_kernel_time) if v1 else None,
    )


def container_dir(containers_dir: Path, pod_uid: str, container: str) -> Path:
    path = containers_dir / f"{pod_uid}_{container}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_cache(
    containers_dir: Path,
    pod_uid: str,
    container: str,
    data: bytes | sr.SharedRegion,
    *,
    name: str = "0a1b2c3d-cache.cache",
) -> Path:
    """Write a cache file (a region, or raw bytes) into the container's dir; returns its path."""
    raw = sr.encode_region(data) if isinstance(data, sr.SharedRegion) else data
    path = container_dir(containers_dir, pod_uid, container) / name
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)
    return path


def rewrite_in_place(path: Path, region: sr.SharedRegion) -> None:
    """Overwrite an existing cache file's bytes without replacing the file (as libvgpu's updates do)."""
    raw = sr.encode_region(region)
    with open(path, "r+b") as fh:
        fh.write(raw)
