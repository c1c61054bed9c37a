"""Scheduler configuration; keys grow with the extender (HAMi's flag names where Helm relies on them)."""

from __future__ import annotations

from pydantic import Field

from services.common.config import ConfigModel
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_SCHEDULER_"


class SchedulerConfig(ConfigModel):
    grpc_bind: str = Field(
        "127.0.0.1:9090", description="SchedulerService gRPC address (host:port or unix:PATH)"
    )
    device_config_file: str | None = Field(None, description="HAMi device-config.yaml, validated at start")
    log: LogConfig = Field(default_factory=LogConfig)
