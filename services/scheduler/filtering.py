"""The Filter's decision over many nodes and the texts it reports (docs/hami-wire.md#filter,
docs/hami-wire.md#events). Pure functions.

`evaluate` fits one pod onto every candidate node and sorts the outcome into fitting nodes, failure reasons
and HAMi's single best node; it changes nothing. The extender's filter and prioritize verbs and the gRPC
SchedulerService (ExplainPod, Simulate) all call it with snapshots taken from the `UsageCache`.

Fitting is the hot path (1000 nodes per filter, then the same again for prioritize), so the verdict of a pod
shape on a node is kept on the node's shared `CachedSnapshot`, which the cache replaces whenever that node's
usage changes. A later pod with the same requests, annotations and policy (the next replica of a Deployment,
or the prioritize call after a filter) reuses it. Pods of a namespace with a GPU quota are never memoised:
their verdict depends on the usage of the whole namespace.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final

from services.common import wire
from services.common.codecs import parse_reasons
from services.scheduler.decoders import PodContext
from services.scheduler.fit import (
    NodeFit,
    NodeSnapshot,
    SchedulingPolicy,
    choose_best,
    fit_pod,
    priority_scores,
)
from services.scheduler.quota import QuotaView
from services.scheduler.snapshots import CachedSnapshot

__all__ = [
    "EventText",
    "FilterOutcome",
    "evaluate",
    "evaluation_key",
    "failure_events",
    "fit_on",
    "success_event",
]

NORMAL: Final = "Normal"
WARNING: Final = "Warning"

# Pod shapes remembered per node snapshot (a new snapshot starts empty; this only bounds odd workloads).
_MEMO_LIMIT: Final = 64
_SHAPES_LIMIT: Final = 4096
# The FilteringSucceed event names at most this many fitting nodes (the best ones, then `...`): with 1000
# fitting nodes HAMi's full list makes a ~20 kB event per filter, which costs more than the filter itself.
EVENT_NODES_LIMIT: Final = 10


class _Shape:
    """An interned pod shape: one object per distinct key, hashed once, compared by identity."""

    __slots__ = ("_hash",)

    def __init__(self, value: Hashable) -> None:
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash


_SHAPES: dict[Hashable, _Shape] = {}


@dataclass(frozen=True, slots=True)
class EventText:
    """One Kubernetes event about the pod: type (Normal/Warning), reason and message."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    """Per-candidate verdicts, in candidate order. `failed` maps each non-fitting node to HAMi's reason."""

    verdicts: tuple[NodeFit, ...]
    failed: Mapping[str, str]
    policy: SchedulingPolicy
    best: NodeFit | None = None
    fitting: tuple[NodeFit, ...] = field(default=())
    # What callers derive from the outcome (answer bodies, event text), kept when the outcome is reused.
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fitting_names(self) -> list[str]:
        return [f.node for f in self.fitting]

    def priorities(self) -> dict[str, int]:
        """0..10 per candidate for the prioritize verb (non-fitting nodes 0)."""
        return priority_scores(self.verdicts, self.policy.node_policy)


def evaluate(
    pod: PodContext,
    candidates: Sequence[str],
    snapshots: Mapping[str, NodeSnapshot | None],
    policy: SchedulingPolicy,
    quota: QuotaView | None = None,
) -> FilterOutcome:
    """Fit `pod` on each candidate; a candidate without a snapshot is `node unregistered`. Raises
    `PodAnnotationError` when the pod's own annotations are invalid (an error for the whole request)."""
    resolved = policy.resolve(pod.annotations)
    key = _memo_key(pod, resolved, quota)
    verdicts: list[NodeFit] = []
    failed: dict[str, str] = {}
    fitting: list[NodeFit] = []
    seen: set[str] = set()
    get = snapshots.get
    for name in candidates:
        if name in seen:
            continue
        seen.add(name)
        snapshot = get(name)
        if snapshot is None:
            verdict = NodeFit(node=name, fits=False, reason=wire.NODE_UNREGISTERED)
        elif key is not None and isinstance(snapshot, CachedSnapshot):
            memo = snapshot.fits
            found = memo.get(key)
            if found is None:
                found = fit_pod(pod, snapshot, resolved, quota)
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[key] = found
            verdict = found
        else:
            verdict = fit_pod(pod, snapshot, resolved, quota)
        verdicts.append(verdict)
        if verdict.fits:
            fitting.append(verdict)
        else:
            failed[name] = verdict.reason
    return FilterOutcome(
        verdicts=tuple(verdicts),
        failed=failed,
        policy=resolved,
        best=choose_best(fitting, resolved.node_policy),
        fitting=tuple(fitting),
    )


def fit_on(
    pod: PodContext, snapshot: NodeSnapshot, policy: SchedulingPolicy, quota: QuotaView | None = None
) -> NodeFit:
    """`fit_pod` on one node, through the verdicts memoised on a shared `CachedSnapshot` (the bind's re-fit
    on a node unchanged since the filter answers from the filter's own verdict)."""
    resolved = policy.resolve(pod.annotations)
    key = _memo_key(pod, resolved, quota)
    if key is None or not isinstance(snapshot, CachedSnapshot):
        return fit_pod(pod, snapshot, resolved, quota)
    memo = snapshot.fits
    found = memo.get(key)
    if found is None:
        found = fit_pod(pod, snapshot, resolved, quota)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = found
    return found


def evaluation_key(
    pod: PodContext, policy: SchedulingPolicy, quota: QuotaView | None = None
) -> Hashable | None:
    """What `evaluate` reads of the pod, policy and quota: two pods with the same key get the same outcome on
    the same snapshots. None when the outcome must not be reused (a namespace with a GPU quota)."""
    return _memo_key(pod, policy.resolve(pod.annotations), quota)


def _memo_key(pod: PodContext, policy: SchedulingPolicy, quota: QuotaView | None) -> Hashable | None:
    """Everything besides the node that `fit_pod` reads, or None when the verdict must not be reused."""
    if quota is not None and pod.namespace in quota.namespaces:
        return None
    raw = (pod.requests, pod.init_count, pod.sidecar_slots, tuple(sorted(pod.annotations.items())), policy)
    shape = _SHAPES.get(raw)
    if shape is None:
        if len(_SHAPES) >= _SHAPES_LIMIT:
            _SHAPES.clear()  # forgotten shapes only cost a re-fit: their memo entries are never hit again
        shape = _SHAPES[raw] = _Shape(raw)
    return shape


def success_event(outcome: FilterOutcome) -> EventText:
    """`FilteringSucceed`: `find fit node(<best>), <k> nodes not fit, <m> nodes fit(<n>:<score>,...)`.

    HAMi lists every fitting node; past `EVENT_NODES_LIMIT` we list the best ones in preference order (ties
    in candidate order) followed by `...`, so the event stays small on a large cluster."""
    best = outcome.best.node if outcome.best is not None else ""
    fitting: Sequence[NodeFit] = outcome.fitting
    more = ""
    if len(fitting) > EVENT_NODES_LIMIT:
        # What heapq.nsmallest / nlargest give (stable on ties), with the sort in C: hundreds of nodes fit.
        ordered = sorted(fitting, key=_score, reverse=not outcome.policy.spread_nodes)
        fitting, more = ordered[:EVENT_NODES_LIMIT], ",..."
    scores = ",".join(f"{f.node}:{f.score:.2f}" for f in fitting) + more
    return EventText(
        NORMAL,
        "FilteringSucceed",
        f"find fit node({best}), {len(outcome.failed)} nodes not fit, "
        f"{len(outcome.fitting)} nodes fit({scores})",
    )


_score = attrgetter("score")


def failure_events(outcome: FilterOutcome) -> list[EventText]:
    """`FilteringFailed`: one event per reason, `<count> nodes <Reason>(<nodes>)`, then the summary
    `no available node, <N> nodes do not meet`. Plain reasons (`node unregistered`,
    `NodeInsufficientDevice`) count as reasons of their own."""
    nodes_by_reason: dict[str, set[str]] = {}
    for node, reason in outcome.failed.items():
        keys = list(parse_reasons(reason)) or [reason]
        for key in keys:
            nodes_by_reason.setdefault(key, set()).add(node)
    events = [
        EventText(WARNING, "FilteringFailed", f"{len(nodes)} nodes {reason}({','.join(sorted(nodes))})")
        for reason, nodes in sorted(nodes_by_reason.items())
    ]
    events.append(
        EventText(WARNING, "FilteringFailed", f"no available node, {len(outcome.failed)} nodes do not meet")
    )
    return events
