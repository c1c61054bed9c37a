"""Reader (and, for tests, writer) of the per-container shared region that libvgpu keeps in its cache file.

The region is HAMi-core's ``shared_region_t``, little-endian, C ABI on x86-64: 16 devices and 1024 process
slots. Two layouts exist on disk (docs/libvgpu-contract.md#shared-region-layout):

* **v1** (HAMi-core ≥ Aug 2024; ``major_version`` 1, minor 2 written by kube-vgpu's libvgpu): 2,008,952 bytes,
  slot of 1960 bytes, ``last_kernel_time`` at 2,008,912.
* **v0** (older HAMi-core, no version fields): 1,197,896 bytes, slot of 1168 bytes.

HAMi-core makes the file one byte longer than the layout. The version is chosen the way HAMi's monitor
does: ``v0 size <= file size < v1 size`` reads as v0; ``major == 1 and file size >= v1 size`` as v1; anything
else is an error. Before any field is read the size, the magic (19920718) and the version are validated,
and every failure raises a specific :class:`SharedRegionError` subclass. Per-device figures are sums over
the live slots (``status != 0``) among the first ``clamp(proc_num, 0, 1024)``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final, NamedTuple

__all__ = [
    "DEVICES",
    "MAGIC",
    "SLOTS",
    "V0",
    "V1",
    "BadMagicError",
    "DeviceMemory",
    "DeviceUsage",
    "DeviceUtil",
    "ProcSlot",
    "RegionLayout",
    "RegionSummary",
    "RegionTooSmallError",
    "RegionVersion",
    "SharedRegion",
    "SharedRegionError",
    "TruncatedRegionError",
    "UnsupportedVersionError",
    "encode_region",
    "parse_region",
    "parse_region_summary",
    "read_region",
]

MAGIC: Final = 19920718
DEVICES: Final = 16
SLOTS: Final = 1024
UUID_LEN: Final = 96
MONITOR_UUID_LEN: Final = 40  # HAMi's monitor labels series with the first 40 bytes of a UUID slot
MIN_FILE_SIZE: Final = 12  # the monitor rejects anything smaller outright


class SharedRegionError(ValueError):
    """The bytes are not a shared region this reader understands."""


class RegionTooSmallError(SharedRegionError):
    """Fewer bytes than any layout's header (empty or just-created file)."""


class TruncatedRegionError(SharedRegionError):
    """The file is shorter than its layout says."""


class BadMagicError(SharedRegionError):
    """``initialized_flag`` is not 19920718: not initialised, or not a region at all."""


class UnsupportedVersionError(SharedRegionError):
    """A layout version this reader does not know (or knows to be misaligned)."""


class RegionVersion(Enum):
    V0 = "v0"
    V1 = "v1"


@dataclass(frozen=True, slots=True)
class RegionLayout:
    """Byte offsets of one layout. ``None`` marks a field the layout does not have."""

    version: RegionVersion
    size: int
    major_version: int | None
    minor_version: int | None
    sm_init_flag: int
    owner_pid: int
    device_num: int
    uuids: int
    limit: int
    sm_limit: int
    procs: int
    slot_size: int
    proc_num: int
    utilization_switch: int
    recent_kernel: int
    priority: int
    last_kernel_time: int | None
    # inside a slot
    slot_used: int
    devmem_size: int
    slot_monitorused: int
    slot_device_util: int
    devutil_size: int
    slot_status: int
    slot_seqlock: int | None


V1: Final = RegionLayout(
    version=RegionVersion.V1,
    size=2_008_952,
    major_version=4,
    minor_version=8,
    sm_init_flag=12,
    owner_pid=16,
    device_num=56,
    uuids=64,
    limit=1600,
    sm_limit=1728,
    procs=1856,
    slot_size=1960,
    proc_num=2_008_896,
    utilization_switch=2_008_900,
    recent_kernel=2_008_904,
    priority=2_008_908,
    last_kernel_time=2_008_912,
    slot_used=8,
    devmem_size=64,
    slot_monitorused=1032,
    slot_device_util=1160,
    devutil_size=48,
    slot_status=1928,
    slot_seqlock=1936,
)

V0: Final = RegionLayout(
    version=RegionVersion.V0,
    size=1_197_896,
    major_version=None,
    minor_version=None,
    sm_init_flag=4,
    owner_pid=8,
    device_num=48,
    uuids=56,
    limit=1592,
    sm_limit=1720,
    procs=1848,
    slot_size=1168,
    proc_num=1_197_880,
    utilization_switch=1_197_884,
    recent_kernel=1_197_888,
    priority=1_197_892,
    last_kernel_time=None,
    slot_used=8,
    devmem_size=40,
    slot_monitorused=648,
    slot_device_util=776,
    devutil_size=24,
    slot_status=1160,
    slot_seqlock=None,
)

_ZERO16: Final = (0,) * DEVICES


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """``device_memory_t``: bytes one process charged on one device (``data_size`` is Go's ``bufferSize``)."""

    context_size: int = 0
    module_size: int = 0
    data_size: int = 0
    offset: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class DeviceUtil:
    """``device_util_t``: ``sm_util`` is the process's SM share in percent."""

    dec_util: int = 0
    enc_util: int = 0
    sm_util: int = 0


_EMPTY_MEM: Final = (DeviceMemory(),) * DEVICES
_EMPTY_UTIL: Final = (DeviceUtil(),) * DEVICES


@dataclass(frozen=True, slots=True)
class ProcSlot:
    """One process slot. ``status``: 1 running, 2 suspended, 0 exited."""

    pid: int
    hostpid: int = 0
    used: tuple[DeviceMemory, ...] = _EMPTY_MEM
    monitorused: tuple[int, ...] = _ZERO16
    device_util: tuple[DeviceUtil, ...] = _EMPTY_UTIL
    status: int = 1
    seqlock: int = 0  # v1 only

    @property
    def live(self) -> bool:
        return self.status != 0


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """What the monitor reports for one device of a container (sums over live slots)."""

    index: int
    uuid: str
    limit: int
    sm_limit: int
    used: int
    context: int
    module: int
    buffer: int
    offset: int
    sm_util: int
    processes: int

    @property
    def monitor_uuid(self) -> str:
        return self.uuid[:MONITOR_UUID_LEN]


@dataclass(frozen=True, slots=True)
class SharedRegion:
    """A decoded region. ``procs`` holds the first ``clamp(proc_num)`` slots; v0 lacks versions (0) and
    ``last_kernel_time`` (None)."""

    version: RegionVersion = RegionVersion.V1
    major_version: int = 1
    minor_version: int = 2
    initialized_flag: int = MAGIC
    sm_init_flag: int = 0
    owner_pid: int = 0
    device_num: int = 0
    uuids: tuple[str, ...] = ("",) * DEVICES
    limits: tuple[int, ...] = _ZERO16
    sm_limits: tuple[int, ...] = _ZERO16
    proc_num: int = 0
    procs: tuple[ProcSlot, ...] = ()
    utilization_switch: int = 1
    recent_kernel: int = 2
    priority: int = 1
    last_kernel_time: int | None = 0
    layout: RegionLayout = field(default=V1, compare=False, repr=False)

    @property
    def device_count(self) -> int:
        """``device_num`` clamped to 0..16, as the monitor's ``DeviceNum()``."""
        return max(0, min(self.device_num, DEVICES))

    @property
    def live_procs(self) -> tuple[ProcSlot, ...]:
        return tuple(p for p in self.procs if p.live)

    def usage(self, index: int) -> DeviceUsage:
        """Aggregates for device ``index`` over the live slots."""
        live = self.live_procs
        mem = [p.used[index] for p in live]
        return DeviceUsage(
            index=index,
            uuid=self.uuids[index],
            limit=self.limits[index],
            sm_limit=self.sm_limits[index],
            used=sum(m.total for m in mem),
            context=sum(m.context_size for m in mem),
            module=sum(m.module_size for m in mem),
            buffer=sum(m.data_size for m in mem),
            offset=sum(m.offset for m in mem),
            sm_util=sum(p.device_util[index].sm_util for p in live),
            processes=sum(1 for m in mem if m.total > 0),
        )

    def devices(self) -> tuple[DeviceUsage, ...]:
        """Per-device aggregates for ``index < device_count`` whose UUID is present (the monitor's rule)."""
        return tuple(self.usage(i) for i in range(self.device_count) if self.uuids[i])


# ----------------------------------------------------------------------------------------------- decoding


def _choose_layout(buf: bytes | memoryview | mmap.mmap) -> RegionLayout:
    size = len(buf)
    if size < MIN_FILE_SIZE:
        raise RegionTooSmallError(f"shared region is {size} bytes; at least {MIN_FILE_SIZE} are needed")
    (flag,) = struct.unpack_from("<i", buf, 0)
    if flag != MAGIC:
        raise BadMagicError(f"shared region magic is {flag}, expected {MAGIC} (not a region)")
    major, minor = struct.unpack_from("<II", buf, 4)
    if V0.size <= size < V1.size:
        if major == 1 and size > V0.size + 1:
            raise TruncatedRegionError(
                f"shared region of version 1.{minor} is truncated to {size} bytes (v1 needs {V1.size})"
            )
        return V0
    if size >= V1.size:
        if major != 1:
            raise UnsupportedVersionError(f"shared region major version {major} is unsupported (expected 1)")
        if minor == 1:
            raise UnsupportedVersionError(
                "shared region version 1.1 (HAMi-core's interim layout, Jan-Apr 2026) has shifted fields; "
                "delete the cache file so it is recreated"
            )
        return V1
    if major == 1:
        raise TruncatedRegionError(f"shared region of version 1.{minor} is truncated to {size} bytes")
    raise TruncatedRegionError(f"shared region is {size} bytes, shorter than any layout (v0 needs {V0.size})")


def _slot_struct(layout: RegionLayout) -> struct.Struct:
    mem = "Q" * (layout.devmem_size // 8)
    util = "Q" * (layout.devutil_size // 8)
    fmt = "<ii" + mem * DEVICES + "Q" * DEVICES + util * DEVICES + "i"
    fixed = 8 + layout.devmem_size * DEVICES + 8 * DEVICES + layout.devutil_size * DEVICES + 4
    if layout.slot_seqlock is not None:
        fmt += f"{layout.slot_seqlock - fixed}xQ"
        fixed = layout.slot_seqlock + 8
    fmt += f"{layout.slot_size - fixed}x"
    s = struct.Struct(fmt)
    assert s.size == layout.slot_size
    return s


_SLOT_STRUCTS: Final = {RegionVersion.V0: _slot_struct(V0), RegionVersion.V1: _slot_struct(V1)}


def _decode_slot(layout: RegionLayout, values: tuple[int, ...]) -> ProcSlot:
    nmem = layout.devmem_size // 8
    nutil = layout.devutil_size // 8
    pos = 2
    used = []
    for _ in range(DEVICES):
        v = values[pos : pos + nmem]
        used.append(DeviceMemory(v[0], v[1], v[2], v[3], v[4]))
        pos += nmem
    monitorused = tuple(values[pos : pos + DEVICES])
    pos += DEVICES
    util = []
    for _ in range(DEVICES):
        v = values[pos : pos + nutil]
        util.append(DeviceUtil(v[0], v[1], v[2]))
        pos += nutil
    status = values[pos]
    seqlock = values[pos + 1] if layout.slot_seqlock is not None else 0
    return ProcSlot(
        pid=values[0],
        hostpid=values[1],
        used=tuple(used),
        monitorused=monitorused,
        device_util=tuple(util),
        status=status,
        seqlock=seqlock,
    )


def _read_slot(buf: bytes | memoryview | mmap.mmap, layout: RegionLayout, index: int) -> ProcSlot:
    s = _SLOT_STRUCTS[layout.version]
    off = layout.procs + index * layout.slot_size
    if layout.slot_seqlock is None or isinstance(buf, bytes):
        return _decode_slot(layout, s.unpack_from(buf, off))
    # A live mapping: retry while a writer is inside its seqlock window.
    seq_off = off + layout.slot_seqlock
    values = s.unpack_from(buf, off)
    for _ in range(1000):
        (before,) = struct.unpack_from("<Q", buf, seq_off)
        values = s.unpack_from(buf, off)
        (after,) = struct.unpack_from("<Q", buf, seq_off)
        if before == after and before % 2 == 0:
            break
    return _decode_slot(layout, values)


def _uuid(raw: bytes) -> str:
    if not raw or raw[0] == 0:
        return ""  # an unused device slot (most of the 16)
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # the monitor skips UUIDs that are not valid UTF-8


class _Header(NamedTuple):
    """The fields outside the process slots (for :func:`parse_region` and :func:`parse_region_summary`)."""

    major_version: int
    minor_version: int
    initialized_flag: int
    sm_init_flag: int
    owner_pid: int
    device_num: int
    uuids: tuple[str, ...]
    limits: tuple[int, ...]
    sm_limits: tuple[int, ...]
    proc_num: int
    utilization_switch: int
    recent_kernel: int
    priority: int
    last_kernel_time: int | None


_I32: Final = struct.Struct("<i")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_I64: Final = struct.Struct("<q")
_UUIDS: Final = struct.Struct("<" + f"{UUID_LEN}s" * DEVICES)
_U64_16: Final = struct.Struct(f"<{DEVICES}Q")


def _read_header(data: bytes | memoryview | mmap.mmap, layout: RegionLayout) -> _Header:
    major = minor = 0
    if layout.major_version is not None and layout.minor_version is not None:
        major = _U32.unpack_from(data, layout.major_version)[0]
        minor = _U32.unpack_from(data, layout.minor_version)[0]
    uuids = tuple(map(_uuid, _UUIDS.unpack_from(data, layout.uuids)))
    last_kernel: int | None = None
    if layout.last_kernel_time is not None:
        last_kernel = _I64.unpack_from(data, layout.last_kernel_time)[0]
    return _Header(
        major_version=major,
        minor_version=minor,
        initialized_flag=_I32.unpack_from(data, 0)[0],
        sm_init_flag=_I32.unpack_from(data, layout.sm_init_flag)[0],
        owner_pid=_U64.unpack_from(data, layout.owner_pid)[0],
        device_num=_U64.unpack_from(data, layout.device_num)[0],
        uuids=uuids,
        limits=_U64_16.unpack_from(data, layout.limit),
        sm_limits=_U64_16.unpack_from(data, layout.sm_limit),
        proc_num=_I32.unpack_from(data, layout.proc_num)[0],
        utilization_switch=_I32.unpack_from(data, layout.utilization_switch)[0],
        recent_kernel=_I32.unpack_from(data, layout.recent_kernel)[0],
        priority=_I32.unpack_from(data, layout.priority)[0],
        last_kernel_time=last_kernel,
    )


def parse_region(buf: bytes | bytearray | memoryview | mmap.mmap) -> SharedRegion:
    """Decodes a region from the file's bytes (or a read-only mapping of it). Raises SharedRegionError.

    Builds an object per slot and device; :func:`parse_region_summary` reads only the aggregates."""
    data: bytes | memoryview | mmap.mmap = bytes(buf) if isinstance(buf, bytearray) else buf
    layout = _choose_layout(data)
    head = _read_header(data, layout)
    count = max(0, min(head.proc_num, SLOTS))
    return SharedRegion(
        version=layout.version,
        major_version=head.major_version,
        minor_version=head.minor_version,
        initialized_flag=head.initialized_flag,
        sm_init_flag=head.sm_init_flag,
        owner_pid=head.owner_pid,
        device_num=head.device_num,
        uuids=head.uuids,
        limits=head.limits,
        sm_limits=head.sm_limits,
        proc_num=head.proc_num,
        procs=tuple(_read_slot(data, layout, i) for i in range(count)),
        utilization_switch=head.utilization_switch,
        recent_kernel=head.recent_kernel,
        priority=head.priority,
        last_kernel_time=head.last_kernel_time,
        layout=layout,
    )


def read_region(path: str | Path) -> SharedRegion:
    """Maps the cache file read-only and decodes it."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < MIN_FILE_SIZE:
            raise RegionTooSmallError(f"{path}: shared region is {size} bytes; {MIN_FILE_SIZE} are needed")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return parse_region(m)


# ----------------------------------------------------------------------------------------------- summary


class RegionSummary(NamedTuple):
    """What :func:`parse_region_summary` reads: a region's header and tail fields plus per-device sums over
    the live slots (``status != 0`` among the first ``clamp(proc_num)``), without per-slot objects.

    ``used``/``context``/``module``/``buffer``/``offset``/``sm_util`` hold one sum per device (16);
    ``device_processes`` counts, per device, the live slots that charged bytes (``total > 0``);
    ``live_processes`` is the number of live slots. Equal to the same figures of :func:`parse_region`. A
    NamedTuple rather than a frozen dataclass: it is built once per region and scrape, and that is cheaper."""

    version: RegionVersion
    major_version: int
    minor_version: int
    initialized_flag: int
    sm_init_flag: int
    owner_pid: int
    device_num: int
    uuids: tuple[str, ...]
    limits: tuple[int, ...]
    sm_limits: tuple[int, ...]
    proc_num: int
    live_processes: int
    used: tuple[int, ...]
    context: tuple[int, ...]
    module: tuple[int, ...]
    buffer: tuple[int, ...]
    offset: tuple[int, ...]
    sm_util: tuple[int, ...]
    device_processes: tuple[int, ...]
    utilization_switch: int
    recent_kernel: int
    priority: int
    last_kernel_time: int | None
    layout: RegionLayout

    @property
    def device_count(self) -> int:
        """``device_num`` clamped to 0..16, as the monitor's ``DeviceNum()``."""
        return max(0, min(self.device_num, DEVICES))

    def usage(self, index: int) -> DeviceUsage:
        """Aggregates for device ``index`` over the live slots (as :meth:`SharedRegion.usage`)."""
        return DeviceUsage(
            index=index,
            uuid=self.uuids[index],
            limit=self.limits[index],
            sm_limit=self.sm_limits[index],
            used=self.used[index],
            context=self.context[index],
            module=self.module[index],
            buffer=self.buffer[index],
            offset=self.offset[index],
            sm_util=self.sm_util[index],
            processes=self.device_processes[index],
        )

    def devices(self) -> tuple[DeviceUsage, ...]:
        """Per-device aggregates for ``index < device_count`` whose UUID is present (the monitor's rule)."""
        return tuple(self.usage(i) for i in range(self.device_count) if self.uuids[i])


def _summary_struct(layout: RegionLayout) -> struct.Struct:
    """The fields of one slot the summary needs, in one unpack: per device the five ``device_memory_t``
    counters (context, module, data, offset, total), then per device ``sm_util``, then ``status``."""
    mem = "5Q" + (f"{layout.devmem_size - 40}x" if layout.devmem_size > 40 else "")
    util = "16xQ" + (f"{layout.devutil_size - 24}x" if layout.devutil_size > 24 else "")
    util_gap = layout.slot_device_util - layout.slot_used - layout.devmem_size * DEVICES
    status_gap = layout.slot_status - layout.slot_device_util - layout.devutil_size * DEVICES
    fmt = f"<{layout.slot_used}x" + mem * DEVICES + f"{util_gap}x" + util * DEVICES
    fmt += (f"{status_gap}x" if status_gap else "") + "i"
    s = struct.Struct(fmt)
    assert s.size == layout.slot_status + 4
    return s


_SUMMARY_STRUCTS: Final = {RegionVersion.V0: _summary_struct(V0), RegionVersion.V1: _summary_struct(V1)}
_MEM_FIELDS: Final = 5 * DEVICES  # values before the sm_util ones in a summary row
_STATUS: Final = _MEM_FIELDS + DEVICES  # index of status in a summary row


def _summary_rows(
    data: bytes | memoryview | mmap.mmap, layout: RegionLayout, count: int
) -> list[tuple[int, ...]]:
    """The summary rows of the live slots among the first ``count`` (seqlock retry as :func:`_read_slot`)."""
    s = _SUMMARY_STRUCTS[layout.version]
    unpack = s.unpack_from
    size = layout.slot_size
    base = layout.procs
    rows: list[tuple[int, ...]] = []
    if layout.slot_seqlock is None or isinstance(data, bytes):
        for off in range(base, base + count * size, size):
            row = unpack(data, off)
            if row[_STATUS] != 0:
                rows.append(row)
        return rows
    seq = _U64.unpack_from
    for off in range(base, base + count * size, size):
        # A live mapping: retry while a writer is inside its seqlock window.
        seq_off = off + layout.slot_seqlock
        row = unpack(data, off)
        for _ in range(1000):
            (before,) = seq(data, seq_off)
            row = unpack(data, off)
            (after,) = seq(data, seq_off)
            if before == after and before % 2 == 0:
                break
        if row[_STATUS] != 0:
            rows.append(row)
    return rows


class SlotTotals(NamedTuple):
    """Per-device sums over the live process slots (the part of a region that changes on every allocation)."""

    live_processes: int
    used: tuple[int, ...]
    context: tuple[int, ...]
    module: tuple[int, ...]
    buffer: tuple[int, ...]
    offset: tuple[int, ...]
    sm_util: tuple[int, ...]
    device_processes: tuple[int, ...]


def _totals(rows: list[tuple[int, ...]]) -> SlotTotals:
    if not rows:
        zero: tuple[int, ...] = _ZERO16
        return SlotTotals(0, zero, zero, zero, zero, zero, zero, zero)
    sums = rows[0] if len(rows) == 1 else tuple(map(sum, zip(*rows, strict=True)))
    used = sums[4:_MEM_FIELDS:5]
    if len(rows) == 1:
        procs = tuple(1 if t > 0 else 0 for t in used)
    else:
        procs = tuple(sum(1 for r in rows if r[i] > 0) for i in range(4, _MEM_FIELDS, 5))
    return SlotTotals(
        live_processes=len(rows),
        used=used,
        context=sums[0:_MEM_FIELDS:5],
        module=sums[1:_MEM_FIELDS:5],
        buffer=sums[2:_MEM_FIELDS:5],
        offset=sums[3:_MEM_FIELDS:5],
        sm_util=sums[_MEM_FIELDS:_STATUS],
        device_processes=procs,
    )


def read_slot_totals(data: bytes | memoryview | mmap.mmap, layout: RegionLayout) -> SlotTotals:
    """Only the slots' per-device sums of an already validated region of `layout` (`proc_num` read from it):
    for a reader that knows the header and tail did not change since it last parsed them."""
    (proc_num,) = struct.unpack_from("<i", data, layout.proc_num)
    return _totals(_summary_rows(data, layout, max(0, min(proc_num, SLOTS))))


def parse_region_summary(buf: bytes | bytearray | memoryview | mmap.mmap) -> RegionSummary:
    """Like :func:`parse_region` (same validation, errors and seqlock retry) but keeps only the header, the
    tail and per-device sums over the live slots: one precompiled unpack per slot in use, no slot objects.
    Raises SharedRegionError."""
    data: bytes | memoryview | mmap.mmap = bytes(buf) if isinstance(buf, bytearray) else buf
    layout = _choose_layout(data)
    head = _read_header(data, layout)
    totals = _totals(_summary_rows(data, layout, max(0, min(head.proc_num, SLOTS))))
    return RegionSummary(
        version=layout.version,
        major_version=head.major_version,
        minor_version=head.minor_version,
        initialized_flag=head.initialized_flag,
        sm_init_flag=head.sm_init_flag,
        owner_pid=head.owner_pid,
        device_num=head.device_num,
        uuids=head.uuids,
        limits=head.limits,
        sm_limits=head.sm_limits,
        proc_num=head.proc_num,
        live_processes=totals.live_processes,
        used=totals.used,
        context=totals.context,
        module=totals.module,
        buffer=totals.buffer,
        offset=totals.offset,
        sm_util=totals.sm_util,
        device_processes=totals.device_processes,
        utilization_switch=head.utilization_switch,
        recent_kernel=head.recent_kernel,
        priority=head.priority,
        last_kernel_time=head.last_kernel_time,
        layout=layout,
    )


# ----------------------------------------------------------------------------------------------- encoding


def encode_region(region: SharedRegion, *, trailing_byte: bool = True) -> bytes:
    """Lays ``region`` out in its version's layout (for tests and fixtures).

    ``trailing_byte`` makes the result one byte longer than the layout, as HAMi-core's files are. Slots beyond
    ``procs`` are zero; ``proc_num`` is written as given.
    """
    layout = V1 if region.version is RegionVersion.V1 else V0
    buf = bytearray(layout.size + (1 if trailing_byte else 0))
    struct.pack_into("<i", buf, 0, region.initialized_flag)
    if layout.major_version is not None and layout.minor_version is not None:
        struct.pack_into("<I", buf, layout.major_version, region.major_version)
        struct.pack_into("<I", buf, layout.minor_version, region.minor_version)
    struct.pack_into("<i", buf, layout.sm_init_flag, region.sm_init_flag)
    struct.pack_into("<Q", buf, layout.owner_pid, region.owner_pid)
    struct.pack_into("<Q", buf, layout.device_num, region.device_num)
    for i, uuid in enumerate(region.uuids[:DEVICES]):
        raw = uuid.encode("utf-8")[: UUID_LEN - 1]
        buf[layout.uuids + i * UUID_LEN : layout.uuids + i * UUID_LEN + len(raw)] = raw
    struct.pack_into(f"<{DEVICES}Q", buf, layout.limit, *_pad16(region.limits))
    struct.pack_into(f"<{DEVICES}Q", buf, layout.sm_limit, *_pad16(region.sm_limits))
    s = _SLOT_STRUCTS[layout.version]
    for i, slot in enumerate(region.procs[:SLOTS]):
        s.pack_into(buf, layout.procs + i * layout.slot_size, *_slot_values(layout, slot))
    struct.pack_into("<i", buf, layout.proc_num, region.proc_num)
    struct.pack_into("<i", buf, layout.utilization_switch, region.utilization_switch)
    struct.pack_into("<i", buf, layout.recent_kernel, region.recent_kernel)
    struct.pack_into("<i", buf, layout.priority, region.priority)
    if layout.last_kernel_time is not None:
        struct.pack_into("<q", buf, layout.last_kernel_time, region.last_kernel_time or 0)
    return bytes(buf)


def _pad16(values: tuple[int, ...]) -> tuple[int, ...]:
    return (tuple(values) + _ZERO16)[:DEVICES]


def _slot_values(layout: RegionLayout, slot: ProcSlot) -> list[int]:
    nmem = layout.devmem_size // 8
    nutil = layout.devutil_size // 8
    values: list[int] = [slot.pid, slot.hostpid]
    used = (tuple(slot.used) + _EMPTY_MEM)[:DEVICES]
    for m in used:
        values += [m.context_size, m.module_size, m.data_size, m.offset, m.total] + [0] * (nmem - 5)
    values += list(_pad16(slot.monitorused))
    util = (tuple(slot.device_util) + _EMPTY_UTIL)[:DEVICES]
    for u in util:
        values += [u.dec_util, u.enc_util, u.sm_util] + [0] * (nutil - 3)
    values.append(slot.status)
    if layout.slot_seqlock is not None:
        values.append(slot.seqlock)
    return values
