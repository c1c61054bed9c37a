"""A whole pod on a node (docs/hami-wire.md#fit, docs/hami-wire.md#score-cases,
docs/hami-wire.md#slot-per-container)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common import wire
from services.common.codecs import encode_pod_single_device
from services.common.model import (
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceUsage,
    MigPlacement,
    MigProfile,
)
from services.scheduler.allocation import apply_allocation
from services.scheduler.decoders import PodContext, pod_context
from services.scheduler.fit import MigAssignment, NodeSnapshot, SchedulingPolicy, choose_best, fit_pod


def card(uuid: str, used: int = 0, usedmem: int = 0, usedcores: int = 0, totalmem: int = 8000) -> DeviceUsage:
    return DeviceUsage(
        id=uuid,
        count=10,
        totalmem=totalmem,
        totalcore=100,
        used=used,
        usedmem=usedmem,
        usedcores=usedcores,
        type="NVIDIA",
    )


def req(memreq: int, cores: int = 0, nums: int = 1) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(
        nums=nums, type="NVIDIA", memreq=memreq, mem_percentage_req=101, coresreq=cores
    )


def pod(
    *requests: ContainerDeviceRequest | None, init: int = 0, sidecars: frozenset[int] = frozenset()
) -> PodContext:
    return PodContext("default", "p", "uid-1", {}, tuple(requests), init, sidecars)


def filter_nodes() -> list[NodeSnapshot]:
    return [
        NodeSnapshot("node1", [card("device1", 1, 2000, 25), card("device2")]),
        NodeSnapshot("node2", [card("device3"), card("device4", 1, 6000, 75)]),
    ]


def schedule(p: PodContext, node_policy: str, gpu_policy: str) -> tuple[str, list[list[str]]]:
    policy = SchedulingPolicy(node_policy, gpu_policy)
    fits = [fit_pod(p, node, policy) for node in filter_nodes()]
    assert all(f.fits for f in fits)
    best = choose_best(fits, policy.resolve(p.annotations).node_policy)
    assert best is not None
    return best.node, [[d.uuid for d in slot] for slot in best.devices]


# --- Test_Filter --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_policy", "gpu_policy", "node", "device"),
    [
        pytest.param("binpack", "binpack", "node2", "device4", id="binpack-binpack"),
        pytest.param("spread", "binpack", "node1", "device1", id="spread-binpack"),
        pytest.param("spread", "spread", "node1", "device2", id="spread-spread"),
    ],
)
def test_filter_picks(node_policy: str, gpu_policy: str, node: str, device: str) -> None:
    assert schedule(pod(req(1000, 20)), node_policy, gpu_policy) == (node, [[device]])


def test_filter_picks_through_pod_annotations() -> None:
    p = PodContext(
        "default",
        "p",
        "u",
        {wire.NODE_SCHEDULER_POLICY: "spread", wire.GPU_SCHEDULER_POLICY: "spread"},
        (req(1000, 20),),
    )
    assert schedule(p, "binpack", "binpack") == ("node1", [["device2"]])


def test_filter_init_and_app_container() -> None:
    p = pod(req(5000, 20), req(4000, 20), init=1)
    assert schedule(p, "binpack", "binpack") == ("node2", [["device3"], ["device3"]])


def test_node_scores_are_pre_allocation() -> None:
    fits = [fit_pod(pod(req(1000, 20)), node, SchedulingPolicy()) for node in filter_nodes()]
    # node1: 10 x (1/20 + 25/200 + 2000/16000) = 3; node2: 10 x (1/20 + 75/200 + 6000/16000) = 8
    assert [f.score for f in fits] == [pytest.approx(3.0), pytest.approx(8.0)]


# --- Slots (docs/hami-wire.md#slot-per-container) -----------------------------------------------------------


def k8s_pod(init: list[dict[str, Any]], app: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "p", "uid": "u", "annotations": {}},
        "spec": {"initContainers": init, "containers": app},
    }


GPU = {"name": "gpu", "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}}}
PLAIN = {"name": "plain", "resources": {"limits": {"cpu": "1"}}}


def test_a_container_without_gpu_before_one_with_gets_an_empty_slot() -> None:
    p = pod_context(k8s_pod([], [PLAIN, GPU]))
    fit = fit_pod(p, NodeSnapshot("n", [card("GPU-a")]), SchedulingPolicy())
    assert fit.fits
    assert fit.devices == [[], [ContainerDevice("GPU-a", "NVIDIA", 1000, 0)]]
    assert encode_pod_single_device(fit.devices) == ";GPU-a,NVIDIA,1000,0:;"


def test_init_container_without_gpu_then_app_with_gpu() -> None:
    p = pod_context(k8s_pod([PLAIN], [GPU, PLAIN]))
    fit = fit_pod(p, NodeSnapshot("n", [card("GPU-a")]), SchedulingPolicy())
    assert [len(slot) for slot in fit.devices] == [0, 1, 0]


def test_every_slot_is_typed_nvidia_even_for_real_card_types() -> None:
    t4 = DeviceUsage(id="GPU-t4", count=10, totalmem=15360, totalcore=100, type="NVIDIA-Tesla T4")
    fit = fit_pod(pod(req(1000), req(500)), NodeSnapshot("n", [t4]), SchedulingPolicy())
    assert fit.fits
    assert {d.type for slot in fit.devices for d in slot} == {"NVIDIA"}


def test_pod_without_gpu_request_fits_with_empty_slots() -> None:
    fit = fit_pod(pod(None, None), NodeSnapshot("n", []), SchedulingPolicy())
    assert fit.fits
    assert fit.devices == [[], []]


# --- Init and app containers --------------------------------------------------------------------------------


def test_init_containers_each_get_a_fresh_copy() -> None:
    # Two init containers of 6000 each would not fit together on an 8000 card; one after the other they do.
    fit = fit_pod(
        pod(req(6000), req(6000), req(1000), init=2), NodeSnapshot("n", [card("a")]), SchedulingPolicy()
    )
    assert fit.fits
    assert fit.devices == [[ContainerDevice("a", "NVIDIA", 6000, 0)]] * 2 + [
        [ContainerDevice("a", "NVIDIA", 1000, 0)]
    ]


def test_app_containers_add_up() -> None:
    fit = fit_pod(pod(req(5000), req(4000)), NodeSnapshot("n", [card("a")]), SchedulingPolicy())
    assert not fit.fits
    assert fit.reason == "1/1 CardInsufficientMemory"
    assert fit.devices == []


def test_failure_reason_comes_from_the_failing_container() -> None:
    node = NodeSnapshot("n", [card("a", usedmem=7000), card("b", used=10)])
    fit = fit_pod(pod(req(500), req(2000)), node, SchedulingPolicy())
    assert not fit.fits
    assert fit.reason == "1/2 CardInsufficientMemory, 1/2 CardTimeSlicingExhausted"


def test_node_without_cards() -> None:
    fit = fit_pod(pod(req(100)), NodeSnapshot("n", []), SchedulingPolicy())
    assert (fit.fits, fit.reason) == (False, "NodeInsufficientDevice")


def test_fit_pod_does_not_touch_the_node() -> None:
    node = NodeSnapshot("n", [card("a", 1, 1000, 10), card("b")], {wire.DEVICE_CORDON: ""})
    before = copy.deepcopy(node)
    assert fit_pod(pod(req(3000), req(1000, nums=2), init=1), node, SchedulingPolicy()).fits
    assert node == before


def test_the_allocation_applied_matches_what_fit_checked() -> None:
    node = NodeSnapshot("n", [card("a", 1, 1000, 10), card("b")])
    p = pod(req(3000, 30), req(1000, 10, nums=2), req(500), init=1)
    fit = fit_pod(p, node, SchedulingPolicy(gpu_policy="binpack"))
    devices = copy.deepcopy(node.devices)
    assert apply_allocation(devices, fit.devices, p.init_count) == []
    a, b = devices
    # binpack puts everything on the busier card "a": init 3000/30 vs apps 1000+500 / 10+0 -> peak of each.
    assert (a.used, a.usedmem, a.usedcores) == (1 + 2, 1000 + 3000, 10 + 30)
    assert (b.used, b.usedmem, b.usedcores) == (1, 1000, 10)


# --- Native sidecars (docs/weaknesses.md#init-and-sidecar-accounting) ---------------------------------------


def test_sidecar_counts_with_the_app_containers() -> None:
    node = NodeSnapshot("n", [card("a")])
    as_init = fit_pod(pod(req(3000), req(6000), init=1), node, SchedulingPolicy())
    assert as_init.fits, "a plain init container has finished before the app starts"
    as_sidecar = fit_pod(pod(req(3000), req(6000), init=1, sidecars=frozenset({0})), node, SchedulingPolicy())
    assert not as_sidecar.fits
    assert as_sidecar.reason == "1/1 CardInsufficientMemory"


def test_init_container_after_a_sidecar_runs_next_to_it() -> None:
    node = NodeSnapshot("n", [card("a")])
    requests = (req(3000), req(6000), req(1000))
    assert not fit_pod(pod(*requests, init=2, sidecars=frozenset({0})), node, SchedulingPolicy()).fits
    assert fit_pod(pod(*requests, init=2), node, SchedulingPolicy()).fits


def test_init_container_before_a_sidecar_runs_alone() -> None:
    node = NodeSnapshot("n", [card("a")])
    p = pod(req(6000), req(3000), req(1000), init=2, sidecars=frozenset({1}))
    fit = fit_pod(p, node, SchedulingPolicy())
    assert fit.fits
    devices = copy.deepcopy(node.devices)
    apply_allocation(devices, fit.devices, p.init_count, p.sidecar_slots)
    assert (devices[0].used, devices[0].usedmem) == (2, 6000)


# --- MIG through fit_pod ------------------------------------------------------------------------------------


def test_mig_assignments_name_container_and_device_index() -> None:
    profile = MigProfile("1g.10gb", 9856, 14, 1, tuple(MigPlacement(s, 1) for s in range(7)))
    gpu = DeviceUsage(
        id="GPU-0",
        count=7,
        totalmem=81920,
        totalcore=100,
        type="NVIDIA-A100",
        mode=wire.MODE_MIG,
        mig_profiles=(profile,),
    )
    node = NodeSnapshot("n", [gpu], mig_placements={"GPU-0": [MigPlacement(6, 1)]})
    fit = fit_pod(pod(None, req(5000, nums=2)), node, SchedulingPolicy())
    assert fit.fits
    assert fit.devices[1] == [ContainerDevice("GPU-0", "NVIDIA", 9856, 14)] * 2
    assert fit.mig == (
        MigAssignment(1, 0, "GPU-0", "1g.10gb", MigPlacement(5, 1)),
        MigAssignment(1, 1, "GPU-0", "1g.10gb", MigPlacement(4, 1)),
    )
    assert node.mig_placements == {"GPU-0": [MigPlacement(6, 1)]}, "the snapshot is not touched"


def test_mig_slices_of_earlier_app_containers_are_not_reused() -> None:
    profile = MigProfile("3g.40gb", 40192, 42, 4, (MigPlacement(0, 4), MigPlacement(4, 4)))
    gpu = DeviceUsage(
        id="GPU-0",
        count=7,
        totalmem=81920,
        totalcore=100,
        type="NVIDIA-A100",
        mode=wire.MODE_MIG,
        mig_profiles=(profile,),
    )
    # The third container's memory fits the card, but both 3g placements are taken by the first two.
    fit = fit_pod(pod(req(30000), req(30000), req(1000)), NodeSnapshot("n", [gpu]), SchedulingPolicy())
    assert not fit.fits
    assert fit.reason == "1/1 CardMigTopologyInfeasible"
    two = fit_pod(pod(req(30000), req(30000)), NodeSnapshot("n", [gpu]), SchedulingPolicy())
    assert [m.placement for m in two.mig] == [MigPlacement(4, 4), MigPlacement(0, 4)]
