"""`vgpuctl`: the operator's command line.

Exit codes: 0 ok, 1 API or connection error, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from services.common.inventory import INVENTORY_COLUMNS, format_table, inventory_rows
from services.common.kube import KubeAccess, KubeAccessError, list_raw, new_api_client

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE = 0, 1, 2


def _emit(rows: list[dict[str, str]], output: str, columns: list[str]) -> None:
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        print(format_table(rows, columns))


def cmd_nodes(api: client.ApiClient, args: argparse.Namespace) -> int:
    nodes = list_raw(client.CoreV1Api(api).list_node, label_selector=args.selector or "")
    if args.name:
        nodes = [n for n in nodes if n["metadata"]["name"] in set(args.name)]
    _emit(inventory_rows(nodes), args.output, INVENTORY_COLUMNS)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgpuctl", description="Inspect kube-vgpu GPU sharing.")
    parser.add_argument("--server", help="API server URL without auth (e.g. the kube-local URL)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    sub = parser.add_subparsers(dest="command", required=True)
    p_nodes = sub.add_parser("nodes", help="GPUs each node registered (hami.io/node-nvidia-register)")
    p_nodes.add_argument("name", nargs="*", help="only these nodes")
    p_nodes.add_argument("-l", "--selector", help="label selector, e.g. gpu=on")
    p_nodes.set_defaults(func=cmd_nodes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        access = KubeAccess(server=args.server, kubeconfig=args.kubeconfig, context=args.context)
        with new_api_client(access) as api:
            code: int = args.func(api, args)
            return code
    except KubeAccessError as exc:
        print(f"vgpuctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiException as exc:
        print(f"vgpuctl: API error {exc.status}: {exc.reason}", file=sys.stderr)
        return EXIT_API_ERROR
    except (HTTPError, OSError) as exc:
        print(f"vgpuctl: cannot reach the API server: {exc}", file=sys.stderr)
        return EXIT_API_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
