"""Admission webhook configuration. Keys grow with the webhook (issue 4)."""

from __future__ import annotations

from pydantic import Field

from services.common.config import ConfigModel
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_WEBHOOK_"


class WebhookConfig(ConfigModel):
    grpc_bind: str = Field(
        "127.0.0.1:9092", description="health/reflection gRPC address (host:port or unix:PATH)"
    )
    device_config_file: str | None = Field(None, description="HAMi device-config.yaml, validated at start")
    log: LogConfig = Field(default_factory=LogConfig)
