"""codec.decode reads, through shared_region's summary, what the full parse_region would give."""

from __future__ import annotations

import mmap
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import shared_region as sr
from services.monitor import codec
from sim.regions import ProcUse, make_region


def _reference(raw: bytes) -> codec.RegionReading:
    """The reading as decode built it from parse_region before the summary read."""
    region = sr.parse_region(raw)
    return codec.RegionReading(
        version=region.version.value,
        devices=tuple(
            codec.DeviceReading(
                index=d.index,
                uuid=d.monitor_uuid,
                limit_bytes=d.limit,
                sm_limit=d.sm_limit,
                used_bytes=d.used,
                context_bytes=d.context,
                module_bytes=d.module,
                buffer_bytes=d.buffer,
                sm_util=d.sm_util,
            )
            for d in region.devices()
        ),
        priority=region.priority,
        recent_kernel=region.recent_kernel,
        utilization_switch=region.utilization_switch,
        last_kernel_time=region.last_kernel_time or 0,
        processes=len(region.live_procs),
    )


U64 = st.integers(min_value=0, max_value=2**64 - 1)
I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def _16(elem: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elem, min_size=sr.DEVICES, max_size=sr.DEVICES).map(tuple)


def _slot(v1: bool) -> st.SearchStrategy[sr.ProcSlot]:
    return st.builds(
        sr.ProcSlot,
        pid=I32,
        used=_16(st.builds(sr.DeviceMemory, U64, U64, U64, U64, U64)),
        device_util=_16(st.builds(sr.DeviceUtil, U64, U64, U64)),
        status=st.one_of(st.sampled_from([0, 1, 2]), I32),
        seqlock=st.integers(min_value=0, max_value=2**32).map(lambda n: 2 * n) if v1 else st.just(0),
    )


@st.composite
def summary_regions(draw: st.DrawFn, v1: bool) -> sr.SharedRegion:
    slots = tuple(draw(st.lists(_slot(v1), max_size=6)))
    return sr.SharedRegion(
        version=sr.RegionVersion.V1 if v1 else sr.RegionVersion.V0,
        major_version=1 if v1 else 0,
        minor_version=2 if v1 else 0,
        limits=draw(_16(U64)),  # type: ignore[arg-type]
        sm_limits=draw(_16(U64)),  # type: ignore[arg-type]
        proc_num=draw(st.integers(min_value=-2, max_value=len(slots) + 2)),
        procs=slots,
        utilization_switch=draw(I32),
        recent_kernel=draw(I32),
        priority=draw(I32),
        last_kernel_time=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)) if v1 else None,
        layout=sr.V1 if v1 else sr.V0,
    )


UUIDS = st.lists(
    st.text(alphabet="0123456789abcdef-GPU", min_size=0, max_size=60),
    min_size=sr.DEVICES,
    max_size=sr.DEVICES,
).map(tuple)


@settings(max_examples=40, deadline=None)
@given(st.booleans().flatmap(summary_regions), st.integers(min_value=0, max_value=20), UUIDS)
def test_decode_matches_parse_region(
    region: sr.SharedRegion, device_num: int, uuids: tuple[str, ...]
) -> None:
    region = replace(region, device_num=device_num, uuids=uuids)  # devices the monitor reports
    raw = sr.encode_region(region)
    with mmap.mmap(-1, codec.map_length(len(raw))) as view:
        view.write(raw[: len(view)])
        reading, layout = codec.decode(view)
    assert reading == _reference(raw)
    assert layout is region.layout


@pytest.mark.parametrize("version", [sr.RegionVersion.V0, sr.RegionVersion.V1])
def test_redecode_slots_matches_decode(tmp_path: Path, version: sr.RegionVersion) -> None:
    """The scrape's fast path (header and tail unchanged, slots changed) gives decode's reading."""
    rng = random.Random(7)
    gpus = ["GPU-aaaaaaaa-1111-2222-3333-444444444444", "", "GPU-bbbbbbbb-1111-2222-3333-444444444444"]

    def region(nprocs: int) -> bytes:
        procs = [
            ProcUse(
                100 + p,
                context=[rng.randint(0, 9999) for _ in gpus],
                module=[rng.randint(0, 99) for _ in gpus],
                buffer=[rng.randint(0, 99999) for _ in gpus],
                sm_util=[rng.randint(0, 100) for _ in gpus],
                status=rng.choice([0, 1, 1]),
            )
            for p in range(nprocs)
        ]
        made = make_region(
            gpus, limits=[5, 6, 7], sm_limits=[30, 0, 50], procs=procs, version=version, last_kernel_time=1234
        )
        return sr.encode_region(replace(made, proc_num=3))

    path = tmp_path / "r.cache"
    path.write_bytes(region(3))
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as view:
        first, layout = codec.decode(view)
        for nprocs in (0, 1, 2, 3, 3):
            view[:] = region(nprocs)
            assert codec.redecode_slots(view, layout, first) == codec.decode(view)[0]
