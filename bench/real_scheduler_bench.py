"""The extender's tax on the real kube-scheduler: GPU pods/s against plain pods/s through the upstream
kube-apiserver and kube-scheduler.

Run: `.venv/bin/python bench/real_scheduler_bench.py [--nodes 1000] [--gpus-per-node 8]
[--running-pods 10000] [--burst 1000] [--node-policy binpack|spread] [--keep]` (prints figures; asserts
nothing; needs the control plane binaries that sim/controlplane/build.py builds and caches). The full size
takes about 8 minutes on 2 cores, two of them waiting for the node lifecycle controller to untaint 1000 nodes.

How it runs: local mode's real control plane (sim/local/suite.py `Suite` with control_plane="real": etcd,
kube-apiserver with Node,RBAC, kube-controller-manager, the deploy's RBAC). As admin the bench registers the
nodes as local mode does (sim/local/cluster.py `node_object`: the hami.io/node-nvidia-register annotation,
capacity/allocatable with nvidia.com/gpu, a Ready condition; plus a `Requesting_` handshake so the leader
has no 1000-node handshake round to write), waits for the node lifecycle controller to lift their
not-ready taints, and creates the running vGPU pods already bound (spec.nodeName, the annotations of an
earlier bind and Allocate, status Running). Then the suite starts our extender exactly as in real local mode
(HTTPS, the deploy ServiceAccount's token, leader_elect following kube-scheduler's Lease) and the upstream
kube-scheduler with the deploy's KubeSchedulerConfiguration. The suite also starts and registers our
webhook; the bench unregisters and stops it, so pod creation costs the same for both bursts and only the
scheduling path is compared. The bench itself stands in for the device plugin's Allocate on each bound GPU
pod (bind-phase=success on the pod, then the node lock released, as services/device_plugin does), since no
kubelet runs; without it a second pod for the same node would wait for the lock's TTL.

Then, one after another: `--idle-pods` GPU pods and as many plain pods one at a time (warm-up, and the idle
latency), a burst of `--burst` GPU pods (schedulerName hami-scheduler, one vGPU each), and the same burst of
plain pods (same profile, same cpu/memory requests, no extender-managed resource). kube-scheduler calls an
extender only for pods requesting one of its managedResources, so plain pods never reach the extender: the
extender's request counters (its /metrics duration histograms) before and after each burst show it.

Two things shape the figures besides the extender's own speed. kube-scheduler's client defaults to 50
requests/s (burst 100), which would cap the plain burst near 50 pods/s (one Binding POST per plain pod; GPU
pods are bound by the extender's own client): the deploy's KubeSchedulerConfiguration raises it
(clientConnection qps 200, burst 400), and this bench uses that file. And pods of a burst are filtered and
scored before the binds of the pods ahead of them show in the extender's cache: the extender's prioritize
ranks last the nodes where a bind is under way (its own bind requests, reservations, held node locks, and
the node it ranked alone at the top for the previous pods within 2 s), so consecutive pods spread over
equally good nodes instead of queueing on one node's lock (one pod at a time until its Allocate).

What it prints:
- set-up times: control plane start, node registration and untainting, running pods created (+ status),
  extender and kube-scheduler start (the extender lists the whole cluster first);
- idle: the extender's own mean filter and prioritize time over the one-at-a-time GPU pods (from its
  /metrics), and their creation-to-bound latency;
- per burst: pods bound of the burst; sustained pods/s = burst size / (first create request sent -> last pod
  seen bound); the creation rate alone (the ceiling the API server puts on the figure); creation-to-bound
  p50/p99/mean per pod, from the moment the bench sent the pod's create request to the moment its watch
  delivered the pod with spec.nodeName set (watch timestamps, not the PodScheduled condition's
  lastTransitionTime, which has whole-second resolution); the extender calls (filter, prioritize, bind)
  during the burst and the extender's own mean time per verb;
- the ratio GPU pods/s : plain pods/s (the extender's tax on the real kube-scheduler);
- CPU milliseconds per pod of each process during each burst (/proc/<pid>/stat utime+stime before and
  after): extender, kube-apiserver, kube-scheduler, etcd, kube-controller-manager and the bench client
  (creates the pods, watches them, plays Allocate for GPU pods), and the extender's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from scheduler_common import (  # bench/, the script's folder
    GPU_MEMORY,
    GPU_TYPE,
    NEW_POD_CORES,
    NEW_POD_MEMORY,
    NS,
    SPLIT,
    VERBS,
    cpu_seconds,
    latency_line,
    percentile,
    rss_mb,
    running_placement,
    server_means,
    server_times,
    vgpu_pod,
)

from services.common import wire
from services.scheduler.health import handshake_value
from services.scheduler.nodelock import owned_by
from sim.local.cluster import SimulatedNode, node_devices, node_object
from sim.local.suite import REPO_DEPLOY_BASE, Suite

BURST_LABEL = "bench-burst"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
MERGE_PATCH = "application/merge-patch+json"
# Both bursts request the same cpu/memory, so kube-scheduler's own plugins do the same work for both.
POD_REQUESTS = {"cpu": "100m", "memory": "64Mi"}
STALL_SECONDS = 120.0
TARGET_RATIO = 0.70  # issue 14: GPU pods/s through the real kube-scheduler >= 70% of plain pods/s


# ----- the cluster's objects


def simulated_node(index: int, gpus: int) -> SimulatedNode:
    return SimulatedNode.model_validate(
        {
            "name": f"gpu-node-{index:04d}",
            "labels": {"gpu": "on"},
            "cpu": "64",
            "memory": "512Gi",
            "gpus": [{"type": GPU_TYPE, "memoryMiB": GPU_MEMORY, "numa": i * 2 // gpus} for i in range(gpus)],
        }
    )


def node_body(node: SimulatedNode, handshake: str) -> dict[str, Any]:
    body = node_object(node, SPLIT)
    # A handshake the leader already requested: no handshake write per node while the bench runs.
    body["metadata"]["annotations"][wire.NODE_HANDSHAKE] = handshake
    return body


def burst_pod(name: str, kind: str) -> dict[str, Any]:
    """A pending pod of profile hami-scheduler: with one vGPU ("gpu", "gpu-idle") or none ("plain", ...)."""
    pod = vgpu_pod(name, NEW_POD_MEMORY, NEW_POD_CORES, None, None)
    pod["metadata"]["labels"][BURST_LABEL] = kind
    resources = pod["spec"]["containers"][0]["resources"]
    resources["requests"] = dict(POD_REQUESTS)
    if not kind.startswith("gpu"):
        del resources["limits"]
    pod["spec"]["terminationGracePeriodSeconds"] = 0
    return pod


# ----- admin access to the kube-apiserver


class Api:
    """Admin calls (client certificate from the admin kubeconfig) over one aiohttp session."""

    def __init__(self, kubeconfig: Path, concurrency: int) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        self.url = str(cluster["server"])
        self.tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.tls.load_cert_chain(user["client-certificate"], user["client-key"])
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        connector = aiohttp.TCPConnector(ssl=self.tls, limit=self.concurrency + 8)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.session is not None:
            await self.session.close()

    def client(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.client().request(
            method, f"{self.url}{path}", data=data, headers={"Content-Type": content_type}
        ) as resp:
            text = await resp.read()
            return resp.status, json.loads(text) if text else None

    async def must(self, method: str, path: str, body: Any = None, **kwargs: str) -> Any:
        status, answer = await self.call(method, path, body, **kwargs)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {json.dumps(answer)[:400]}")
        return answer

    async def each(self, items: list[Any], work: Callable[[Any], Awaitable[None]]) -> None:
        """`work` over `items`, `concurrency` at a time."""
        queue = list(reversed(items))

        async def worker() -> None:
            while queue:
                await work(queue.pop())

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))

    async def watch_lines(self, path: str) -> Any:
        """The JSON events of a watch, one at a time (chunks split into lines here: aiohttp's readline
        caps a line's length, and a pod event can exceed it)."""
        async with self.client().get(f"{self.url}{path}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
            pending = b""
            async for chunk in resp.content.iter_any():
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


# ----- watching bursts and standing in for Allocate


@dataclass
class BurstWatch:
    """When each bench pod was first seen bound (perf_counter), from one pod watch; plays the device
    plugin's Allocate for bound GPU pods."""

    api: Api
    bound: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    allocations: set[asyncio.Task[None]] = field(default_factory=set)
    allocate_errors: int = 0
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self.api.must("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector={BURST_LABEL}")
        self.task = asyncio.create_task(self._follow(str(listing["metadata"]["resourceVersion"])))

    async def stop(self) -> None:
        if self.allocations:
            await asyncio.wait(set(self.allocations))
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self.task

    async def _follow(self, resource_version: str) -> None:
        while True:
            path = (
                f"/api/v1/namespaces/{NS}/pods?watch=1&labelSelector={BURST_LABEL}"
                f"&resourceVersion={resource_version}&allowWatchBookmarks=true"
            )
            try:
                async for event in self.api.watch_lines(path):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        resource_version = ""  # 410 Gone: start again from the current state
                        break
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._seen(obj)
            except (TimeoutError, aiohttp.ClientError) as exc:
                print(f"  (pod watch ended: {exc}; resuming)", flush=True)
            await asyncio.sleep(0.1)

    def _seen(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or name in self.bound:
            return
        self.bound[name] = time.perf_counter()
        self.changed.set()
        if (meta.get("annotations") or {}).get(wire.BIND_PHASE) == wire.BindPhase.ALLOCATING.value:
            task = asyncio.create_task(self._allocate(name, str(node)))
            self.allocations.add(task)
            task.add_done_callback(self.allocations.discard)

    async def _allocate(self, name: str, node: str) -> None:
        """What the device plugin's Allocate writes: bind-phase=success on the pod, then the node lock
        removed if this pod holds it (read, then a resourceVersion-checked patch, retried on conflict)."""
        try:
            patch = {"metadata": {"annotations": {wire.BIND_PHASE: wire.BindPhase.SUCCESS.value}}}
            await self.api.must(
                "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}", patch, content_type=MERGE_PATCH
            )
            for _ in range(5):
                current = await self.api.must("GET", f"/api/v1/nodes/{node}")
                lock = (current["metadata"].get("annotations") or {}).get(wire.NODE_LOCK)
                if not owned_by(lock, NS, name):
                    return
                release = {
                    "metadata": {
                        "annotations": {wire.NODE_LOCK: None},
                        "resourceVersion": current["metadata"]["resourceVersion"],
                    }
                }
                status, _ = await self.api.call(
                    "PATCH", f"/api/v1/nodes/{node}", release, content_type=MERGE_PATCH
                )
                if status != 409:
                    return
        except RuntimeError as exc:
            self.allocate_errors += 1
            print(f"  (Allocate stand-in for {name}: {exc})", flush=True)

    async def wait_bound(self, names: list[str]) -> None:
        """Until every pod of `names` is bound, or none got bound for STALL_SECONDS."""
        last_progress, last_count = time.monotonic(), -1
        while True:
            count = sum(1 for n in names if n in self.bound)
            if count == len(names):
                return
            if count != last_count:
                last_progress, last_count = time.monotonic(), count
            elif time.monotonic() - last_progress > STALL_SECONDS:
                print(f"  stalled: {count}/{len(names)} bound, none for {STALL_SECONDS:g} s", flush=True)
                return
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=1.0)


# ----- the run


@dataclass
class BurstResult:
    kind: str
    size: int
    bound: int = 0
    pods_per_s: float = 0.0
    created_per_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    extender_means: str = ""
    cpu_ms_per_pod: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    args: argparse.Namespace
    api: Api
    watch: BurstWatch
    pids: dict[str, int]
    metrics: str

    async def extender_times(self) -> dict[str, tuple[float, int]]:
        times, _ = await server_times(self.api.client(), self.metrics)
        return times

    async def burst(self, kind: str, names: list[str]) -> BurstResult:
        result = BurstResult(kind, len(names))
        extender_before = await self.extender_times()
        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sent: dict[str, float] = {}
        created: list[float] = []

        async def create(name: str) -> None:
            sent[name] = time.perf_counter()
            await self.api.must("POST", f"/api/v1/namespaces/{NS}/pods", burst_pod(name, kind))
            created.append(time.perf_counter())

        await self.api.each(names, create)
        await self.watch.wait_bound(names)
        bound_at = {n: self.watch.bound[n] for n in names if n in self.watch.bound}
        if self.watch.allocations:
            await asyncio.wait(set(self.watch.allocations))
        cpu_after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        extender_after = await self.extender_times()

        start = min(sent.values())
        result.bound = len(bound_at)
        if bound_at:
            result.pods_per_s = len(bound_at) / (max(bound_at.values()) - start)
        result.created_per_s = len(names) / (max(created) - start)
        result.latency_ms = [(bound_at[n] - sent[n]) * 1000 for n in bound_at]
        result.calls = {verb: extender_after[verb][1] - extender_before[verb][1] for verb in VERBS}
        result.extender_means = server_means(extender_before, extender_after)
        per = max(result.bound, 1)
        result.cpu_ms_per_pod = {
            name: (cpu_after[name] - cpu_before[name]) / per * 1000 for name in self.pids
        }
        return result

    async def one_at_a_time(self, kind: str, count: int) -> tuple[list[float], str]:
        """`count` pods created one after another, each once the previous is bound: latencies and the
        extender's own means over them."""
        before = await self.extender_times()
        latencies = []
        for i in range(count):
            name = f"{kind}-{i:03d}"
            started = time.perf_counter()
            await self.api.must("POST", f"/api/v1/namespaces/{NS}/pods", burst_pod(name, kind))
            await self.watch.wait_bound([name])
            if name in self.watch.bound:
                latencies.append((self.watch.bound[name] - started) * 1000)
        if self.watch.allocations:
            await asyncio.wait(set(self.watch.allocations))
        return latencies, server_means(before, await self.extender_times())


async def populate(args: argparse.Namespace, api: Api) -> None:
    """Nodes (then their not-ready taints lifted) and the running vGPU pods, bound and Running."""
    nodes = [simulated_node(i, args.gpus_per_node) for i in range(args.nodes)]
    handshake = handshake_value(datetime.now())
    started = time.perf_counter()

    async def register(node: SimulatedNode) -> None:
        body = node_body(node, handshake)
        created = await api.must("POST", "/api/v1/nodes", body)
        if wire.RESOURCE_GPU not in (created.get("status") or {}).get("allocatable", {}):
            await api.must(
                "PATCH",
                f"/api/v1/nodes/{node.name}/status",
                {"status": body["status"]},
                content_type=MERGE_PATCH,
            )

    await api.each(nodes, register)
    registered = time.perf_counter() - started
    while True:
        listing = await api.must("GET", "/api/v1/nodes")
        tainted = sum(
            1
            for n in listing["items"]
            if any(t.get("key") == TAINT_NOT_READY for t in (n.get("spec") or {}).get("taints") or [])
        )
        if not tainted:
            break
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"{tainted} nodes still carry {TAINT_NOT_READY} after 600 s")
        await asyncio.sleep(1.0)
    print(
        f"nodes: {args.nodes} registered in {registered:.1f} s, all untainted after "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )

    names = [n.name for n in nodes]
    devices = {n.name: [d.id for d in node_devices(n, SPLIT)] for n in nodes}
    started = time.perf_counter()

    async def run_pod(index: int) -> None:
        node, gpu, memory, cores = running_placement(index, names, args.gpus_per_node)
        pod = vgpu_pod(f"running-{index:05d}", memory, cores, node, devices[node][gpu])
        await api.must("POST", f"/api/v1/namespaces/{NS}/pods", pod)
        # The create resets status to Pending; Running is the kubelet's word, written to the subresource.
        await api.must(
            "PATCH",
            f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status",
            {"status": {"phase": "Running"}},
            content_type=MERGE_PATCH,
        )

    await api.each(list(range(args.running_pods)), run_pod)
    elapsed = time.perf_counter() - started
    print(
        f"running pods: {args.running_pods} created bound and set Running in {elapsed:.1f} s "
        f"({args.running_pods / max(elapsed, 1e-9):.0f} pods/s, 2 requests each)",
        flush=True,
    )


async def unregister_webhook(api: Api) -> None:
    """The suite registers our webhook; neither burst should pay for admission, so it goes."""
    body = yaml.safe_load((REPO_DEPLOY_BASE / "webhook" / "mutatingwebhook.yaml").read_text())
    name = body["metadata"]["name"]
    await api.call("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")


async def wait_leader(api: Api, namespace: str) -> None:
    """Until kube-scheduler holds its Lease (the extender binds only while following a live holder)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, lease = await api.call(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/hami-scheduler"
        )
        if status == 200 and (lease.get("spec") or {}).get("holderIdentity"):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("kube-scheduler did not take its Lease within 120 s")


def print_burst(result: BurstResult) -> None:
    print(
        f"{result.kind} burst: {result.bound}/{result.size} bound; sustained {result.pods_per_s:.1f} pods/s "
        f"(first create sent -> last seen bound); created at {result.created_per_s:.1f} pods/s"
    )
    print("  " + latency_line("creation-to-bound (watch)", result.latency_ms))
    calls = ", ".join(f"{verb} {count}" for verb, count in result.calls.items())
    print(f"  extender calls during the burst: {calls}; extender-side means: {result.extender_means}")


async def run(args: argparse.Namespace, suite: Suite) -> int:
    t0 = time.perf_counter()
    suite.start_api()
    real = suite.real
    print(
        f"control plane up (etcd, kube-apiserver, kube-controller-manager, RBAC) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    assert suite.kubeconfig is not None
    async with Api(suite.kubeconfig, args.create_concurrency) as api:
        await populate(args, api)

        t0 = time.perf_counter()
        await asyncio.to_thread(suite.start_control_plane)
        await unregister_webhook(api)
        for process in suite.processes:
            if process.name == "webhook":
                process.stop()
        await wait_leader(api, suite.install_namespace)
        print(
            f"extender (cluster listed) and kube-scheduler up in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        extender = next(p for p in suite.processes if p.name == "scheduler")
        assert extender.proc is not None
        pids = {"extender": extender.proc.pid}
        pids |= {p.name: p.pid for p in real.processes if p.name in ("kube-apiserver", "kube-scheduler")}
        pids |= {p.name: p.pid for p in real.processes if p.name in ("etcd", "kube-controller-manager")}
        pids["bench client"] = os.getpid()

        watch = BurstWatch(api)
        await watch.start()
        bench = Bench(args, api, watch, pids, suite.scheduler_metrics.removesuffix("/metrics"))
        try:
            idle_gpu, idle_means = await bench.one_at_a_time("gpu-idle", args.idle_pods)
            idle_plain, _ = await bench.one_at_a_time("plain-idle", args.idle_pods)
            rss_before, _ = rss_mb(pids["extender"])
            print(f"warm-up done; extender RSS {rss_before:.0f} MB", flush=True)
            gpu = await bench.burst("gpu", [f"gpu-{i:05d}" for i in range(args.burst)])
            print_burst(gpu)
            await asyncio.sleep(2.0)
            plain = await bench.burst("plain", [f"plain-{i:05d}" for i in range(args.burst)])
            print_burst(plain)
            rss_end, rss_peak = rss_mb(pids["extender"])
        finally:
            await watch.stop()

    print()
    print(f"idle, {args.idle_pods} pods one at a time:")
    print(f"  extender-side means over the GPU pods: {idle_means}")
    print("  " + latency_line("GPU pods creation-to-bound", idle_gpu))
    print("  " + latency_line("plain pods creation-to-bound", idle_plain))
    ratio = gpu.pods_per_s / plain.pods_per_s if plain.pods_per_s else float("nan")
    print(
        f"ratio GPU : plain = {gpu.pods_per_s:.1f} : {plain.pods_per_s:.1f} pods/s = {ratio:.2f} "
        f"(p99 creation-to-bound {percentile(gpu.latency_ms, 99):.0f} ms : "
        f"{percentile(plain.latency_ms, 99):.0f} ms)"
    )
    print(
        f"target: GPU pods/s >= {TARGET_RATIO:.0%} of plain pods/s: {ratio:.2f} "
        f"({'met' if ratio >= TARGET_RATIO else 'MISSED'})"
    )
    plain_calls = sum(plain.calls.values())
    print(
        "plain pods "
        + (
            "never reached the extender (0 filter, prioritize and bind calls)"
            if plain_calls == 0
            else f"reached the extender {plain_calls} times (unexpected)"
        )
    )
    print(f"CPU ms per bound pod ({os.cpu_count()} cores):     GPU burst   plain burst")
    for name in pids:
        print(f"  {name:<26} {gpu.cpu_ms_per_pod[name]:10.2f} {plain.cpu_ms_per_pod[name]:12.2f}")
    total_gpu, total_plain = sum(gpu.cpu_ms_per_pod.values()), sum(plain.cpu_ms_per_pod.values())
    print(f"  {'all':<26} {total_gpu:10.2f} {total_plain:12.2f}")
    print(
        f"extender RSS: {rss_before:.0f} MB before the bursts, {rss_end:.0f} MB after, peak {rss_peak:.0f} MB"
    )
    if watch.allocate_errors:
        print(f"Allocate stand-in errors: {watch.allocate_errors}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--running-pods", type=int, default=10000, help="running vGPU pods, already placed")
    parser.add_argument("--burst", type=int, default=1000, help="pods per burst (GPU, then plain)")
    parser.add_argument("--idle-pods", type=int, default=10, help="pods of each kind created one at a time")
    parser.add_argument("--create-concurrency", type=int, default=32, help="create requests in flight")
    parser.add_argument(
        "--node-policy",
        choices=("binpack", "spread"),
        default="binpack",
        help="the extender's node_scheduler_policy (the deploy ships binpack)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the run directory (logs, configs)")
    args = parser.parse_args(argv)
    # The suite writes the extender's config file; an environment variable outranks the file, and the
    # suite's processes inherit this environment.
    os.environ["KUBE_VGPU_SCHEDULER_NODE_SCHEDULER_POLICY"] = args.node_policy

    run_dir = Path(tempfile.mkdtemp(prefix="kube-vgpu-real-scheduler-bench-"))
    print(
        f"sizes: {args.nodes} nodes x {args.gpus_per_node} GPUs (split {SPLIT}), {args.running_pods} running "
        f"vGPU pods, bursts of {args.burst} GPU and {args.burst} plain pods, {args.idle_pods} idle pods each,"
        f" extender node policy {args.node_policy}",
        flush=True,
    )
    suite = Suite(run_dir=run_dir, control_plane="real")
    try:
        return asyncio.run(run(args, suite))
    finally:
        suite.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
