"""libvgpu on a real GPU: memory cap, SM share, launch cost. Prints a table; asserts nothing.

Run: `.venv/bin/python bench/libvgpu/libvgpu_bench.py [--seconds 10] [--limit 4g] [--json out.json]`.
Needs an NVIDIA GPU with its driver and nvcc (CUDA toolkit); PyTorch rows appear when torch with CUDA is
importable. Without a GPU or nvcc it prints why and exits 0.

Rows:
- memory cap (driver API): total and free from cuMemGetInfo under CUDA_DEVICE_MEMORY_LIMIT, and how much a
  loop of 64 MiB cuMemAlloc gets before CUDA_ERROR_OUT_OF_MEMORY;
- memory cap (PyTorch): torch.cuda.mem_get_info and where 64 MiB tensor allocations hit OutOfMemoryError;
- SM share, as the share of device time our spin kernels got (kernels/s over the unlimited kernels/s of the
  same ~2 ms all-SM kernel alone), with GPU_CORE_UTILIZATION_POLICY=force:
  at 10/30/60/90/100 alone (async loop; 30/60 also synchronised), at 10/30/60/90 beside an unlimited
  neighbour process (time-slicing), two processes sharing one 60 % container (sum), two containers at 10 and
  90 % side by side, CUDA graphs at 30 %, two streams with cross-stream waits and device copies between
  kernels at 30 % (the waits and copies must not count), and a global-mode stream capture on one thread while
  another launches at 30 % (must succeed);
- PyTorch bf16 matmul throughput at 30/60/100 relative to no library;
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
import time
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

    def env(self, preload: bool, extra: dict[str, str], cache: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_DEVICE_", "GPU_CORE_"))}
        env.pop("LD_PRELOAD", None)
        if preload:
            self.n += 1
            env["LD_PRELOAD"] = str(self.lib)
            env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(self.workdir / (cache or f"bench{self.n}.cache"))
        env.update(extra)
        return env

    def run(self, argv: list[str], preload: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        return self.together([(argv, preload, extra or {}, None)])[0]

    def together(
        self, jobs: list[tuple[list[str], bool, dict[str, str], str | None]], head_start: float = 0.0
    ) -> list[dict[str, str]]:
        """Runs the jobs at the same time (the first `head_start` seconds ahead: a neighbour already busy);
        one cache name shared by several jobs puts them in one container."""
        procs = []
        for i, (argv, preload, extra, cache) in enumerate(jobs):
            procs.append(
                subprocess.Popen(
                    argv,
                    env=self.env(preload, extra, cache),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            if i == 0 and head_start > 0:
                time.sleep(head_start)
        results = []
        for (argv, _, _, _), proc in zip(jobs, procs, strict=True):
            out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{argv}: rc={proc.returncode}\n{out}\n{err}")
            results.append(parse(out))
        return results


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
    spin = [str(exe), "sm", secs, "0"]

    def force(lim: int) -> dict[str, str]:
        return {"CUDA_DEVICE_SM_LIMIT": str(lim), "GPU_CORE_UTILIZATION_POLICY": "force"}

    def kps(out: dict[str, str]) -> float:
        return float(out["kernels_per_s"])

    base = kps(b.run(spin, False))  # unlimited, alone: 100 % of device time
    figures["sm_base_kernels_per_s"] = base
    for lim in (10, 30, 60, 90, 100):
        share = kps(b.run(spin, True, force(lim))) / base
        figures[f"sm_async_{lim}"] = share
        rows.append((f"SM {lim}% spin kernel, alone", f"{100 * share:.1f}% of device time"))
    base_sync = kps(b.run([str(exe), "sm", secs, "1"], False))
    for lim in (30, 60):
        share = kps(b.run([str(exe), "sm", secs, "1"], True, force(lim))) / base_sync
        figures[f"sm_sync_{lim}"] = share
        rows.append((f"SM {lim}% spin kernel, synchronised loop", f"{100 * share:.1f}% of device time"))

    # Beside an unlimited neighbour (another container, no library): the GPU time-slices the two contexts.
    neighbour = [str(exe), "sm", str(args.seconds + 3), "0"]
    for lim in (10, 30, 60, 90):
        _, ours = b.together([(neighbour, False, {}, None), (spin, True, force(lim), None)], head_start=1.0)
        share = kps(ours) / base
        figures[f"sm_neighbour_{lim}"] = share
        rows.append((f"SM {lim}% beside an unlimited neighbour", f"{100 * share:.1f}% of device time"))

    # Two processes of one container (one cache file) at 60 %: together 60 %.
    pair = b.together([(spin, True, force(60), "shared60.cache"), (spin, True, force(60), "shared60.cache")])
    a, c = (kps(o) / base for o in pair)
    figures["sm_shared_60"] = [a, c]
    rows.append(
        ("two processes sharing one 60% container", f"{100 * a:.1f}% + {100 * c:.1f}% = {100 * (a + c):.1f}%")
    )

    # Two containers side by side at 10 % and 90 %.
    split = b.together([(spin, True, force(10), None), (spin, True, force(90), None)])
    lo, hi = (kps(o) / base for o in split)
    figures["sm_split_10_90"] = [lo, hi]
    rows.append(("two containers at 10% and 90%", f"{100 * lo:.1f}% and {100 * hi:.1f}%"))

    graph = [str(exe), "graph", secs]
    graph_base = kps(b.run(graph, False))
    gshare = kps(b.run(graph, True, force(30))) / graph_base
    figures["graph_30"] = gshare
    rows.append(("SM 30% CUDA graphs (8 kernels each)", f"{100 * gshare:.1f}% of device time"))

    streams = [str(exe), "streams", secs]
    # The kernels' share when nothing throttles (the copies take the rest of the device time).
    st_base = kps(b.run(streams, False)) / base
    st_share = kps(b.run(streams, True, force(30))) / base
    figures["streams_30"] = st_share
    figures["streams_unlimited"] = st_base
    rows.append(
        (
            "SM 30% two streams, waits + copies between kernels",
            f"kernels {100 * st_share:.1f}% of device time (unlimited: {100 * st_base:.1f}%)",
        )
    )

    cap = b.run([str(exe), "capture"], True, force(30))
    figures["capture_30"] = cap
    rows.append(
        (
            "SM 30% global-mode capture + launches on another thread",
            f"{'ok' if cap['capture_ok'] == '1' else 'FAILED'} (end {cap['capture_end']}, "
            f"{cap['launched']} launches beside it)",
        )
    )
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
