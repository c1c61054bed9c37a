"""DevicePluginConfig: required node name, HAMi's NODE_NAME/HOOK_PATH env, validation that names the key; the
simulator's config (kube-vgpu-sim-device-plugin) adds the inventory keys the product does not know."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from services.common.config import ConfigError, apply_env_aliases, load_config
from services.device_plugin.config import ENV_PREFIX, HAMI_ENV_ALIASES, DevicePluginConfig
from services.device_plugin.kubelet import socket_name
from sim.gpus.device_plugin import SimDevicePluginConfig
from sim.gpus.device_plugin import main as sim_main

ConfigT = TypeVar("ConfigT", bound=BaseModel)
REPO = Path(__file__).resolve().parents[3]


def load(environ: dict[str, str], **overrides: object) -> DevicePluginConfig:
    return load_model(DevicePluginConfig, environ, **overrides)


def load_model(model: type[ConfigT], environ: dict[str, str], **overrides: object) -> ConfigT:
    env = dict(environ)
    apply_env_aliases(env, HAMI_ENV_ALIASES, ENV_PREFIX)
    return load_config(model, env_prefix=ENV_PREFIX, environ=env, overrides=overrides)


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


def test_product_config_knows_no_simulated_backend() -> None:
    with pytest.raises(ConfigError, match="backend: unknown key"):
        load({"NODE_NAME": "n"}, backend="simulated")
    with pytest.raises(ConfigError, match="backend"):
        load({"NODE_NAME": "n"}, backend="rocm")
    with pytest.raises(ConfigError, match="simulated_inventory: unknown key"):
        load({"NODE_NAME": "n"}, simulated_inventory="/tmp/gpus.yaml")


def test_simulated_plugin_needs_an_inventory() -> None:
    with pytest.raises(ConfigError, match="simulated_inventory"):
        load_model(SimDevicePluginConfig, {"NODE_NAME": "n"})
    with pytest.raises(ConfigError, match="simulated_inventory"):
        load_model(SimDevicePluginConfig, {"NODE_NAME": "n"}, simulated_inventory="")
    cfg = load_model(
        SimDevicePluginConfig,
        {"NODE_NAME": "n", ENV_PREFIX + "SIMULATED_EVENTS_FILE": "/tmp/xids"},
        simulated_inventory="/tmp/gpus.yaml",
    )
    assert (cfg.node_name, cfg.simulated_inventory, cfg.simulated_events_file) == (
        "n",
        "/tmp/gpus.yaml",
        "/tmp/xids",
    )
    assert isinstance(cfg, DevicePluginConfig) and cfg.plugin_dir == "/var/lib/kubelet/device-plugins"


def test_simulated_plugin_takes_the_product_flags_plus_its_inventory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    inventory = str(REPO / "deploy/local/cluster.yaml")
    argv = ["--print-config", "--node-name", "gpu-node-a", "--simulated-inventory", inventory]
    assert sim_main([*argv, "--plugin-dir", "/tmp/kv-plugins"]) == 0
    printed = capsys.readouterr().out
    assert f"simulated_inventory: {inventory}" in printed
    assert "plugin_dir: /tmp/kv-plugins" in printed and "node_name: gpu-node-a" in printed
    assert "backend" not in printed


def test_nested_health_keys_from_env() -> None:
    cfg = load(
        {
            "NODE_NAME": "n",
            ENV_PREFIX + "HEALTH__IGNORED_XIDS": "[79]",
            ENV_PREFIX + "HEALTH__ENABLED": "false",
        }
    )
    assert cfg.health.ignored_xids == [79] and not cfg.health.enabled
