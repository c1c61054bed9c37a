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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import ConfigError
from services.common.entrypoint import wait_for_shutdown
from services.common.inventory import INVENTORY_COLUMNS, format_table, inventory_rows
from services.common.kube import KubeAccess, list_raw, new_api_client
from services.common.log import LogConfig, configure_logging, get_logger
from services.local import kube_scheduler
from services.local.cluster import LocalCluster, load_cluster, node_object

SYSTEM_NAMESPACE = "kube-vgpu-system"
log = get_logger("kube-vgpu-local")


class LocalModeError(RuntimeError):
    pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _kube_local_command(host: str, port: int, state_dir: str | None) -> list[str]:
    script = Path(sys.executable).with_name("kube-local")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "services.kubelocal"]
    cmd = [*base, "--host", host, "--port", str(port)]
    if state_dir:
        cmd += ["--state-dir", state_dir]
    return cmd


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalModeError(f"kube-local exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise LocalModeError(f"kube-local at {url} not ready after {timeout:.0f}s")


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


def cluster_summary(api: client.ApiClient, url: str) -> str:
    nodes = list_raw(client.CoreV1Api(api).list_node)
    rows = inventory_rows(nodes)
    gpus = sum(1 for r in rows if r["gpu"] not in ("-", "?"))
    vgpus = sum(int(r.get("vgpus", "0")) for r in {r["node"]: r for r in rows}.values())
    header = (
        f"kube-vgpu local mode: kube-local at {url}\n"
        f"{len(nodes)} nodes, {gpus} GPUs, {vgpus} schedulable vGPU slots (nvidia.com/gpu)\n"
        f"  vgpuctl --server {url} inventory   # the same inventory, from another terminal\n"
    )
    return header + format_table(rows, INVENTORY_COLUMNS)


async def _serve_until_stopped(proc: subprocess.Popen[bytes]) -> None:
    waiter = asyncio.create_task(wait_for_shutdown())
    while not waiter.done():
        if proc.poll() is not None:
            waiter.cancel()
            raise LocalModeError(f"kube-local exited unexpectedly with status {proc.returncode}")
        await asyncio.sleep(0.5)


def up(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.cluster)
    except ConfigError as exc:
        print(f"kube-vgpu-local: {exc}", file=sys.stderr)
        return 2
    port = args.port or _free_port(args.host)
    url = f"http://{args.host}:{port}"
    state_dir = args.state_dir
    if state_dir:
        os.makedirs(state_dir, exist_ok=True)
    proc = subprocess.Popen(_kube_local_command(args.host, port, state_dir))
    try:
        _wait_ready(url, proc)
        with new_api_client(KubeAccess(server=url)) as api:
            register_cluster(api, cluster)
            print(cluster_summary(api, url), flush=True)
        if not args.once:
            print("\nlocal mode is up; Ctrl-C stops it", flush=True)
            asyncio.run(_serve_until_stopped(proc))
        return 0
    except (LocalModeError, ApiException) as exc:
        print(f"kube-vgpu-local: {exc}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    configure_logging(LogConfig(level=args.log_level), service="kube-vgpu-local")
    if args.command == "kube-scheduler":
        return kube_scheduler.run_cli(args.server, args.config)
    return up(args)


if __name__ == "__main__":
    raise SystemExit(main())
