"""What the scheduler benchmarks share: the shape of the simulated cluster's vGPU pods, process readings from
/proc, percentiles, and the extender's own per-verb times from its /metrics.

Imported by bench/scheduler_bench.py (kube-local, kube-scheduler played over HTTP) and
bench/real_scheduler_bench.py (the upstream kube-apiserver and kube-scheduler); both run as scripts, so this
module is found through the script's own folder on sys.path.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from services.common import wire
from services.common.codecs import encode_pod_single_device
from services.common.model import ContainerDevice

NS = "default"
GPU_MEMORY = 81920
SPLIT = 10
GPU_TYPE = "NVIDIA-A100-SXM4-80GB"
NEW_POD_MEMORY = 4096
NEW_POD_CORES = 10
VERBS = ("filter", "prioritize", "bind")


def gpu_limits(memory: int, cores: int) -> dict[str, str]:
    """One vGPU of `memory` MiB and `cores` percent of a GPU's cores."""
    return {
        wire.RESOURCE_GPU: "1",
        wire.RESOURCE_GPUMEM: str(memory),
        wire.RESOURCE_GPUCORES: str(cores),
    }


def vgpu_pod(name: str, memory: int, cores: int, node: str | None, device: str | None) -> dict[str, Any]:
    """A vGPU pod for hami-scheduler: pending, or (with `node` and `device`) running there with the
    annotations an earlier bind and Allocate left, which is what the extender's cache counts as usage."""
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "labels": {"app": "bench"}, "annotations": {}}
    spec: dict[str, Any] = {
        "schedulerName": wire.SCHEDULER_NAME,
        "containers": [
            {"name": "main", "image": "cuda:12", "resources": {"limits": gpu_limits(memory, cores)}}
        ],
    }
    status: dict[str, Any] = {"phase": "Pending"}
    if node is not None and device is not None:
        allocation = encode_pod_single_device([[ContainerDevice(device, wire.NVIDIA, memory, cores)]])
        stamp = str(int(time.time()) - 3600)
        metadata["labels"][wire.VGPU_NODE] = node
        metadata["annotations"] = {
            wire.VGPU_NODE: node,
            wire.VGPU_TIME: stamp,
            wire.VGPU_DEVICES_ALLOCATED: allocation,
            wire.VGPU_DEVICES_TO_ALLOCATE: allocation,
            wire.BIND_PHASE: wire.BindPhase.SUCCESS.value,
            wire.BIND_TIME: stamp,
        }
        spec["nodeName"] = node
        status = {"phase": "Running"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def running_placement(index: int, nodes: list[str], gpus: int) -> tuple[str, int, int, int]:
    """(node, GPU index, memory MiB, cores %) of running pod `index`: round-robin over nodes, then over each
    node's GPUs, with a mix of sizes, so usage is spread and no GPU is full."""
    node = nodes[index % len(nodes)]
    gpu = (index // len(nodes)) % gpus
    return node, gpu, (2048, 4096, 6144, 8192)[index % 4], (10, 20, 30)[index % 3]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time per thread of a process (thread id -> seconds); the main thread's is `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return times


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def latency_line(name: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"{name:<34} (none)"
    return (
        f"{name:<34} p50 {percentile(values_ms, 50):8.2f} ms   p99 {percentile(values_ms, 99):8.2f} ms   "
        f"mean {statistics.fmean(values_ms):8.2f} ms   n={len(values_ms)}"
    )


async def server_times(
    session: aiohttp.ClientSession, metrics: str
) -> tuple[dict[str, tuple[float, int]], float]:
    """The extender's own (sum seconds, count) per verb from `<metrics>/metrics`, and how long the scrape
    took."""
    started = time.perf_counter()
    async with session.get(f"{metrics}/metrics") as resp:
        text = await resp.text()
    scrape = time.perf_counter() - started
    found = {verb: [0.0, 0] for verb in VERBS}
    for line in text.splitlines():
        for verb in VERBS:
            prefix = f"kube_vgpu_scheduler_{verb}_duration_seconds_"
            if line.startswith(prefix + "sum"):
                found[verb][0] += float(line.rsplit(" ", 1)[1])
            elif line.startswith(prefix + "count"):
                found[verb][1] += int(float(line.rsplit(" ", 1)[1]))
    return {verb: (float(v[0]), int(v[1])) for verb, v in found.items()}, scrape


def server_means(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]) -> str:
    """The extender's mean time per verb between two `server_times` readings."""
    parts = []
    for verb in VERBS:
        total = after[verb][0] - before[verb][0]
        count = after[verb][1] - before[verb][1]
        if count:
            parts.append(f"{verb} {total / count * 1000:.2f} ms")
    return ", ".join(parts) or "(none)"
