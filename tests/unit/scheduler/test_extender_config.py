"""Scheduler config: defaults, validation with the key named, env and flag overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.config import ConfigError, load_config
from services.scheduler.config import ENV_PREFIX, SchedulerConfig, split_host_port


def test_defaults() -> None:
    cfg = load_config(SchedulerConfig, env_prefix=ENV_PREFIX, environ={})
    assert cfg.http_bind == "127.0.0.1:8080"
    assert cfg.metrics_bind_address == ":9395"
    assert cfg.scheduler_name == "hami-scheduler"
    assert (cfg.node_scheduler_policy, cfg.gpu_scheduler_policy, cfg.filter_mode) == (
        "binpack",
        "spread",
        "all",
    )
    assert (cfg.node_lock_ttl_seconds, cfg.bind_lock_wait_seconds) == (30.0, 25.0)
    assert cfg.leader_elect is False and cfg.identity
    assert cfg.cert_file is None and cfg.kube.server is None


def test_file_env_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "scheduler.yaml"
    file.write_text("filter_mode: hami\nnode_label_selector: gpu=on\nkube:\n  server: http://127.0.0.1:1\n")
    cfg = load_config(
        SchedulerConfig,
        path=file,
        env_prefix=ENV_PREFIX,
        environ={"KUBE_VGPU_SCHEDULER_GPU_SCHEDULER_POLICY": "binpack,numa"},
        overrides={"node_scheduler_policy": "spread"},
    )
    assert cfg.filter_mode == "hami"
    assert cfg.node_label_selector == "gpu=on"
    assert cfg.kube.server == "http://127.0.0.1:1"
    assert cfg.gpu_scheduler_policy == "binpack,numa"
    assert cfg.node_scheduler_policy == "spread"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"http_bind": "8080"}, "http_bind"),
        ({"metrics_bind_address": "localhost:99999"}, "metrics_bind_address"),
        ({"gpu_scheduler_policy": "fastest"}, "gpu_scheduler_policy"),
        ({"gpu_scheduler_policy": " , "}, "gpu_scheduler_policy"),
        ({"node_scheduler_policy": "topology-aware"}, "node_scheduler_policy"),
        ({"filter_mode": "one"}, "filter_mode"),
        ({"node_label_selector": "gpu=on,=x"}, "node_label_selector"),
        ({"node_lock_ttl_seconds": "0"}, "node_lock_ttl_seconds"),
        ({"bind_lock_wait_seconds": "-1"}, "bind_lock_wait_seconds"),
        ({"cert_file": "/tls/tls.crt"}, "cert_file and key_file"),
        ({"grpc_bnd": "x"}, "grpc_bnd"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(SchedulerConfig, env_prefix=ENV_PREFIX, environ={}, overrides=overrides)
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("selector"),
    [
        "",
        "gpu=on",
        "gpu=on,zone!=b",
        "gpu==on",
        "!spot",
        "nvidia.com/gpu.present=true, kubernetes.io/os=linux",
    ],
)
def test_label_selectors_accepted(selector: str) -> None:
    cfg = load_config(
        SchedulerConfig, env_prefix=ENV_PREFIX, environ={}, overrides={"node_label_selector": selector}
    )
    assert cfg.node_label_selector == selector


@pytest.mark.parametrize(
    ("address", "expected"),
    [(":9395", ("", 9395)), ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0))],
)
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected
