"""`kube-vgpu-device-plugin`: the per-node device plugin.

Today it validates its config and serves gRPC health and reflection; the kubelet Device Plugin API
arrives with the device-plugin work item.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.config import ConfigError
from services.common.device_config import load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, run_service, serve_grpc_until_stopped
from services.common.log import get_logger
from services.device_plugin.config import ENV_PREFIX, DevicePluginConfig

PROG = "kube-vgpu-device-plugin"


async def run(cfg: DevicePluginConfig) -> None:
    try:
        device_config = load_device_config(cfg.device_config_file)
    except ConfigError as exc:
        get_logger(PROG).error("device_config_invalid", error=str(exc))
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    get_logger(PROG).info("device_config_loaded", nvidia=device_config.nvidia.model_dump(by_alias=True))
    await serve_grpc_until_stopped(PROG, cfg.grpc_bind)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        DevicePluginConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
