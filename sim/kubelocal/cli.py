"""``kube-local``: serve the Kubernetes API subset of kube-local until SIGINT/SIGTERM.

Prints the URL on its own line once it is serving (``--port 0`` picks a free port), then runs
until interrupted; a clean stop ends every watch and closes ``--state-dir`` (where every write is
on disk before it is answered, so SIGKILL loses nothing acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from sim.kubelocal.persistence import StateError
from sim.kubelocal.server import KubeLocal

DEFAULT_PORT = 8001

log = structlog.get_logger("kube-local")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kube-local", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on, 0 for any free one (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--state-dir", default=None, help="keep the cluster state in this directory across restarts"
    )
    parser.add_argument(
        "--history-size",
        type=int,
        default=10_000,
        help="watch events kept for resuming watches; older resourceVersions get 410 Gone (default 10000)",
    )
    parser.add_argument(
        "--watch-queue-size",
        type=int,
        default=1_000,
        help="events a slow watcher may fall behind before its stream is closed (default 1000)",
    )
    parser.add_argument(
        "--instance-token",
        default=None,
        help="answer every /healthz, /readyz and /livez with this value in the X-Kube-Local-Instance header, "
        "so whoever started this kube-local can tell it from another server on the same port (local mode "
        "passes a random one per run)",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    server = KubeLocal(
        state_dir=args.state_dir,
        history_size=args.history_size,
        watch_queue_size=args.watch_queue_size,
        instance_token=args.instance_token,
    )
    url = await server.start(args.host, args.port)
    print(url, flush=True)  # first line of stdout, for whoever started us
    log.info("kube-local serving", url=url, state_dir=args.state_dir, history_size=args.history_size)
    for message, fields in server.state_notes:
        log.warning(message, **fields)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.history_size < 1:
        print("kube-local: --history-size must be at least 1", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args))
    except StateError as exc:
        print(f"kube-local: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kube-local: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
