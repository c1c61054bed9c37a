"""Shared region reader/writer: HAMi-core layouts v0 and v1 byte for byte, version choice, validation."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.shared_region import (
    DEVICES,
    MAGIC,
    SLOTS,
    V0,
    V1,
    BadMagicError,
    DeviceMemory,
    DeviceUtil,
    ProcSlot,
    RegionTooSmallError,
    RegionVersion,
    SharedRegion,
    SharedRegionError,
    TruncatedRegionError,
    UnsupportedVersionError,
    encode_region,
    parse_region,
    parse_region_summary,
    read_region,
)

# docs/libvgpu-contract.md#shared-region-layout: (field, offset)
V1_TOP = [
    ("major_version", 4),
    ("minor_version", 8),
    ("sm_init_flag", 12),
    ("owner_pid", 16),
    ("device_num", 56),
    ("uuids", 64),
    ("limit", 1600),
    ("sm_limit", 1728),
    ("procs", 1856),
    ("proc_num", 2_008_896),
    ("utilization_switch", 2_008_900),
    ("recent_kernel", 2_008_904),
    ("priority", 2_008_908),
    ("last_kernel_time", 2_008_912),
]
V1_SLOT = [("slot_used", 8), ("slot_monitorused", 1032), ("slot_device_util", 1160), ("slot_status", 1928)]
V0_TOP = [
    ("sm_init_flag", 4),
    ("owner_pid", 8),
    ("device_num", 48),
    ("uuids", 56),
    ("limit", 1592),
    ("sm_limit", 1720),
    ("procs", 1848),
    ("proc_num", 1_197_880),
    ("utilization_switch", 1_197_884),
    ("recent_kernel", 1_197_888),
    ("priority", 1_197_892),
]
V0_SLOT = [("slot_used", 8), ("slot_monitorused", 648), ("slot_device_util", 776), ("slot_status", 1160)]


@pytest.mark.parametrize(("name", "offset"), V1_TOP + V1_SLOT)
def test_v1_offsets_match_the_spec(name: str, offset: int) -> None:
    assert getattr(V1, name) == offset


@pytest.mark.parametrize(("name", "offset"), V0_TOP + V0_SLOT)
def test_v0_offsets_match_the_spec(name: str, offset: int) -> None:
    assert getattr(V0, name) == offset


def test_sizes_match_the_spec() -> None:
    assert V1.size == 2_008_952
    assert V1.slot_size == 1960
    assert V1.procs + SLOTS * V1.slot_size == V1.proc_num
    assert V1.devmem_size == 64 and V1.devutil_size == 48 and V1.slot_seqlock == 1936
    assert V0.size == 1_197_896
    assert V0.slot_size == 1168
    assert V0.procs + SLOTS * V0.slot_size == V0.proc_num
    assert V0.devmem_size == 40 and V0.devutil_size == 24
    assert len(encode_region(SharedRegion())) == 2_008_953  # HAMi-core's file is one byte longer
    assert len(encode_region(_v0())) == 1_197_897
    assert len(encode_region(SharedRegion(), trailing_byte=False)) == 2_008_952


def _v0(**kw: object) -> SharedRegion:
    base: dict[str, object] = {
        "version": RegionVersion.V0,
        "major_version": 0,
        "minor_version": 0,
        "last_kernel_time": None,
        "layout": V0,
    }
    base.update(kw)
    return SharedRegion(**base)  # type: ignore[arg-type]


def _mem(total: int, data: int = 0, ctx: int = 0) -> tuple[DeviceMemory, ...]:
    return (DeviceMemory(context_size=ctx, data_size=data, total=total),) + (DeviceMemory(),) * (DEVICES - 1)


def test_absolute_offsets_of_slot_fields_in_v1_bytes() -> None:
    util = tuple(DeviceUtil(sm_util=10 + d) for d in range(DEVICES))
    slots = tuple(
        ProcSlot(
            pid=100 + i,
            hostpid=200 + i,
            used=tuple(DeviceMemory(total=(i + 1) * 1000 + d) for d in range(DEVICES)),
            device_util=util,
            status=1,
            seqlock=2 * i,
        )
        for i in range(3)
    )
    raw = encode_region(SharedRegion(procs=slots, proc_num=3, last_kernel_time=1_700_000_000))
    for i in range(3):
        for d in range(DEVICES):
            (total,) = struct.unpack_from("<Q", raw, 1856 + 1960 * i + 40 + 64 * d)
            assert total == (i + 1) * 1000 + d
            (sm,) = struct.unpack_from("<Q", raw, 1856 + 1960 * i + 1176 + 48 * d)
            assert sm == 10 + d
        assert struct.unpack_from("<i", raw, 1856 + 1960 * i + 1928)[0] == 1
        assert struct.unpack_from("<Q", raw, 1856 + 1960 * i + 1936)[0] == 2 * i
        assert struct.unpack_from("<ii", raw, 1856 + 1960 * i) == (100 + i, 200 + i)
    assert struct.unpack_from("<iII", raw, 0) == (MAGIC, 1, 2)
    assert struct.unpack_from("<q", raw, 2_008_912)[0] == 1_700_000_000


def test_the_observed_h100_region_reads_back() -> None:
    """docs/libvgpu-contract.md#process-slots: test_alloc_hold, limit 2g, SM 40, priority 0."""
    uuid = "GPU-4153abfc-1111-2222-3333-444455556666"
    slot = ProcSlot(
        pid=1632,
        hostpid=1632,
        used=_mem(total=1_143_162_368, data=600_000_000, ctx=543_162_368),
        monitorused=(1_147_142_144,) + (0,) * 15,
        status=1,
        seqlock=16,
    )
    region = SharedRegion(
        device_num=1,
        uuids=(uuid,) + ("",) * 15,
        limits=(2_147_483_648,) * DEVICES,
        sm_limits=(40,) * DEVICES,
        proc_num=1,
        procs=(slot,),
        priority=0,
    )
    got = parse_region(encode_region(region))
    assert got == region
    (dev,) = got.devices()
    assert dev.uuid == uuid and dev.monitor_uuid == uuid[:40]
    assert (dev.limit, dev.sm_limit, dev.used, dev.context, dev.buffer) == (
        2_147_483_648,
        40,
        1_143_162_368,
        543_162_368,
        600_000_000,
    )


def test_v0_file_of_1197897_bytes_loads_as_v0() -> None:
    region = _v0(device_num=1, uuids=("GPU-a",) + ("",) * 15, limits=(1 << 30,) + (0,) * 15, proc_num=1,
                 procs=(ProcSlot(pid=7, used=_mem(123)),))  # fmt: skip
    raw = encode_region(region)
    assert len(raw) == 1_197_897
    got = parse_region(raw)
    assert got.version is RegionVersion.V0
    assert got.last_kernel_time is None
    assert got.devices()[0].used == 123
    assert parse_region(raw[:-1]).version is RegionVersion.V0  # exactly sizeof


def test_v1_selected_at_and_above_its_size() -> None:
    raw = encode_region(SharedRegion())
    assert parse_region(raw).version is RegionVersion.V1
    assert parse_region(raw[:-1]).version is RegionVersion.V1
    assert parse_region(raw + b"\0" * 100).version is RegionVersion.V1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", RegionTooSmallError),
        (b"\x4e\x2d\x30\x01\x01\x00", RegionTooSmallError),
        (b"\0" * 4096, BadMagicError),
        (struct.pack("<iII", MAGIC, 1, 2) + b"\0" * 100, TruncatedRegionError),
        (struct.pack("<iII", MAGIC, 0, 0) + b"\0" * 100, TruncatedRegionError),
    ],
)
def test_small_or_foreign_bytes_are_rejected(data: bytes, error: type[SharedRegionError]) -> None:
    with pytest.raises(error):
        parse_region(data)


def test_truncated_v1_is_not_misread_as_v0() -> None:
    raw = encode_region(SharedRegion())
    with pytest.raises(TruncatedRegionError, match="truncated to 1500000 bytes"):
        parse_region(raw[:1_500_000])
    with pytest.raises(TruncatedRegionError):
        parse_region(raw[: V0.size - 1])


def test_unknown_or_interim_versions_are_rejected() -> None:
    with pytest.raises(UnsupportedVersionError, match="major version 2"):
        parse_region(encode_region(SharedRegion(major_version=2)))
    with pytest.raises(UnsupportedVersionError, match=r"1\.1"):
        parse_region(encode_region(SharedRegion(minor_version=1)))
    assert parse_region(encode_region(SharedRegion(minor_version=0))).minor_version == 0


def test_bad_magic_message_is_clear() -> None:
    raw = bytearray(encode_region(SharedRegion()))
    raw[0:4] = struct.pack("<i", 12345)
    with pytest.raises(BadMagicError, match="magic is 12345, expected 19920718"):
        parse_region(raw)


def test_proc_num_is_clamped() -> None:
    slots = tuple(ProcSlot(pid=i + 1) for i in range(3))
    assert len(parse_region(encode_region(SharedRegion(procs=slots, proc_num=-5))).procs) == 0
    many = parse_region(encode_region(SharedRegion(procs=slots, proc_num=5000)))
    assert many.proc_num == 5000
    assert len(many.procs) == SLOTS
    assert [p.pid for p in many.procs[:4]] == [1, 2, 3, 0]


def test_aggregates_skip_exited_slots_and_missing_uuids() -> None:
    uuids = ("GPU-0", "", "GPU-2") + ("",) * 13
    live = ProcSlot(
        pid=1,
        used=tuple(
            DeviceMemory(context_size=1, module_size=2, data_size=3, offset=4, total=10) for _ in range(16)
        ),
        device_util=(DeviceUtil(sm_util=30),) * DEVICES,
        status=1,
    )
    suspended = ProcSlot(pid=2, used=_mem(5, data=5), status=2)
    exited = ProcSlot(pid=3, used=_mem(1000), status=0)
    region = SharedRegion(device_num=20, uuids=uuids, procs=(live, suspended, exited), proc_num=3)
    assert region.device_count == 16
    devs = {d.index: d for d in region.devices()}
    assert sorted(devs) == [0, 2]
    assert (devs[0].used, devs[0].context, devs[0].module, devs[0].buffer, devs[0].offset) == (15, 1, 2, 8, 4)
    assert devs[0].sm_util == 30
    assert devs[0].processes == 2
    assert devs[2].used == 10
    assert len(region.live_procs) == 2


def test_invalid_utf8_uuid_reads_as_empty() -> None:
    raw = bytearray(encode_region(SharedRegion(device_num=2, uuids=("GPU-x", "GPU-y") + ("",) * 14)))
    raw[V1.uuids + 96 : V1.uuids + 98] = b"\xff\xfe"
    got = parse_region(raw)
    assert got.uuids[0] == "GPU-x"
    assert got.uuids[1] == ""
    assert [d.index for d in got.devices()] == [0]


def test_read_region_maps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.cache"
    region = SharedRegion(device_num=1, uuids=("GPU-1",) + ("",) * 15, procs=(ProcSlot(pid=9),), proc_num=1)
    path.write_bytes(encode_region(region))
    assert read_region(path) == region
    (tmp_path / "empty.cache").write_bytes(b"")
    with pytest.raises(RegionTooSmallError):
        read_region(tmp_path / "empty.cache")


# ------------------------------------------------------------------------------------------ round trips

U64 = st.integers(min_value=0, max_value=2**64 - 1)
I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
UUID = st.text(alphabet="0123456789abcdef-GPU", max_size=60)


def _tuple16(elem: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elem, min_size=DEVICES, max_size=DEVICES).map(tuple)


MEM = st.builds(DeviceMemory, U64, U64, U64, U64, U64)
UTIL = st.builds(DeviceUtil, U64, U64, U64)


def _slots(v1: bool) -> st.SearchStrategy[ProcSlot]:
    return st.builds(
        ProcSlot,
        pid=I32,
        hostpid=I32,
        used=_tuple16(MEM),
        monitorused=_tuple16(U64),
        device_util=_tuple16(UTIL),
        status=I32,
        seqlock=U64 if v1 else st.just(0),
    )


@st.composite
def regions(draw: st.DrawFn, v1: bool) -> SharedRegion:
    procs = tuple(draw(st.lists(_slots(v1), max_size=3)))
    return SharedRegion(
        version=RegionVersion.V1 if v1 else RegionVersion.V0,
        major_version=1 if v1 else 0,
        minor_version=draw(st.sampled_from([0, 2, 3])) if v1 else 0,
        sm_init_flag=draw(I32),
        owner_pid=draw(U64),
        device_num=draw(U64),
        uuids=draw(_tuple16(UUID)),  # type: ignore[arg-type]
        limits=draw(_tuple16(U64)),  # type: ignore[arg-type]
        sm_limits=draw(_tuple16(U64)),  # type: ignore[arg-type]
        proc_num=len(procs),
        procs=procs,
        utilization_switch=draw(I32),
        recent_kernel=draw(I32),
        priority=draw(I32),
        last_kernel_time=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)) if v1 else None,
        layout=V1 if v1 else V0,
    )


@settings(max_examples=40, deadline=None)
@given(regions(v1=True))
def test_v1_round_trip(region: SharedRegion) -> None:
    assert parse_region(encode_region(region)) == region


@settings(max_examples=40, deadline=None)
@given(regions(v1=False))
def test_v0_round_trip(region: SharedRegion) -> None:
    assert parse_region(encode_region(region)) == region


@settings(max_examples=30, deadline=None)
@given(regions(v1=True), st.integers(min_value=0, max_value=V1.size - 1))
def test_any_truncation_of_a_v1_file_is_rejected(region: SharedRegion, size: int) -> None:
    raw = encode_region(region)[:size]
    with pytest.raises(SharedRegionError):
        parse_region(raw)


# ------------------------------------------------------------------------------------------ summary read

# Mostly running/suspended/exited slots, sometimes any int32 (every non-zero status is live).
STATUS = st.one_of(st.sampled_from([0, 0, 1, 2]), I32)


@st.composite
def summary_regions(draw: st.DrawFn, v1: bool) -> SharedRegion:
    base = draw(regions(v1))
    slots = draw(
        st.lists(
            _slots(v1).flatmap(lambda s: STATUS.map(lambda status: replace(s, status=status))), max_size=8
        )
    )
    if v1 and draw(st.booleans()):  # even seqlocks: a live mapping reads them on the first try
        slots = [replace(s, seqlock=s.seqlock & ~1) for s in slots]
    proc_num = draw(
        st.one_of(
            st.integers(min_value=-3, max_value=len(slots) + 3),
            st.sampled_from([SLOTS, SLOTS + 1, -(2**31), 2**31 - 1]),
        )
    )
    return replace(base, procs=tuple(slots), proc_num=proc_num)


def _assert_summary_matches(raw: bytes | mmap.mmap, expected: SharedRegion) -> None:
    summary = parse_region_summary(raw)
    assert summary.live_processes == len(expected.live_procs)
    assert summary.devices() == expected.devices()
    assert [summary.usage(i) for i in range(DEVICES)] == [expected.usage(i) for i in range(DEVICES)]
    for name in (
        "version",
        "major_version",
        "minor_version",
        "initialized_flag",
        "sm_init_flag",
        "owner_pid",
        "device_num",
        "device_count",
        "uuids",
        "limits",
        "sm_limits",
        "proc_num",
        "utilization_switch",
        "recent_kernel",
        "priority",
        "last_kernel_time",
    ):
        assert getattr(summary, name) == getattr(expected, name), name
    assert summary.layout is expected.layout


@settings(max_examples=60, deadline=None)
@given(st.booleans().flatmap(summary_regions))
def test_summary_equals_parse_region_aggregates(region: SharedRegion) -> None:
    raw = encode_region(region)
    expected = parse_region(raw)
    _assert_summary_matches(raw, expected)
    _assert_summary_matches(bytearray(raw), expected)  # type: ignore[arg-type]
    # A mapping takes the seqlock path (v1), as the monitor's reads do.
    with mmap.mmap(-1, len(raw)) as m:
        m.write(raw)
        _assert_summary_matches(m, expected)


def test_summary_sums_live_slots_only() -> None:
    region = _v0(
        device_num=2,
        uuids=("GPU-a", "GPU-b") + ("",) * (DEVICES - 2),
        proc_num=4,
        procs=(
            ProcSlot(pid=1, used=_mem(10, data=4, ctx=6), status=1),
            ProcSlot(pid=2, used=_mem(100, data=100), status=0),  # exited
            ProcSlot(pid=3, used=_mem(0), status=2),  # suspended, charged nothing
            ProcSlot(pid=4, used=_mem(5, ctx=5), status=1),
            ProcSlot(pid=5, used=_mem(1000), status=1),  # beyond proc_num
        ),
    )
    summary = parse_region_summary(encode_region(region))
    assert summary.live_processes == 3
    (a, _b) = summary.devices()
    assert (a.used, a.context, a.buffer, a.processes) == (15, 11, 4, 2)
    assert summary.devices() == parse_region(encode_region(region)).devices()


def _error_of(fn: Callable[[bytes], object], raw: bytes) -> tuple[type[BaseException], str] | None:
    try:
        fn(raw)
    except Exception as exc:  # the type and message are compared
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01" * 11,
        struct.pack("<i", 12345) + bytes(V1.size),
        struct.pack("<iII", MAGIC, 1, 2) + bytes(5000),
        struct.pack("<iII", MAGIC, 2, 0) + bytes(V1.size),
        struct.pack("<iII", MAGIC, 1, 1) + bytes(V1.size),
        struct.pack("<iII", MAGIC, 1, 2) + bytes(1_500_000),
        struct.pack("<iII", MAGIC, 0, 0) + bytes(V0.size),
    ],
)
def test_summary_raises_what_parse_region_raises(raw: bytes) -> None:
    assert _error_of(parse_region_summary, raw) == _error_of(parse_region, raw)


@settings(max_examples=30, deadline=None)
@given(st.booleans().flatmap(summary_regions), st.integers(min_value=0, max_value=V1.size))
def test_summary_rejects_truncations_like_parse_region(region: SharedRegion, size: int) -> None:
    raw = encode_region(region)[:size]
    assert _error_of(parse_region_summary, raw) == _error_of(parse_region, raw)
