"""The Filter's decision over many nodes and the texts it reports (spec §3.3, §3.11). Pure functions.

`evaluate` fits one pod onto every candidate node and sorts the outcome into fitting nodes, failure reasons
and HAMi's single best node; it changes nothing. The extender's filter and prioritize verbs and the gRPC
SchedulerService (ExplainPod, Simulate) all call it with snapshots taken from the `UsageCache`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from services.common import wire
from services.common.codecs import parse_reasons
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
