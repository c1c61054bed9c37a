"""Host GPU statistics behind their interface (fake NVML), and the monitor's config."""

from __future__ import annotations

import types
from typing import Any

import pytest

from services.common.config import ConfigError, apply_env_aliases, load_config
from services.monitor.config import ENV_PREFIX, HAMI_ENV_ALIASES, MonitorConfig
from services.monitor.hostgpu import HostGpuError, NoHostGpus, NvmlHostGpus, device_type_name, open_host_gpus


class NVMLError(Exception):
    pass


def fake_nvml(*, broken_index: int | None = None, init_fails: bool = False) -> Any:
    uuids = ["GPU-0000", "GPU-1111"]

    def handle(index: int) -> int:
        if index == broken_index:
            raise NVMLError("GPU is lost")
        return index

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=(lambda: (_ for _ in ()).throw(NVMLError("no driver"))) if init_fails else (lambda: None),
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUUID=lambda h: uuids[h].encode(),
        nvmlDeviceGetName=lambda h: ["Tesla T4", "NVIDIA A100-SXM4-40GB"][h],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=100 * (h + 1), total=1000),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50 + h, memory=10 + h),
    )


def test_nvml_stats() -> None:
    gpus = NvmlHostGpus(fake_nvml())
    a, b = gpus.stats()
    assert (a.uuid, a.index, a.type, a.memory_used_bytes, a.utilization_percent) == (
        "GPU-0000",
        0,
        "NVIDIA-Tesla T4",
        100,
        50,
    )
    assert (b.type, b.memory_utilization_percent) == ("NVIDIA A100-SXM4-40GB", 11)
    gpus.close()


def test_a_lost_gpu_does_not_hide_the_others() -> None:
    (only,) = NvmlHostGpus(fake_nvml(broken_index=0)).stats()
    assert only.uuid == "GPU-1111"


def test_auto_falls_back_to_none_and_nvml_insists() -> None:
    assert isinstance(open_host_gpus("auto", fake_nvml(init_fails=True)), NoHostGpus)
    assert open_host_gpus("none").stats() == []
    with pytest.raises(HostGpuError):
        open_host_gpus("nvml", fake_nvml(init_fails=True))


def test_device_type_name() -> None:
    assert device_type_name("Tesla T4") == "NVIDIA-Tesla T4"
    assert device_type_name("NVIDIA A100") == "NVIDIA A100"


def test_defaults() -> None:
    cfg = load_config(MonitorConfig, env_prefix=ENV_PREFIX, environ={})
    assert cfg.hook_path == "/usr/local/vgpu"
    assert str(cfg.containers_dir) == "/usr/local/vgpu/containers"
    assert cfg.metrics_bind_address == ":9394"
    assert (cfg.scan_interval_seconds, cfg.feedback_interval_seconds, cfg.stale_grace_seconds) == (5, 5, 300)
    assert cfg.podresources_socket is None
    assert cfg.node_name


def test_hami_env_names_are_honoured_below_ours() -> None:
    env = {"NODE_NAME": "gpu-1", "HOOK_PATH": "/opt/vgpu"}
    apply_env_aliases(env, HAMI_ENV_ALIASES, ENV_PREFIX)
    cfg = load_config(MonitorConfig, env_prefix=ENV_PREFIX, environ=env)
    assert (cfg.node_name, cfg.hook_path) == ("gpu-1", "/opt/vgpu")
    env = {"NODE_NAME": "gpu-1", ENV_PREFIX + "NODE_NAME": "ours"}
    apply_env_aliases(env, HAMI_ENV_ALIASES, ENV_PREFIX)
    assert load_config(MonitorConfig, env_prefix=ENV_PREFIX, environ=env).node_name == "ours"


@pytest.mark.parametrize(
    ("key", "value"),
    [("metrics_bind_address", "nope"), ("scan_interval_seconds", "0"), ("max_open_regions", "0")],
)
def test_bad_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(MonitorConfig, env_prefix=ENV_PREFIX, environ={}, overrides={key: value})
