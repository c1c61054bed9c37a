"""`kube-vgpu-scheduler`: the HAMi-compatible scheduler extender (filter, prioritize, bind), its metrics and
the gRPC endpoint (health, reflection and the SchedulerService).

On SIGTERM it refuses new binds, lets those under way finish (releasing the node locks they hold), stops its
servers and its watches, and exits 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.entrypoint import run_service
from services.scheduler.config import ENV_PREFIX, SchedulerConfig
from services.scheduler.runtime import run

PROG = "kube-vgpu-scheduler"


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        SchedulerConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
