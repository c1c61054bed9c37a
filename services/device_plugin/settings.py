"""The effective per-node settings: HAMi's device-config.yaml with this node's config.json entry over it.

`config.json` (spec §1.3) is `{"nodeconfig": [{"name": "<node>", ...}]}`; the entry whose `name` is this
node overrides the YAML values field by field, where the field is non-zero (Go's "zero means unset").
Keys are matched case-insensitively and unknown keys are ignored, as Go's JSON decoder does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from services.common import wire
from services.common.config import ConfigError, ConfigModel, validate_config
from services.common.device_config import NvidiaConfig
from services.common.log import get_logger

log = get_logger("device_plugin.settings")

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
