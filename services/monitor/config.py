"""Monitor configuration. Keys grow with the monitor (issue 7)."""

from __future__ import annotations

from pydantic import Field

from services.common.config import ConfigModel
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_MONITOR_"


class MonitorConfig(ConfigModel):
    grpc_bind: str = Field(
        "127.0.0.1:9091", description="MonitorService gRPC address (host:port or unix:PATH)"
    )
    log: LogConfig = Field(default_factory=LogConfig)
