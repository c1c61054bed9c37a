"""Filter decisions over many nodes, their event texts (docs/hami-wire.md#events), the bind annotations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.model import ContainerDevice, DeviceUsage, MigPlacement
from services.scheduler.bind_writes import (
    already_bound,
    bind_annotations,
    binding_copies_labels,
    encode_mig_allocations,
    revert_patch,
)
from services.scheduler.decoders import pod_context
from services.scheduler.filtering import EventText, evaluate, failure_events, success_event
from services.scheduler.fit import MigAssignment, NodeFit, NodeSnapshot, SchedulingPolicy


def gpu(uuid: str, *, used: int = 0, usedmem: int = 0, usedcores: int = 0, mem: int = 16000) -> DeviceUsage:
    return DeviceUsage(
        id=uuid,
        count=10,
        used=used,
        totalmem=mem,
        usedmem=usedmem,
        totalcore=100,
        usedcores=usedcores,
        type="NVIDIA-Tesla T4",
    )


def pod(mem: int, cores: int = 0, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mem), "nvidia.com/gpucores": str(cores)}
    return {
        "metadata": {"name": "p", "namespace": "default", "uid": "u", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]},
    }


SNAPSHOTS: dict[str, NodeSnapshot | None] = {
    "busy": NodeSnapshot("busy", [gpu("GPU-1", used=3, usedmem=12000, usedcores=60)]),
    "idle": NodeSnapshot("idle", [gpu("GPU-2")]),
    "half": NodeSnapshot("half", [gpu("GPU-3", used=1, usedmem=8000, usedcores=30)]),
    "tiny": NodeSnapshot("tiny", [gpu("GPU-4", mem=2000)]),
    "gone": None,
}
CANDIDATES = ["busy", "idle", "half", "tiny", "gone", "idle"]


def test_evaluate_returns_every_fitting_node_and_reasons_for_the_rest() -> None:
    outcome = evaluate(pod_context(pod(3000)), CANDIDATES, SNAPSHOTS, SchedulingPolicy())
    assert outcome.fitting_names == ["busy", "idle", "half"]
    assert outcome.failed == {"tiny": "1/1 CardInsufficientMemory", "gone": "node unregistered"}
    assert [v.node for v in outcome.verdicts] == ["busy", "idle", "half", "tiny", "gone"]  # duplicates once
    assert outcome.best is not None and outcome.best.node == "busy"  # binpack: the busiest node


def test_priorities_follow_the_node_policy_and_pod_override() -> None:
    binpack = evaluate(pod_context(pod(3000)), CANDIDATES, SNAPSHOTS, SchedulingPolicy("binpack"))
    assert binpack.priorities() == {"busy": 10, "half": 5, "idle": 0, "tiny": 0, "gone": 0}
    spread = evaluate(pod_context(pod(3000)), CANDIDATES, SNAPSHOTS, SchedulingPolicy("spread"))
    assert spread.priorities() == {"busy": 0, "half": 5, "idle": 10, "tiny": 0, "gone": 0}
    assert spread.best is not None and spread.best.node == "idle"
    override = pod(3000, annotations={"hami.io/node-scheduler-policy": "spread"})
    assert evaluate(
        pod_context(override), CANDIDATES, SNAPSHOTS, SchedulingPolicy("binpack")
    ).priorities() == (spread.priorities())


def test_success_event_text() -> None:
    outcome = evaluate(pod_context(pod(3000)), ["busy", "tiny", "idle"], SNAPSHOTS, SchedulingPolicy())
    event = success_event(outcome)
    assert event == EventText(
        "Normal",
        "FilteringSucceed",
        "find fit node(busy), 1 nodes not fit, 2 nodes fit(busy:16.50,idle:0.00)",
    )


def test_failure_event_texts() -> None:
    outcome = evaluate(
        pod_context(pod(15000)), ["busy", "half", "tiny", "gone"], SNAPSHOTS, SchedulingPolicy()
    )
    assert outcome.fitting == ()
    assert failure_events(outcome) == [
        EventText("Warning", "FilteringFailed", "3 nodes CardInsufficientMemory(busy,half,tiny)"),
        EventText("Warning", "FilteringFailed", "1 nodes node unregistered(gone)"),
        EventText("Warning", "FilteringFailed", "no available node, 4 nodes do not meet"),
    ]


NOW = datetime(2026, 8, 21, 10, 0, 0, tzinfo=UTC)


def test_bind_annotations_are_hamis_keys_and_formats() -> None:
    fit = NodeFit(
        node="n1",
        fits=True,
        devices=[
            [],
            [ContainerDevice("GPU-a", "NVIDIA", 3000, 30)],
            [ContainerDevice("GPU-b", "NVIDIA", 1000, 0)],
        ],
    )
    assert bind_annotations("n1", fit, NOW) == {
        "hami.io/vgpu-node": "n1",
        "hami.io/vgpu-time": "1787306400",
        "hami.io/vgpu-devices-to-allocate": ";GPU-a,NVIDIA,3000,30:;GPU-b,NVIDIA,1000,0:;",
        "hami.io/vgpu-devices-allocated": ";GPU-a,NVIDIA,3000,30:;GPU-b,NVIDIA,1000,0:;",
        "hami.io/bind-phase": "allocating",
        "hami.io/bind-time": "1787306400",
    }


def test_mig_allocations_encoding() -> None:
    assignment = MigAssignment(0, 0, "GPU-0", "1g.10gb", MigPlacement(6, 1))
    assert json.loads(encode_mig_allocations((assignment,))) == [
        {
            "containerIndex": 0,
            "deviceIndex": 0,
            "gpuUUID": "GPU-0",
            "profile": "1g.10gb",
            "placement": {"start": 6, "size": 1},
        }
    ]
    fit = NodeFit(
        node="n", fits=True, devices=[[ContainerDevice("GPU-0", "NVIDIA", 10240, 15)]], mig=(assignment,)
    )
    assert "hami.io/vgpu-mig-allocations" in bind_annotations("n", fit, NOW)


def test_revert_patch_restores_previous_values() -> None:
    written = {"hami.io/vgpu-node": "n1", "hami.io/bind-phase": "allocating"}
    assert revert_patch({"hami.io/bind-phase": "failed", "other": "x"}, {}, written) == {
        "metadata": {
            "annotations": {"hami.io/vgpu-node": None, "hami.io/bind-phase": "failed"},
            "labels": {"hami.io/vgpu-node": None},
        }
    }
    assert revert_patch({}, {"hami.io/vgpu-node": "old"}, written)["metadata"]["labels"] == {
        "hami.io/vgpu-node": "old"
    }


def _bound(node: str | None, vgpu_node: str | None = None) -> dict[str, Any]:
    annotations = {"hami.io/vgpu-node": vgpu_node} if vgpu_node else {}
    return {
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
        "spec": {"nodeName": node},
    }


def test_already_bound() -> None:
    assert already_bound(_bound(None), "n1", gpu=True) is None
    assert already_bound(_bound("n1", "n1"), "n1", gpu=True) == ""
    assert already_bound(_bound("n1"), "n1", gpu=False) == ""
    assert already_bound(_bound("n1"), "n1", gpu=True) == 'pod ns/p is already assigned to node "n1"'
    assert already_bound(_bound("n2", "n2"), "n1", gpu=True) == 'pod ns/p is already assigned to node "n2"'


def test_success_event_lists_only_the_best_ten_nodes() -> None:
    snapshots: dict[str, NodeSnapshot | None] = {
        f"n{i:02d}": NodeSnapshot(f"n{i:02d}", [gpu(f"GPU-{i}", used=1, usedmem=i * 100, usedcores=i)])
        for i in range(15)
    }
    names = list(snapshots)
    binpack = evaluate(pod_context(pod(1000)), names, snapshots, SchedulingPolicy("binpack"))
    message = success_event(binpack).message
    assert message.startswith("find fit node(n14), 0 nodes not fit, 15 nodes fit(n14:")
    listed = message[message.index("fit(n14") + 4 : -1].split(",")
    assert listed[-1] == "..." and [n.split(":")[0] for n in listed[:-1]] == [
        f"n{i:02d}" for i in range(14, 4, -1)
    ]
    spread = evaluate(pod_context(pod(1000)), names, snapshots, SchedulingPolicy("spread"))
    listed = success_event(spread).message.split("nodes fit(")[1][:-1].split(",")
    assert [n.split(":")[0] for n in listed[:-1]] == [f"n{i:02d}" for i in range(10)] and listed[-1] == "..."


@pytest.mark.parametrize(
    ("version", "copies"),
    [
        ({"major": "1", "minor": "35"}, True),
        ({"major": "1", "minor": "37", "gitVersion": "v1.37.2"}, True),
        ({"major": "1", "minor": "35+"}, True),  # managed distributions add a "+"
        ({"major": "1", "minor": "34"}, False),
        ({"major": "1", "minor": "34+"}, False),
        ({"major": "2", "minor": "0"}, True),
        ({"major": "1"}, False),
        ({"major": "1", "minor": ""}, False),
        ({"major": 1, "minor": 35}, False),  # not the API's strings: cannot tell, HAMi's two writes
        ({}, False),
    ],
)
def test_binding_copies_labels_from_1_35(version: dict[str, object], copies: bool) -> None:
    assert binding_copies_labels(version) is copies
