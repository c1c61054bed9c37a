"""`kube-vgpu-local`: the whole suite on one machine, with simulated GPUs.

`up` starts kube-local as its own process, registers the simulated nodes of a cluster file through the
official client (exactly as the device plugin would), prints the inventory the scheduler will see, and
keeps running until Ctrl-C (or exits at once with --once, for scripts and tests).

`kube-scheduler` runs the kube-scheduler stand-in (`kube_scheduler.py`) against a running kube-local with
a real KubeSchedulerConfiguration file, calling its extenders as kube-scheduler does, until SIGTERM/Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import ConfigError
from services.common.entrypoint import wait_for_shutdown
from services.common.inventory import INVENTORY_COLUMNS, format_table, inventory_rows
from services.common.kube import list_raw, new_api_client
from services.common.log import LogConfig, configure_logging, get_logger
from sim.local import kube_scheduler, kubelet
from sim.local.cluster import LocalCluster, load_cluster, node_object
from sim.local.demo import DemoError, load_demo_pods, monitor_summary, run_demo
from sim.local.suite import CONTROL_PLANES, Suite, SuiteError

SYSTEM_NAMESPACE = "kube-vgpu-system"
log = get_logger("kube-vgpu-local")


def register_cluster(api: client.ApiClient, cluster: LocalCluster) -> None:
    """Create or refresh the simulated nodes; a restart with --state-dir updates them in place."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SYSTEM_NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    for node in cluster.nodes:
        # Plain JSON bodies: the client serialises dicts as they are, with our exact annotation strings.
        body: Any = node_object(node, cluster.device_split_count)
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.patch_node(node.name, {"metadata": body["metadata"]})
        core.patch_node_status(node.name, {"status": body["status"]})
        log.info("node_registered", node=node.name, gpus=len(node.gpus))


def cluster_summary(api: client.ApiClient, suite: Suite) -> str:
    nodes = list_raw(client.CoreV1Api(api).list_node)
    rows = inventory_rows(nodes)
    gpus = sum(1 for r in rows if r["gpu"] not in ("-", "?"))
    vgpus = sum(int(r.get("vgpus", "0")) for r in {r["node"]: r for r in rows}.values())
    if suite.kubeconfig is not None:
        where = (
            f"kube-vgpu local mode: the upstream control plane at {suite.url}\n"
            f"  export KUBECONFIG={suite.kubeconfig}   # kubectl get pods -o wide, describe, apply -f ...\n"
        )
        inventory = f"vgpuctl --kubeconfig {suite.kubeconfig} inventory"
    else:
        where = f"kube-vgpu local mode: kube-local at {suite.url}\n"
        inventory = f"vgpuctl --server {suite.url} inventory"
    header = (
        f"{where}"
        f"{len(nodes)} nodes, {gpus} GPUs, {vgpus} schedulable vGPU slots (nvidia.com/gpu)\n"
        f"  {inventory}   # the same inventory, from another terminal\n"
    )
    return header + format_table(rows, INVENTORY_COLUMNS)


async def _serve_until_stopped(suite: Suite, cluster: LocalCluster) -> None:
    """Keep the suite up until Ctrl-C/SIGTERM, restarting any child that dies (with backoff)."""
    waiter = asyncio.create_task(wait_for_shutdown())
    try:
        while not waiter.done():
            restarted = await asyncio.to_thread(suite.supervise)
            if "kube-local" in restarted:
                with new_api_client(suite.admin) as api:
                    register_cluster(api, cluster)
            for name in restarted:
                print(
                    f"restarted {name} (it had exited; see {suite.run_dir / 'logs' / name}.log)", flush=True
                )
            await asyncio.sleep(0.5)
    finally:
        waiter.cancel()


def up(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.cluster)
        demo_pods = load_demo_pods(args.demo) if args.demo else []
    except ConfigError as exc:
        print(f"kube-vgpu-local: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="kube-vgpu-local-"))
    suite = Suite(
        run_dir=run_dir,
        host=args.host,
        kube_local_port=args.port,
        state_dir=args.state_dir,
        control_plane=args.control_plane,
    )
    try:
        admin = suite.start_api()
        with new_api_client(admin) as api:
            register_cluster(api, cluster)
            print(cluster_summary(api, suite), flush=True)
            if not args.api_only:
                suite.write_device_config(cluster.device_split_count)
                suite.start_control_plane()
                suite.start_nodes(Path(args.cluster).resolve(), [n.name for n in cluster.nodes if n.gpus])
                kube_scheduler_kind = "kube-scheduler" if suite.real else "kube-scheduler stand-in"
                print(
                    f"\nsuite up (logs in {run_dir / 'logs'}): webhook, scheduler extender on "
                    f"127.0.0.1:{suite.extender_port} (metrics {suite.scheduler_metrics}), "
                    f"{kube_scheduler_kind}; per GPU node a device plugin, a kubelet stand-in and a monitor\n"
                    f"  vgpuctl --scheduler {suite.scheduler_grpc} nodes",
                    flush=True,
                )
                for node, (metrics, monitor) in sorted(suite.monitors.items()):
                    print(f"  {node}: {metrics}   vgpuctl --monitor {monitor} top", flush=True)
            if demo_pods:
                table, running = run_demo(
                    api,
                    demo_pods,
                    timeout=args.demo_timeout,
                    expect_running=not args.api_only,
                    allocation_record=suite.allocation_record,
                )
                print("\n" + table, flush=True)
                if suite.monitors:
                    print("\n" + monitor_summary(suite.monitors, running, timeout=20.0), flush=True)
        if not args.once:
            print("\nlocal mode is up; Ctrl-C stops it", flush=True)
            asyncio.run(_serve_until_stopped(suite, cluster))
        return 0
    except (SuiteError, DemoError, ApiException) as exc:
        print(f"kube-vgpu-local: {exc}", file=sys.stderr)
        return 1
    finally:
        suite.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["kubelet"]:
        # The kubelet stand-in has its own flags (`kube-vgpu-local kubelet --help`).
        return kubelet.main(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="kube-vgpu-local", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start kube-local and the simulated cluster")
    p_up.add_argument("--cluster", default="deploy/local/cluster.yaml", help="simulated cluster file")
    p_up.add_argument("--host", default="127.0.0.1")
    p_up.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("KUBE_LOCAL_PORT", "8001")),
        help="kube-local port (0: any free port)",
    )
    p_up.add_argument("--state-dir", default=None, help="keep kube-local's objects across restarts")
    p_up.add_argument("--once", action="store_true", help="print the summary, stop everything and exit")
    p_up.add_argument("--api-only", action="store_true", help="only kube-local and the simulated nodes")
    p_up.add_argument("--demo", metavar="FILE", help="pods to submit once the suite is up (YAML, multi-doc)")
    p_up.add_argument("--demo-timeout", type=float, default=60.0, help="seconds to wait for the demo pods")
    p_up.add_argument("--run-dir", help="where configs, certificates and logs go (default: a new temp dir)")
    p_up.add_argument(
        "--control-plane",
        choices=CONTROL_PLANES,
        default="kube-local",
        help="kube-local (starts in seconds) or real: upstream etcd, kube-apiserver, kube-controller-manager "
        "and kube-scheduler built from Kubernetes' Go modules (`make controlplane`; --port and --state-dir "
        "apply to kube-local only)",
    )
    p_ks = sub.add_parser(
        "kube-scheduler",
        help="run the kube-scheduler stand-in: profiles and extenders of a KubeSchedulerConfiguration",
    )
    p_ks.add_argument(
        "--server",
        default=f"http://127.0.0.1:{os.environ.get('KUBE_LOCAL_PORT', '8001')}",
        help="kube-local URL (default http://127.0.0.1:$KUBE_LOCAL_PORT, port 8001)",
    )
    p_ks.add_argument(
        "--config",
        default="deploy/local/kube-scheduler.yaml",
        help="KubeSchedulerConfiguration file (kubescheduler.config.k8s.io/v1)",
    )
    sub.add_parser("kubelet", help="run the kubelet stand-in for one node (see kubelet --help)")
    args = parser.parse_args(args_list)
    configure_logging(LogConfig(level=args.log_level), service="kube-vgpu-local")
    if args.command == "kube-scheduler":
        return kube_scheduler.run_cli(args.server, args.config)
    return up(args)


if __name__ == "__main__":
    raise SystemExit(main())
