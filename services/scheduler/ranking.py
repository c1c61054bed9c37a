"""The prioritize answer over candidates aligned with their verdicts: 0..10 per candidate, with the nodes
that have a bind under way ranked last, and the `HostPriorityList` body. Pure functions.

`fit.priority_scores` states the policy scaling on `NodeFit`s by name; this module computes the same numbers
over plain lists in candidate order, because prioritize runs once per scheduling cycle over hundreds of
candidates and a per-name dict walked three times (scale, pick the leader, encode) cost more than the rest of
the verb. `tests/unit/scheduler/test_ranking.py` checks both give the same scores.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Final

from services.scheduler.fit import MAX_PRIORITY

__all__ = ["LikelyPicks", "Ranked", "priority_template", "rank_aligned"]

# Answer templates per candidate list are built from per-host fragments kept here (node names repeat across
# cycles; the cap keeps a cluster that churns node names from growing it without bound).
_FRAGMENTS: dict[str, str] = {}
_FRAGMENTS_LIMIT: Final = 100_000


class Ranked:
    """Scores in candidate order and the unique top candidate's index (None when the top is shared or 0)."""

    __slots__ = ("leader", "scores")

    def __init__(self, scores: list[int], leader: int | None) -> None:
        self.scores = scores
        self.leader = leader


def _scaled(values: Sequence[float], low: float, high: float, spread: bool) -> list[int]:
    if high == low:
        return [MAX_PRIORITY] * len(values)
    span = high - low
    # The same expression as `fit.priority_scores`, so the rounding at .5 boundaries is identical.
    if spread:
        return [int((high - v) / span * MAX_PRIORITY + 0.5) for v in values]
    return [int((v - low) / span * MAX_PRIORITY + 0.5) for v in values]


def rank_aligned(
    node_scores: Sequence[float],
    fits: Sequence[bool] | None,
    busy: Collection[int],
    *,
    spread: bool,
    plain: list[int] | None = None,
) -> tuple[Ranked, list[int] | None]:
    """Scores for candidates whose node scores are `node_scores` (`fits[i]` False: the candidate does not
    fit and scores 0; `fits` None: all fit). Candidates at the indices in `busy` (a bind under way) score 0
    and the policy's range spans the other fitting candidates, unless no fitting candidate or every one is
    busy: then the plain policy scores apply. `plain` is those plain scores when the caller kept them from an
    earlier call. Returns the ranking and the plain scores when they were needed (for the caller to keep)."""
    count = len(node_scores)
    fitting = range(count) if fits is None else [i for i in range(count) if fits[i]]
    busy_fitting = [i for i in busy if 0 <= i < count and (fits is None or fits[i])]
    if not busy_fitting or len(set(busy_fitting)) >= len(fitting):
        if plain is None:
            plain = _plain(node_scores, fits, fitting, spread)
        return Ranked(plain, _leader(plain)), plain
    excluded = set(busy_fitting)
    rest = [node_scores[i] for i in fitting if i not in excluded]
    scores = _scaled(node_scores, min(rest), max(rest), spread)
    for i in excluded:
        scores[i] = 0
    if fits is not None:
        for i in range(count):
            if not fits[i]:
                scores[i] = 0
    return Ranked(scores, _leader(scores)), plain


def _plain(
    node_scores: Sequence[float], fits: Sequence[bool] | None, fitting: Sequence[int], spread: bool
) -> list[int]:
    if not fitting:
        return [0] * len(node_scores)
    if fits is None:
        return _scaled(node_scores, min(node_scores), max(node_scores), spread)
    values = [node_scores[i] for i in fitting]
    scores = _scaled(node_scores, min(values), max(values), spread)
    for i in range(len(node_scores)):
        if not fits[i]:
            scores[i] = 0
    return scores


def _leader(scores: list[int]) -> int | None:
    top = max(scores, default=0)
    if top <= 0 or scores.count(top) != 1:
        return None
    return scores.index(top)


def priority_template(hosts: Sequence[str]) -> str:
    """The `HostPriorityList` JSON for `hosts` with a `%d` where each score goes:
    `priority_template(hosts) % tuple(scores)` is the answer body (one C-level format per answer)."""
    fragments = _FRAGMENTS
    try:
        return "[" + ",".join(map(fragments.__getitem__, hosts)) + "]"  # the usual case: every host known
    except KeyError:
        pass
    if len(fragments) > _FRAGMENTS_LIMIT:
        fragments.clear()
    for host in hosts:
        if host not in fragments:
            # `%` in a node name would be read as a conversion: doubled, it stays a literal.
            fragments[host] = '{"Host":' + json.dumps(host).replace("%", "%%") + ',"Score":%d}'
    return "[" + ",".join(map(fragments.__getitem__, hosts)) + "]"


class LikelyPicks:
    """Pod uid -> the node ranked alone at the top for it, until its bind arrives or `ttl` seconds pass
    (kube-scheduler runs the next scheduling cycle while the previous pod's binding cycle is on its way, so
    prioritize treats such a node as busy for the other pods). `now` values come from the caller's
    monotonic clock and never go backwards."""

    __slots__ = ("_limit", "_nodes", "_picks", "_ttl")

    def __init__(self, ttl: float, limit: int) -> None:
        self._ttl = ttl
        self._limit = max(1, limit)
        self._picks: dict[str, tuple[str, float]] = {}  # oldest first
        self._nodes: Counter[str] = Counter()  # node -> picks naming it

    def __len__(self) -> int:
        return len(self._picks)

    def remember(self, uid: str, node: str, now: float) -> None:
        self.drop(uid)  # re-inserted last, so the dict stays in time order
        self._picks[uid] = (node, now)
        self._nodes[node] += 1
        if len(self._picks) > self._limit:
            self.drop(next(iter(self._picks)))

    def drop(self, uid: str) -> None:
        old = self._picks.pop(uid, None)
        if old is not None:
            self._forget(old[0])

    def _forget(self, node: str) -> None:
        left = self._nodes[node] - 1
        if left > 0:
            self._nodes[node] = left
        else:
            del self._nodes[node]

    def others(self, uid: str, now: float) -> set[str]:
        """The nodes picked for pods other than `uid` within the last `ttl` seconds."""
        picks = self._picks
        while picks:
            first = next(iter(picks))
            node, when = picks[first]
            if now - when <= self._ttl:
                break
            del picks[first]
            self._forget(node)
        nodes = set(self._nodes)
        own = picks.get(uid)
        if own is not None and self._nodes[own[0]] == 1:
            nodes.discard(own[0])
        return nodes
