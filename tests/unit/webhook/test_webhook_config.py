"""WebhookConfig: defaults, TLS requirement, address validation, env/flag precedence."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, load_config, split_host_port
from services.common.device_config import DeviceConfig
from services.webhook.config import ENV_PREFIX, WebhookConfig
from services.webhook.runtime import policy_from_config

TLS = {"cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"}


def load(environ: dict[str, str] | None = None, **overrides: object) -> WebhookConfig:
    return load_config(WebhookConfig, env_prefix=ENV_PREFIX, overrides=overrides, environ=environ or {})


def test_defaults() -> None:
    cfg = load(**TLS)
    assert cfg.http_bind == "0.0.0.0:8443"
    assert cfg.scheduler_name == "hami-scheduler"
    assert cfg.force_overwrite_default_scheduler is True
    assert cfg.quota_check and cfg.reject_unplaceable and cfg.needs_kube
    assert cfg.pod_label_selector == "hami.io/vgpu-node"
    assert not hasattr(cfg, "grpc_bind")


def test_cert_and_key_are_required_unless_insecure_http() -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file are required"):
        load()
    with pytest.raises(ConfigError, match="cert_file and key_file are required"):
        load(cert_file="/tls/tls.crt")
    assert load(insecure_http="true").insecure_http is True


def test_insecure_http_with_certificates_is_contradictory() -> None:
    with pytest.raises(ConfigError, match="choose one"):
        load(insecure_http=True, **TLS)


@pytest.mark.parametrize("bind", ["8443", "host:", "host:99999", "a:b"])
def test_bad_bind_address(bind: str) -> None:
    with pytest.raises(ConfigError, match="http_bind"):
        load(http_bind=bind, **TLS)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("0.0.0.0:8443", ("0.0.0.0", 8443)),
        (":443", ("", 443)),  # every interface
        ("[::1]:9", ("::1", 9)),
        ("h:0", ("h", 0)),
    ],
)
def test_split_host_port(bind: str, expected: tuple[str, int]) -> None:
    assert split_host_port(bind) == expected


def test_env_then_flags() -> None:
    environ = {
        "KUBE_VGPU_WEBHOOK_INSECURE_HTTP": "true",
        "KUBE_VGPU_WEBHOOK_KUBE__SERVER": "http://127.0.0.1:1",
    }
    cfg = load(environ, scheduler_name="kube-vgpu")
    assert cfg.kube.server == "http://127.0.0.1:1"
    assert cfg.scheduler_name == "kube-vgpu"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="grpc_bind: unknown key"):
        load(grpc_bind="127.0.0.1:1", **TLS)


def test_policy_from_config() -> None:
    cfg = load(scheduler_name="", force_overwrite_default_scheduler=False, reject_unplaceable=False, **TLS)
    device = DeviceConfig.model_validate({"nvidia": {"gpuCorePolicy": "force"}})
    policy = policy_from_config(cfg, device)
    assert policy.scheduler_name == ""
    assert policy.force_overwrite_default_scheduler is False
    assert policy.reject_unplaceable is False
    assert policy.nvidia.gpu_core_policy == "force"
