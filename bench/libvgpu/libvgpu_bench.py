"""libvgpu on a real GPU: memory cap, SM share, launch cost. Prints a table; asserts nothing.

Run: `.venv/bin/python bench/libvgpu/libvgpu_bench.py [--seconds 10] [--limit 4g] [--json out.json]`.
Needs an NVIDIA GPU with its driver and nvcc (CUDA toolkit); PyTorch rows appear when torch with CUDA is
importable. Without a GPU or nvcc it prints why and exits 0.

Rows:
- memory cap (driver API): total and free from cuMemGetInfo under CUDA_DEVICE_MEMORY_LIMIT, and how much a
  loop of 64 MiB cuMemAlloc gets before CUDA_ERROR_OUT_OF_MEMORY;
- memory cap (PyTorch): torch.cuda.mem_get_info and where 64 MiB tensor allocations hit OutOfMemoryError;
- SM share: throughput of a ~2 ms spin kernel covering every SM (async and synchronised loops) and of a bf16
  matmul at CUDA_DEVICE_SM_LIMIT 30/60/100 with GPU_CORE_UTILIZATION_POLICY=force, relative to no library;
- launch cost: microseconds per empty-kernel launch without the library, with it (no limit), and at SM 50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBVGPU = REPO / "libvgpu"
HERE = Path(__file__).resolve().parent

TORCH_MEM = """
import torch
free, total = torch.cuda.mem_get_info()
print(f"total={total}")
print(f"free={free}")
held = []
try:
    while len(held) < 100000:
        held.append(torch.empty(64 << 20, dtype=torch.uint8, device="cuda"))
except torch.OutOfMemoryError:
    pass
print(f"allocated={len(held) * (64 << 20)}")
"""

TORCH_MATMUL = """
import sys, time, torch
secs = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
t0 = time.time(); n = 0
while time.time() - t0 < secs:
    a @ b; n += 1
    if n % 8 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(f"iters_per_s={n / (time.time() - t0):.3f}")
"""


def gpu_present() -> str | None:
    """None when a GPU is usable, else the reason."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi not found (no NVIDIA driver)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"
    if out.returncode != 0 or "GPU 0" not in out.stdout:
        return "no GPU listed by nvidia-smi"
    return None


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        p = Path(cand) / "bin" / "nvcc"
        if cand and p.exists():
            return str(p)
    return None


def parse(out: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("=") for line in out.splitlines()) if _}


class Bench:
    def __init__(self, exe: Path, lib: Path, seconds: float, limit: str, workdir: Path) -> None:
        self.exe, self.lib, self.seconds, self.limit, self.workdir = exe, lib, seconds, limit, workdir
        self.n = 0

    def env(self, preload: bool, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_DEVICE_", "GPU_CORE_"))}
        env.pop("LD_PRELOAD", None)
        if preload:
            self.n += 1
            env["LD_PRELOAD"] = str(self.lib)
            env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(self.workdir / f"bench{self.n}.cache")
        env.update(extra)
        return env

    def run(self, argv: list[str], preload: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        proc = subprocess.run(
            argv, env=self.env(preload, extra or {}), capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{argv}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return parse(proc.stdout)


def torch_ok() -> bool:
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "True"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per SM-share measurement")
    ap.add_argument("--limit", default="4g", help="CUDA_DEVICE_MEMORY_LIMIT for the memory rows")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    reason = gpu_present()
    nvcc = nvcc_path()
    if reason is not None or nvcc is None:
        print(f"libvgpu bench: skipped: {reason or 'nvcc not found (no CUDA toolkit)'}")
        return 0

    build = subprocess.run(["make", "-C", str(LIBVGPU)], capture_output=True, text=True)
    if build.returncode != 0:
        print(build.stdout + build.stderr, file=sys.stderr)
        return 1
    lib = LIBVGPU / "build" / "libvgpu.so"
    work = Path(tempfile.mkdtemp(prefix="libvgpu-bench-"))
    exe = work / "gpu_bench"
    cc = subprocess.run(
        [nvcc, "-O2", "-o", str(exe), str(HERE / "gpu_bench.cu"), "-lcuda"], capture_output=True, text=True
    )
    if cc.returncode != 0:
        print(cc.stdout + cc.stderr, file=sys.stderr)
        return 1
    b = Bench(exe, lib, args.seconds, args.limit, work)
    rows: list[tuple[str, str]] = []
    figures: dict[str, object] = {}

    mem = b.run([str(exe), "mem"], True, {"CUDA_DEVICE_MEMORY_LIMIT": args.limit})
    figures["mem_driver"] = mem
    rows.append(
        (
            f"memory cap {args.limit} (driver API)",
            f"total {int(mem['total']) >> 20} MiB, free {int(mem['free']) >> 20} MiB, "
            f"OOM after {int(mem['allocated']) >> 20} MiB (code {mem['oom_code']})",
        )
    )
    have_torch = torch_ok()
    if have_torch:
        tm = b.run([sys.executable, "-c", TORCH_MEM], True, {"CUDA_DEVICE_MEMORY_LIMIT": args.limit})
        figures["mem_torch"] = tm
        rows.append(
            (
                f"memory cap {args.limit} (PyTorch)",
                f"total {int(tm['total']) >> 20} MiB, free {int(tm['free']) >> 20} MiB, "
                f"OOM after {int(tm['allocated']) >> 20} MiB",
            )
        )

    secs = str(args.seconds)
    for sync in ("0", "1"):
        base = float(b.run([str(exe), "sm", secs, sync], False)["kernels_per_s"])
        label = "sync" if sync == "1" else "async"
        for lim in (30, 60, 100):
            env = {"CUDA_DEVICE_SM_LIMIT": str(lim), "GPU_CORE_UTILIZATION_POLICY": "force"}
            kps = float(b.run([str(exe), "sm", secs, sync], True, env)["kernels_per_s"])
            figures[f"sm_{label}_{lim}"] = kps / base
            rows.append((f"SM {lim}% spin kernel ({label})", f"{100 * kps / base:.1f}% of baseline"))
    if have_torch:
        base = float(b.run([sys.executable, "-c", TORCH_MATMUL, secs], False)["iters_per_s"])
        for lim in (30, 60, 100):
            env = {"CUDA_DEVICE_SM_LIMIT": str(lim), "GPU_CORE_UTILIZATION_POLICY": "force"}
            ips = float(b.run([sys.executable, "-c", TORCH_MATMUL, secs], True, env)["iters_per_s"])
            figures[f"matmul_{lim}"] = ips / base
            rows.append((f"SM {lim}% PyTorch bf16 matmul", f"{100 * ips / base:.1f}% of baseline"))

    n = "200000"
    native = float(b.run([str(exe), "launch", n], False)["launch_us"])
    hooked = float(b.run([str(exe), "launch", n], True)["launch_us"])
    limited = float(
        b.run(
            [str(exe), "launch", n],
            True,
            {"CUDA_DEVICE_SM_LIMIT": "50", "GPU_CORE_UTILIZATION_POLICY": "force"},
        )["launch_us"]
    )
    figures["launch_us"] = {"native": native, "libvgpu": hooked, "libvgpu_sm50": limited}
    rows.append(
        (
            "launch cost (empty kernel)",
            f"{native:.2f} us native, {hooked:.2f} us libvgpu, {limited:.2f} us SM 50",
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'libvgpu on GPU':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
