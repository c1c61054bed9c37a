"""`kube-vgpu-sim-device-plugin`: the product device plugin on simulated GPUs (local mode and tests).

The same process as `kube-vgpu-device-plugin` (same keys, `KUBE_VGPU_DEVICE_PLUGIN_<KEY>` env, HAMi's
NODE_NAME/HOOK_PATH env names and flags), with GPUs read from a YAML inventory instead of NVML: two keys
are added, `simulated_inventory` (required) and `simulated_events_file` (XIDs to inject). See
`sim.gpus.backend` for the inventory shapes and how health is driven.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pydantic import Field

from services.common.config import apply_env_aliases
from services.common.entrypoint import run_service
from services.device_plugin import runtime
from services.device_plugin.config import ENV_PREFIX, HAMI_ENV_ALIASES, DevicePluginConfig
from services.device_plugin.gpu import GpuBackend
from sim.gpus.backend import SimulatedBackend

PROG = "kube-vgpu-sim-device-plugin"


class SimDevicePluginConfig(DevicePluginConfig):
    simulated_inventory: str = Field(
        ...,
        min_length=1,
        description="YAML inventory of the simulated GPUs (the local cluster file, node picked by node_name, "
        "or a per-node file with a top-level 'gpus' list); re-read when it changes",
    )
    simulated_events_file: str | None = Field(
        None,
        description='file of JSON lines {"uuid": ..., "xid": ...} appended to inject XIDs',
    )


def simulated_backend_factory(cfg: SimDevicePluginConfig) -> runtime.BackendFactory:
    """The runtime's backend factory for this config: a SimulatedBackend on its inventory and events file."""

    def build(plugin_cfg: DevicePluginConfig) -> GpuBackend:
        return SimulatedBackend(cfg.simulated_inventory, plugin_cfg.node_name, cfg.simulated_events_file)

    return build


async def run(cfg: SimDevicePluginConfig) -> None:
    await runtime.run(cfg, backend_factory=simulated_backend_factory(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    apply_env_aliases(os.environ, HAMI_ENV_ALIASES, ENV_PREFIX)
    return run_service(
        SimDevicePluginConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
