"""libvgpu memory accounting on the fake driver: limits per device, every allocation family, OOM exactly at
the limit, virtual memory info through the driver API and NVML, contexts, threads, environment contract."""

from __future__ import annotations

import re

import pytest
from libvgpu_harness import MiB, Runner, finish, wait_ready

from services.common.shared_region import read_region

CTX = 64 * MiB  # the fake driver's context footprint (FAKE_CTX_BYTES default)
PHYS = 16 << 30  # the fake GPU's memory (FAKE_GPU_MEM default)


def test_every_allocation_family_is_charged_and_given_back(run: Runner) -> None:
    v = run("families", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert int(v["base"]) == CTX  # the primary context's measured footprint
    expected = {
        "alloc": 1 * MiB,
        "pitch": 1024 * 10,  # the pitch the driver chose x height, not a guess
        "managed": 3 * MiB,
        "async": 6 * MiB,  # the pool's reserve (2 MiB granularity)
        "async_freed_pool_keeps": 6 * MiB,
        "async_trimmed": 0,
        "async_ptsz": 2 * MiB,
        "from_pool": 4 * MiB,
        "pool_destroyed": 0,
        "vmm": 4 * MiB,
        "vmm_released": 0,
        "array2d": 256 * 256 * 16,
        "array3d": 64 * 64 * 64,
        "mipmap": (256 * 256 + 128 * 128 + 64 * 64) * 4,
        "mipmap_destroyed": 0,
        "end": 0,
    }
    for key, value in expected.items():
        assert int(v[key]) == value, key
    # a pointer libvgpu never saw is the driver's business (CUDA_ERROR_INVALID_VALUE)
    assert int(v["free_unknown"]) == 1


@pytest.mark.parametrize("family", ["alloc", "managed", "vmm", "async", "pitch"])
def test_oom_exactly_at_the_limit(run: Runner, family: str) -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "256m", "FAKE_POOL_GRANULARITY": "1"}
    v = run("oom", family, env=env).values
    assert int(v["room"]) == 256 * MiB - CTX
    assert int(v["over"]) == 2  # CUDA_ERROR_OUT_OF_MEMORY for room + 1
    assert int(v["full"]) == 0  # exactly the room fits
    assert int(v["free_after"]) == 0
    assert int(v["one_more"]) == 2


def test_limits_per_device(run: Runner) -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "1g", "CUDA_DEVICE_MEMORY_LIMIT_1": "256m"}
    v = run("info", "2", env=env).values
    assert int(v["dev0.cu_total"]) == 1 << 30
    assert int(v["dev1.cu_total"]) == 256 * MiB
    assert int(v["dev1.total_mem"]) == 256 * MiB
    a = run("alloc", "0:300,1:300,1:100", env=env).values
    assert a["dev0.alloc_300"] == "0"
    assert a["dev1.alloc_300"] == "2"
    assert a["dev1.alloc_100"] == "0"


def test_memory_info_is_virtual_in_the_driver_api_and_nvml(run: Runner) -> None:
    v = run("info", "2", env={"CUDA_DEVICE_MEMORY_LIMIT_0": "512m"}).values
    assert int(v["dev0.cu_total"]) == 512 * MiB
    assert int(v["dev0.cu_free"]) == 512 * MiB - CTX
    assert int(v["dev0.total_mem"]) == 512 * MiB
    for prefix in ("nvml0.", "nvml0.v2_"):
        assert int(v[prefix + "total"]) == 512 * MiB
        assert int(v[prefix + "used"]) == CTX
        assert int(v[prefix + "free"]) == 512 * MiB - CTX
    assert int(v["nvml0.v2_reserved"]) == 0
    # device 1 has no limit: the real figures
    assert int(v["dev1.cu_total"]) == PHYS
    assert int(v["nvml1.total"]) == PHYS
    assert int(v["null_args"]) == 1  # CUDA_ERROR_INVALID_VALUE instead of a crash


def test_total_is_clamped_to_the_gpu_unless_oversubscribed(run: Runner) -> None:
    v = run("info", env={"CUDA_DEVICE_MEMORY_LIMIT": "32g"}).values
    assert int(v["dev0.cu_total"]) == PHYS
    assert int(v["nvml0.total"]) == PHYS
    run.cache.unlink()
    v = run("info", env={"CUDA_DEVICE_MEMORY_LIMIT": "32g", "CUDA_OVERSUBSCRIBE": "true"}).values
    assert int(v["dev0.cu_total"]) == 32 << 30
    assert int(v["nvml0.total"]) == 32 << 30
    assert int(v["nvml0.free"]) == (32 << 30) - CTX


def test_contexts_are_charged_and_their_allocations_given_back(run: Runner) -> None:
    v = run("ctx", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert int(v["primary_base"]) == CTX
    assert int(v["ctx_footprint"]) == CTX  # an explicit context counts too
    assert int(v["ctx_alloc"]) == CTX + 5 * MiB
    assert int(v["ctx_destroyed"]) == 0  # destroying it gives back its footprint and allocations
    assert int(v["primary_again"]) == CTX  # the primary context was released and retained again


def test_concurrent_threads_account_exactly(run: Runner) -> None:
    assert run("threads", "8", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).int("threads_delta") == 0


def test_nvml_index_follows_the_gpu_uuid(run: Runner) -> None:
    """NVML lists the fake GPUs in the other order: CUDA device 0 is NVML index 1, and its limit applies."""
    env = {"FAKE_NVML_ORDER": "1,0", "CUDA_DEVICE_MEMORY_LIMIT_0": "1g", "CUDA_DEVICE_MEMORY_LIMIT_1": "256m"}
    v = run("info", "2", env=env).values
    assert int(v["dev0.cu_total"]) == 256 * MiB
    assert int(v["dev1.cu_total"]) == 1 << 30
    proc = run.spawn("hold", "100", "0", env=env)
    try:
        wait_ready(proc)
        region = read_region(run.cache)
        (slot,) = region.procs
        assert slot.used[1].total == CTX + 100 * MiB
        assert slot.used[0].total == 0
        assert region.uuids[1].endswith("000000000000")  # NVML index 1 is the fake's CUDA device 0
    finally:
        finish([proc])


@pytest.mark.parametrize(
    ("value", "total"),
    [("3000m", 3000 * MiB), ("2g", 2 << 30), ("1048576000", 1048576000), ("0x40000000", 1 << 30)],
)
def test_limit_syntax(run: Runner, value: str, total: int) -> None:
    assert run("info", env={"CUDA_DEVICE_MEMORY_LIMIT": value}).int("dev0.cu_total") == total


def test_malformed_limit_is_reported_and_read_as_hami_core_does(run: Runner) -> None:
    r = run("info", env={"CUDA_DEVICE_MEMORY_LIMIT": "1.5g"})
    assert r.int("dev0.cu_total") == 1 << 30
    assert 'CUDA_DEVICE_MEMORY_LIMIT="1.5g" is not <integer>[k|m|g]' in r.stderr


def test_logs_go_to_stderr_only(run: Runner) -> None:
    r = run("oom", "alloc", env={"CUDA_DEVICE_MEMORY_LIMIT": "256m", "LIBCUDA_LOG_LEVEL": "4"})
    assert all(re.fullmatch(r"[\w.]+=-?\d+", line) for line in r.stdout.splitlines()), r.stdout
    assert "[kube-vgpu WARN(" in r.stderr and "OOM" in r.stderr
    quiet = run("oom", "alloc", env={"CUDA_DEVICE_MEMORY_LIMIT": "256m", "LIBCUDA_LOG_LEVEL": "1"})
    assert "WARN" not in quiet.stderr
