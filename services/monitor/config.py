"""Monitor configuration (`kube-vgpu-monitor`).

Precedence is the suite's (flag > `KUBE_VGPU_MONITOR_<KEY>` env > `--config` file > default). Two env names of
HAMi's monitor container are honoured as well, just below our own env names: `NODE_NAME` (the node this
monitor serves, from the downward API) and `HOOK_PATH` (HAMi's monitor sets `/usr/local/vgpu`; the container
caches are under `<HOOK_PATH>/containers`).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.config import ConfigModel, GrpcBindAddress, KubeAccess, split_host_port
from services.common.log import LogConfig

ENV_PREFIX = "KUBE_VGPU_MONITOR_"

# Env names of HAMi's monitor container, honoured below ours: env name -> our key.
HAMI_ENV_ALIASES: dict[str, str] = {"NODE_NAME": "node_name", "HOOK_PATH": "hook_path"}

# HAMi's dynamic-MIG apply lock: while it exists the feedback loop leaves the regions alone
# (docs/hami-wire.md#monitor-feedback).
DEFAULT_MIG_APPLY_LOCK = "/tmp/hami/hami-mig-apply.lock"
DEFAULT_PODRESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


class MonitorConfig(ConfigModel):
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="the node this monitor serves (env NODE_NAME is honoured, as in HAMi); default hostname",
    )
    hook_path: str = Field(
        "/usr/local/vgpu",
        min_length=1,
        description="HAMi's monitor HOOK_PATH: container caches are read from <hook_path>/containers",
    )
    metrics_bind_address: str = Field(":9394", description="Prometheus /metrics address host:port")
    grpc_bind: GrpcBindAddress = Field(
        "127.0.0.1:9091", description="MonitorService gRPC address (host:port or unix:PATH)"
    )
    scan_interval_seconds: float = Field(
        5.0, gt=0, description="how often <hook_path>/containers is listed (new, changed and gone caches)"
    )
    feedback_interval_seconds: float = Field(
        5.0, gt=0, description="period of the priority / utilization-switch feedback loop"
    )
    feedback_enabled: bool = Field(
        True, description="run the feedback loop (false: the regions are only ever read)"
    )
    stale_grace_seconds: float = Field(
        300.0,
        ge=0,
        description="a <podUID>_<container> dir whose pod is gone is removed once its mtime is this old",
    )
    max_open_regions: int = Field(
        2048, ge=1, description="at most this many caches are mapped at once; more are skipped and counted"
    )
    podresources_socket: str | None = Field(
        None,
        description="kubelet PodResources v1 socket, used when present to learn each container's GPUs "
        f"(e.g. {DEFAULT_PODRESOURCES_SOCKET}); unset: not used",
    )
    host_gpus: Literal["auto", "nvml", "none"] = Field(
        "auto",
        description="host GPU statistics: nvml, none, or auto (NVML when it loads, else none)",
    )
    mig_apply_lock_file: str = Field(
        DEFAULT_MIG_APPLY_LOCK, description="while this file exists the feedback loop pauses"
    )
    resync_seconds: float = Field(600.0, ge=0, description="full re-LIST period of the pod watch (0: never)")
    log: LogConfig = Field(default_factory=LogConfig)
    kube: KubeAccess = Field(default_factory=KubeAccess)

    @field_validator("metrics_bind_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @property
    def containers_dir(self) -> Path:
        return Path(self.hook_path) / "containers"
