"""The full local path on one node: pods through webhook, filter, prioritize, bind and Allocate to Running.

Run: `.venv/bin/python bench/local_path_bench.py [--pods 40] [--gpus 8]` (prints figures; asserts nothing).
The device plugin issue's target: 40 pods onto one 8-GPU node running within 10 s, and Allocate's p99.

Local mode's `Suite` starts every component as its own process, as `make run` does: kube-local, the HTTPS
webhook, the scheduler extender, the kube-scheduler stand-in, and for the one GPU node the kubelet stand-in
and our device plugin on simulated GPUs (a generated cluster file). One warm-up pod goes through first (it
also proves the node is registered and healthy); then the pods are created one after another and the clock
runs from the first create until the last pod is Running.

On one node every bind waits for the node lock that the previous pod's Allocate releases, so the figure is
the serial latency of the whole chain. Allocate latency is the kubelet stand-in's own timing of each
Allocate call (`allocate_ms` of its `container_allocated` log lines); bind latency (lock wait included) is the
scheduler's (`seconds` of its `bound` log lines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from services.common.config import KubeAccess
from services.common.kube import new_api_client, raw_json
from sim.local.cli import register_cluster
from sim.local.cluster import load_cluster
from sim.local.suite import Suite, SuiteError

NODE = "bench-gpu-node"
NS = "default"
WARMUP = "warmup"
TARGET_SECONDS = 10.0


def cluster_file(path: Path, gpus: int) -> Path:
    document = {
        "deviceSplitCount": 10,
        "nodes": [
            {
                "name": NODE,
                "labels": {"gpu": "on"},
                "gpus": [
                    {"type": "NVIDIA-A100-SXM4-80GB", "memoryMiB": 81920, "numa": i * 2 // gpus}
                    for i in range(gpus)
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def pod_body(name: str, container: str) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "10"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "local-path-bench"}},
        "spec": {"containers": [{"name": container, "image": "cuda:12", "resources": {"limits": limits}}]},
    }


def _phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def wait_running(core: client.CoreV1Api, names: set[str], timeout: float) -> dict[str, float]:
    """Poll until every named pod is Running; name -> monotonic time it was first seen Running."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            raise SuiteError(f"{len(names) - len(seen)} pods not Running after {timeout:.0f}s")
        items = raw_json(core.list_namespaced_pod, NS, label_selector="app=local-path-bench")["items"]
        now = time.monotonic()
        for pod in items:
            name = pod["metadata"]["name"]
            if name in names and name not in seen:
                if _phase(pod) == "Running":
                    seen[name] = now
                elif _phase(pod) == "Failed":
                    raise SuiteError(f"pod {name} failed: {(pod.get('status') or {}).get('message')}")
        time.sleep(0.02)
    return seen


def log_values(path: Path, event: str, key: str, skip: dict[str, str] | None = None) -> list[float]:
    """`key` of every JSON log line whose event is `event` (lines whose fields match `skip` left out)."""
    values = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("event") != event or key not in entry:
            continue
        if skip and any(entry.get(k) == v or str(entry.get(k, "")).endswith(v) for k, v in skip.items()):
            continue
        values.append(float(entry[key]))
    return values


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def _summary(values: list[float]) -> str:
    if not values:
        return "(no samples)"
    return (
        f"p50 {_percentile(values, 50):7.1f} ms   p99 {_percentile(values, 99):7.1f} ms   "
        f"max {max(values):7.1f} ms   mean {statistics.fmean(values):7.1f} ms   n={len(values)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=40)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the node (10 vGPU slots each)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="kube-vgpu-local-path-bench-"))
    print(
        f"sizes: {args.pods} pods (1 vGPU, 4096 MiB, 10% cores each) onto 1 node with {args.gpus} simulated "
        f"GPUs (split 10), full local path, every component its own process",
        flush=True,
    )
    cluster_path = cluster_file(run_dir / "cluster.yaml", args.gpus)
    suite = Suite(run_dir=run_dir)
    try:
        started = time.monotonic()
        url = suite.start_kube_local()
        with new_api_client(KubeAccess(server=url)) as api:
            register_cluster(api, load_cluster(cluster_path))
            suite.start_control_plane()
            suite.start_nodes(cluster_path.resolve(), [NODE])
            core = client.CoreV1Api(api)
            warm: Any = pod_body(WARMUP, WARMUP)
            core.create_namespaced_pod(NS, warm)
            wait_running(core, {WARMUP}, args.timeout)
            print(f"suite up and warm-up pod Running after {time.monotonic() - started:.1f} s", flush=True)

            names = [f"job-{i:03d}" for i in range(args.pods)]
            t0 = time.monotonic()
            for name in names:
                body: Any = pod_body(name, "main")
                core.create_namespaced_pod(NS, body)
            created = time.monotonic() - t0
            running = wait_running(core, set(names), args.timeout)
            total = max(running.values()) - t0
            first = min(running.values()) - t0
            suite.check_alive()
        logs = run_dir / "logs"
        allocate = log_values(
            logs / f"kubelet-{NODE}.log", "container_allocated", "allocate_ms", {"container": WARMUP}
        )
        bind = [
            s * 1000 for s in log_values(logs / "scheduler.log", "bound", "seconds", {"pod": f"/{WARMUP}"})
        ]
    except SuiteError as exc:
        print(f"local_path_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        suite.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    print()
    print(f"created {args.pods} pods in {created:.2f} s (through the webhook)")
    print(f"first pod Running after {first:.2f} s, all {args.pods} Running after {total:.2f} s")
    print(f"  = {args.pods / total:.1f} pods/s end to end")
    print(f"Allocate (kubelet stand-in -> device plugin, per container): {_summary(allocate)}")
    print(f"bind (scheduler, node-lock wait included):                   {_summary(bind)}")
    verdict = "met" if total <= TARGET_SECONDS else "missed"
    p99 = _percentile(allocate, 99) if allocate else float("nan")
    print(
        f"target: all Running <= {TARGET_SECONDS:g} s: {total:.2f} s ({verdict}); Allocate p99 {p99:.1f} ms"
    )
    if args.keep:
        print(f"run directory kept: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
