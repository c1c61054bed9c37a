"""RegionStore: discovery, validation before mapping, read-only maps, no leaks, error counting."""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import shared_region as sr
from services.monitor import codec
from services.monitor.regions import (
    REASON_NOT_REGULAR,
    REASON_TOO_MANY_FILES,
    REASON_TOO_MANY_REGIONS,
    RegionStore,
    parse_dir_name,
)
from sim.regions import MIB, ProcUse, make_region, rewrite_in_place, write_cache

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
UID = "0f8e2a52-6a3c-4c1e-9a55-3f0f1d2c4b7e"


def uid(*n: int) -> str:
    return "00000000-0000-4000-8000-" + "".join(f"{i:03d}" for i in n).rjust(12, "0")


def maps_under(root: Path) -> list[str]:
    """Lines of /proc/self/maps for files under `root` (this process's mappings of our caches)."""
    text = Path("/proc/self/maps").read_text()
    return [line for line in text.splitlines() if str(root) in line]


class Errors(Counter[str]):
    """The store's error sink: counts reasons."""

    def __call__(self, reason: str) -> None:
        self[reason] += 1


@pytest.fixture
def errors() -> Errors:
    return Errors()


@pytest.fixture
def store(tmp_path: Path, errors: Errors) -> Iterator[RegionStore]:
    containers = tmp_path / "containers"
    containers.mkdir()
    s = RegionStore(containers, max_open=64, on_error=errors)
    yield s
    s.close()


def two_procs(version: sr.RegionVersion = sr.RegionVersion.V1) -> sr.SharedRegion:
    return make_region(
        [GPU_A, GPU_B],
        limits=[2048 * MIB, 1024 * MIB],
        sm_limits=[40, 40],
        procs=[
            ProcUse(pid=11, context=[100, 0], module=[10, 0], buffer=[1000, 7], sm_util=[20, 1]),
            ProcUse(pid=12, context=[100], buffer=[500], sm_util=[15]),
            ProcUse(pid=13, context=[999], buffer=[999], sm_util=[99], status=0),  # exited: skipped
        ],
        priority=0,
        recent_kernel=2,
        utilization_switch=1,
        last_kernel_time=1_700_000_000,
        version=version,
    )


@pytest.mark.parametrize("version", [sr.RegionVersion.V1, sr.RegionVersion.V0])
def test_reads_v1_and_v0_regions(store: RegionStore, version: sr.RegionVersion) -> None:
    write_cache(store.containers_dir, UID, "main", two_procs(version))
    report = store.scan()
    assert report.opened == [f"{UID}_main"] and report.mapped == 1
    reading = store.read(f"{UID}_main")
    assert reading is not None
    assert reading.version == version.value
    a, b = reading.devices
    assert (a.index, a.uuid, a.limit_bytes, a.sm_limit) == (0, GPU_A, 2048 * MIB, 40)
    assert (a.used_bytes, a.context_bytes, a.module_bytes, a.buffer_bytes) == (1710, 200, 10, 1500)
    assert a.sm_util == 35
    assert (b.uuid, b.used_bytes, b.sm_util) == (GPU_B, 7, 1)
    assert (reading.priority, reading.recent_kernel, reading.utilization_switch) == (0, 2, 1)
    assert reading.last_kernel_time == (1_700_000_000 if version is sr.RegionVersion.V1 else 0)
    assert reading.processes == 2


def test_only_pod_container_dirs_are_considered(store: RegionStore) -> None:
    root = store.containers_dir
    for name in ("notadir_main", ".staging_main", "lost+found", f"{UID}_Bad_Name", f"{UID}"):
        (root / name).mkdir()
    (root / f"{UID}_file").write_text("x")
    (root / f"{UID}_link").symlink_to(root / "lost+found")
    write_cache(root, UID, "main", two_procs())
    store.scan()
    assert [d.name for d in store.dirs()] == [f"{UID}_main"]
    assert parse_dir_name(f"{UID}_main") == (UID, "main")
    assert parse_dir_name(f"{UID}_b_c") is None  # container names have no '_'
    assert parse_dir_name(f"{UID}_") is None
    assert parse_dir_name("notauid_main") is None
    assert parse_dir_name("0f8e2a526a3c4c1e9a553f0f1d2c4b7e_main") == (
        "0f8e2a526a3c4c1e9a553f0f1d2c4b7e",
        "main",
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", codec.REASON_TOO_SMALL),
        (b"\x01\x02\x03", codec.REASON_TOO_SMALL),
        (struct.pack("<iII", sr.MAGIC, 1, 2) + b"\0" * 5000, codec.REASON_TRUNCATED),
        (b"PK\x03\x04" + b"\0" * sr.V1.size, codec.REASON_BAD_MAGIC),
        (sr.encode_region(make_region([GPU_A]))[: sr.V1.size - 100], codec.REASON_TRUNCATED),
        (sr.encode_region(make_region([GPU_A]))[:-1][:4] + struct.pack("<II", 7, 0), None),
    ],
    ids=["empty", "tiny", "header-only", "foreign", "truncated-v1", "short-foreign-version"],
)
def test_bad_files_are_skipped_counted_once_and_never_mapped(
    store: RegionStore, errors: Errors, data: bytes, reason: str | None
) -> None:
    write_cache(store.containers_dir, UID, "main", data)
    for _ in range(3):
        report = store.scan()
        assert report.mapped == 0
    assert store.read(f"{UID}_main") is None
    assert sum(errors.values()) == 1
    if reason is not None:
        assert errors[reason] == 1
    assert maps_under(store.containers_dir) == []


def test_unsupported_major_and_interim_versions(store: RegionStore, errors: Errors) -> None:
    bad_major = bytearray(sr.encode_region(make_region([GPU_A])))
    struct.pack_into("<I", bad_major, 4, 2)
    interim = bytearray(sr.encode_region(make_region([GPU_A])))
    struct.pack_into("<I", interim, 8, 1)
    write_cache(store.containers_dir, UID, "one", bytes(bad_major))
    write_cache(store.containers_dir, UID, "two", bytes(interim))
    store.scan()
    assert errors == Counter({codec.REASON_UNSUPPORTED_VERSION: 2})


def test_a_fixed_file_is_picked_up_and_a_new_bad_version_counted_again(
    store: RegionStore, errors: Errors
) -> None:
    path = write_cache(store.containers_dir, UID, "main", b"garbage" * 10)
    store.scan()
    write_cache(store.containers_dir, UID, "main", two_procs())
    assert store.scan().opened == [f"{UID}_main"]
    path.unlink()
    write_cache(store.containers_dir, UID, "main", b"other garbage" * 10)
    assert store.read(f"{UID}_main") is None  # the next read notices the file was replaced
    store.scan()
    assert errors[codec.REASON_BAD_MAGIC] == 2


def test_a_just_created_uninitialised_cache_is_waited_for(store: RegionStore, errors: Errors) -> None:
    path = write_cache(store.containers_dir, UID, "main", bytes(sr.V1.size + 1))
    assert store.scan().mapped == 0
    assert not errors
    rewrite_in_place(path, two_procs())
    assert store.scan().mapped == 1
    # Still zero long after its last change: reported as what it is.
    path2 = write_cache(store.containers_dir, UID, "side", bytes(sr.V1.size + 1))
    os.utime(path2, (1_000_000, 1_000_000))
    store.scan()
    assert errors == Counter({codec.REASON_BAD_MAGIC: 1})


def test_too_many_cache_files_in_one_dir(store: RegionStore, errors: Errors) -> None:
    for name in ("a.cache", "b.cache", "libvgpu.so.1"):
        write_cache(store.containers_dir, UID, "main", two_procs(), name=name)
    store.scan()
    assert errors == Counter({REASON_TOO_MANY_FILES: 1})
    assert store.open_count() == 0


def test_first_cache_by_name_is_used_and_libvgpu_may_sit_beside_it(store: RegionStore) -> None:
    write_cache(store.containers_dir, UID, "main", make_region([GPU_B]), name="b.cache")
    write_cache(store.containers_dir, UID, "main", make_region([GPU_A]), name="a.cache")
    store.scan()
    reading = store.read(f"{UID}_main")
    assert reading is not None and reading.devices[0].uuid == GPU_A


def test_symlinks_and_fifos_are_never_opened(store: RegionStore, errors: Errors, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.cache"
    target.write_bytes(sr.encode_region(two_procs()))
    d = store.containers_dir / f"{UID}_link"
    d.mkdir()
    (d / "x.cache").symlink_to(target)
    f = store.containers_dir / f"{UID}_fifo"
    f.mkdir()
    os.mkfifo(f / "x.cache")
    store.scan()  # a FIFO opened without O_NONBLOCK would hang here
    assert store.open_count() == 0
    assert errors == Counter({REASON_NOT_REGULAR: 2})


def test_maps_are_read_only_and_bounded(tmp_path: Path, errors: Errors) -> None:
    containers = tmp_path / "containers"
    store = RegionStore(containers, max_open=3, on_error=errors)
    try:
        for i in range(5):
            write_cache(containers, uid(i), "main", two_procs())
        store.scan()
        assert store.open_count() == 3
        assert errors == Counter({REASON_TOO_MANY_REGIONS: 2})
        lines = maps_under(containers)
        assert len(lines) == 3
        assert all(line.split()[1] == "r--s" for line in lines)
        store.remove_dir(f"{uid(0)}_main")
        store.scan()
        assert store.open_count() == 3  # a freed place goes to a waiting cache
        assert errors[REASON_TOO_MANY_REGIONS] == 2  # the still-waiting one is not counted twice
    finally:
        store.close()
    assert maps_under(containers) == []


def test_no_mapping_leaks_across_churn(store: RegionStore) -> None:
    root = store.containers_dir
    before = len(maps_under(root))
    for round_ in range(6):
        for i in range(30):
            write_cache(root, uid(round_, i), "main", two_procs())
        store.scan()
        assert store.open_count() == 30
        for i in range(30):
            path = root / f"{uid(round_, i)}_main"
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
    store.scan()
    assert store.open_count() == 0
    assert len(maps_under(root)) == before == 0


def test_in_place_updates_are_seen(store: RegionStore) -> None:
    path = write_cache(
        store.containers_dir, UID, "main", make_region([GPU_A], procs=[ProcUse(1, buffer=[5])])
    )
    store.scan()
    first = store.read(f"{UID}_main")
    assert first is not None and first.devices[0].used_bytes == 5
    assert store.read(f"{UID}_main") is first  # unchanged bytes: not decoded again
    rewrite_in_place(path, make_region([GPU_A], procs=[ProcUse(1, buffer=[9])]))
    second = store.read(f"{UID}_main")
    assert second is not None and second.devices[0].used_bytes == 9


def test_a_cache_truncated_under_the_reader_is_dropped_not_read(store: RegionStore, errors: Errors) -> None:
    path = write_cache(store.containers_dir, UID, "main", two_procs())
    store.scan()
    with open(path, "r+b") as fh:
        fh.truncate(4096)  # reading the old mapping past this point would be SIGBUS
    assert store.read(f"{UID}_main") is None
    assert store.open_count() == 0
    store.scan()
    assert errors == Counter({codec.REASON_TRUNCATED: 1})
    assert maps_under(store.containers_dir) == []


def test_replaced_file_is_remapped(store: RegionStore) -> None:
    write_cache(store.containers_dir, UID, "main", make_region([GPU_A]))
    store.scan()
    write_cache(store.containers_dir, UID, "main", make_region([GPU_B]))  # new inode, same name
    assert store.read(f"{UID}_main") is None
    report = store.scan()
    assert report.opened == [f"{UID}_main"]
    reading = store.read(f"{UID}_main")
    assert reading is not None and reading.devices[0].uuid == GPU_B


def test_feedback_write_changes_only_that_field(store: RegionStore) -> None:
    path = write_cache(store.containers_dir, UID, "main", two_procs())
    store.scan()
    before = path.read_bytes()
    assert store.write_int32(f"{UID}_main", codec.RECENT_KERNEL, -1)
    assert store.write_int32(f"{UID}_main", codec.UTILIZATION_SWITCH, 0)
    after = path.read_bytes()
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed
    assert all(sr.V1.utilization_switch <= i < sr.V1.recent_kernel + 4 for i in changed)
    reading = store.read(f"{UID}_main")
    assert reading is not None and (reading.recent_kernel, reading.utilization_switch) == (-1, 0)
    assert all(line.split()[1] == "r--s" for line in maps_under(store.containers_dir))
    with pytest.raises(ValueError, match="never writes"):
        store.write_int32(f"{UID}_main", "priority", 0)
    assert not store.write_int32(f"{uid(9)}_main", codec.RECENT_KERNEL, 0)


def test_v0_feedback_fields(store: RegionStore) -> None:
    write_cache(store.containers_dir, UID, "main", two_procs(sr.RegionVersion.V0))
    store.scan()
    assert store.write_int32(f"{UID}_main", codec.RECENT_KERNEL, 1)
    reading = store.read(f"{UID}_main")
    assert reading is not None and reading.recent_kernel == 1 and reading.priority == 0


def test_remove_dir_only_removes_matching_real_dirs(store: RegionStore, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (store.containers_dir / f"{UID}_link").symlink_to(outside)
    write_cache(store.containers_dir, UID, "main", two_procs())
    store.scan()
    with pytest.raises(ValueError):
        store.remove_dir("../precious")
    assert not store.remove_dir(f"{UID}_link")
    assert (outside / "keep").exists()
    assert store.remove_dir(f"{UID}_main")
    assert not (store.containers_dir / f"{UID}_main").exists()
    assert maps_under(store.containers_dir) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, sr.V1.size + 1),
    flips=st.lists(st.tuples(st.integers(0, sr.V1.size), st.integers(0, 255)), max_size=8),
    proc_num=st.integers(-5, 5000),
)
def test_fuzzed_and_truncated_caches_never_crash(
    store: RegionStore, cut: int, flips: list[tuple[int, int]], proc_num: int
) -> None:
    data = bytearray(sr.encode_region(make_region([GPU_A, GPU_B], procs=[ProcUse(1, buffer=[5, 6])])))
    struct.pack_into("<i", data, sr.V1.proc_num, proc_num)
    for offset, value in flips:
        data[offset] = value
    write_cache(store.containers_dir, UID, "main", bytes(data[:cut]))
    store.scan()
    reading = store.read(f"{UID}_main")
    if reading is not None:
        assert len(reading.devices) <= sr.DEVICES
    store.remove_dir(f"{UID}_main")
    assert maps_under(store.containers_dir) == []
