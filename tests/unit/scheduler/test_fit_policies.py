"""GPU policies inside Fit: NUMA binding, mutex, topology and the policy-driven sort
(docs/hami-wire.md#policy-cases)."""

from __future__ import annotations

import json
import math

import pytest

from services.common import wire
from services.common.model import ContainerDeviceRequest, DeviceUsage
from services.scheduler.decoders import PodContext
from services.scheduler.fit import (
    NodeSnapshot,
    PodFilters,
    SchedulingPolicy,
    ScoredDevice,
    device_combinations,
    fit_container,
    fit_devices,
    fit_pod,
    sort_devices,
)
from services.scheduler.score import best_combination, pair_score, parse_pair_scores, worst_connected


def dev(uuid: str, *, numa: int = 0, used: int = 0, index: int = 0) -> DeviceUsage:
    return DeviceUsage(
        id=uuid, index=index, used=used, count=10, totalmem=1000, totalcore=100, type="NVIDIA", numa=numa
    )


def req(nums: int) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(nums=nums, type="NVIDIA", memreq=100, mem_percentage_req=101, coresreq=10)


PAIRS = {"dev-0": {"dev-1": 100, "dev-2": 200}, "dev-1": {"dev-0": 100, "dev-2": 150}}


# --- NUMA ---------------------------------------------------------------------------------------------------


def test_numa_switching_restarts_on_the_new_numa_node() -> None:
    cards = [dev("dev-0", numa=1), dev("dev-1", numa=1), dev("dev-2", numa=0)]
    result = fit_devices(req(2), cards, filters=PodFilters(numa_bind=True))
    assert result.fits
    assert [d.uuid for d in result.devices] == ["dev-1", "dev-0"]


def test_without_numa_bind_cards_mix_numa_nodes() -> None:
    cards = [dev("dev-0", numa=1), dev("dev-1", numa=1), dev("dev-2", numa=0)]
    result = fit_devices(req(2), cards)
    assert [d.uuid for d in result.devices] == ["dev-2", "dev-1"]


def test_numa_bind_from_the_annotation_accepts_go_booleans() -> None:
    assert PodFilters.from_annotations({wire.NUMA_BIND: "T"}).numa_bind
    assert PodFilters.from_annotations({wire.NUMA_BIND: "1"}).numa_bind
    assert not PodFilters.from_annotations({wire.NUMA_BIND: "yes"}).numa_bind
    assert not PodFilters.from_annotations({}).numa_bind


def scored(name: str, numa: int, score: float, index: int = 0) -> ScoredDevice:
    return ScoredDevice(dev(name, numa=numa, index=index), score)


def names(items: list[ScoredDevice]) -> list[str]:
    return [s.device.id for s in items]


def test_numa_bind_sort_preserves_affinity() -> None:
    items = [scored("A_n0", 0, 5), scored("B_n0", 0, 1), scored("C_n1", 1, 3)]
    filters = PodFilters(numa_bind=True)
    by_score_only = sort_devices(items, "spread")
    assert names(by_score_only) == ["A_n0", "C_n1", "B_n0"]
    assert not fit_devices(req(2), [s.device for s in by_score_only], filters=filters).fits
    grouped = sort_devices(items, "spread", numa_bind=True)
    assert names(grouped) == ["A_n0", "B_n0", "C_n1"]
    result = fit_devices(req(2), [s.device for s in grouped], filters=filters)
    assert {d.uuid for d in result.devices} == {"A_n0", "B_n0"}


def test_score_is_primary_across_numa() -> None:
    items = [scored("P_n0", 0, 1), scored("Q_n1", 1, 8), scored("R_n1", 1, 5)]
    ordered = sort_devices(items, "spread")
    result = fit_devices(req(1), [s.device for s in ordered])
    assert [d.uuid for d in result.devices] == ["P_n0"]


# --- Sort orders (docs/hami-wire.md#gpu-score-and-sort) -----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "numa_bind", "expected"),
    [
        pytest.param("binpack", False, ["low_n1", "mid_n0", "mid_n1", "high_n0"], id="binpack"),
        pytest.param("spread", False, ["high_n0", "mid_n0", "mid_n1", "low_n1"], id="spread"),
        pytest.param(
            "topology-aware",
            False,
            ["high_n0", "mid_n0", "mid_n1", "low_n1"],
            id="topology-sorts-like-spread",
        ),
        pytest.param(
            "whatever", False, ["high_n0", "mid_n0", "mid_n1", "low_n1"], id="unknown-sorts-like-spread"
        ),
        pytest.param("binpack", True, ["low_n1", "mid_n1", "mid_n0", "high_n0"], id="binpack-numa-bind"),
        pytest.param("spread", True, ["high_n0", "mid_n0", "mid_n1", "low_n1"], id="spread-numa-bind"),
        pytest.param(
            "binpack,numa", False, ["low_n1", "mid_n0", "mid_n1", "high_n0"], id="chain-like-binpack"
        ),
    ],
)
def test_policy_sorts(policy: str, numa_bind: bool, expected: list[str]) -> None:
    items = [
        scored("mid_n1", 1, 5, 0),
        scored("high_n0", 0, 9, 1),
        scored("low_n1", 1, 1, 2),
        scored("mid_n0", 0, 5, 3),
    ]
    assert names(sort_devices(items, policy, numa_bind)) == expected


def test_mutex_sorts_by_used_descending() -> None:
    items = [
        ScoredDevice(dev("idle", used=0), 1.0),
        ScoredDevice(dev("busy", used=3), 0.0),
        ScoredDevice(dev("some", used=1, numa=1), 9.0),
        ScoredDevice(dev("some0", used=1, numa=0), 2.0),
    ]
    assert names(sort_devices(items, "mutex")) == ["busy", "some0", "some", "idle"]


@pytest.mark.parametrize(
    ("policy", "numa_bind", "expected"),
    [
        pytest.param("numa,spread", False, ["b_n0_9", "a_n0_5", "c_n1_7", "d_n1_7"], id="numa-then-spread"),
        pytest.param("spread,numa", False, ["b_n0_9", "c_n1_7", "d_n1_7", "a_n0_5"], id="spread-then-numa"),
        pytest.param("numa", False, ["a_n0_5", "b_n0_9", "c_n1_7", "d_n1_7"], id="bare-numa-index-tiebreak"),
        pytest.param("spread,binpack", False, ["b_n0_9", "c_n1_7", "d_n1_7", "a_n0_5"], id="first-key-wins"),
        pytest.param(
            "mutex,topology-aware", False, ["b_n0_9", "c_n1_7", "d_n1_7", "a_n0_5"], id="empty-chain"
        ),
        pytest.param("binpack,spread", True, ["a_n0_5", "b_n0_9", "c_n1_7", "d_n1_7"], id="numa-bind-first"),
    ],
)
def test_chain_sorts(policy: str, numa_bind: bool, expected: list[str]) -> None:
    items = [
        scored("d_n1_7", 1, 7, index=3),
        scored("c_n1_7", 1, 7, index=2),
        scored("a_n0_5", 0, 5, index=0),
        scored("b_n0_9", 0, 9, index=1),
    ]
    assert names(sort_devices(items, policy, numa_bind)) == expected


# --- Mutex --------------------------------------------------------------------------------------------------


def test_mutex_prefers_the_idle_card() -> None:
    cards = [dev("used", used=1), dev("idle")]
    result = fit_container(req(1), cards, gpu_policy="mutex")
    assert [d.uuid for d in result.devices] == ["idle"]


def test_mutex_refuses_busy_cards() -> None:
    cards = [dev("used", used=1), dev("idle")]
    result = fit_container(req(2), cards, gpu_policy="mutex")
    assert not result.fits
    assert result.reason == "1/2 AllocatedCardsInsufficientRequest, 1/2 ExclusiveDeviceAllocateConflict"


def test_mutex_in_a_chain_still_refuses_busy_cards() -> None:
    result = fit_devices(req(1), [dev("used", used=1)], gpu_policy="binpack,mutex")
    assert result.reason == "1/1 ExclusiveDeviceAllocateConflict"


# --- Topology -----------------------------------------------------------------------------------------------


def three() -> list[DeviceUsage]:
    return [dev("dev-0"), dev("dev-1"), dev("dev-2")]


def test_topology_single_card_takes_the_worst_connected() -> None:
    result = fit_devices(req(1), three(), gpu_policy="topology-aware", pair_scores=PAIRS)
    assert [d.uuid for d in result.devices] == ["dev-1"]


def test_topology_best_combination() -> None:
    result = fit_devices(req(2), three(), gpu_policy="topology-aware", pair_scores=PAIRS)
    assert result.fits
    assert {d.uuid for d in result.devices} == {"dev-0", "dev-2"}


def test_topology_zero_scores_still_fit() -> None:
    result = fit_devices(req(2), three(), gpu_policy="topology-aware", pair_scores={})
    assert result.fits
    assert len(result.devices) == 2
    assert len({d.uuid for d in result.devices}) == 2


def test_topology_exact_count_takes_all() -> None:
    result = fit_devices(req(3), three(), gpu_policy="topology-aware", pair_scores=PAIRS)
    assert {d.uuid for d in result.devices} == {"dev-0", "dev-1", "dev-2"}


def test_topology_too_few_cards() -> None:
    cards = [
        dev("dev-0"),
        DeviceUsage(id="dev-1", count=10, totalmem=1000, totalcore=100, type="NVIDIA", health=False),
    ]
    result = fit_devices(req(2), cards, gpu_policy="topology-aware", pair_scores=PAIRS)
    assert result.reason == "1/2 AllocatedCardsInsufficientRequest, 1/2 CardNotHealth"


def test_topology_through_fit_pod_uses_the_node_annotation() -> None:
    scores = [
        {"uuid": "dev-0", "score": {"dev-1": 100, "dev-2": 200}},
        {"uuid": "dev-1", "score": {"dev-0": 100, "dev-2": 150}},
        {"uuid": "dev-2", "score": {"dev-0": 200, "dev-1": 150}},
    ]
    node = NodeSnapshot("n", three(), {wire.NODE_NVIDIA_SCORE: json.dumps(scores)})
    pod = PodContext("ns", "p", "u", {wire.GPU_SCHEDULER_POLICY: "topology-aware"}, (req(2),))
    fit = fit_pod(pod, node, SchedulingPolicy())
    assert {d.uuid for d in fit.devices[0]} == {"dev-0", "dev-2"}
    # Without topology-aware the node's pair scores play no part: spread takes the last two cards.
    plain = fit_pod(PodContext("ns", "p", "u", {}, (req(2),)), node, SchedulingPolicy())
    assert {d.uuid for d in plain.devices[0]} == {"dev-1", "dev-2"}


def test_combinations_count() -> None:
    cards = [dev(f"dev-{i}") for i in range(4)]
    assert [len(device_combinations(cards, k)) for k in (1, 2, 3, 4)] == [4, 6, 4, 1]
    assert [len(device_combinations(cards, k)) for k in (1, 2, 3, 4)] == [
        math.comb(4, k) for k in (1, 2, 3, 4)
    ]


def test_pair_scores_helpers() -> None:
    assert pair_score(PAIRS, "dev-2", "dev-0") == 200  # only the reverse direction is listed
    assert pair_score(PAIRS, "dev-0", "dev-9") == 0
    cards = three()
    assert worst_connected(cards, PAIRS).id == "dev-1"
    assert [d.id for d in best_combination(cards, 2, PAIRS)] == ["dev-0", "dev-2"]
    assert [d.id for d in best_combination(cards, 2, {})] == ["dev-0", "dev-1"], "first combination on ties"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, {}, id="absent"),
        pytest.param("", {}, id="empty"),
        pytest.param("not json", {}, id="bad-json"),
        pytest.param('{"uuid":"a"}', {}, id="not-an-array"),
        pytest.param('[{"uuid":"a","score":{"b":100,"c":60}}]', {"a": {"b": 100, "c": 60}}, id="hami-shape"),
        pytest.param(
            '[1, {"uuid":"a"}, {"uuid":"b","score":{"c":true,"d":"x","e":5}}]',
            {"b": {"e": 5}},
            id="bad-entries",
        ),
    ],
)
def test_parse_pair_scores(value: str | None, expected: dict[str, dict[str, int]]) -> None:
    assert parse_pair_scores(value) == expected


def test_policy_resolve_and_flags() -> None:
    base = SchedulingPolicy()
    assert (base.node_policy, base.gpu_policy) == ("binpack", "spread")
    resolved = base.resolve(
        {wire.NODE_SCHEDULER_POLICY: "spread", wire.GPU_SCHEDULER_POLICY: "binpack,mutex"}
    )
    assert resolved == SchedulingPolicy("spread", "binpack,mutex")
    assert resolved.spread_nodes and resolved.mutex and not resolved.topology_aware
    assert base.resolve({wire.NODE_SCHEDULER_POLICY: " "}) == base
    assert SchedulingPolicy(gpu_policy="topology-aware").topology_aware
