"""The Filter's decision over many nodes and the texts it reports (spec §3.3, §3.11). Pure functions.

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
from typing import Final

from services.common import wire
from services.common.codecs import parse_reasons
from services.scheduler.cache import CachedSnapshot
from services.scheduler.fit import (
    NodeFit,
    NodeSnapshot,
    PodContext,
    QuotaView,
    SchedulingPolicy,
    choose_best,
    fit_pod,
    priority_scores,
)

__all__ = [
    "EventText",
    "FilterOutcome",
    "evaluate",
    "failure_events",
    "success_event",
]

NORMAL: Final = "Normal"
WARNING: Final = "Warning"

# Pod shapes remembered per node snapshot (a new snapshot starts empty; this only bounds odd workloads).
_MEMO_LIMIT: Final = 64
_SHAPES_LIMIT: Final = 4096


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

    @property
    def fitting_names(self) -> list[str]:
        return [f.node for f in self.fitting]

    def priorities(self) -> dict[str, int]:
        """0..10 per candidate for the prioritize verb (non-fitting nodes 0)."""
        return priority_scores(list(self.verdicts), self.policy.node_policy)


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
    seen: set[str] = set()
    for name in candidates:
        if name in seen:
            continue
        seen.add(name)
        snapshot = snapshots.get(name)
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
        if not verdict.fits:
            failed[name] = verdict.reason
    fitting = tuple(v for v in verdicts if v.fits)
    return FilterOutcome(
        verdicts=tuple(verdicts),
        failed=failed,
        policy=resolved,
        best=choose_best(fitting, resolved.node_policy),
        fitting=fitting,
    )


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
    """`FilteringSucceed`: `find fit node(<best>), <k> nodes not fit, <m> nodes fit(<n>:<score>,...)`."""
    best = outcome.best.node if outcome.best is not None else ""
    scores = ",".join(f"{f.node}:{f.score:.2f}" for f in outcome.fitting)
    return EventText(
        NORMAL,
        "FilteringSucceed",
        f"find fit node({best}), {len(outcome.failed)} nodes not fit, "
        f"{len(outcome.fitting)} nodes fit({scores})",
    )


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
