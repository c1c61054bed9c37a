"""Node score, HAMi's single-node choice and the prioritize mapping (docs/hami-wire.md#node-score,
docs/weaknesses.md#filter-picks-one-node)."""

from __future__ import annotations

import pytest

from services.common.model import ContainerDeviceRequest, DeviceUsage
from services.scheduler.decoders import PodContext
from services.scheduler.fit import (
    NodeFit,
    NodeSnapshot,
    SchedulingPolicy,
    choose_best,
    fit_pod,
    node_score,
    priority_scores,
)


def card(uuid: str, used: int = 0, usedcores: int = 0, usedmem: int = 0) -> DeviceUsage:
    return DeviceUsage(
        id=uuid,
        count=10,
        totalmem=8000,
        totalcore=100,
        used=used,
        usedcores=usedcores,
        usedmem=usedmem,
        type="NVIDIA",
    )


def test_empty_node_scores_zero() -> None:
    assert node_score([card("a")]) == 0.0
    assert node_score([]) == 0.0


def test_one_busy_card() -> None:
    assert node_score([card("a", 5, 50, 4000)]) == pytest.approx(15.0)


def test_two_cards_one_busy() -> None:
    assert node_score([card("a", 5, 50, 4000), card("b")]) == pytest.approx(7.5)


def test_zero_totals_score_zero() -> None:
    broken = DeviceUsage(id="x", count=10, totalmem=0, totalcore=100, used=3)
    assert node_score([broken]) == 0.0


def test_node_score_is_the_usage_before_the_pod_and_spread_takes_the_unused_card() -> None:
    node = NodeSnapshot("n", [card("a", 5, 50, 4000), card("b")])
    request = ContainerDeviceRequest(nums=1, type="NVIDIA", memreq=1000, mem_percentage_req=101, coresreq=20)
    fit = fit_pod(PodContext("ns", "p", "u", {}, (request,)), node, SchedulingPolicy(gpu_policy="spread"))
    assert fit.score == pytest.approx(7.5)
    assert [d.uuid for d in fit.devices[0]] == ["b"]


def nf(node: str, score: float, fits: bool = True) -> NodeFit:
    return NodeFit(node=node, fits=fits, reason="" if fits else "1/1 CardInsufficientMemory", score=score)


def test_choose_best_binpack_takes_the_busiest() -> None:
    fits = [nf("n1", 3.0), nf("n2", 8.0), nf("n3", 20.0, fits=False)]
    best = choose_best(fits, "binpack")
    assert best is not None and best.node == "n2"


def test_choose_best_spread_takes_the_emptiest() -> None:
    fits = [nf("n1", 3.0), nf("n2", 8.0), nf("n0", 0.0, fits=False)]
    best = choose_best(fits, "spread")
    assert best is not None and best.node == "n1"


def test_choose_best_unknown_policy_ranks_like_binpack_and_ties_go_to_the_first() -> None:
    best = choose_best([nf("n1", 5.0), nf("n2", 5.0), nf("n3", 1.0)], "something")
    assert best is not None and best.node == "n1"


def test_choose_best_nothing_fits() -> None:
    assert choose_best([nf("n1", 1.0, fits=False)], "binpack") is None
    assert choose_best([], "spread") is None


def test_priority_binpack_scales_busiest_to_ten() -> None:
    fits = [nf("a", 0.0), nf("b", 7.5), nf("c", 15.0), nf("x", 30.0, fits=False)]
    assert priority_scores(fits, "binpack") == {"a": 0, "b": 5, "c": 10, "x": 0}


def test_priority_spread_scales_emptiest_to_ten() -> None:
    fits = [nf("a", 0.0), nf("b", 7.5), nf("c", 15.0), nf("x", 30.0, fits=False)]
    assert priority_scores(fits, "spread") == {"a": 10, "b": 5, "c": 0, "x": 0}


def test_priority_rounds_half_up_and_stays_in_range() -> None:
    fits = [nf("a", 0.0), nf("b", 1.0), nf("c", 2.0), nf("d", 3.0)]
    scores = priority_scores(fits, "binpack")
    assert scores == {"a": 0, "b": 3, "c": 7, "d": 10}
    assert all(0 <= v <= 10 for v in scores.values())


def test_priority_all_equal_gives_no_preference() -> None:
    assert priority_scores([nf("a", 4.0), nf("b", 4.0)], "spread") == {"a": 10, "b": 10}
    assert priority_scores([nf("a", 4.0, fits=False)], "binpack") == {"a": 0}
    assert priority_scores([], "binpack") == {}


def test_priority_agrees_with_choose_best() -> None:
    fits = [nf("a", 2.0), nf("b", 11.0), nf("c", 6.5)]
    for policy in ("binpack", "spread"):
        scores = priority_scores(fits, policy)
        best = choose_best(fits, policy)
        assert best is not None
        assert scores[best.node] == max(scores.values())
