"""`kube-vgpu-device-plugin`: the per-node device plugin (kubelet Device Plugin API v1beta1).

Serves health/reflection on `grpc_bind` for probes (service "v1beta1.DevicePlugin" turns SERVING once the
kubelet accepted our registration), discovers the node's GPUs through NVML, serves the kubelet API on
`<plugin_dir>/nvidia-gpu.sock`, registers with the kubelet and keeps the node's
`hami.io/node-nvidia-register` annotation current. Without a usable GPU it keeps retrying every
`start_retry_seconds`, as HAMi's plugin does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from services.common.config import apply_env_aliases
from services.common.entrypoint import run_service
from services.device_plugin.config import ENV_PREFIX, HAMI_ENV_ALIASES, DevicePluginConfig
from services.device_plugin.runtime import run

PROG = "kube-vgpu-device-plugin"


def main(argv: Sequence[str] | None = None) -> int:
    apply_env_aliases(os.environ, HAMI_ENV_ALIASES, ENV_PREFIX)
    return run_service(
        DevicePluginConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
