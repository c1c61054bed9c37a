"""The fake driver itself (no libvgpu): several processes on one simulated GPU behave as on a real one.

Time-slicing between processes, events that include other processes' slices, the capture-mode rules with the
driver's error codes, NVML's host-PID process list and per-process utilisation samples, pools trimmed at
synchronisation, and the real CUDA runtime (libcudart from the nvidia-cuda-runtime-cu12 wheel) loading
through libvgpu and the fake as far as cuGetExportTable.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from libvgpu_harness import BUILD, Agent, MiB, Runner, finish

CTX = 64 * MiB
CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.9.79"  # the runtime fk_api_names.inc was checked against


def _share(run: Runner, seconds: float, results: list[float], env: dict[str, str] | None = None) -> None:
    r = run("sm", "async", "kernel", str(seconds), "800", "stream", env=env, preload=False)
    results.append(r.float("share"))


def test_processes_are_time_sliced_on_one_device(run: Runner) -> None:
    results: list[float] = []
    threads = [threading.Thread(target=_share, args=(run, 1.0, results)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    # Two saturating processes: each holds the engine half of the time, never both at once.
    assert all(abs(r - 0.5) <= 0.05 for r in results), results


def test_event_timing_includes_other_processes_slices(run: Runner) -> None:
    prog = run.built.scenario_share
    alone = run("evtime", "20", "800", program=prog, preload=False).values
    assert float(alone["elapsed_ms"]) == pytest.approx(20.0, abs=0.1)
    assert float(alone["own_kernel_ms"]) == 20.0
    neighbour = run.spawn("sm", "async", "kernel", "1.5", "800", "stream", env={"LD_PRELOAD": ""})
    try:
        time.sleep(0.3)
        shared = run("evtime", "20", "800", program=prog, preload=False).values
    finally:
        finish([neighbour])
    assert float(shared["own_kernel_ms"]) == 20.0  # the process's own kernel time does not change...
    assert float(shared["elapsed_ms"]) >= 35.0  # ...but its events also span the neighbour's slices


def test_capture_modes_follow_the_driver_rules(run: Runner) -> None:
    v = run("capture_rules", program=run.built.scenario_share, preload=False).values
    unsupported, invalidated = 900, 901
    for capture in ("global", "thread_local", "relaxed"):
        for thread in ("global", "thread_local", "relaxed"):
            prefix = f"{capture}_capture.{thread}_thread."
            refused = capture == "global" and thread == "global"
            assert int(v[prefix + "query"]) == (unsupported if refused else 0), prefix
            assert int(v[prefix + "launch"]) == 0, prefix  # launching on another stream is always legal
            assert int(v[prefix + "end"]) == (invalidated if refused else 0), prefix
        own = f"{capture}_capture.own_thread."
        assert int(v[own + "alloc"]) == (0 if capture == "relaxed" else unsupported)
        assert int(v[own + "end"]) == (0 if capture == "relaxed" else invalidated)
    assert int(v["sync_capturing_stream"]) == unsupported
    assert int(v["sync_capturing_stream.end"]) == invalidated
    assert int(v["legacy_is_capturing"]) == 906  # CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
    assert int(v["legacy_launch"]) == 906
    assert int(v["legacy_launch.end"]) == invalidated
    assert int(v["captured_event_query"]) == 907  # CUDA_ERROR_CAPTURED_EVENT
    assert int(v["captured_event.end"]) == 0
    assert int(v["unjoined.end"]) == 904  # CUDA_ERROR_STREAM_CAPTURE_UNJOINED
    assert int(v["joined.end"]) == 0
    assert int(v["isolation"]) == 905  # CUDA_ERROR_STREAM_CAPTURE_ISOLATION
    assert int(v["isolation.end"]) == invalidated


def test_nvml_reports_host_pids_of_every_container_and_their_memory(run: Runner) -> None:
    a = Agent(run.container("a"), env={"FAKE_NVML_PID_OFFSET": "100000", "LD_PRELOAD": ""})
    b = Agent(run.container("b"), env={"FAKE_NVML_PID_OFFSET": "200000", "LD_PRELOAD": ""})
    try:
        a("retain")
        assert a("alloc 100")["alloc"] == "0"
        b("retain")
        assert int(a("stats")["host_pid"]) == a.pid + 100000
        env = {"FAKE_NVML_PID_OFFSET": "300000"}
        v = run.container("c")("nvml", program=run.built.scenario_share, env=env, preload=False).values
        assert int(v["procs"]) == 2  # the observer has no context: it is not listed
        assert int(v[f"used.{a.pid + 100000}"]) == CTX + 100 * MiB
        assert int(v[f"used.{b.pid + 200000}"]) == CTX
    finally:
        a.close()
        b.close()
    v = run("nvml", program=run.built.scenario_share, preload=False).values
    assert int(v["procs"]) == 0  # both are gone: the driver forgot them


def test_nvml_process_utilisation_is_each_process_share_of_the_timeline(run: Runner) -> None:
    env = {"FAKE_NVML_PID_OFFSET": "5000"}
    procs = [
        run.spawn("sm", "async", "kernel", "1.2", "800", "stream", env={**env, "LD_PRELOAD": ""})
        for _ in range(2)
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        finish(procs)
    v = run("nvml", program=run.built.scenario_share, preload=False).values
    utils = {k: [int(x) for x in val.split(",")] for k, val in v.items() if k.startswith("util.")}
    assert len(utils) == 2, v
    assert all(int(k.split(".")[1]) > 5000 for k in utils)  # host PIDs
    for samples in utils.values():
        assert len(samples) >= 8  # one per 100 ms period
        assert abs(statistics.median(samples) - 50) <= 5, samples  # time-sliced: half each
    assert int(v["newer_than_newest"]) == 6  # NVML_ERROR_NOT_FOUND


def test_pools_are_trimmed_at_synchronisation(run: Runner) -> None:
    a = Agent(run, env={"LD_PRELOAD": ""})
    try:
        a("retain")
        assert a("async 100")["async"] == "0"
        a("async_free")
        assert int(a("stats")["mem_used"]) == CTX + 100 * MiB  # the pool keeps its reserve after the free
        a("sync")
        assert int(a("stats")["mem_used"]) == CTX  # released by the synchronisation (threshold 0)
    finally:
        a.close()


def _cudart(tmp: Path) -> Path:
    """libcudart.so.12 from the wheel, downloaded once into a cache (skips when PyPI cannot be reached)."""
    cache = Path(tempfile.gettempdir()) / "kube-vgpu-cudart-12.9.79"
    lib = cache / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12"
    if lib.exists():
        return lib
    dl = tmp / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", CUDART_WHEEL, "--no-deps", "-d", str(dl)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot download {CUDART_WHEEL} (offline?): {proc.stderr.strip()[-300:]}")
    (wheel,) = dl.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(cache)
    assert lib.exists(), sorted(str(p) for p in cache.rglob("*.so*"))
    return lib


def test_real_cuda_runtime_loads_through_libvgpu_up_to_the_export_table(run: Runner, tmp_path: Path) -> None:
    lib = _cudart(tmp_path)
    log = tmp_path / "procaddr.log"
    env = {
        "FAKE_PROCADDR_LOG": str(log),
        "LD_LIBRARY_PATH": str(BUILD / "fake"),  # the runtime dlopens libcuda.so.1: the fake
        "CUDA_DEVICE_MEMORY_LIMIT": "1g",
    }
    v = run("cudart", str(lib), program=run.built.scenario_share, env=env).values
    assert v["runtime_version"] == "12090" and v["driver_version"] == "13000"
    assert v["runtime_sees_cuGetProcAddress"] == "libvgpu"  # the runtime's driver entry goes through us
    requests = [line.split() for line in log.read_text().splitlines()]
    asked = [r for r in requests if r[0] not in ("-", "cuGetExportTable")]
    assert len({r[0] for r in asked}) >= 300  # the runtime's whole driver table
    failed = [r for r in asked if r[3] != "0"]
    assert not failed, failed  # every name at every version it asks for exists in the (fake) driver
    assert any(r[0] == "cuGetExportTable" for r in requests)  # got that far: the fake has no private tables
    assert int(v["device_count_rc"]) != 0
