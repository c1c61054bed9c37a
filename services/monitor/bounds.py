"""What a region may claim about one device, and its values clamped to that (no I/O).

A region is written by libvgpu inside the container, so every number in it is the container's word. A value
no device can hold (2^62 bytes used, 10,000 % of the SMs) is exported as the device's bound instead, and the
monitor logs and counts it (docs/hami-wire.md#monitor-metrics, `hami_vgpu_region_values_clamped_total`).

The memory bound of a GPU is the larger of two totals the container cannot touch:

* the node's registered inventory (`hami.io/node-nvidia-register`, `devmem` MiB): written by this node's
  device plugin from NVML, multiplied by `deviceMemoryScaling`. Limits are handed out from it, so with
  oversubscription (scaling > 1, libvgpu spills to host memory) a container may legitimately use more than
  the card holds, never more than this;
* NVML's total of the card on this host (`hostgpu.py`), where NVML answers: the physical size, the larger one
  when the scaling is below 1.

Neither alone covers every node (no NVML in a CPU-only monitor, no inventory before the plugin registered),
and both are trusted: the larger never flags an honest value. The region's own per-device figures (its
`limit`) are not a source, being the very values under suspicion. When neither total is known, the usage of
a device is bounded by the limit the scheduler allocated to the container (the pod's annotation, also out of
the container's reach), since libvgpu refuses allocations beyond it; a region's limit is then left as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from services.monitor.codec import DeviceReading

MIB: Final = 1024 * 1024
# SM utilisation is a percent of one GPU: the per-process shares of one device add up to at most all of it.
SM_UTIL_MAX: Final = 100

# `field` label values: the DeviceReading attribute each one clamps.
USED_BYTES: Final = "used_bytes"
LIMIT_BYTES: Final = "limit_bytes"
CONTEXT_BYTES: Final = "context_bytes"
MODULE_BYTES: Final = "module_bytes"
BUFFER_BYTES: Final = "buffer_bytes"
SM_UTIL: Final = "sm_util"
FIELDS: Final = (USED_BYTES, LIMIT_BYTES, CONTEXT_BYTES, MODULE_BYTES, BUFFER_BYTES, SM_UTIL)


@dataclass(frozen=True, slots=True)
class Clamp:
    """One region value above its bound: what the region claimed, and what is reported instead."""

    field: str
    claimed: int
    bound: int


@dataclass(frozen=True, slots=True)
class DeviceBounds:
    """The most a region may claim for one device; None: no bound known for that field."""

    limit_bytes: int | None
    usage_bytes: int | None
    sm_util: int = SM_UTIL_MAX


def device_memory_totals(
    registered_mib: Mapping[str, int], host_bytes: Mapping[str, int], uuid_len: int
) -> dict[str, int]:
    """Bytes per GPU (UUID cut to `uuid_len`, as regions name them): the larger of the registered inventory
    (MiB, scaled) and NVML's total; GPUs with neither (or only zeros) are left out."""
    totals: dict[str, int] = {}
    for uuid, mib in registered_mib.items():
        if mib > 0:
            key = uuid[:uuid_len]
            totals[key] = max(totals.get(key, 0), mib * MIB)
    for uuid, total in host_bytes.items():
        if total > 0:
            key = uuid[:uuid_len]
            totals[key] = max(totals.get(key, 0), total)
    return totals


def device_bounds(memory_total: int | None, allocated_limit: int) -> DeviceBounds:
    """The device's memory when known (for the limit and every usage figure), else the allocated limit for
    usage only (module docstring); `allocated_limit` 0 means none."""
    if memory_total is not None and memory_total > 0:
        return DeviceBounds(limit_bytes=memory_total, usage_bytes=memory_total)
    return DeviceBounds(limit_bytes=None, usage_bytes=allocated_limit if allocated_limit > 0 else None)


def clamp_device(reading: DeviceReading, bounds: DeviceBounds) -> tuple[DeviceReading, tuple[Clamp, ...]]:
    """`reading` with every value above its bound replaced by the bound, and what was replaced. The same
    object comes back when nothing is (the usual case costs no allocation)."""
    clamps: list[Clamp] = []

    def bounded(field: str, value: int, bound: int | None) -> int:
        if bound is None or value <= bound:
            return value
        clamps.append(Clamp(field, value, bound))
        return bound

    limit = bounded(LIMIT_BYTES, reading.limit_bytes, bounds.limit_bytes)
    used = bounded(USED_BYTES, reading.used_bytes, bounds.usage_bytes)
    context = bounded(CONTEXT_BYTES, reading.context_bytes, bounds.usage_bytes)
    module = bounded(MODULE_BYTES, reading.module_bytes, bounds.usage_bytes)
    buffer = bounded(BUFFER_BYTES, reading.buffer_bytes, bounds.usage_bytes)
    sm_util = bounded(SM_UTIL, reading.sm_util, bounds.sm_util)
    if not clamps:
        return reading, ()
    clamped = replace(
        reading,
        limit_bytes=limit,
        used_bytes=used,
        context_bytes=context,
        module_bytes=module,
        buffer_bytes=buffer,
        sm_util=sm_util,
    )
    return clamped, tuple(clamps)
