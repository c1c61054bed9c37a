"""The plain-data domain model: constructors and immutability."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.model import (
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceInfo,
    DeviceUsage,
    MigPlacement,
    MigProfile,
)


def test_device_usage_from_device_starts_with_zero_usage() -> None:
    profile = MigProfile("1g.10gb", 9984, 14, 1, (MigPlacement(6, 1),))
    device = DeviceInfo(
        id="GPU-a",
        index=3,
        count=10,
        devmem=81920,
        devcore=100,
        type="NVIDIA-H100",
        numa=1,
        mode="mig",
        health=False,
        mig_profiles=(profile,),
    )
    assert DeviceUsage.from_device(device) == DeviceUsage(
        id="GPU-a",
        index=3,
        used=0,
        count=10,
        usedmem=0,
        totalmem=81920,
        usedcores=0,
        totalcore=100,
        type="NVIDIA-H100",
        numa=1,
        mode="mig",
        health=False,
        mig_profiles=(profile,),
    )


def test_device_usage_is_mutable_for_fitting() -> None:
    usage = DeviceUsage.from_device(DeviceInfo("GPU-a", count=10, devmem=1000, devcore=100))
    usage.used += 1
    usage.usedmem += 300
    assert (usage.used, usage.usedmem, usage.totalmem) == (1, 300, 1000)


@pytest.mark.parametrize(
    "value",
    [
        DeviceInfo("GPU-a"),
        ContainerDevice("GPU-a", "NVIDIA", 1, 2),
        ContainerDeviceRequest(1, "NVIDIA", 0, 100, 0),
        MigPlacement(0, 1),
    ],
)
def test_wire_values_are_frozen(value: object) -> None:
    field = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, "changed")


def test_device_info_defaults_describe_a_healthy_hami_core_card() -> None:
    device = DeviceInfo("GPU-a")
    assert (device.index, device.numa, device.mode, device.health, device.mig_profiles) == (
        0,
        0,
        "hami-core",
        True,
        (),
    )


def test_device_usage_copy_equals_replace_and_is_independent() -> None:
    profile = MigProfile("1g.10gb", 9984, 14, 1, (MigPlacement(6, 1),))
    card = DeviceUsage("GPU-1", 2, 3, 10, 4096, 81920, 30, 100, "NVIDIA-A100", 1, "mig", False, (profile,))
    copied = card.copy()
    assert copied == dataclasses.replace(card)  # every field, so a field added later cannot be forgotten
    assert copied is not card
    copied.used += 1
    assert card.used == 3
