"""`vgpuctl`: the operator's command line.

`nodes`, `pods`, `explain` and `simulate` ask the scheduler's SchedulerService over gRPC (`--scheduler`,
default `$VGPUCTL_SCHEDULER` or 127.0.0.1:9090); `top` asks one node's MonitorService (`--monitor`, default
`$VGPUCTL_MONITOR` or 127.0.0.1:9091); `inventory` reads the nodes' register annotations straight from the
API server. Exit codes: 0 ok, 1 API or connection error (or, for explain/simulate, the pod fits nowhere),
2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.json_format import MessageToDict
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubevgpu.monitor.v1 import monitor_service_pb2 as mon_pb
from kubevgpu.monitor.v1 import monitor_service_pb2_grpc as mon_grpc
from kubevgpu.scheduler.v1 import scheduler_service_pb2 as pb
from kubevgpu.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.config import KubeAccess
from services.common.inventory import INVENTORY_COLUMNS, format_table, inventory_rows
from services.common.kube import KubeAccessError, list_raw, new_api_client

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_SCHEDULER = "127.0.0.1:9090"
DEFAULT_MONITOR = "127.0.0.1:9091"
RPC_TIMEOUT_SECONDS = 15.0


class UsageError(Exception):
    pass


def _emit(rows: list[dict[str, str]], output: str, columns: list[str], raw: Any = None) -> None:
    if output == "json":
        print(json.dumps(raw if raw is not None else rows, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(raw if raw is not None else rows, sort_keys=False), end="")
    else:
        print(format_table(rows, columns))


def _as_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


def _pct(used: int, total: int) -> str:
    return f"{100 * used / total:.0f}%" if total else "-"


def _cards(containers: Sequence[Any]) -> str:
    parts = []
    for c in containers:
        for d in c.devices:
            who = c.container_name or f"#{c.container_index}"
            parts.append(f"{who}:{d.uuid} {d.used_memory_mib}MiB/{d.used_cores_percent}%")
    return ", ".join(parts) or "-"


def cmd_inventory(args: argparse.Namespace) -> int:
    access = KubeAccess(server=args.server, kubeconfig=args.kubeconfig, context=args.context)
    with new_api_client(access) as api:
        nodes = list_raw(client.CoreV1Api(api).list_node, label_selector=args.selector or "")
    if args.name:
        nodes = [n for n in nodes if n["metadata"]["name"] in set(args.name)]
    _emit(inventory_rows(nodes), args.output, INVENTORY_COLUMNS)
    return EXIT_OK


def cmd_nodes(stub: pb_grpc.SchedulerServiceStub, args: argparse.Namespace) -> int:
    reply = stub.ListNodes(
        pb.ListNodesRequest(node_name=args.name or "", label_selector=args.selector or ""),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    rows = []
    for node in reply.nodes:
        for usage in node.devices:
            dev = usage.device
            rows.append(
                {
                    "node": node.name,
                    "gpu": str(dev.index),
                    "type": dev.type,
                    "slots": f"{usage.used_slots}/{dev.split_count}",
                    "memory_mib": f"{usage.used_memory_mib}/{dev.memory_mib}",
                    "mem%": _pct(usage.used_memory_mib, dev.memory_mib),
                    "cores": f"{usage.used_cores_percent}/{dev.cores_percent}",
                    "health": "Healthy" if dev.health == 1 else "Unhealthy",
                    "cordoned": "yes" if dev.uuid in node.cordoned_device_uuids else "",
                    "uuid": dev.uuid,
                }
            )
    columns = ["node", "gpu", "type", "slots", "memory_mib", "mem%", "cores", "health", "cordoned", "uuid"]
    _emit(rows, args.output, columns, raw=_as_dict(reply))
    return EXIT_OK


def cmd_pods(stub: pb_grpc.SchedulerServiceStub, args: argparse.Namespace) -> int:
    reply = stub.ListPodAllocations(
        pb.ListPodAllocationsRequest(node_name=args.node or "", namespace=args.namespace or ""),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    rows = [
        {
            "namespace": a.pod.namespace,
            "pod": a.pod.name,
            "node": a.pod.node,
            "phase": a.bind_phase or "-",
            "devices": _cards(a.pod.containers),
        }
        for a in reply.allocations
    ]
    _emit(rows, args.output, ["namespace", "pod", "node", "phase", "devices"], raw=_as_dict(reply))
    return EXIT_OK


def _verdict_rows(verdicts: Sequence[Any]) -> list[dict[str, str]]:
    return [
        {
            "node": v.node_name,
            "fits": "yes" if v.fits else "no",
            "score": f"{v.score:.2f}",
            "reason": v.reason or "-",
            "devices": _cards(v.containers) if v.fits else "-",
        }
        for v in sorted(verdicts, key=lambda v: (not v.fits, v.node_name))
    ]


def cmd_explain(stub: pb_grpc.SchedulerServiceStub, args: argparse.Namespace) -> int:
    namespace, _, name = args.pod.rpartition("/")
    reply = stub.ExplainPod(
        pb.ExplainPodRequest(namespace=namespace or args.namespace or "default", name=name),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    if args.output == "table":
        where = f"bound to {reply.assigned_node}" if reply.assigned_node else "not bound"
        print(f"pod {reply.namespace}/{reply.name}: {where}")
    _emit(
        _verdict_rows(reply.verdicts),
        args.output,
        ["node", "fits", "score", "reason", "devices"],
        _as_dict(reply),
    )
    return EXIT_OK if any(v.fits for v in reply.verdicts) else EXIT_FAILED


def _load_pod(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read pod from {path}: {exc}") from exc
    pods = [d for d in docs if isinstance(d, dict) and d.get("kind", "Pod") == "Pod"]
    if len(pods) != 1:
        raise UsageError(f"{path} must hold exactly one Pod, found {len(pods)}")
    return pods[0]


def cmd_simulate(stub: pb_grpc.SchedulerServiceStub, args: argparse.Namespace) -> int:
    pod = _load_pod(args.filename)
    reply = stub.Simulate(
        pb.SimulateRequest(pod_json=json.dumps(pod).encode(), node_names=args.node or []),
        timeout=RPC_TIMEOUT_SECONDS,
    )
    if args.output == "table":
        print(reply.message)
        if reply.fits:
            print(f"devices: {_cards(reply.containers)}")
    _emit(
        _verdict_rows(reply.verdicts),
        args.output,
        ["node", "fits", "score", "reason", "devices"],
        _as_dict(reply),
    )
    return EXIT_OK if reply.fits else EXIT_FAILED


TOP_COLUMNS = [
    "namespace",
    "pod",
    "container",
    "gpu",
    "memory",
    "mem%",
    "core%",
    "core_limit",
    "last_kernel",
    "uuid",
]


def _mib(value: int) -> str:
    return f"{value / (1024 * 1024):.0f}MiB"


def _ago(unix_seconds: int, now: float) -> str:
    if unix_seconds <= 0:
        return "-"
    seconds = max(0, int(now - unix_seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def top_rows(containers: Sequence[Any], now: float) -> list[dict[str, str]]:
    rows = []
    for c in containers:
        pod = c.pod_name or f"<uid {c.pod_uid}>"
        for d in c.devices or [None]:
            if d is None:
                rows.append({"namespace": c.namespace or "-", "pod": pod, "container": c.container_name})
                continue
            limit = d.memory_limit_bytes
            rows.append(
                {
                    "namespace": c.namespace or "-",
                    "pod": pod,
                    "container": c.container_name,
                    "gpu": str(d.index),
                    "memory": f"{_mib(d.memory_used_bytes)}/{_mib(limit) if limit else '-'}",
                    "mem%": _pct(d.memory_used_bytes, limit),
                    "core%": f"{d.core_used_percent}%",
                    "core_limit": f"{d.core_limit_percent}%" if d.core_limit_percent else "-",
                    "last_kernel": _ago(c.last_kernel_time_unix_seconds, now),
                    "uuid": d.uuid,
                }
            )
    return rows


def _top_header(node: str, timestamp_ms: int, containers: int) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(timestamp_ms / 1000)) if timestamp_ms else "-"
    return f"node {node or '?'}  {containers} GPU container(s)  {when}"


def cmd_top(stub: mon_grpc.MonitorServiceStub, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    if args.once:
        reply = stub.ListContainerUsage(
            mon_pb.ListContainerUsageRequest(namespace=args.namespace or "", pod_name=args.pod or ""),
            timeout=RPC_TIMEOUT_SECONDS,
        )
        if args.output == "table":
            print(_top_header(reply.node_name, int(time.time() * 1000), len(reply.containers)))
        _emit(top_rows(reply.containers, time.time()), args.output, TOP_COLUMNS, raw=_as_dict(reply))
        return EXIT_OK
    stream = stub.WatchContainerUsage(
        mon_pb.WatchContainerUsageRequest(
            interval_ms=int(args.interval * 1000), namespace=args.namespace or "", pod_name=args.pod or ""
        )
    )
    clear = sys.stdout.isatty()
    try:
        for snapshot in stream:
            if clear:
                print("\x1b[H\x1b[2J", end="")
            if args.output == "table":
                print(_top_header(snapshot.node_name, snapshot.timestamp_unix_ms, len(snapshot.containers)))
            rows = top_rows(snapshot.containers, time.time())
            _emit(rows, args.output, TOP_COLUMNS, raw=_as_dict(snapshot))
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgpuctl", description="Inspect kube-vgpu GPU sharing.")
    parser.add_argument(
        "--scheduler",
        default=os.environ.get("VGPUCTL_SCHEDULER", DEFAULT_SCHEDULER),
        help="SchedulerService address, host:port or unix:PATH (default $VGPUCTL_SCHEDULER or %(default)s)",
    )
    parser.add_argument(
        "--monitor",
        default=os.environ.get("VGPUCTL_MONITOR", DEFAULT_MONITOR),
        help="a node's MonitorService address, for `top` (default $VGPUCTL_MONITOR or %(default)s)",
    )
    parser.add_argument(
        "--server", help="API server URL without auth, for `inventory` (e.g. the kube-local URL)"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file for `inventory` (default $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    sub = parser.add_subparsers(dest="command", required=True)

    p_inv = sub.add_parser("inventory", help="GPUs each node registered, read from the API server")
    p_inv.add_argument("name", nargs="*", help="only these nodes")
    p_inv.add_argument("-l", "--selector", help="label selector, e.g. gpu=on")
    p_inv.set_defaults(func=cmd_inventory, grpc=False)

    p_nodes = sub.add_parser("nodes", help="GPUs per node with their allocated slots, memory and cores")
    p_nodes.add_argument("name", nargs="?", help="only this node")
    p_nodes.add_argument("-l", "--selector", help="label selector (k=v, k!=v, k, !k)")
    p_nodes.set_defaults(func=cmd_nodes, grpc=True)

    p_pods = sub.add_parser("pods", help="GPU pods and the devices they hold")
    p_pods.add_argument("--node", help="only pods on this node")
    p_pods.add_argument("-n", "--namespace", help="only pods in this namespace")
    p_pods.set_defaults(func=cmd_pods, grpc=True)

    p_explain = sub.add_parser("explain", help="why a pod fits or does not fit each node")
    p_explain.add_argument("pod", help="NAMESPACE/NAME or NAME")
    p_explain.add_argument("-n", "--namespace", help="namespace when POD has none (default: default)")
    p_explain.set_defaults(func=cmd_explain, grpc=True)

    p_sim = sub.add_parser("simulate", help="where a pod would land, without creating it")
    p_sim.add_argument("-f", "--filename", required=True, help="pod YAML/JSON file, or - for stdin")
    p_sim.add_argument("--node", action="append", help="only consider this node (repeatable)")
    p_sim.set_defaults(func=cmd_simulate, grpc=True)

    p_top = sub.add_parser("top", help="live GPU usage of every container on one node (its monitor)")
    p_top.add_argument("--once", action="store_true", help="print one table and exit (for scripts)")
    p_top.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default %(default)s)"
    )
    p_top.add_argument("-n", "--namespace", help="only containers of pods in this namespace")
    p_top.add_argument("--pod", help="only containers of this pod")
    p_top.set_defaults(func=cmd_top, grpc=False)
    return parser


def _call_monitor(args: argparse.Namespace) -> int:
    func: Callable[[mon_grpc.MonitorServiceStub, argparse.Namespace], int] = args.func
    with grpc.insecure_channel(args.monitor) as channel:
        return func(mon_grpc.MonitorServiceStub(channel), args)


def _call_scheduler(args: argparse.Namespace) -> int:
    func: Callable[[pb_grpc.SchedulerServiceStub, argparse.Namespace], int] = args.func
    with grpc.insecure_channel(args.scheduler) as channel:
        return func(pb_grpc.SchedulerServiceStub(channel), args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func is cmd_top:
            return _call_monitor(args)
        if args.grpc:
            return _call_scheduler(args)
        code: int = args.func(args)
        return code
    except UsageError as exc:
        print(f"vgpuctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        status = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if status == grpc.StatusCode.UNAVAILABLE:
            what, where = ("monitor", args.monitor) if args.func is cmd_top else ("scheduler", args.scheduler)
            print(f"vgpuctl: cannot reach the {what} at {where}: {details}", file=sys.stderr)
        else:
            print(f"vgpuctl: {status.name if status else 'error'}: {details}", file=sys.stderr)
        return EXIT_USAGE if status == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED
    except KubeAccessError as exc:
        print(f"vgpuctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiException as exc:
        print(f"vgpuctl: API error {exc.status}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except (HTTPError, OSError) as exc:
        print(f"vgpuctl: cannot reach the API server: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
