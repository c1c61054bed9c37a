"""kube-local's write cost with and without ``--state-dir``: pod creates through the official client.

Run: `.venv/bin/python bench/kubelocal_bench.py [--pods 500] [--concurrency 8]` (prints figures; asserts
nothing). For each mode a fresh kube-local process is started (``--state-dir`` in a temporary directory for
"durable"), then ``--pods`` pods are created one after another (per-create latency: the client's request to
201, which with ``--state-dir`` includes the fsync of the SQLite commit), then as many again from
``--concurrency`` threads (several creates then share one commit). Next to the latencies: creates per
second and the CPU seconds the kube-local process used (``/proc/<pid>/stat``), per create.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def pod(name: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "bench"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36")]),
    )


def start(state_dir: str | None) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "sim.kubelocal.cli", "--port", "0"]
    if state_dir is not None:
        argv += ["--state-dir", state_dir]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def run_mode(label: str, state_dir: str | None, pods: int, concurrency: int) -> list[str]:
    proc, url = start(state_dir)
    rows = []
    try:
        cfg = client.Configuration()
        cfg.host = url
        cfg.connection_pool_maxsize = concurrency
        core = client.CoreV1Api(client.ApiClient(cfg))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))

        latencies: list[float] = []
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        for i in range(pods):
            begin = time.perf_counter()
            core.create_namespaced_pod("bench", pod(f"seq-{i}"))
            latencies.append(time.perf_counter() - begin)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
        rows.append(row(label, "sequential", latencies, pods, wall, cpu))

        def create(i: int) -> float:
            begin = time.perf_counter()
            core.create_namespaced_pod("bench", pod(f"par-{i}"))
            return time.perf_counter() - begin

        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as threads:
            latencies = list(threads.map(create, range(pods)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
        rows.append(row(label, f"{concurrency} threads", latencies, pods, wall, cpu))
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def row(label: str, how: str, latencies: list[float], pods: int, wall: float, cpu: float) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{label:<18} {how:<11} {statistics.median(ms):8.2f} {statistics.fmean(ms):8.2f} {p99:8.2f}"
        f" {pods / wall:9.0f} {cpu * 1000 / pods:12.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(f"{args.pods} pod creates per run through the official client; latency in ms, CPU of kube-local")
    print(
        f"{'mode':<18} {'creates':<11} {'p50':>8} {'mean':>8} {'p99':>8} {'creates/s':>9}"
        f" {'CPU ms/create':>12}"
    )
    rows = run_mode("memory only", None, args.pods, args.concurrency)
    with tempfile.TemporaryDirectory() as state_dir:
        rows += run_mode("--state-dir", state_dir, args.pods, args.concurrency)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
