"""`kube-vgpu-monitor`: the per-node usage monitor (HAMi's vGPUmonitor, docs/hami-wire.md#monitor-discovery).

Reads every container's shared region under `<hook_path>/containers/<podUID>_<container>/` (read-only
mappings, validated before use), pairs them with this node's pods, serves HAMi's `hami_*` metrics on
`metrics_bind_address` (`/metrics`) and MonitorService on `grpc_bind`, runs the priority feedback loop and
removes cache dirs of pods that are gone once `stale_grace_seconds` have passed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from services.common.config import apply_env_aliases
from services.common.entrypoint import run_service
from services.monitor.config import ENV_PREFIX, HAMI_ENV_ALIASES, MonitorConfig
from services.monitor.runtime import run

PROG = "kube-vgpu-monitor"


def main(argv: Sequence[str] | None = None) -> int:
    apply_env_aliases(os.environ, HAMI_ENV_ALIASES, ENV_PREFIX)
    return run_service(
        MonitorConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
