"""HAMi's shared `device-config.yaml` (ConfigMap mounted by the scheduler and the device plugin).

Keys keep HAMi's camelCase spelling so an existing HAMi ConfigMap works unchanged
(docs/hami-wire.md#device-config); per-node overrides from `config.json` (docs/hami-wire.md#per-node-config)
are merged over it by the device plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from services.common import wire
from services.common.config import ConfigModel, read_config_file, validate_config
from services.common.log import get_logger
from services.common.resources import NvidiaRequestConfig


class _CamelModel(ConfigModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)


class MigProfileAllowlistEntry(_CamelModel):
    models: list[str] = Field(default_factory=list)
    profiles: list[str] = Field(default_factory=list)


class NvidiaConfig(_CamelModel):
    resource_count_name: str = Field(wire.RESOURCE_GPU, alias="resourceCountName")
    resource_memory_name: str = Field(wire.RESOURCE_GPUMEM, alias="resourceMemoryName")
    resource_memory_percentage_name: str = Field(
        wire.RESOURCE_GPUMEM_PERCENTAGE, alias="resourceMemoryPercentageName"
    )
    resource_core_name: str = Field(wire.RESOURCE_GPUCORES, alias="resourceCoreName")
    resource_priority_name: str = Field(wire.RESOURCE_PRIORITY, alias="resourcePriorityName")
    overwrite_env: bool = Field(False, alias="overwriteEnv")
    default_memory: int = Field(0, ge=0, alias="defaultMemory")
    default_cores: int = Field(0, ge=0, le=100, alias="defaultCores")
    default_gpu_num: int = Field(1, ge=0, alias="defaultGPUNum")
    memory_factor: int = Field(1, ge=1, alias="memoryFactor")
    pre_configured_device_memory: int = Field(0, ge=0, alias="preConfiguredDeviceMemory")
    device_split_count: int = Field(10, ge=1, alias="deviceSplitCount")
    device_memory_scaling: float = Field(1.0, gt=0, alias="deviceMemoryScaling")
    device_core_scaling: float = Field(1.0, gt=0, alias="deviceCoreScaling")
    enable_numa_topology: bool = Field(False, alias="enableNumaTopology")
    gpu_core_policy: Literal["default", "force", "disable"] = Field("default", alias="gpuCorePolicy")
    lib_cuda_log_level: int = Field(1, ge=0, le=4, alias="libCudaLogLevel")
    runtime_class_name: str = Field("", alias="runtimeClassName")
    disable_core_limit: bool = Field(False, alias="disableCoreLimit")
    mig_profile_allowlist: list[MigProfileAllowlistEntry] = Field(
        default_factory=list, alias="migProfileAllowlist"
    )

    def request_config(self) -> NvidiaRequestConfig:
        """The subset request parsing needs (docs/hami-wire.md#request-parsing)."""
        return NvidiaRequestConfig(
            resource_count_name=self.resource_count_name,
            resource_memory_name=self.resource_memory_name,
            resource_memory_percentage_name=self.resource_memory_percentage_name,
            resource_core_name=self.resource_core_name,
            resource_priority_name=self.resource_priority_name,
            default_memory=self.default_memory,
            default_cores=self.default_cores,
            default_gpu_num=self.default_gpu_num,
            memory_factor=self.memory_factor,
        )


class DeviceConfig(_CamelModel):
    nvidia: NvidiaConfig = Field(default_factory=NvidiaConfig)


def load_device_config(path: str | Path | None) -> DeviceConfig:
    """HAMi's device-config.yaml; other vendors' sections are kept out (we only speak NVIDIA)."""
    if path is None:
        return DeviceConfig()
    data = read_config_file(path)
    other_vendors = sorted(k for k in data if k != "nvidia")
    if other_vendors:
        # HAMi's file may carry other vendors' sections; refusing them would break a HAMi ConfigMap.
        get_logger(__name__).warning("device_config_sections_ignored", path=str(path), sections=other_vendors)
    nvidia = {k: v for k, v in data.items() if k == "nvidia"}
    return validate_config(DeviceConfig, nvidia, what=f"device config {path}", default_source=f"file {path}")
