"""The shared region as the C library writes it, read back with services.common.shared_region, and several
processes sharing one container limit (one killed with SIGKILL, its usage reclaimed)."""

from __future__ import annotations

import os
import signal
import struct
import time

from libvgpu_harness import MiB, Runner, finish, wait_ready

from services.common.shared_region import V1, RegionVersion, read_region

CTX = 64 * MiB


def test_library_writes_the_v1_layout_that_the_python_reader_reads(run: Runner) -> None:
    env = {
        "CUDA_DEVICE_MEMORY_LIMIT": "2g",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "1g",
        "CUDA_DEVICE_SM_LIMIT": "40",
        "CUDA_TASK_PRIORITY": "0",
    }
    before = int(time.time())
    proc = run.spawn("region", "10", "20", env=env)
    try:
        ready = wait_ready(proc)
        assert run.cache.stat().st_size == V1.size + 1
        region = read_region(run.cache)
        assert region.version is RegionVersion.V1
        assert (region.major_version, region.minor_version) == (1, 2)
        assert region.device_num == 2
        assert region.uuids[:2] == (
            "GPU-fa4e6b00-0000-0000-0000-000000000000",
            "GPU-fa4e6b00-0000-0000-0000-000000000001",
        )
        assert region.limits[0] == 2 << 30 and region.limits[1] == 1 << 30 and region.limits[15] == 2 << 30
        assert region.sm_limits[0] == 40
        assert (region.utilization_switch, region.recent_kernel, region.priority) == (1, 2, 0)
        assert region.last_kernel_time is not None and region.last_kernel_time >= before
        (slot,) = region.procs
        assert slot.pid == int(ready["pid"]) == proc.pid
        assert slot.status == 1
        assert slot.seqlock % 2 == 0 and slot.seqlock > 0
        assert (slot.used[0].context_size, slot.used[0].data_size, slot.used[0].total) == (
            CTX,
            10 * MiB,
            CTX + 10 * MiB,
        )
        assert slot.used[1].total == CTX + 20 * MiB
        devs = region.devices()
        assert [d.used for d in devs] == [CTX + 10 * MiB, CTX + 20 * MiB]
        assert [d.buffer for d in devs] == [10 * MiB, 20 * MiB]
        assert all(d.processes == 1 for d in devs)

        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("free\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "freed"
        (slot,) = read_region(run.cache).procs
        assert slot.used[0].data_size == 0 and slot.used[0].total == CTX
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert read_region(run.cache).proc_num == 0  # exit removes the slot
    finally:
        finish([proc])


def test_processes_share_the_container_limit_and_a_killed_one_is_reclaimed(run: Runner) -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "512m"}
    holders = [run.spawn("hold", "100", env=env) for _ in range(3)]
    try:
        pids = [int(wait_ready(p)["pid"]) for p in holders]
        region = read_region(run.cache)
        assert sorted(s.pid for s in region.procs) == sorted(pids)
        assert region.devices()[0].used == 3 * (CTX + 100 * MiB)  # 492 MiB of 512

        # A fourth process does not fit: 492 + its context + 50 MiB > 512.
        assert run("alloc", "0:50", env=env).values["dev0.alloc_50"] == "2"

        os.kill(pids[0], signal.SIGKILL)
        holders[0].wait(timeout=10)
        assert len(read_region(run.cache).procs) == 3  # the dead slot is still there...
        # ...until the next allocation that would not fit reclaims it.
        assert run("alloc", "0:50", env=env).values["dev0.alloc_50"] == "0"
        region = read_region(run.cache)
        assert sorted(s.pid for s in region.procs) == sorted(pids[1:])
        assert region.devices()[0].used == 2 * (CTX + 100 * MiB)

        # A process that exits without freeing gives its memory back at exit.
        assert holders[1].stdin is not None
        holders[1].stdin.close()
        assert holders[1].wait(timeout=10) == 0
        region = read_region(run.cache)
        assert [s.pid for s in region.procs] == [pids[2]]
        assert region.devices()[0].used == CTX + 100 * MiB
    finally:
        finish(holders)


def test_a_region_written_by_python_is_used_by_the_library(run: Runner) -> None:
    """The first creator's limits win: a file made by the writer (as by another process) sets the limit."""
    from services.common.shared_region import SharedRegion, encode_region

    run.cache.write_bytes(encode_region(SharedRegion(limits=(300 * MiB,) * 16, sm_limits=(100,) * 16)))
    v = run("info", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert int(v["dev0.cu_total"]) == 300 * MiB
    raw = run.cache.read_bytes()
    assert struct.unpack_from("<i", raw, V1.proc_num)[0] == 0
