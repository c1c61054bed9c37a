"""Device plugin configuration (`kube-vgpu-device-plugin`).

Precedence is the suite's (flag > `KUBE_VGPU_DEVICE_PLUGIN_<KEY>` env > `--config` file > default). Two env
names of HAMi's DaemonSet are honoured as well, just below our own env names: `NODE_NAME` (the node this
plugin serves, from the downward API) and `HOOK_PATH` (where libvgpu lives, `/usr/local` by default).

What to register and how to answer Allocate comes from HAMi's shared `device-config.yaml`
(`device_config_file`, docs/hami-wire.md#device-config) with the per-node overrides of `config.json`
(`node_config_file`, docs/hami-wire.md#per-node-config) merged over it into `PluginSettings` (below,
`effective_settings`).

`config.json` (docs/hami-wire.md#per-node-config) is `{"nodeconfig": [{"name": "<node>", ...}]}`; the entry
whose `name` is this node overrides the YAML values field by field, where the field is non-zero (Go's "zero
means unset"). Keys are matched case-insensitively and unknown keys are ignored, as Go's JSON decoder does.

GPUs come from NVML; local mode and tests run `kube-vgpu-sim-device-plugin` (package `sim`), which adds
its simulated-inventory keys to this model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from services.common import wire
from services.common.config import ConfigError, ConfigModel, GrpcBindAddress, KubeAccess, validate_config
from services.common.device_config import NvidiaConfig
from services.common.log import LogConfig, get_logger

log = get_logger("device_plugin.config")

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
    grpc_bind: GrpcBindAddress = Field(
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

    @property
    def host_hook_dir(self) -> str:
        return self.host_hook_path or self.hook_path


# --- the effective per-node settings: device-config.yaml with this node's config.json entry over it ---

OperatingMode = Literal["hami-core", "mig", "mps"]


class FilterDevices(ConfigModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    uuid: list[str] = Field(default_factory=list)
    index: list[int] = Field(default_factory=list)


class NodeOverride(ConfigModel):
    """One `nodeconfig[]` entry of HAMi's config.json (lower-case keys, as HAMi writes them)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    operatingmode: str = ""
    devicememoryscaling: float = Field(0.0, ge=0)
    devicecorescaling: float = Field(0.0, ge=0)
    devicesplitcount: int = Field(0, ge=0)
    preconfigureddevicememory: int = Field(0, ge=0)
    libcudaloglevel: str = ""
    enablenumatopology: bool = False
    migstrategy: str = ""
    filterdevices: FilterDevices = Field(default_factory=FilterDevices)
    enablegetpreferredallocation: bool = False


class NodeConfigFile(ConfigModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    nodeconfig: list[NodeOverride] = Field(default_factory=list)


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def load_node_override(path: str | Path | None, node_name: str) -> NodeOverride | None:
    """This node's entry of config.json; None when there is no file, no entry, or no path configured."""
    if path is None:
        return None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("node_config_absent", path=str(file))
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read node config {file}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"node config {file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"node config {file} must hold a JSON object with a 'nodeconfig' list")
    parsed = validate_config(
        NodeConfigFile, _lower_keys(data), what=f"node config {file}", default_source=f"file {file}"
    )
    for entry in parsed.nodeconfig:
        if entry.name == node_name:
            return entry
    return None


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """Everything registration and Allocate need to know about this node, after all merging."""

    node_name: str
    resource_name: str
    split_count: int
    memory_scaling: float
    core_scaling: float
    preconfigured_memory: int
    lib_cuda_log_level: str
    enable_numa_topology: bool
    operating_mode: str
    filter_uuids: frozenset[str]
    filter_indices: frozenset[int]
    preferred_allocation: bool
    disable_core_limit: bool

    @property
    def oversubscribed(self) -> bool:
        return self.memory_scaling > 1


def effective_settings(
    node_name: str,
    nvidia: NvidiaConfig,
    override: NodeOverride | None,
    *,
    resource_name: str | None = None,
    preferred_allocation: bool = True,
) -> PluginSettings:
    o = override
    mode = (o.operatingmode if o and o.operatingmode else wire.MODE_HAMI_CORE).strip()
    if mode not in (wire.MODE_HAMI_CORE, wire.MODE_MPS, wire.MODE_MIG):
        raise ConfigError(f"node config for {node_name}: operatingmode {mode!r} is not hami-core, mig or mps")
    if mode == wire.MODE_MIG:
        raise ConfigError(
            f"node config for {node_name}: operatingmode 'mig' (dynamic MIG) is not supported by kube-vgpu's "
            "device plugin yet; use hami-core"
        )
    log_level = (
        o.libcudaloglevel.strip() if o and o.libcudaloglevel.strip() else str(nvidia.lib_cuda_log_level)
    )
    return PluginSettings(
        node_name=node_name,
        resource_name=resource_name or nvidia.resource_count_name,
        split_count=o.devicesplitcount if o and o.devicesplitcount else nvidia.device_split_count,
        memory_scaling=o.devicememoryscaling if o and o.devicememoryscaling else nvidia.device_memory_scaling,
        core_scaling=o.devicecorescaling if o and o.devicecorescaling else nvidia.device_core_scaling,
        preconfigured_memory=(
            o.preconfigureddevicememory
            if o and o.preconfigureddevicememory
            else nvidia.pre_configured_device_memory
        ),
        lib_cuda_log_level=log_level,
        enable_numa_topology=bool(o and o.enablenumatopology) or nvidia.enable_numa_topology,
        operating_mode=mode,
        filter_uuids=frozenset(o.filterdevices.uuid) if o else frozenset(),
        filter_indices=frozenset(o.filterdevices.index) if o else frozenset(),
        preferred_allocation=preferred_allocation or bool(o and o.enablegetpreferredallocation),
        disable_core_limit=nvidia.disable_core_limit,
    )
