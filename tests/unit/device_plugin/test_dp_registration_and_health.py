"""Register records from discovered GPUs, kubelet replicas, node overrides, and the XID health rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.codecs import decode_node_devices, encode_node_devices
from services.common.config import ConfigError
from services.common.device_config import NvidiaConfig
from services.device_plugin.config import (
    DEFAULT_IGNORED_XIDS,
    NodeOverride,
    effective_settings,
    load_node_override,
)
from services.device_plugin.devices import extended_capacity, managed_gpus, replicas, select_gpus
from services.device_plugin.gpu import GpuEvent, GpuInfo, device_type_name, sysfs_pci_address
from services.device_plugin.health import HealthTracker

T4 = GpuInfo(uuid="GPU-t4-0", index=0, name="Tesla T4", memory_mib=15360, numa=0)
A100 = GpuInfo(uuid="GPU-a100-1", index=1, name="NVIDIA A100-SXM4-80GB", memory_mib=81920, numa=1)


def test_register_record_follows_hami_rules() -> None:
    s = effective_settings(
        "n", NvidiaConfig(deviceSplitCount=5, deviceMemoryScaling=1.5, deviceCoreScaling=2), None
    )
    records = [m.record for m in managed_gpus([T4, A100], s, lambda g: g.uuid != "GPU-a100-1")]
    assert [
        (r.id, r.index, r.count, r.devmem, r.devcore, r.type, r.numa, r.mode, r.health) for r in records
    ] == [
        ("GPU-t4-0", 0, 5, 23040, 200, "NVIDIA-Tesla T4", 0, "hami-core", True),
        ("GPU-a100-1", 1, 5, 122880, 200, "NVIDIA A100-SXM4-80GB", 1, "hami-core", False),
    ]
    # HAMi's wire form: every key omitempty, so the unhealthy card has no "health" key at all.
    encoded = encode_node_devices(records)
    assert json.loads(encoded)[1].get("health") is None
    assert decode_node_devices(encoded) == records


def test_filtered_mig_and_sizeless_gpus_are_left_out() -> None:
    mig = GpuInfo(uuid="GPU-mig", index=2, name="A30", memory_mib=24000, mig_enabled=True)
    sizeless = GpuInfo(uuid="GPU-gh", index=3, name="GH200", memory_mib=None)
    override = NodeOverride(name="n", filterdevices={"uuid": ["GPU-t4-0"], "index": []})
    s = effective_settings("n", NvidiaConfig(), override)
    chosen, skipped = select_gpus([T4, A100, mig, sizeless], s)
    assert [g.uuid for g, _ in chosen] == ["GPU-a100-1"]
    assert {k.uuid: k.why.split(";")[0] for k in skipped}.keys() == {"GPU-t4-0", "GPU-mig", "GPU-gh"}
    # preConfiguredDeviceMemory registers the unified-memory card with that size.
    s2 = effective_settings("n", NvidiaConfig(preConfiguredDeviceMemory=96000), None)
    chosen2, _ = select_gpus([sizeless], s2)
    assert chosen2 == [(sizeless, 96000)]


def test_replicas_carry_health_and_numa() -> None:
    s = effective_settings("n", NvidiaConfig(deviceSplitCount=3), None)
    reps = replicas(managed_gpus([T4, A100], s, lambda g: g.index == 0), 3)
    assert [r.id for r in reps] == [f"GPU-t4-0-{n}" for n in range(3)] + [f"GPU-a100-1-{n}" for n in range(3)]
    assert {r.health for r in reps[:3]} == {"Healthy"} and {r.health for r in reps[3:]} == {"Unhealthy"}
    assert reps[4].numa == 1


def test_extended_capacity_counts_healthy_gpus_only() -> None:
    s = effective_settings("n", NvidiaConfig(), None)
    assert extended_capacity(managed_gpus([T4, A100], s, lambda g: True)) == (15360 + 81920, 200)
    assert extended_capacity(managed_gpus([T4, A100], s, lambda g: g.index == 0)) == (15360, 100)


def test_type_name_and_sysfs_address() -> None:
    assert device_type_name("Tesla T4") == "NVIDIA-Tesla T4"
    assert device_type_name("NVIDIA H100 80GB HBM3") == "NVIDIA H100 80GB HBM3"
    assert sysfs_pci_address("00000000:3B:00.0") == "0000:3b:00.0"


def test_node_config_json_picks_this_node(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "nodeconfig": [
                    {"name": "other", "devicesplitcount": 2},
                    {"name": "me", "DeviceSplitCount": 7, "filterdevices": {"uuid": ["GPU-x"], "index": [3]}},
                ],
                "unknown": True,
            }
        )
    )
    entry = load_node_override(path, "me")
    assert entry is not None and entry.devicesplitcount == 7
    s = effective_settings("me", NvidiaConfig(), entry)
    assert s.split_count == 7 and s.filter_uuids == {"GPU-x"} and s.filter_indices == {3}
    assert load_node_override(path, "nobody") is None
    assert load_node_override(tmp_path / "absent.json", "me") is None
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_node_override(path, "me")


def test_mig_operating_mode_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        effective_settings("n", NvidiaConfig(), NodeOverride(name="n", operatingmode="mig"))


# --- health -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_ignore_list_is_hamis() -> None:
    assert DEFAULT_IGNORED_XIDS == (13, 31, 43, 45, 68, 109)


@pytest.mark.parametrize("xid", DEFAULT_IGNORED_XIDS)
def test_ignored_xids_keep_the_gpu_healthy(xid: int) -> None:
    tracker = HealthTracker(ignored_xids=DEFAULT_IGNORED_XIDS)
    verdict = tracker.record(GpuEvent(kind="xid", uuid="GPU-a", xid=xid), ["GPU-a"])
    assert not verdict.marked and tracker.is_healthy("GPU-a")


def test_critical_xid_then_recovery_after_quiet_period() -> None:
    clock = Clock()
    tracker = HealthTracker(ignored_xids=DEFAULT_IGNORED_XIDS, recovery_seconds=60, clock=clock)
    assert tracker.record(GpuEvent(kind="xid", uuid="GPU-a", xid=79), ["GPU-a", "GPU-b"]).marked == {"GPU-a"}
    assert not tracker.is_healthy("GPU-a") and tracker.is_healthy("GPU-b")
    assert tracker.reason("GPU-a") == "XID 79"
    clock.now += 30
    tracker.record(
        GpuEvent(kind="xid", uuid="GPU-a", xid=48), ["GPU-a", "GPU-b"]
    )  # restarts the quiet period
    clock.now += 59
    assert not tracker.is_healthy("GPU-a")
    assert tracker.seconds_to_next_recovery() == pytest.approx(1)
    clock.now += 1
    assert tracker.is_healthy("GPU-a")
    assert tracker.seconds_to_next_recovery() is None


def test_zero_recovery_keeps_hamis_never_recover() -> None:
    clock = Clock()
    tracker = HealthTracker(recovery_seconds=0, clock=clock)
    tracker.record(GpuEvent(kind="ecc", uuid="GPU-a"), ["GPU-a"])
    clock.now += 10**6
    assert not tracker.is_healthy("GPU-a")


def test_event_without_uuid_marks_every_gpu_and_unknown_gpus_are_ignored() -> None:
    tracker = HealthTracker()
    assert tracker.record(GpuEvent(kind="lost"), ["GPU-a", "GPU-b"]).marked == {"GPU-a", "GPU-b"}
    assert not tracker.record(GpuEvent(kind="xid", uuid="GPU-z", xid=79), ["GPU-a"]).marked


def test_disabled_health_ignores_events_but_not_absent_cards() -> None:
    tracker = HealthTracker(enabled=False)
    assert not tracker.record(GpuEvent(kind="xid", uuid="GPU-a", xid=79), ["GPU-a"]).marked
    assert tracker.is_healthy("GPU-a") and not tracker.is_healthy("GPU-a", present=False)
