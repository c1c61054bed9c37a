"""`ranking.rank_aligned` and `priority_template` against the reference scaling `fit.priority_scores`."""

from __future__ import annotations

import json
import random

import pytest

from services.scheduler.fit import NodeFit, priority_scores
from services.scheduler.ranking import LikelyPicks, priority_template, rank_aligned


def _fits(values: list[float], fits: list[bool]) -> list[NodeFit]:
    pairs = enumerate(zip(values, fits, strict=True))
    return [NodeFit(node=f"n{i}", fits=ok, score=v) for i, (v, ok) in pairs]


def _reference(values: list[float], fits: list[bool], busy: set[int], policy: str) -> list[int]:
    """The scores the extender gave before `rank_aligned`: plain policy scores, or, when some but not all
    fitting nodes are busy, the policy over the others with the busy ones at 0."""
    nodes = _fits(values, fits)
    hit = [i for i in busy if fits[i]]
    if hit and len(hit) < sum(fits):
        scores = priority_scores([f for i, f in enumerate(nodes) if i not in busy], policy)
        for i in hit:
            scores[f"n{i}"] = 0
    else:
        scores = priority_scores(nodes, policy)
    return [scores.get(f"n{i}", 0) for i in range(len(values))]


@pytest.mark.parametrize(
    ("values", "fits", "busy", "policy", "scores", "leader"),
    [
        ([1.0, 2.0, 3.0], None, [], "binpack", [0, 5, 10], 2),
        ([1.0, 2.0, 3.0], None, [], "spread", [10, 5, 0], 0),
        ([1.0, 2.0, 3.0], None, [2], "binpack", [0, 10, 0], 1),  # the busiest is busy: next one leads
        ([1.0, 2.0, 3.0], None, [0, 1, 2], "binpack", [0, 5, 10], 2),  # all busy: plain order
        ([4.0, 4.0], None, [], "binpack", [10, 10], None),  # a shared top: no leader
        ([1.0, 9.0, 3.0], [True, False, True], [], "binpack", [0, 0, 10], 2),  # a non-fitting node scores 0
        ([1.0, 9.0, 3.0], [False, False, False], [], "binpack", [0, 0, 0], None),
        ([1.0, 2.0, 3.0], [True, True, False], [1], "binpack", [10, 0, 0], 0),
        ([], None, [], "binpack", [], None),
    ],
)
def test_rank_aligned_table(
    values: list[float],
    fits: list[bool] | None,
    busy: list[int],
    policy: str,
    scores: list[int],
    leader: int | None,
) -> None:
    ranked, _ = rank_aligned(values, fits, busy, spread=policy == "spread")
    assert ranked.scores == scores
    assert ranked.leader == leader


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_rank_aligned_matches_the_reference_scaling(policy: str) -> None:
    rng = random.Random(7)
    for _ in range(500):
        count = rng.randint(1, 30)
        values = [round(rng.uniform(0, 40), rng.choice([0, 1, 3])) for _ in range(count)]
        fits = [rng.random() < 0.8 for _ in range(count)]
        busy = {i for i in range(count) if rng.random() < 0.2}
        ranked, plain = rank_aligned(values, fits, sorted(busy), spread=policy == "spread")
        assert ranked.scores == _reference(values, fits, busy, policy)
        unbusy, plain = rank_aligned(values, fits, [], spread=policy == "spread")
        assert plain is not None and unbusy.scores == plain == _reference(values, fits, set(), policy)
        # Kept plain scores give the same answer as computing them again.
        again, _ = rank_aligned(values, fits, sorted(busy), spread=policy == "spread", plain=plain)
        assert again.scores == ranked.scores


def test_priority_template_is_the_host_priority_list() -> None:
    hosts = ["a", "b-1", 'odd"%name']
    body = priority_template(hosts) % (3, 0, 10)
    assert json.loads(body) == [
        {"Host": "a", "Score": 3},
        {"Host": "b-1", "Score": 0},
        {"Host": 'odd"%name', "Score": 10},
    ]
    assert priority_template([]) % () == "[]"


def test_likely_picks_expire_in_order_and_leave_out_the_asking_pod() -> None:
    picks = LikelyPicks(ttl=2.0, limit=3)
    picks.remember("a", "n1", 0.0)
    picks.remember("b", "n2", 1.0)
    picks.remember("c", "n1", 1.5)
    assert picks.others("a", 1.5) == {"n1", "n2"}  # n1 is also c's pick
    assert picks.others("b", 1.5) == {"n1"}
    assert picks.others("x", 2.5) == {"n1", "n2"}  # a (t=0) expired, c still names n1
    assert len(picks) == 2
    picks.remember("b", "n3", 2.6)  # a new pick for b replaces its old one
    assert picks.others("x", 2.6) == {"n1", "n3"}
    picks.drop("c")
    assert picks.others("x", 2.6) == {"n3"}
    for uid in "defg":
        picks.remember(uid, f"m-{uid}", 3.0)
    assert len(picks) == 3  # the oldest went first
    assert picks.others("x", 3.0) == {"m-e", "m-f", "m-g"}
    assert picks.others("x", 10.0) == set()
