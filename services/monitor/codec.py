"""The few numbers the monitor takes from a shared region, over `services.common.shared_region`.

The layouts themselves (HAMi-core v0 and v1: offsets, magic, sizes, version choice) live only in
`services.common.shared_region`; this module maps its answers and errors onto the monitor's vocabulary.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final

from services.common import shared_region as sr

RECENT_KERNEL: Final = "recent_kernel"
UTILIZATION_SWITCH: Final = "utilization_switch"
WRITABLE_FIELDS: Final = frozenset({RECENT_KERNEL, UTILIZATION_SWITCH})

# Reasons of `kube_vgpu_monitor_region_errors_total` for files shared_region refuses.
REASON_TOO_SMALL: Final = "too_small"
REASON_TRUNCATED: Final = "truncated"
REASON_BAD_MAGIC: Final = "bad_magic"
REASON_UNSUPPORTED_VERSION: Final = "unsupported_version"
REASON_CORRUPT: Final = "corrupt"
KNOWN_REASONS: Final = (
    REASON_TOO_SMALL,
    REASON_TRUNCATED,
    REASON_BAD_MAGIC,
    REASON_UNSUPPORTED_VERSION,
    REASON_CORRUPT,
)

# Files up to this size are read whole when they cannot hold any layout (to name the exact error).
SMALLEST_LAYOUT: Final = sr.V0.size
# No layout is longer; a longer file is mapped only this far (the version choice depends only on whether
# the size reaches it).
LARGEST_LAYOUT: Final = sr.V1.size


class RegionFormatError(Exception):
    """A cache file that cannot be read as a region; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reason_of(exc: sr.SharedRegionError) -> str:
    if isinstance(exc, sr.RegionTooSmallError):
        return REASON_TOO_SMALL
    if isinstance(exc, sr.TruncatedRegionError):
        return REASON_TRUNCATED
    if isinstance(exc, sr.BadMagicError):
        return REASON_BAD_MAGIC
    if isinstance(exc, sr.UnsupportedVersionError):
        return REASON_UNSUPPORTED_VERSION
    return REASON_CORRUPT


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One device of a region (index = the device's index inside the container)."""

    index: int
    uuid: str
    limit_bytes: int
    sm_limit: int
    used_bytes: int = 0
    context_bytes: int = 0
    module_bytes: int = 0
    buffer_bytes: int = 0
    sm_util: int = 0


@dataclass(frozen=True, slots=True)
class RegionReading:
    version: str
    devices: tuple[DeviceReading, ...]
    priority: int
    recent_kernel: int
    utilization_switch: int
    last_kernel_time: int
    processes: int


def map_length(file_size: int) -> int:
    """How much of a cache file of `file_size` bytes to map."""
    return min(file_size, LARGEST_LAYOUT)


def decode(buffer: bytes | mmap.mmap) -> tuple[RegionReading, sr.RegionLayout]:
    """Validate (size, magic, version) and read one region; RegionFormatError when it is not one."""
    try:
        # Only the aggregates: parse_region would build ~32 objects per process slot (the scrape's hot path).
        summary = sr.parse_region_summary(buffer)
    except sr.SharedRegionError as exc:
        raise RegionFormatError(reason_of(exc), str(exc)) from None
    except (ValueError, IndexError, OverflowError) as exc:  # struct errors on a file shorter than it said
        raise RegionFormatError(REASON_CORRUPT, f"{type(exc).__name__}: {exc}") from None
    uuids = summary.uuids
    reading = RegionReading(
        version=summary.version.value,
        devices=tuple(
            DeviceReading(
                index=i,
                uuid=uuids[i][: sr.MONITOR_UUID_LEN],
                limit_bytes=summary.limits[i],
                sm_limit=summary.sm_limits[i],
                used_bytes=summary.used[i],
                context_bytes=summary.context[i],
                module_bytes=summary.module[i],
                buffer_bytes=summary.buffer[i],
                sm_util=summary.sm_util[i],
            )
            for i in range(summary.device_count)
            if uuids[i]  # the monitor's rule, as SharedRegion.devices()
        ),
        priority=summary.priority,
        recent_kernel=summary.recent_kernel,
        utilization_switch=summary.utilization_switch,
        last_kernel_time=summary.last_kernel_time or 0,
        processes=summary.live_processes,
    )
    return reading, summary.layout


def fingerprint(view: mmap.mmap, layout: sr.RegionLayout) -> bytes:
    """Every byte `decode` reads from a region of `layout`: the header up to the process slots, the slots in
    use and the fields after them. Equal fingerprints mean equal readings, so an unchanged region (most of
    them, most of the time) is not decoded again. Offsets come from shared_region's layout table."""
    tail = view[layout.proc_num : layout.size]
    (proc_num,) = struct.unpack_from("<i", tail, 0)
    count = max(0, min(proc_num, sr.SLOTS))
    return view[: layout.procs + count * layout.slot_size] + tail


def field_offset(layout: sr.RegionLayout, field_name: str) -> int:
    """Byte offset of one of the fields the feedback loop may write."""
    if field_name == RECENT_KERNEL:
        return layout.recent_kernel
    if field_name == UTILIZATION_SWITCH:
        return layout.utilization_switch
    raise ValueError(f"the monitor never writes {field_name!r} (only {sorted(WRITABLE_FIELDS)})")


def redecode_slots(view: mmap.mmap, layout: sr.RegionLayout, previous: RegionReading) -> RegionReading:
    """`decode(view)`'s reading when everything but the process slots (the header before them and the tail
    after them, `proc_num` included) holds the bytes `previous` was decoded from: only the slots are read
    again (with shared_region's summary rows and seqlock retry), the header fields are taken over."""
    totals = sr.read_slot_totals(view, layout)
    return RegionReading(
        version=previous.version,
        devices=tuple(
            DeviceReading(
                index=d.index,
                uuid=d.uuid,
                limit_bytes=d.limit_bytes,
                sm_limit=d.sm_limit,
                used_bytes=totals.used[d.index],
                context_bytes=totals.context[d.index],
                module_bytes=totals.module[d.index],
                buffer_bytes=totals.buffer[d.index],
                sm_util=totals.sm_util[d.index],
            )
            for d in previous.devices
        ),
        priority=previous.priority,
        recent_kernel=previous.recent_kernel,
        utilization_switch=previous.utilization_switch,
        last_kernel_time=previous.last_kernel_time,
        processes=totals.live_processes,
    )
