"""The pure half of the kube-scheduler stand-in: which nodes a pod fits, why not, and node scores.

Plain pod and node JSON in, plain data out. Filters run in kube-scheduler's order and report its words
(``node(s) were unschedulable``, ``node(s) had untolerated taint {k: v}``, ``node(s) didn't match Pod's
node affinity/selector``, ``Too many pods``, ``Insufficient <resource>``); a node that is not Ready counts
as tainted ``node.kubernetes.io/not-ready`` (or ``unreachable``) as the node lifecycle controller would
make it. Scores are on kube-scheduler's scale: least-allocated 0..100, extender priorities 0..10 times the
extender weight times 10.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from services.common.resources import QuantityError, parse_quantity

Obj = dict[str, Any]

DEFAULT_SCHEDULER = "default-scheduler"
MAX_NODE_SCORE = 100
MAX_EXTENDER_PRIORITY = 10
#: Requests counted for scoring when a pod asks for no cpu / memory (kube-scheduler's non-zero defaults).
DEFAULT_MILLI_CPU = Fraction(1, 10)
DEFAULT_MEMORY = Fraction(200 * 1024 * 1024)

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_TOO_MANY_PODS = "Too many pods"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"

Quantities = dict[str, Fraction]


def object_meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, Mapping) else {}


def object_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def list_or_empty(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def name_of(obj: Mapping[str, Any]) -> str:
    return str(object_meta(obj).get("name") or "")


def _parse_map(values: Any) -> Quantities:
    out: Quantities = {}
    if isinstance(values, Mapping):
        for key, raw in values.items():
            try:
                out[str(key)] = parse_quantity(raw)
            except QuantityError:
                continue
    return out


def container_requests(container: Mapping[str, Any]) -> Quantities:
    """A container's requests, a limit standing in for a missing request (the apiserver's defaulting)."""
    resources = container.get("resources")
    resources = resources if isinstance(resources, Mapping) else {}
    out = _parse_map(resources.get("limits"))
    out.update(_parse_map(resources.get("requests")))
    return out


def _add(a: Quantities, b: Mapping[str, Fraction]) -> Quantities:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, Fraction(0)) + value
    return out


def _max(a: Quantities, b: Mapping[str, Fraction]) -> Quantities:
    out = dict(a)
    for key, value in b.items():
        out[key] = max(out.get(key, Fraction(0)), value)
    return out


def pod_requests(pod: Mapping[str, Any]) -> Quantities:
    """What the pod needs on a node: max(app containers + sidecars, any init step) + overhead."""
    spec = object_spec(pod)
    app: Quantities = {}
    for container in list_or_empty(spec.get("containers")):
        if isinstance(container, Mapping):
            app = _add(app, container_requests(container))
    sidecars: Quantities = {}
    init_peak: Quantities = {}
    for container in list_or_empty(spec.get("initContainers")):
        if not isinstance(container, Mapping):
            continue
        request = container_requests(container)
        if container.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, request)
            init_peak = _max(init_peak, sidecars)
        else:
            init_peak = _max(init_peak, _add(sidecars, request))
    total = _max(_add(app, sidecars), init_peak)
    return _add(total, _parse_map(spec.get("overhead")))


def requests_any(pod: Mapping[str, Any], names: Iterable[str]) -> bool:
    """Whether a container or init container requests or limits one of ``names`` (kube-scheduler's check)."""
    wanted = set(names)
    spec = object_spec(pod)
    for container in list_or_empty(spec.get("containers")) + list_or_empty(spec.get("initContainers")):
        resources = container.get("resources") if isinstance(container, Mapping) else None
        if not isinstance(resources, Mapping):
            continue
        for part in ("requests", "limits"):
            values = resources.get(part)
            if isinstance(values, Mapping) and wanted & set(values):
                return True
    return False


def needs_scheduling(pod: Mapping[str, Any], scheduler_names: Iterable[str]) -> bool:
    """Pending, unassigned, not being deleted, no scheduling gates, and one of our profiles'."""
    spec = object_spec(pod)
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return (
        spec.get("schedulerName", DEFAULT_SCHEDULER) in set(scheduler_names)
        and not spec.get("nodeName")
        and not object_meta(pod).get("deletionTimestamp")
        and phase not in ("Succeeded", "Failed")
        and not spec.get("schedulingGates")
    )


def occupies_node(pod: Mapping[str, Any]) -> str:
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    node = object_spec(pod).get("nodeName")
    return str(node) if node and phase not in ("Succeeded", "Failed") else ""


@dataclass
class NodeUsage:
    """What the pods bound to one node request: exact requests and kube-scheduler's non-zero ones."""

    requested: Quantities = field(default_factory=dict)
    nonzero: Quantities = field(default_factory=dict)
    pods: int = 0


def _nonzero(requests: Mapping[str, Fraction]) -> Quantities:
    return {
        "cpu": requests.get("cpu") or DEFAULT_MILLI_CPU,
        "memory": requests.get("memory") or DEFAULT_MEMORY,
    }


def node_usage(pods: Iterable[Mapping[str, Any]]) -> dict[str, NodeUsage]:
    usage: dict[str, NodeUsage] = {}
    for pod in pods:
        node = occupies_node(pod)
        if not node:
            continue
        entry = usage.setdefault(node, NodeUsage())
        requests = pod_requests(pod)
        entry.requested = _add(entry.requested, requests)
        entry.nonzero = _add(entry.nonzero, _nonzero(requests))
        entry.pods += 1
    return usage


def allocatable(node: Mapping[str, Any]) -> Quantities:
    status = node.get("status")
    status = status if isinstance(status, Mapping) else {}
    values = status.get("allocatable")
    return _parse_map(values if isinstance(values, Mapping) else status.get("capacity"))


def _ready_status(node: Mapping[str, Any]) -> str:
    status = node.get("status")
    for condition in list_or_empty(status.get("conditions") if isinstance(status, Mapping) else None):
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return str(condition.get("status") or "Unknown")
    return "Unknown"


def node_taints(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node's NoSchedule/NoExecute taints, plus the ones the node lifecycle controller would add
    for a node that is not Ready (kube-local has no such controller)."""
    taints = [
        t
        for t in list_or_empty(object_spec(node).get("taints"))
        if isinstance(t, Mapping) and t.get("effect") in ("NoSchedule", "NoExecute")
    ]
    ready = _ready_status(node)
    if ready != "True":
        key = TAINT_NOT_READY if ready == "False" else TAINT_UNREACHABLE
        if not any(t.get("key") == key for t in taints):
            taints.append({"key": key, "effect": "NoSchedule"})
    return taints


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    key = toleration.get("key")
    if key:
        if key != taint.get("key"):
            return False
    elif operator != "Exists":
        return False
    if operator == "Exists":
        return True
    return str(toleration.get("value") or "") == str(taint.get("value") or "")


def _requirement_matches(expr: Mapping[str, Any], value: str | None) -> bool:
    operator = expr.get("operator")
    values = [str(v) for v in list_or_empty(expr.get("values"))]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            actual, bound = int(value), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def _term_matches(term: Any, node: Mapping[str, Any]) -> bool:
    if not isinstance(term, Mapping):
        return False
    labels = object_meta(node).get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    expressions = [e for e in list_or_empty(term.get("matchExpressions")) if isinstance(e, Mapping)]
    fields = [e for e in list_or_empty(term.get("matchFields")) if isinstance(e, Mapping)]
    if not expressions and not fields:
        return False  # an empty term matches nothing
    for expr in expressions:
        key = str(expr.get("key") or "")
        if not _requirement_matches(expr, labels.get(key)):
            return False
    for expr in fields:
        value = name_of(node) if expr.get("key") == "metadata.name" else None
        if not _requirement_matches(expr, value):
            return False
    return True


def matches_node_selector(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """``spec.nodeSelector`` and required node affinity (In/NotIn/Exists/DoesNotExist/Gt/Lt, matchFields)."""
    spec = object_spec(pod)
    labels = object_meta(node).get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    selector = spec.get("nodeSelector")
    if isinstance(selector, Mapping) and any(labels.get(k) != v for k, v in selector.items()):
        return False
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = (
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        if isinstance(node_affinity, Mapping)
        else None
    )
    if isinstance(required, Mapping):
        return any(_term_matches(term, node) for term in list_or_empty(required.get("nodeSelectorTerms")))
    return True


def node_fit_reasons(
    pod: Mapping[str, Any],
    node: Mapping[str, Any],
    usage: NodeUsage,
    ignored: frozenset[str] = frozenset(),
    requests: Mapping[str, Fraction] | None = None,
) -> list[str]:
    """Why ``pod`` cannot go to ``node`` (empty: it can), in kube-scheduler's filter order and words."""
    tolerations = [t for t in list_or_empty(object_spec(pod).get("tolerations")) if isinstance(t, Mapping)]
    if object_spec(node).get("unschedulable"):
        cordon = {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}
        if not any(tolerates(t, cordon) for t in tolerations):
            return [REASON_UNSCHEDULABLE]
    for taint in node_taints(node):
        if not any(tolerates(t, taint) for t in tolerations):
            return [f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"]
    if not matches_node_selector(pod, node):
        return [REASON_AFFINITY]
    requests = pod_requests(pod) if requests is None else requests
    available = allocatable(node)
    reasons: list[str] = []
    if "pods" in available and usage.pods + 1 > available["pods"]:
        reasons.append(REASON_TOO_MANY_PODS)
    for resource in sorted(requests):
        wanted = requests[resource]
        if resource == "pods" or wanted <= 0 or resource in ignored:
            continue
        free = available.get(resource, Fraction(0)) - usage.requested.get(resource, Fraction(0))
        if wanted > free:
            reasons.append(f"Insufficient {resource}")
    return reasons


@dataclass
class FilterResult:
    feasible: list[Obj]
    reasons: dict[str, list[str]]


def filter_nodes(
    pod: Mapping[str, Any],
    nodes: Iterable[Obj],
    usage: Mapping[str, NodeUsage],
    ignored: frozenset[str] = frozenset(),
) -> FilterResult:
    """Feasible nodes (by name) and, for the others, why not."""
    requests = pod_requests(pod)
    feasible: list[Obj] = []
    reasons: dict[str, list[str]] = {}
    for node in sorted(nodes, key=name_of):
        name = name_of(node)
        why = node_fit_reasons(pod, node, usage.get(name, NodeUsage()), ignored, requests)
        if why:
            reasons[name] = why
        else:
            feasible.append(node)
    return FilterResult(feasible, reasons)


def fit_error_message(total_nodes: int, reasons: Mapping[str, Sequence[str]]) -> str:
    """kube-scheduler's ``0/N nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.``"""
    if total_nodes == 0:
        return "no nodes available to schedule pods"
    histogram = Counter(reason for node_reasons in reasons.values() for reason in node_reasons)
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."


def least_allocated_score(
    pod_request: Mapping[str, Fraction], node: Mapping[str, Any], usage: NodeUsage
) -> int:
    """kube-scheduler's NodeResourcesFit LeastAllocated over cpu and memory, 0..100."""
    wanted = _nonzero(pod_request)
    available = allocatable(node)
    scores: list[Fraction] = []
    for resource in ("cpu", "memory"):
        capacity = available.get(resource, Fraction(0))
        used = usage.nonzero.get(resource, Fraction(0)) + wanted[resource]
        if capacity <= 0 or used > capacity:
            scores.append(Fraction(0))
        else:
            scores.append((capacity - used) * MAX_NODE_SCORE / capacity)
    return int(sum(scores) / len(scores))


def combine_scores(
    nodes: Sequence[str],
    own: Mapping[str, int],
    extender_scores: Sequence[tuple[Mapping[str, int], int]],
) -> dict[str, int]:
    """own + sum(extender score x weight) x (MaxNodeScore / MaxExtenderPriority), as kube-scheduler does."""
    factor = MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY
    totals: dict[str, int] = {}
    for name in nodes:
        extra = sum(scores.get(name, 0) * weight for scores, weight in extender_scores)
        totals[name] = own.get(name, 0) + extra * factor
    return totals


def select_host(totals: Mapping[str, int]) -> str:
    """The highest total; equal totals go to the first name."""
    return min(totals, key=lambda name: (-totals[name], name))
