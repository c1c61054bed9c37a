"""Monitor cost at 1,000 container regions: one `/metrics` scrape, and CPU while idle.

Run: `.venv/bin/python bench/monitor_bench.py [--containers 1000] [--idle-seconds 30]` (figures only, no
assertions). Targets: <= 50 ms per scrape, <= 1% of one core while idle.

Set-up: kube-local in this process with one node and N running pods, each holding one GPU slot
(`hami.io/vgpu-devices-allocated`); N cache files (HAMi-core v1 regions from `encode_region`, one live
process each, written sparse) under `<tmp>/containers/<podUID>_main/`; `kube-vgpu-monitor` as a subprocess
(default scan and feedback periods of 5 s). Measured:

* scrape, regions unchanged: wall time of `GET /metrics` from this process, several times;
* scrape, every region changed: the same after rewriting one value in every region (each is decoded again);
* idle CPU: the monitor process's user+system CPU time (from /proc) over an idle window without scrapes,
  after a warm-up in which the feedback loop settles the regions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client

from services.common import shared_region as sr
from services.common import wire
from services.common.config import KubeAccess
from services.common.kube import new_api_client
from sim.kubelocal.server import KubeLocalThread
from sim.local.suite import free_port
from sim.regions import MIB, ProcUse, make_region

NODE = "bench-node"
GPUS = [f"GPU-{i:08x}-5c87-89ac-b1a6-7b53aa24b0ec" for i in range(16)]
BLOCK = 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_sparse(path: Path, data: bytes) -> None:
    """Only the non-zero 4 KiB blocks hit the disk (a region is ~2 MB, mostly zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        zero = bytes(BLOCK)
        for offset in range(0, len(data), BLOCK):
            chunk = data[offset : offset + BLOCK]
            if chunk != zero[: len(chunk)]:
                fh.seek(offset)
                fh.write(chunk)
        fh.truncate(len(data))


def region(i: int, used: int) -> bytes:
    gpu = GPUS[i % len(GPUS)]
    return sr.encode_region(
        make_region(
            [gpu],
            limits=[4096 * MIB],
            sm_limits=[30],
            procs=[ProcUse(pid=1000 + i, context=[300 * MIB], buffer=[used * MIB], sm_util=[i % 40])],
            recent_kernel=0,
            utilization_switch=0,
            priority=1,
            last_kernel_time=int(time.time()) - i,
        )
    )


def create_pods(api: client.ApiClient, n: int) -> list[str]:
    core = client.CoreV1Api(api)
    register = ",".join(
        f'{{"id":"{g}","index":{i},"count":100,"devmem":81920,"devcore":100,"type":"NVIDIA-A100","health":true}}'
        for i, g in enumerate(GPUS)
    )
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=NODE, annotations={wire.NODE_NVIDIA_REGISTER: f"[{register}]"})
        )
    )

    def one(i: int) -> str:
        gpu = GPUS[i % len(GPUS)]
        pod = core.create_namespaced_pod(
            "default",
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=f"job-{i:04d}",
                    annotations={wire.VGPU_DEVICES_ALLOCATED: f"{gpu},NVIDIA,4096,30:;"},
                ),
                spec=client.V1PodSpec(
                    node_name=NODE, containers=[client.V1Container(name="main", image="cuda")]
                ),
            ),
            _preload_content=False,
        )
        return str(json.loads(pod.data)["metadata"]["uid"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def scrape(port: int) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        body = resp.read()
    return time.perf_counter() - started, body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--warmup-seconds", type=float, default=15.0)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kv-monitor-bench-"))
    kube = KubeLocalThread()
    url = kube.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        api = new_api_client(KubeAccess(server=url))
        t0 = time.perf_counter()
        uids = create_pods(api, args.containers)
        api.close()
        t1 = time.perf_counter()
        paths = []
        for i, uid in enumerate(uids):
            path = work / "containers" / f"{uid}_main" / f"{i:08x}.cache"
            write_sparse(path, region(i, used=1024))
            paths.append(path)
        t2 = time.perf_counter()
        print(
            f"setup: {args.containers} pods in {t1 - t0:.1f} s, "
            f"{len(paths)} regions written in {t2 - t1:.1f} s"
        )

        port = free_port()
        sock_dir = tempfile.mkdtemp(dir="/tmp", prefix="kv-mb-")
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "kube-vgpu-monitor"),
                "--node-name",
                NODE,
                "--hook-path",
                str(work),
                "--metrics-bind-address",
                f"127.0.0.1:{port}",
                "--grpc-bind",
                f"unix:{sock_dir}/monitor.sock",
                "--host-gpus",
                "none",
                "--set",
                f"kube.server={url}",
                "--set",
                "log.level=warning",
                "--set",
                "log.format=json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        expected = args.containers * 10  # ten container series per container and GPU
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"monitor exited with {proc.returncode}")
            try:
                _, body = scrape(port)
                count = sum(
                    1
                    for line in body.splitlines()
                    if line.startswith((b"hami_vgpu_", b"hami_container_")) and b'pod="job-' in line
                )
                if count >= expected:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("monitor never reported every container")
            time.sleep(0.5)
        print(f"monitor ready: {count} container series, /metrics body {len(body) / 1024:.0f} KiB")

        times = [scrape(port)[0] for _ in range(args.scrapes)]
        print(
            f"scrape, regions unchanged: median {statistics.median(times) * 1000:.1f} ms, "
            f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms ({len(times)} scrapes)"
        )
        changed = []
        for round_ in range(3):
            for i, path in enumerate(paths):
                with open(path, "r+b") as fh:
                    data = region(i, used=1025 + round_)
                    start = sr.V1.procs
                    fh.seek(start)
                    fh.write(data[start : start + sr.V1.slot_size])
            changed.append(scrape(port)[0])
        print(
            f"scrape, every region changed: median {statistics.median(changed) * 1000:.1f} ms, "
            f"max {max(changed) * 1000:.1f} ms ({len(changed)} scrapes)"
        )

        time.sleep(args.warmup_seconds)
        before_cpu, before = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        used, elapsed = cpu_seconds(proc.pid) - before_cpu, time.monotonic() - before
        print(
            f"idle CPU: {used:.2f} s over {elapsed:.0f} s = {100 * used / elapsed:.2f}% of one core "
            f"(scan and feedback every 5 s, {args.containers} regions mapped)"
        )
        rss_kib = next(
            int(line.split()[1])
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        print(f"monitor RSS: {rss_kib / 1024:.0f} MiB")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        kube.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
