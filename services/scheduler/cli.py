"""`kube-vgpu-scheduler`: the HAMi-compatible scheduler extender (filter, prioritize, bind), its metrics and
the gRPC endpoint (health, reflection and the SchedulerService).

On SIGTERM it refuses new binds, lets those under way finish (releasing the node locks they hold), stops its
servers and its watches, and exits 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.config import ConfigError
from services.common.device_config import load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, run_service, wait_for_shutdown
from services.common.log import get_logger
from services.scheduler.config import ENV_PREFIX, SchedulerConfig
from services.scheduler.grpc_service import scheduler_services
from services.scheduler.runtime import SchedulerRuntime

PROG = "kube-vgpu-scheduler"


async def run(cfg: SchedulerConfig) -> None:
    logger = get_logger(PROG)
    try:
        device_config = load_device_config(cfg.device_config_file)
    except ConfigError as exc:
        logger.error("device_config_invalid", error=str(exc))
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    logger.info("device_config_loaded", nvidia=device_config.nvidia.model_dump(by_alias=True))
    runtime = SchedulerRuntime(cfg, device_config, grpc_services=scheduler_services)
    try:
        await runtime.start()
    except OSError as exc:  # a busy or invalid listen address
        logger.error("cannot_listen", error=str(exc))
        raise SystemExit(1) from None
    try:
        await wait_for_shutdown()
        logger.info("stopping")
    finally:
        await runtime.stop()
        logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        SchedulerConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
