"""Scheduler configuration (HAMi's flag names where Helm relies on them,
docs/hami-wire.md#components-and-ports).

One YAML file, `KUBE_VGPU_SCHEDULER_<KEY>` env vars and `--<key>` flags, validated at start: a bad value stops
the process with a message naming the key.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.common import wire
from services.common.config import ConfigModel, GrpcBindAddress, KubeAccess, split_host_port
from services.common.log import LogConfig
from services.common.selectors import parse_label_selector
from services.scheduler.policy import gpu_policy_tokens

ENV_PREFIX = "KUBE_VGPU_SCHEDULER_"

_GPU_POLICY_WORDS = frozenset(
    {wire.POLICY_BINPACK, wire.POLICY_SPREAD, wire.POLICY_TOPOLOGY_AWARE, wire.POLICY_MUTEX, wire.POLICY_NUMA}
)


class SchedulerConfig(ConfigModel):
    http_bind: str = Field(
        "127.0.0.1:8080", description="extender HTTP(S) address host:port (filter, prioritize, bind, probes)"
    )
    cert_file: str | None = Field(None, description="TLS certificate for the extender; plain HTTP when unset")
    key_file: str | None = Field(None, description="TLS private key for the extender (with cert_file)")
    grpc_bind: GrpcBindAddress = Field(
        "127.0.0.1:9090", description="SchedulerService gRPC address (host:port or unix:PATH)"
    )
    metrics_bind_address: str = Field(":9395", description="Prometheus /metrics address host:port")
    scheduler_name: str = Field(
        wire.SCHEDULER_NAME, min_length=1, description="event source component and profile name"
    )
    node_scheduler_policy: Literal["binpack", "spread"] = Field(
        "binpack", description="node ranking: binpack (busiest first) or spread (emptiest first)"
    )
    gpu_scheduler_policy: str = Field(
        "spread", description="card ranking: binpack, spread, topology-aware, mutex, numa or a comma chain"
    )
    filter_mode: Literal["all", "hami"] = Field(
        "all", description="all: filter returns every fitting node; hami: only the single best node"
    )
    node_label_selector: str = Field(
        "", description="only nodes matching this label selector (k=v,...) are scheduled onto"
    )
    node_lock_ttl_seconds: float = Field(
        30.0, gt=0, description="a hami.io/mutex.lock older than this is taken over"
    )
    bind_lock_wait_seconds: float = Field(
        25.0, ge=0, description="how long a bind waits for a node lock held by another pod"
    )
    resync_seconds: float = Field(
        600.0, ge=0, description="full re-LIST period of the node/pod/quota caches (0: never)"
    )
    health_interval_seconds: float = Field(
        15.0, gt=0, description="period of the node registration/handshake pass (leader only)"
    )
    leader_elect: bool = Field(False, description="only act (bind, handshake) while holding the Lease")
    lease_name: str = Field(wire.SCHEDULER_NAME, min_length=1, description="Lease watched when leader_elect")
    lease_namespace: str = Field("kube-system", min_length=1, description="namespace of that Lease")
    identity: str = Field(
        default_factory=socket.gethostname,
        description="this replica's identity: leader when the Lease holder starts with it (default hostname)",
    )
    pod_name: str = Field(
        default_factory=lambda: os.environ.get("POD_NAME", ""),
        description="this extender's pod (env POD_NAME, as the chart passes it): gets hami.io/scheduler-role",
    )
    pod_namespace: str = Field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", ""),
        description="namespace of that pod (env POD_NAMESPACE); no role label when either is empty",
    )
    emit_events: bool = Field(True, description="post FilteringSucceed/Failed and Binding* events on pods")
    bind_writes: Literal["auto", "binding", "patch-then-binding"] = Field(
        "auto",
        description=(
            "how a bind writes the allocation: binding = annotations and label inside the Binding (one "
            "write; the API server must copy Binding labels: Kubernetes >= 1.35 with "
            "PodTopologyLabelsAdmission on), patch-then-binding = a pod patch, then the Binding (HAMi's "
            "way), auto = binding when the API server reports 1.35 or later"
        ),
    )
    device_config_file: str | None = Field(None, description="HAMi device-config.yaml, validated at start")
    kube: KubeAccess = Field(default_factory=KubeAccess)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("http_bind", "metrics_bind_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("gpu_scheduler_policy")
    @classmethod
    def _gpu_policy(cls, value: str) -> str:
        tokens = gpu_policy_tokens(value)
        unknown = [t for t in tokens if t not in _GPU_POLICY_WORDS]
        if not tokens or unknown:
            raise ValueError(
                f"unknown GPU policy word(s) {unknown or [value]}; use {', '.join(sorted(_GPU_POLICY_WORDS))}"
            )
        return value

    @field_validator("node_label_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        # The API server parses it on every LIST/WATCH; a typo must stop the start, not every watch.
        parse_label_selector(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> SchedulerConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together (or neither, for plain HTTP)")
        return self
