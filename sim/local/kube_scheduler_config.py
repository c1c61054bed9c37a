"""The ``KubeSchedulerConfiguration`` (``kubescheduler.config.k8s.io/v1``) the kube-scheduler stand-in reads.

Only what the stand-in uses is modelled (``profiles[].schedulerName``, ``extenders[]``, the pod backoff
bounds); the other top-level and profile keys of a real file are accepted and ignored, and any unknown key
is an error naming it, as kube-scheduler's strict decoding does. Durations are Go duration strings
(``httpTimeout: 30s``); ``caData``/``certData``/``keyData`` are base64, as in YAML for a ``[]byte``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from services.common.config import ConfigModel, read_config_file, validate_config

API_VERSION = "kubescheduler.config.k8s.io/v1"
KIND = "KubeSchedulerConfiguration"
DEFAULT_SCHEDULER = "default-scheduler"
#: kube-scheduler's extender timeout when ``httpTimeout`` is not set.
DEFAULT_EXTENDER_TIMEOUT = 5.0

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: Any) -> float:
    """A Go ``time.Duration`` string (``30s``, ``1m30s``, ``500ms``, ``0``) in seconds."""
    if not isinstance(value, str) or isinstance(value, bool):
        raise ValueError(f'must be a duration string such as "30s", got {type(value).__name__}')
    text = value.strip()
    if text == "0":
        return 0.0
    if not text:
        raise ValueError('must be a duration string such as "30s", got an empty string')
    total, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION_RE.match(text, pos)
        if match is None:
            raise ValueError(f'invalid duration "{value}": expected e.g. "30s", "1m30s" or "500ms"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total


class TLSConfig(ConfigModel):
    insecure: bool = False
    server_name: str = Field("", alias="serverName")
    cert_file: str = Field("", alias="certFile")
    key_file: str = Field("", alias="keyFile")
    ca_file: str = Field("", alias="caFile")
    cert_data: str = Field("", alias="certData", description="base64 of a PEM client certificate")
    key_data: str = Field("", alias="keyData", description="base64 of a PEM client key")
    ca_data: str = Field("", alias="caData", description="base64 of PEM CA certificates")

    @field_validator("cert_data", "key_data", "ca_data")
    @classmethod
    def _base64(cls, value: str) -> str:
        if value:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"must be base64-encoded PEM: {exc}") from None
        return value


class ManagedResource(ConfigModel):
    name: str = Field(..., min_length=1)
    ignored_by_scheduler: bool = Field(False, alias="ignoredByScheduler")


class ExtenderConfig(ConfigModel):
    url_prefix: str = Field(..., alias="urlPrefix", min_length=1)
    filter_verb: str = Field("", alias="filterVerb")
    preempt_verb: str = Field("", alias="preemptVerb")
    prioritize_verb: str = Field("", alias="prioritizeVerb")
    bind_verb: str = Field("", alias="bindVerb")
    weight: int = 0
    enable_https: bool = Field(False, alias="enableHTTPS")
    tls_config: TLSConfig | None = Field(None, alias="tlsConfig")
    http_timeout: float = Field(DEFAULT_EXTENDER_TIMEOUT, alias="httpTimeout")
    node_cache_capable: bool = Field(False, alias="nodeCacheCapable")
    managed_resources: list[ManagedResource] = Field(default_factory=list, alias="managedResources")
    ignorable: bool = False

    @field_validator("http_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if isinstance(value, float):  # the default
            return value
        seconds = parse_duration(value)
        return seconds if seconds > 0 else DEFAULT_EXTENDER_TIMEOUT

    @field_validator("url_prefix")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int, info: ValidationInfo) -> int:
        if value < 0 or (info.data.get("prioritize_verb") and value <= 0):
            raise ValueError(
                "must be a positive weight when prioritizeVerb is set (it multiplies the scores)"
            )
        return value

    @field_validator("managed_resources")
    @classmethod
    def _unique_resources(cls, value: list[ManagedResource]) -> list[ManagedResource]:
        names = [r.name for r in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate resource name {duplicates[0]!r}")
        return value


class Profile(ConfigModel):
    scheduler_name: str = Field(DEFAULT_SCHEDULER, alias="schedulerName", min_length=1)
    # Accepted so real files load; the stand-in's filter and score are fixed.
    plugins: Any = None
    plugin_config: Any = Field(None, alias="pluginConfig")
    percentage_of_nodes_to_score: Any = Field(None, alias="percentageOfNodesToScore")


class KubeSchedulerConfiguration(ConfigModel):
    api_version: Literal["kubescheduler.config.k8s.io/v1"] = Field(..., alias="apiVersion")
    kind: Literal["KubeSchedulerConfiguration"]
    profiles: list[Profile] = Field(default_factory=lambda: [Profile.model_validate({})])
    extenders: list[ExtenderConfig] = Field(default_factory=list)
    pod_initial_backoff_seconds: int = Field(1, alias="podInitialBackoffSeconds", gt=0)
    pod_max_backoff_seconds: int = Field(10, alias="podMaxBackoffSeconds", gt=0)
    # Accepted so real files load; not used by the stand-in.
    leader_election: Any = Field(None, alias="leaderElection")
    client_connection: Any = Field(None, alias="clientConnection")
    parallelism: Any = None
    percentage_of_nodes_to_score: Any = Field(None, alias="percentageOfNodesToScore")
    enable_profiling: Any = Field(None, alias="enableProfiling")
    enable_contention_profiling: Any = Field(None, alias="enableContentionProfiling")
    healthz_bind_address: Any = Field(None, alias="healthzBindAddress")
    metrics_bind_address: Any = Field(None, alias="metricsBindAddress")
    delay_cache_until_active: Any = Field(None, alias="delayCacheUntilActive")
    feature_gates: Any = Field(None, alias="featureGates")

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, value: list[Profile]) -> list[Profile]:
        if not value:
            return [Profile.model_validate({})]  # kube-scheduler's default profile
        names = [p.scheduler_name for p in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate schedulerName {duplicates[0]!r}")
        return value

    @field_validator("extenders")
    @classmethod
    def _one_binder(cls, value: list[ExtenderConfig]) -> list[ExtenderConfig]:
        binders = [e.url_prefix for e in value if e.bind_verb]
        if len(binders) > 1:
            raise ValueError(
                f"only one extender can implement bind, found {len(binders)}: {', '.join(binders)}"
            )
        return value

    @field_validator("pod_max_backoff_seconds")
    @classmethod
    def _backoff(cls, value: int, info: ValidationInfo) -> int:
        initial = info.data.get("pod_initial_backoff_seconds")
        if isinstance(initial, int) and value < initial:
            raise ValueError("must be greater than or equal to podInitialBackoffSeconds")
        return value

    @property
    def scheduler_names(self) -> frozenset[str]:
        return frozenset(p.scheduler_name for p in self.profiles)


def parse_scheduler_config(
    data: Mapping[str, Any], what: str = "KubeSchedulerConfiguration", source: str = "input"
) -> KubeSchedulerConfiguration:
    """Validates a decoded file; ConfigError names every bad key (``extenders.0.weight: ...``)."""
    return validate_config(KubeSchedulerConfiguration, data, what=what, default_source=source)


def load_scheduler_config(path: str | Path) -> KubeSchedulerConfiguration:
    return parse_scheduler_config(
        read_config_file(path), f"KubeSchedulerConfiguration {path}", f"file {path}"
    )
