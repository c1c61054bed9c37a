"""Folding a pod's per-container devices into its effective per-GPU usage (docs/hami-wire.md#node-usage)."""

from __future__ import annotations

import pytest

from services.common.codecs import collapse_app_devices, collapse_pod_devices
from services.common.model import CollapsedDevice, ContainerDevice, PodSingleDevice


def nv(uuid: str, mem: int, cores: int) -> ContainerDevice:
    return ContainerDevice(uuid=uuid, type="NVIDIA", usedmem=mem, usedcores=cores)


def out(uuid: str, mem: int, cores: int, slots: int) -> CollapsedDevice:
    return CollapsedDevice(uuid=uuid, type="NVIDIA", usedmem=mem, usedcores=cores, slots=slots)


@pytest.mark.parametrize(
    ("slots", "init_count", "expected"),
    [
        pytest.param([], 0, [], id="no-slots"),
        pytest.param([[], []], 1, [], id="only-empty-slots"),
        pytest.param([[nv("GPU-a", 3000, 30)]], 0, [out("GPU-a", 3000, 30, 1)], id="one-app-container"),
        pytest.param(
            [[nv("GPU-a", 3000, 20)], [nv("GPU-a", 5000, 30)]],
            0,
            [out("GPU-a", 8000, 50, 2)],
            id="app-containers-add-up-one-slot-each",
        ),
        pytest.param(
            [[nv("GPU-a", 5000, 10)], [nv("GPU-a", 4000, 20)]],
            1,
            [out("GPU-a", 5000, 20, 1)],
            id="init-5000-app-4000-mem-and-cores-maxed-separately",
        ),
        pytest.param(
            [[nv("GPU-a", 800, 0)], [nv("GPU-a", 800, 0)], [nv("GPU-a", 500, 0)]],
            2,
            [out("GPU-a", 800, 0, 1)],
            id="quota-fixture-init-800-init-800-app-500",
        ),
        pytest.param(
            [[nv("GPU-a", 1500, 0)], [nv("GPU-a", 100, 0)]],
            1,
            [out("GPU-a", 1500, 0, 1)],
            id="quota-fixture-init-1500-app-100",
        ),
        pytest.param(
            [[nv("GPU-a", 100, 60)], [nv("GPU-a", 1000, 20)], [nv("GPU-a", 2000, 30)]],
            1,
            [out("GPU-a", 3000, 60, 2)],
            id="init-cores-peak-beats-app-sum",
        ),
        pytest.param(
            [[nv("GPU-b", 700, 5)], [nv("GPU-a", 1000, 20)], [nv("GPU-a", 2000, 30)]],
            1,
            [out("GPU-a", 3000, 50, 2), out("GPU-b", 700, 5, 1)],
            id="init-only-gpu-keeps-one-slot-sorted-by-uuid",
        ),
        pytest.param(
            [[nv("GPU-c", 1, 1), nv("GPU-a", 2, 2)], [nv("GPU-b", 3, 3)]],
            0,
            [out("GPU-a", 2, 2, 1), out("GPU-b", 3, 3, 1), out("GPU-c", 1, 1, 1)],
            id="output-sorted-by-uuid",
        ),
    ],
)
def test_collapse_pod_devices(
    slots: PodSingleDevice, init_count: int, expected: list[CollapsedDevice]
) -> None:
    assert collapse_pod_devices(slots, init_count) == expected


@pytest.mark.parametrize(
    ("slots", "init_count", "expected"),
    [
        pytest.param(
            [[nv("GPU-b", 700, 5)], [nv("GPU-a", 1000, 20)], [nv("GPU-a", 2000, 30)]],
            1,
            [out("GPU-a", 3000, 50, 2)],
            id="init-only-gpu-drops-out",
        ),
        pytest.param(
            [[nv("GPU-a", 5000, 10)], [nv("GPU-a", 4000, 20)]],
            1,
            [out("GPU-a", 4000, 20, 1)],
            id="usage-shrinks-to-the-app-share",
        ),
    ],
)
def test_collapse_app_devices_after_init_containers_exit(
    slots: PodSingleDevice, init_count: int, expected: list[CollapsedDevice]
) -> None:
    assert collapse_app_devices(slots, init_count) == expected


def test_collapsed_device_back_to_a_container_device() -> None:
    assert out("GPU-a", 3000, 50, 2).as_container_device() == nv("GPU-a", 3000, 50)
