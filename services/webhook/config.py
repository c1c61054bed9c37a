"""Admission webhook configuration (one YAML file + `KUBE_VGPU_WEBHOOK_*` env + flags).

The webhook speaks HTTPS only, as the API server requires; `insecure_http: true` serves plain HTTP for local
tests and must be asked for explicitly. Health is served on the same listener (`GET /healthz`, `/readyz`),
so this service has no gRPC port.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from services.common import wire
from services.common.config import ConfigModel, KubeAccess, split_host_port
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_WEBHOOK_"


class WebhookConfig(ConfigModel):
    http_bind: str = Field("0.0.0.0:8443", description="address of the HTTPS listener (host:port)")
    cert_file: str | None = Field(None, description="PEM certificate chain; reloaded when the file changes")
    key_file: str | None = Field(None, description="PEM private key; reloaded when the file changes")
    insecure_http: bool = Field(
        False, description="serve plain HTTP without cert_file/key_file (local tests only)"
    )
    tls_reload_interval: float = Field(
        10.0, gt=0, description="seconds between checks of the certificate files for changes"
    )
    scheduler_name: str = Field(
        wire.SCHEDULER_NAME, description="schedulerName set on GPU pods; empty leaves it alone"
    )
    force_overwrite_default_scheduler: bool = Field(
        True, description="also take over GPU pods that name default-scheduler"
    )
    device_config_file: str | None = Field(None, description="HAMi device-config.yaml (nvidia: section)")
    quota_check: bool = Field(
        True, description="deny pods that would exceed limits.nvidia.com/gpumem|gpucores ResourceQuotas"
    )
    reject_unplaceable: bool = Field(
        True, description="deny GPU requests no registered node could ever hold (needs a synced inventory)"
    )
    node_label_selector: str = Field("", description="label selector of the GPU nodes in the inventory")
    pod_label_selector: str = Field(
        wire.VGPU_NODE,
        description="label selector of the pods counted for quota usage ('' = every pod)",
    )
    resync_period: float = Field(
        3600.0, ge=0, description="seconds between full re-LISTs of the caches (0 = never)"
    )
    log: LogConfig = Field(default_factory=LogConfig)
    kube: KubeAccess = Field(default_factory=KubeAccess)

    @field_validator("http_bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if self.insecure_http:
            if self.cert_file or self.key_file:
                raise ValueError("insecure_http is true but cert_file/key_file are set: choose one")
        elif not self.cert_file or not self.key_file:
            raise ValueError(
                "cert_file and key_file are required (the API server only calls webhooks over HTTPS); "
                "set insecure_http: true to serve plain HTTP for local tests"
            )
        return self

    @property
    def needs_kube(self) -> bool:
        return self.quota_check or self.reject_unplaceable
