"""DevicePluginConfig: required node name, HAMi's NODE_NAME/HOOK_PATH env, validation that names the key."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, apply_env_aliases, load_config
from services.device_plugin.config import ENV_PREFIX, HAMI_ENV_ALIASES, DevicePluginConfig
from services.device_plugin.service import socket_name


def load(environ: dict[str, str], **overrides: object) -> DevicePluginConfig:
    env = dict(environ)
    apply_env_aliases(env, HAMI_ENV_ALIASES, ENV_PREFIX)
    return load_config(DevicePluginConfig, env_prefix=ENV_PREFIX, environ=env, overrides=overrides)


def test_node_name_is_required_and_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match="node_name: Field required"):
        load({})


def test_hami_env_names_are_honoured_below_ours_and_flags() -> None:
    cfg = load({"NODE_NAME": "n1", "HOOK_PATH": "/opt/hook"})
    assert (cfg.node_name, cfg.hook_path, cfg.host_hook_dir) == ("n1", "/opt/hook", "/opt/hook")
    assert load({"NODE_NAME": "n1", ENV_PREFIX + "NODE_NAME": "n2"}).node_name == "n2"
    assert load({"NODE_NAME": "n1"}, node_name="n3").node_name == "n3"


def test_defaults_match_hami() -> None:
    cfg = load({"NODE_NAME": "n"})
    assert cfg.plugin_dir == "/var/lib/kubelet/device-plugins"
    assert cfg.hook_path == "/usr/local" and cfg.vgpulock_dir == "/tmp/vgpulock"
    assert cfg.register_interval_seconds == 30 and not cfg.publish_extended_capacity
    assert cfg.health.ignored_xids == [13, 31, 43, 45, 68, 109]
    assert socket_name("nvidia.com/gpu") == "nvidia-gpu.sock"


def test_simulated_backend_needs_an_inventory() -> None:
    with pytest.raises(ConfigError, match="simulated_inventory"):
        load({"NODE_NAME": "n"}, backend="simulated")
    with pytest.raises(ConfigError, match="backend"):
        load({"NODE_NAME": "n"}, backend="rocm")


def test_nested_health_keys_from_env() -> None:
    cfg = load(
        {
            "NODE_NAME": "n",
            ENV_PREFIX + "HEALTH__IGNORED_XIDS": "[79]",
            ENV_PREFIX + "HEALTH__ENABLED": "false",
        }
    )
    assert cfg.health.ignored_xids == [79] and not cfg.health.enabled
