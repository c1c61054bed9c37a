"""Scheduler extender at cluster scale: its CPU per scheduled pod, filter/prioritize latency idle and under
load, and RSS.

Run: `.venv/bin/python bench/scheduler_bench.py [--nodes 1000] [--gpus 8] [--pods 10000] [--binds 1000]
[--profile PATH]` (prints figures; asserts nothing). The targets (issue 14), at 1000 nodes x 8 GPUs with
10,000 running vGPU pods:

- extender CPU per scheduled pod <= 2 ms: the scheduler process's CPU time (/proc/<pid>/stat utime+stime)
  over the whole burst of `--binds` pods (filter, prioritize, bind, the watch events the pods cause, events
  posted), divided by the pods bound;
- idle filter+prioritize p99 <= 3 ms with the candidate list kube-scheduler really sends (its
  numFeasibleNodesToFind: 420 of 1000 nodes, starting where the previous cycle stopped); the figure with all
  1000 nodes as candidates is printed next to it;
- under load (during the burst) filter+prioritize p99 <= 10 ms;
- scheduler RSS (VmHWM) <= 300 MB.
The fifth target, GPU pods/s through the real kube-scheduler against plain pods/s, is
bench/real_scheduler_bench.py's.

How it runs, close to a real deployment: kube-local and the scheduler each run as their own process. The
cluster is built as a kube-local state document first (nodes registered by a device plugin, running pods
carrying the allocation annotations of an earlier bind, and the pending pods to schedule) and kube-local
starts from it (this script re-run with `--serve-kube-local`: the state loaded into its store, nothing
persisted afterwards), so no time goes into creating 10,000 objects one request at a time. The bench then
plays kube-scheduler over HTTP:

1. idle latency: `--samples` pods filtered then prioritized (the fitting nodes), one after another, nothing
   else running; once with kube-scheduler's candidate lists, once with every node a candidate;
2. sustained: the `--binds` pending pods go through filter -> prioritize -> bind as kube-scheduler pipelines
   them: one scheduling cycle (filter, prioritize) at a time, binds asynchronous (up to `--bind-concurrency`
   at once). Each pod goes to the best-ranked node that has no bind of ours under way; after a successful
   bind the bench drops the node lock, standing in for the device plugin's Allocate.

Latencies are measured by the client, from request sent to answer read (the request body encoded before,
the answer decoded after: kube-scheduler's own JSON work is not the extender's); filter+prioritize is the
sum of the two. Next to them the scheduler's own mean per verb (from its duration histograms) and the CPU
seconds each process used.
`--profile PATH` records the scheduler with py-spy (`pip install py-spy`; every thread, only while it holds
the GIL, collapsed stacks) from the end of its start-up to its exit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from scheduler_common import (  # bench/, the script's folder
    GPU_MEMORY,
    NEW_POD_CORES,
    NEW_POD_MEMORY,
    NS,
    SPLIT,
    cpu_seconds,
    latency_line,
    percentile,
    rss_mb,
    running_placement,
    server_means,
    server_times,
    thread_cpu_seconds,
    vgpu_pod,
)

from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.model import DeviceInfo
from sim.kubelocal.resources import NODES, PODS, default_status_on_create
from sim.kubelocal.server import KubeLocal
from sim.kubelocal.store import Store, now_timestamp
from sim.local.suite import ManagedProcess, console_script, free_port, http_ok, wait_until

TARGET_CPU_MS_PER_POD = 2.0
TARGET_IDLE_P99_MS = 3.0
TARGET_LOAD_P99_MS = 10.0
TARGET_RSS_MB = 300.0


def feasible_nodes_to_find(all_nodes: int) -> int:
    """kube-scheduler's numFeasibleNodesToFind with the default percentageOfNodesToScore (adaptive: 50% minus
    1% per 125 nodes, at least 5%, at least 100 nodes): how many candidates its extenders are sent."""
    if all_nodes < 100:
        return all_nodes
    percentage = max(50 - all_nodes // 125, 5)
    return max(all_nodes * percentage // 100, 100)


class Candidates:
    """The candidate lists of successive scheduling cycles: kube-scheduler walks the nodes from where the
    previous cycle stopped (nextStartNodeIndex) until it has found numFeasibleNodesToFind feasible ones."""

    def __init__(self, nodes: list[str], every_node: bool = False) -> None:
        self.nodes = nodes
        self.size = len(nodes) if every_node else feasible_nodes_to_find(len(nodes))
        self.start = 0

    def next(self) -> list[str]:
        n = len(self.nodes)
        if self.size >= n:
            return self.nodes
        picked = [self.nodes[(self.start + i) % n] for i in range(self.size)]
        self.start = (self.start + self.size) % n
        return picked


def _node(name: str, gpus: int, handshake: str) -> dict[str, Any]:
    devices = [
        DeviceInfo(
            id=f"GPU-{name}-{i}",
            index=i,
            count=SPLIT,
            devmem=GPU_MEMORY,
            devcore=100,
            type="NVIDIA-A100-SXM4-80GB",
            numa=i * 2 // gpus,
            mode="hami-core",
        )
        for i in range(gpus)
    ]
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", wire.RESOURCE_GPU: str(gpus * SPLIT)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": now_timestamp(),
            "labels": {"kubernetes.io/hostname": name, "gpu": "on"},
            "annotations": {
                wire.NODE_NVIDIA_REGISTER: encode_node_devices(devices),
                # A handshake the leader already requested: no 1000-node handshake burst during the bench.
                wire.NODE_HANDSHAKE: handshake,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def _pod(name: str, memory: int, cores: int, node: str | None, device: str | None) -> dict[str, Any]:
    pod = vgpu_pod(name, memory, cores, node, device)
    # What kube-local's create would have set: the state document is loaded as it is.
    pod["metadata"] |= {"uid": str(uuid.uuid4()), "creationTimestamp": now_timestamp()}
    return pod


def build_state(args: argparse.Namespace) -> tuple[bytes, list[str], list[dict[str, Any]]]:
    """The kube-local state file: nodes, running pods (already allocated), pending pods to schedule."""
    store = Store()
    names = [f"gpu-node-{i:04d}" for i in range(args.nodes)]
    handshake = "Requesting_" + time.strftime("%Y-%m-%d %H:%M:%S")
    for name in names:
        node_object = _node(name, args.gpus, handshake)
        default_status_on_create(NODES, node_object)
        store.create(NODES, node_object)
    for i in range(args.pods):
        node, gpu, memory, cores = running_placement(i, names, args.gpus)
        store.create(PODS, _pod(f"running-{i:05d}", memory, cores, node, f"GPU-{node}-{gpu}"))
    pending = []
    for i in range(args.binds + args.samples):
        pod = _pod(f"pending-{i:05d}", NEW_POD_MEMORY, NEW_POD_CORES, None, None)
        store.create(PODS, pod)
        pending.append(pod)
    return store.dump_state(), names, pending


class Client:
    """kube-scheduler's side of the extender protocol, plus the Allocate stand-in (lock release)."""

    def __init__(
        self, session: aiohttp.ClientSession, extender: str, kube: str, candidates: Candidates
    ) -> None:
        self.session = session
        self.extender = extender
        self.kube = kube
        self.candidates = candidates
        self.filter_ms: list[float] = []
        self.prioritize_ms: list[float] = []
        self.cycle_ms: list[float] = []
        self.bind_ms: list[float] = []
        self.bind_errors: dict[str, int] = {}
        self.unschedulable = 0
        self.server = ""  # the scheduler's own mean time per verb (its duration histograms)
        self.cpu: dict[str, float] = {}  # CPU seconds per process during this phase
        self.scrape = 0.0
        self.threads = (0.0, 0.0)  # the scheduler's CPU seconds: event-loop thread, every other thread

    async def _post(self, verb: str, body: Any) -> tuple[Any, float]:
        """The answer and the milliseconds from sending the request to having read the answer; this client's
        own JSON encoding and decoding (Python's, kube-scheduler's is Go) are left out of the time."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        started = time.perf_counter()
        async with self.session.post(f"{self.extender}/{verb}", data=data, headers=headers) as resp:
            raw = await resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        return json.loads(raw), elapsed

    async def cycle(self, pod: dict[str, Any], busy: set[str]) -> str | None:
        """Filter over this cycle's candidates, prioritize the fitting ones; the chosen node (None:
        unschedulable)."""
        names = self.candidates.next()
        result, filter_ms = await self._post("filter", {"Pod": pod, "NodeNames": names})
        self.filter_ms.append(filter_ms)
        fitting = result.get("NodeNames") or []
        if result.get("Error") or not fitting:
            self.unschedulable += 1
            return None
        ranked, prioritize_ms = await self._post("prioritize", {"Pod": pod, "NodeNames": fitting})
        self.prioritize_ms.append(prioritize_ms)
        self.cycle_ms.append(filter_ms + prioritize_ms)
        # kube-scheduler adds its own scores and picks the best; ties broken at random. Here: the best score
        # among nodes without a bind of ours under way.
        best = sorted(ranked, key=lambda h: -int(h["Score"]))
        for host in best:
            if host["Host"] not in busy:
                return str(host["Host"])
        return str(best[0]["Host"]) if best else None

    async def bind(self, pod: dict[str, Any], node: str) -> bool:
        meta = pod["metadata"]
        body = {"PodName": meta["name"], "PodNamespace": NS, "PodUID": meta["uid"], "Node": node}
        result, ms = await self._post("bind", body)
        error = result.get("Error") or ""
        if error:
            key = error.split(":")[0][:80]
            self.bind_errors[key] = self.bind_errors.get(key, 0) + 1
            return False
        self.bind_ms.append(ms)
        # The device plugin's Allocate releases the node lock once the pod's devices are handed out.
        patch = {"metadata": {"annotations": {wire.NODE_LOCK: None}}}
        async with self.session.patch(
            f"{self.kube}/api/v1/nodes/{node}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            await resp.read()
        return True


async def drive(
    args: argparse.Namespace,
    extender: str,
    metrics: str,
    kube: str,
    nodes: list[str],
    pending: list[Any],
    pids: dict[str, int],
) -> Any:
    samples, to_bind = pending[: args.samples], pending[args.samples :]
    connector = aiohttp.TCPConnector(limit=args.bind_concurrency + 4)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:
        idle_all = Client(session, extender, kube, Candidates(nodes, every_node=True))
        for pod in samples:
            await idle_all.cycle(pod, set())
        idle = Client(session, extender, kube, Candidates(nodes))
        start_times, _ = await server_times(session, metrics)
        for pod in samples:
            await idle.cycle(pod, set())
        idle_times, scrape = await server_times(session, metrics)
        idle.server = server_means(start_times, idle_times)
        idle.scrape = scrape

        load = Client(session, extender, kube, Candidates(nodes))
        busy: set[str] = set()
        slots = asyncio.Semaphore(args.bind_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        bound = 0

        async def bind(pod: dict[str, Any], node: str) -> None:
            nonlocal bound
            try:
                if await load.bind(pod, node):
                    bound += 1
            finally:
                busy.discard(node)
                slots.release()

        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        threads_before = thread_cpu_seconds(pids["scheduler"])
        started = time.perf_counter()
        for pod in to_bind:
            node = await load.cycle(pod, busy)
            if node is None:
                continue
            await slots.acquire()
            busy.add(node)
            task = asyncio.create_task(bind(pod, node))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
        elapsed = time.perf_counter() - started
        load.cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        threads = thread_cpu_seconds(pids["scheduler"])
        main_thread = threads.get(pids["scheduler"], 0.0) - threads_before.get(pids["scheduler"], 0.0)
        load.threads = (main_thread, load.cpu["scheduler"] - main_thread)
        load_times, _ = await server_times(session, metrics)
        load.server = server_means(idle_times, load_times)
    return idle_all, idle, load, bound, elapsed


async def _serve_kube_local(state_file: str, port: int) -> None:
    """kube-local serving a prepared state, without persistence (the bench's kube-local process)."""
    import signal

    store = Store(watch_queue_size=100_000)
    store.load_state(Path(state_file).read_bytes())
    server = KubeLocal(store)
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--serve-kube-local"]:
        asyncio.run(_serve_kube_local(argv[1], int(argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--pods", type=int, default=10000, help="running vGPU pods (pre-allocated)")
    parser.add_argument(
        "--binds", type=int, default=1000, help="pending pods scheduled in the sustained phase"
    )
    parser.add_argument("--samples", type=int, default=100, help="pods of the idle latency phase")
    parser.add_argument("--bind-concurrency", type=int, default=16)
    parser.add_argument("--no-events", action="store_true", help="scheduler emit_events: false")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, state)")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="record the scheduler process with py-spy (all threads, collapsed stacks) into PATH",
    )
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="kube-vgpu-scheduler-bench-"))
    print(
        f"sizes: {args.nodes} nodes x {args.gpus} GPUs (split {SPLIT}), {args.pods} running vGPU pods, "
        f"{args.samples} idle-latency pods, {args.binds} pods bound under load "
        f"(bind concurrency {args.bind_concurrency}, events {'off' if args.no_events else 'on'})",
        flush=True,
    )
    t0 = time.perf_counter()
    state, nodes, pending = build_state(args)
    state_file = run_dir / "state.json"
    state_file.write_bytes(state)
    print(f"state: {len(state) / 1e6:.1f} MB of JSON built in {time.perf_counter() - t0:.1f} s", flush=True)
    del state

    processes: list[ManagedProcess] = []
    try:
        port = free_port()
        kube_local = ManagedProcess(
            "kube-local",
            [sys.executable, str(Path(__file__).resolve()), "--serve-kube-local", str(state_file), str(port)],
            run_dir / "kube-local.log",
        )
        processes.append(kube_local)
        t0 = time.perf_counter()
        kube_local.start()
        kube = f"http://127.0.0.1:{port}"
        wait_until("kube-local", lambda: http_ok(f"{kube}/readyz"), kube_local, timeout=120)
        print(f"kube-local up in {time.perf_counter() - t0:.1f} s", flush=True)

        ports: set[int] = set()
        while len(ports) < 3:  # free_port() may hand out one port twice when asked back to back
            ports.add(free_port())
        extender_port, metrics_port, grpc_port = sorted(ports)
        config = {
            "http_bind": f"127.0.0.1:{extender_port}",
            "grpc_bind": f"127.0.0.1:{grpc_port}",
            "metrics_bind_address": f"127.0.0.1:{metrics_port}",
            "node_scheduler_policy": "spread",
            "emit_events": not args.no_events,
            "kube": {"server": kube},
            "log": {"format": "json"},
        }
        config_path = run_dir / "scheduler.yaml"
        config_path.write_text(yaml.safe_dump(config))
        scheduler = ManagedProcess(
            "scheduler",
            [*console_script("kube-vgpu-scheduler", "services.scheduler"), "--config", str(config_path)],
            run_dir / "scheduler.log",
        )
        processes.append(scheduler)
        t0 = time.perf_counter()
        scheduler.start()
        extender = f"http://127.0.0.1:{extender_port}"
        wait_until("scheduler", lambda: http_ok(f"{extender}/readyz"), scheduler, timeout=300)
        assert scheduler.proc is not None
        pid = scheduler.proc.pid
        print(f"scheduler (pid {pid}) caches listed in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.profile:
            profiler = ManagedProcess(
                "py-spy",
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--gil",
                    "--nonblocking",
                    "--output",
                    str(Path(args.profile).resolve()),
                ],
                run_dir / "py-spy.log",
            )
            profiler.start()
            processes.insert(0, profiler)
        time.sleep(1.0)
        rss_idle, _ = rss_mb(pid)
        assert kube_local.proc is not None
        pids = {"scheduler": pid, "kube-local": kube_local.proc.pid, "bench client": os.getpid()}
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}

        metrics = f"http://127.0.0.1:{metrics_port}"
        # The client holds the whole generated cluster; a collection of it mid-run would be timed as
        # scheduler latency. Freeze it so the samples measure the scheduler, not this process.
        gc.collect()
        gc.freeze()
        idle_all, idle, load, bound, elapsed = asyncio.run(
            drive(args, extender, metrics, kube, nodes, pending, pids)
        )
        cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
        rss_end, rss_peak = rss_mb(pid)
        with urllib.request.urlopen(f"{extender}/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        for process in reversed(processes):
            process.stop()

    feasible = feasible_nodes_to_find(args.nodes)
    print()
    print(
        f"idle latency ({args.samples} pods, one at a time, {feasible} candidate nodes per filter "
        "(kube-scheduler's numFeasibleNodesToFind), rotating like its nextStartNodeIndex):"
    )
    print("  " + latency_line("filter", idle.filter_ms))
    print("  " + latency_line("prioritize", idle.prioritize_ms))
    print("  " + latency_line("filter+prioritize", idle.cycle_ms))
    print(f"  scheduler-side means: {idle.server}")
    print(f"idle latency, every one of the {args.nodes} nodes a candidate (same pods):")
    print("  " + latency_line("filter", idle_all.filter_ms))
    print("  " + latency_line("prioritize", idle_all.prioritize_ms))
    print("  " + latency_line("filter+prioritize", idle_all.cycle_ms))
    print(
        f"under load ({args.binds} pods, {feasible} candidates per filter, filter+prioritize serial, "
        f"binds concurrent):"
    )
    print("  " + latency_line("filter", load.filter_ms))
    print("  " + latency_line("prioritize", load.prioritize_ms))
    print("  " + latency_line("filter+prioritize", load.cycle_ms))
    print("  " + latency_line("bind (to answer)", load.bind_ms))
    print(f"  scheduler-side means: {load.server}")
    rate = bound / elapsed if elapsed > 0 else 0.0
    print(f"  bound {bound}/{args.binds} in {elapsed:.1f} s = {rate:.1f} pods/s", end="")
    print(f"; unschedulable {load.unschedulable}; bind errors {load.bind_errors or 'none'}")
    print("CPU seconds used during both phases: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    per_pod = {name: seconds / bound * 1000 for name, seconds in load.cpu.items()} if bound else {}
    if per_pod:
        print(
            "CPU per bound pod under load: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in per_pod.items())
            + f" (on {os.cpu_count()} cores); the scheduler alone on one core: "
            f"{1000 / per_pod['scheduler']:.0f} pods/s"
        )
        # The bench client's work per pod is fixed (it encodes, sends and decodes the same requests), so the
        # scheduler's CPU over the client's is a figure that does not move with the host's speed, which on a
        # shared machine changes the absolute figures by half or more between runs.
        relative = per_pod["scheduler"] / per_pod["bench client"]
        print(f"  scheduler CPU / bench client CPU per pod: {relative:.2f} (host-speed independent)")
        loop_ms, other_ms = (seconds / bound * 1000 for seconds in load.threads)
        print(
            f"  the scheduler's split: event-loop thread {loop_ms:.2f} ms, other threads (watches, event "
            f"posting) {other_ms:.2f} ms"
        )
    print(f"/metrics scrape: {idle.scrape * 1000:.0f} ms")
    print(
        f"scheduler RSS: {rss_idle:.0f} MB after listing, {rss_end:.0f} MB at the end, peak {rss_peak:.0f} MB"
    )
    cpu_per_pod = per_pod.get("scheduler", float("inf"))
    idle_p99 = percentile(idle.cycle_ms, 99)
    idle_all_p99 = percentile(idle_all.cycle_ms, 99)
    load_p99 = percentile(load.cycle_ms, 99)

    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else "MISSED"

    print("targets:")
    print(
        f"  extender CPU per scheduled pod <= {TARGET_CPU_MS_PER_POD:g} ms: {cpu_per_pod:.2f} ms "
        f"({verdict(cpu_per_pod, TARGET_CPU_MS_PER_POD)})"
    )
    print(
        f"  idle filter+prioritize p99 <= {TARGET_IDLE_P99_MS:g} ms at {feasible} candidates: "
        f"{idle_p99:.2f} ms ({verdict(idle_p99, TARGET_IDLE_P99_MS)}); all {args.nodes} nodes: "
        f"{idle_all_p99:.2f} ms"
    )
    print(
        f"  under-load filter+prioritize p99 <= {TARGET_LOAD_P99_MS:g} ms: {load_p99:.2f} ms "
        f"({verdict(load_p99, TARGET_LOAD_P99_MS)})"
    )
    print(f"  RSS <= {TARGET_RSS_MB:g} MB: peak {rss_peak:.0f} MB ({verdict(rss_peak, TARGET_RSS_MB)})")
    if args.keep:
        print(f"run directory kept: {run_dir}")
    else:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
