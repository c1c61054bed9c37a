"""The chaos suite's invariant checks catch what they claim to: a suite run reporting 0 violations means
nothing unless an over-committed card, a stale lock and an unexplained pod are each reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.model import DeviceInfo
from tests.chaos.invariants import locks_held_too_long, overcommitted_cards, unsettled_pods

CARD = "GPU-0000"


def _node(lock: str | None = None) -> dict[str, Any]:
    card = DeviceInfo(id=CARD, index=0, count=2, devmem=8000, devcore=100, type="T4", numa=0, health=True)
    annotations = {wire.NODE_NVIDIA_REGISTER: encode_node_devices([card])}
    if lock is not None:
        annotations[wire.NODE_LOCK] = lock
    return {"metadata": {"name": "n1", "annotations": annotations}}


def _pod(name: str, mem: int, cores: int, phase: str = "Running", node: str | None = "n1") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "chaos",
            "name": name,
            "annotations": {
                wire.VGPU_NODE: "n1",
                wire.VGPU_DEVICES_ALLOCATED: f"{CARD},NVIDIA,{mem},{cores}:;",
            },
        },
        "spec": {"nodeName": node},
        "status": {"phase": phase},
    }


def test_cards_within_their_registration_pass() -> None:
    assert overcommitted_cards([_node()], [_pod("a", 4000, 50), _pod("b", 4000, 50)]) == []


def test_memory_cores_and_shares_over_the_registration_are_each_reported() -> None:
    pods = [_pod("a", 5000, 60), _pod("b", 4000, 50), _pod("c", 10, 0)]
    found = overcommitted_cards([_node()], pods)
    assert any("memory MiB over-committed, 9010 > 8000" in v for v in found), found
    assert any("cores % over-committed, 110 > 100" in v for v in found), found
    assert any("shares over-committed, 3 > 2" in v for v in found), found


def test_finished_pods_free_their_share_and_unknown_cards_are_reported() -> None:
    assert overcommitted_cards([_node()], [_pod("a", 8000, 100), _pod("b", 8000, 100, phase="Failed")]) == []
    stray = _pod("a", 10, 10)
    stray["metadata"]["annotations"][wire.VGPU_DEVICES_ALLOCATED] = "GPU-9999,NVIDIA,10,10:;"
    assert "not registered" in overcommitted_cards([_node()], [stray])[0]


def test_a_lock_past_its_ttl_is_reported_a_fresh_one_is_not() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    fresh = (now - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale = (now - timedelta(seconds=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert locks_held_too_long([_node(f"{fresh},chaos,a")], now, 30) == []
    assert "still held past 30s" in locks_held_too_long([_node(f"{stale},chaos,a")], now, 30)[0]


def test_only_running_or_unschedulable_pending_pods_are_settled() -> None:
    unschedulable = _pod("u", 1, 1, phase="Pending", node=None)
    unschedulable["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    ]
    retrying = _pod("r", 1, 1, phase="Pending", node=None)
    retrying["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}
    ]
    bound_pending = _pod("b", 1, 1, phase="Pending")
    failed = _pod("f", 1, 1, phase="Failed")
    found = unsettled_pods([_pod("ok", 1, 1), unschedulable, retrying, bound_pending, failed])
    assert [v.split(":")[0] for v in found] == ["pod chaos/r", "pod chaos/b", "pod chaos/f"]


def test_across_an_api_server_outage_a_pod_whose_explanation_was_lost_is_settled() -> None:
    lost_explanation = _pod("l", 1, 1, phase="Pending", node=None)
    retrying = _pod("r", 1, 1, phase="Pending", node=None)
    retrying["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}
    ]
    bound_pending = _pod("b", 1, 1, phase="Pending")
    assert [v.split(":")[0] for v in unsettled_pods([lost_explanation])] == ["pod chaos/l"]
    found = unsettled_pods([lost_explanation, retrying, bound_pending], explanation_may_be_lost=True)
    assert [v.split(":")[0] for v in found] == ["pod chaos/r", "pod chaos/b"]
