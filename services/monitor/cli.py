"""`kube-vgpu-monitor`: the per-node usage monitor.

Today it validates its config and serves gRPC health and reflection; metrics and MonitorService arrive
with the monitor work item.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.entrypoint import run_service, serve_grpc_until_stopped
from services.monitor.config import ENV_PREFIX, MonitorConfig

PROG = "kube-vgpu-monitor"


async def run(cfg: MonitorConfig) -> None:
    await serve_grpc_until_stopped(PROG, cfg.grpc_bind)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        MonitorConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
