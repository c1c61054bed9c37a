"""The GPU benchmark: exits cleanly without a GPU; on a GPU (marker `gpu`) it runs and the caps hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from libvgpu_harness import REPO

BENCH = REPO / "bench" / "libvgpu" / "libvgpu_bench.py"
sys.path.insert(0, str(BENCH.parent))
import libvgpu_bench  # noqa: E402

NO_GPU = libvgpu_bench.gpu_present() is not None or libvgpu_bench.nvcc_path() is None


@pytest.mark.skipif(not NO_GPU, reason="a GPU and nvcc are present")
def test_bench_exits_cleanly_without_a_gpu() -> None:
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("libvgpu bench: skipped: ")


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="needs an NVIDIA GPU, its driver and nvcc")
def test_bench_on_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "5", "--limit", "4g", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    mem = figures["mem_driver"]
    assert int(mem["total"]) == 4 << 30
    assert int(mem["allocated"]) <= 4 << 30
    assert int(mem["oom_code"]) == 2
    assert abs(figures["sm_async_30"] - 0.30) < 0.10
    assert abs(figures["sm_async_60"] - 0.60) < 0.10
    assert figures["sm_async_100"] > 0.9
