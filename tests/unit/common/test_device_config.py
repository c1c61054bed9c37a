"""HAMi's device-config.yaml keys are read as HAMi spells them, with validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.common.device_config import load_device_config


def test_defaults_match_hami_chart() -> None:
    nvidia = load_device_config(None).nvidia
    assert nvidia.resource_count_name == "nvidia.com/gpu"
    assert nvidia.resource_memory_name == "nvidia.com/gpumem"
    assert nvidia.device_split_count == 10
    assert nvidia.default_gpu_num == 1
    assert nvidia.memory_factor == 1
    assert nvidia.gpu_core_policy == "default"


def test_hami_configmap_is_read_and_other_vendors_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(
        "nvidia:\n"
        "  resourceCountName: example.com/vgpu\n"
        "  deviceSplitCount: 4\n"
        "  defaultMemory: 512\n"
        "  memoryFactor: 2\n"
        "  gpuCorePolicy: force\n"
        "cambricon:\n"
        "  resourceCountName: cambricon.com/vmlu\n"
    )
    nvidia = load_device_config(path).nvidia
    assert nvidia.resource_count_name == "example.com/vgpu"
    assert nvidia.device_split_count == 4
    assert nvidia.gpu_core_policy == "force"
    request_cfg = nvidia.request_config()
    assert request_cfg.resource_count_name == "example.com/vgpu"
    assert request_cfg.default_memory == 512
    assert request_cfg.memory_factor == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("nvidia:\n  deviceSplitCnt: 4\n", "nvidia.deviceSplitCnt: unknown key"),
        ("nvidia:\n  deviceSplitCount: 0\n", "nvidia.deviceSplitCount"),
        ("nvidia:\n  gpuCorePolicy: always\n", "nvidia.gpuCorePolicy"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_device_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
