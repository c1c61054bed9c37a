"""Device plugin configuration (`kube-vgpu-device-plugin`).

Precedence is the suite's (flag > `KUBE_VGPU_DEVICE_PLUGIN_<KEY>` env > `--config` file > default). Two env
names of HAMi's DaemonSet are honoured as well, just below our own env names: `NODE_NAME` (the node this
plugin serves, from the downward API) and `HOOK_PATH` (where libvgpu lives, `/usr/local` by default).

What to register and how to answer Allocate comes from HAMi's shared `device-config.yaml`
(`device_config_file`, spec §1.2) with the per-node overrides of `config.json` (`node_config_file`, §1.3)
merged over it; see `services.device_plugin.settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config import ConfigModel
from services.common.kube import KubeAccess
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_DEVICE_PLUGIN_"

# Env names of HAMi's device plugin DaemonSet, honoured below ours: env name -> our key.
HAMI_ENV_ALIASES: dict[str, str] = {"NODE_NAME": "node_name", "HOOK_PATH": "hook_path"}

# HAMi's default Xid ignore list (`pkg/device-plugin/nvidiadevice/nvinternal/rm/health.go`): application
# errors (13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing, 45 preemptive
# cleanup, 68 video processor exception, 109 context switch timeout) that do not mean the card is broken.
DEFAULT_IGNORED_XIDS: tuple[int, ...] = (13, 31, 43, 45, 68, 109)


class HealthConfig(ConfigModel):
    enabled: bool = Field(
        True, description="watch XID events and mark GPUs unhealthy (false: always healthy)"
    )
    ignored_xids: list[int] = Field(
        default_factory=lambda: list(DEFAULT_IGNORED_XIDS),
        description="XIDs that never make a GPU unhealthy (HAMi's default list)",
    )
    recovery_seconds: float = Field(
        300.0,
        ge=0,
        description="a GPU made unhealthy by an XID is healthy again after this long without another "
        "critical XID; 0 keeps it unhealthy until the plugin restarts (HAMi's behaviour)",
    )


class DevicePluginConfig(ConfigModel):
    node_name: str = Field(
        ..., min_length=1, description="the node this plugin serves (env NODE_NAME is honoured, as in HAMi)"
    )
    grpc_bind: str = Field(
        "127.0.0.1:9093",
        description="health/reflection gRPC address for probes (host:port or unix:PATH); the kubelet API "
        "is served on the plugin socket instead",
    )
    plugin_dir: str = Field(
        "/var/lib/kubelet/device-plugins",
        description="the kubelet's device plugin directory: kubelet.sock is there and our socket goes there",
    )
    resource_name: str | None = Field(
        None, description="extended resource to advertise; default: device config nvidia.resourceCountName"
    )
    hook_path: str = Field(
        "/usr/local",
        description="HAMi's HOOK_PATH: container-side root of <hook>/vgpu (libvgpu.so, preload, caches)",
    )
    host_hook_path: str | None = Field(
        None,
        description="where <hook>/vgpu is on the host as this process sees it; default hook_path "
        "(the DaemonSet mounts the host dir at the same path)",
    )
    vgpulock_dir: str = Field("/tmp/vgpulock", description="host directory mounted at /tmp/vgpulock")
    libvgpu_source: str | None = Field(
        None,
        description="libvgpu.so shipped with the plugin; installed into <host hook>/vgpu under a versioned "
        "name at start. Unset: use the libvgpu.so.* already there",
    )
    device_config_file: str | None = Field(None, description="HAMi device-config.yaml, validated at start")
    node_config_file: str | None = Field(
        None, description="HAMi per-node overrides config.json ({'nodeconfig': [...]}); missing file = none"
    )
    backend: Literal["nvml", "simulated"] = Field("nvml", description="GPU discovery: nvml or simulated")
    simulated_inventory: str | None = Field(
        None,
        description="simulated backend: YAML inventory (the local cluster file, node picked by node_name, "
        "or a per-node file with a top-level 'gpus' list); re-read when it changes",
    )
    simulated_events_file: str | None = Field(
        None,
        description='simulated backend: file of JSON lines {"uuid": ..., "xid": ...} appended to inject XIDs',
    )
    preferred_allocation: bool = Field(
        True,
        description="offer GetPreferredAllocation so the kubelet picks replicas of the GPUs the scheduler "
        "chose (per-node enablegetpreferredallocation=true also turns it on)",
    )
    register_interval_seconds: float = Field(
        30.0, gt=0, description="node annotation refresh period (also refreshed at once on health changes)"
    )
    register_retry_seconds: float = Field(5.0, gt=0, description="retry delay after a failed node update")
    kubelet_watch_interval_seconds: float = Field(
        1.0, gt=0, description="how often kubelet.sock and our socket are checked for re-creation"
    )
    start_retry_seconds: float = Field(
        30.0, gt=0, description="retry delay when no GPU could be discovered or the server failed to start"
    )
    publish_extended_capacity: bool = Field(
        False,
        description="also publish nvidia.com/gpumem (MiB) and nvidia.com/gpucores in node capacity and "
        "allocatable (HAMi#2839)",
    )
    health: HealthConfig = Field(default_factory=HealthConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    kube: KubeAccess = Field(default_factory=KubeAccess)

    @model_validator(mode="after")
    def _simulated_needs_inventory(self) -> DevicePluginConfig:
        if self.backend == "simulated" and not self.simulated_inventory:
            raise ValueError("backend 'simulated' needs simulated_inventory (a YAML inventory file)")
        return self

    @property
    def host_hook_dir(self) -> str:
        return self.host_hook_path or self.hook_path
