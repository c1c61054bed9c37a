"""Every fit failure reason of HAMi's vocabulary (docs/hami-wire.md#fit-reasons) comes out of `fit_pod` in
some situation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from services.common import wire
from services.common.codecs import parse_reasons
from services.common.model import ContainerDeviceRequest, DeviceUsage, MigPlacement, MigProfile
from services.scheduler.decoders import PodContext
from services.scheduler.fit import NodeFit, NodeSnapshot, SchedulingPolicy, fit_pod
from services.scheduler.quota import NamespaceQuota, QuotaEntry, QuotaView

# NodeUnfitPod, NodeFitPod and ModeNotFit are defined by HAMi but never produced by the NVIDIA Fit
# (docs/hami-wire.md#fit-reasons).
NOT_PRODUCED_BY_FIT = {wire.Reason.NODE_UNFIT_POD, wire.Reason.NODE_FIT_POD, wire.Reason.MODE_NOT_FIT}


def gpu(uuid: str = "GPU-0", **changes: Any) -> DeviceUsage:
    return replace(DeviceUsage(id=uuid, count=10, totalmem=8000, totalcore=100, type="NVIDIA-A10"), **changes)


def req(nums: int = 1, memreq: int = 1000, cores: int = 10) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(
        nums=nums, type="NVIDIA", memreq=memreq, mem_percentage_req=101, coresreq=cores
    )


def run(
    devices: list[DeviceUsage],
    request: ContainerDeviceRequest | None = None,
    *,
    pod_annotations: dict[str, str] | None = None,
    node_annotations: dict[str, str] | None = None,
    mig: dict[str, list[MigPlacement]] | None = None,
    quota: QuotaView | None = None,
) -> NodeFit:
    pod = PodContext("team", "p", "u", pod_annotations or {}, (request or req(),))
    node = NodeSnapshot("n", devices, node_annotations or {}, mig or {})
    return fit_pod(pod, node, SchedulingPolicy(), quota)


MIG_GPU = gpu(
    mode=wire.MODE_MIG,
    count=7,
    totalmem=40000,
    mig_profiles=(MigProfile("3g.20gb", 20000, 42, 4, (MigPlacement(0, 4),)),),
)

SCENARIOS: dict[str, Callable[[], NodeFit]] = {
    wire.Reason.CARD_TYPE_MISMATCH: lambda: run([gpu()], pod_annotations={wire.USE_GPU_TYPE: "H100"}),
    wire.Reason.CARD_UUID_MISMATCH: lambda: run([gpu()], pod_annotations={wire.NOUSE_GPU_UUID: "GPU-0"}),
    wire.Reason.CARD_TIME_SLICING_EXHAUSTED: lambda: run([gpu(used=10)]),
    wire.Reason.CARD_COMPUTE_UNITS_EXHAUSTED: lambda: run([gpu(used=1, usedcores=100)], req(cores=0)),
    wire.Reason.CARD_INSUFFICIENT_MEMORY: lambda: run([gpu(usedmem=7500)]),
    wire.Reason.CARD_INSUFFICIENT_CORE: lambda: run([gpu(usedcores=95)]),
    wire.Reason.CARD_NOT_HEALTH: lambda: run([gpu(health=False)]),
    wire.Reason.CARD_CORDONED: lambda: run([gpu()], node_annotations={wire.DEVICE_CORDON: "GPU-0"}),
    wire.Reason.NUMA_NOT_FIT: lambda: run(
        [gpu("GPU-0", numa=0), gpu("GPU-1", numa=1)], req(nums=2), pod_annotations={wire.NUMA_BIND: "true"}
    ),
    wire.Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT: lambda: run([gpu(used=1)], req(cores=100)),
    wire.Reason.CARD_NOT_FOUND_CUSTOM_FILTER_RULE: lambda: run([gpu()], mig={"GPU-0": [MigPlacement(0, 1)]}),
    wire.Reason.CARD_MIG_TOPOLOGY_INFEASIBLE: lambda: run([MIG_GPU], mig={"GPU-0": [MigPlacement(2, 1)]}),
    wire.Reason.NODE_INSUFFICIENT_DEVICE: lambda: run([gpu()], req(nums=2)),
    wire.Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST: lambda: run(
        [gpu("GPU-0"), gpu("GPU-1", used=10)], req(nums=2)
    ),
    wire.Reason.RESOURCE_QUOTA_NOT_FIT: lambda: run(
        [gpu()],
        quota=QuotaView({"team": NamespaceQuota({"limits.nvidia.com/gpumem": QuotaEntry(0, 0, True)})}),
    ),
}


def test_every_reason_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(wire.Reason) - NOT_PRODUCED_BY_FIT


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_reason_is_reachable(reason: str) -> None:
    fit = SCENARIOS[reason]()
    assert not fit.fits
    if reason == wire.Reason.NODE_INSUFFICIENT_DEVICE:
        assert fit.reason == reason  # a plain string, no counts
    else:
        assert reason in parse_reasons(fit.reason), fit.reason


def test_scenarios_fit_once_the_obstacle_is_gone() -> None:
    # The scenarios are minimal: the same pod fits the same card when nothing is in the way.
    assert run([gpu()]).fits
    assert run([MIG_GPU]).fits
