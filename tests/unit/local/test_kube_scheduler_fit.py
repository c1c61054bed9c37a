"""The kube-scheduler stand-in's pure half: requests, node candidates, reasons and scores."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from sim.local.kube_scheduler_fit import (
    REASON_AFFINITY,
    REASON_TOO_MANY_PODS,
    REASON_UNSCHEDULABLE,
    NodeUsage,
    combine_scores,
    filter_nodes,
    fit_error_message,
    least_allocated_score,
    needs_scheduling,
    node_usage,
    pod_requests,
    requests_any,
    select_host,
)

Obj = dict[str, Any]
GIB = 1024**3


def node(
    name: str,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: str = "110",
    labels: dict[str, str] | None = None,
    ready: str | None = "True",
    unschedulable: bool = False,
    taints: list[Obj] | None = None,
    extra: dict[str, str] | None = None,
) -> Obj:
    allocatable = {"cpu": cpu, "memory": memory, "pods": pods, **(extra or {})}
    spec: Obj = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    conditions = [{"type": "Ready", "status": ready}] if ready is not None else []
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {"allocatable": allocatable, "capacity": allocatable, "conditions": conditions},
    }


def container(
    requests: dict[str, str] | None = None, limits: dict[str, str] | None = None, **extra: Any
) -> Obj:
    return {
        "name": "c",
        "image": "i",
        "resources": {"requests": requests or {}, "limits": limits or {}},
        **extra,
    }


def pod(*containers: Obj, name: str = "p", node_name: str = "", phase: str = "Pending", **spec: Any) -> Obj:
    body: Obj = {"containers": list(containers) or [container()], "schedulerName": "hami-scheduler", **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "default"}, "spec": body, "status": {"phase": phase}}


# --- requests ---------------------------------------------------------------------------------------------


def test_limits_stand_in_for_missing_requests() -> None:
    p = pod(container({"cpu": "500m"}, {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}))
    assert pod_requests(p) == {"cpu": Fraction(1, 2), "memory": Fraction(GIB), "nvidia.com/gpu": Fraction(1)}


def test_init_containers_sidecars_and_overhead() -> None:
    p = pod(
        container({"cpu": "1"}),
        container({"cpu": "1", "memory": "1Gi"}),
        initContainers=[
            container({"cpu": "3"}),  # runs alone before the app: peak 3
            container({"memory": "512Mi"}, restartPolicy="Always"),  # a sidecar: stays for the app
        ],
        overhead={"cpu": "100m"},
    )
    requests = pod_requests(p)
    assert requests["cpu"] == Fraction(31, 10)  # max(app 2 + sidecar 0, init 3) + overhead 0.1
    assert requests["memory"] == Fraction(GIB + GIB // 2)  # app 1Gi + sidecar 512Mi


def test_requests_any_sees_requests_and_limits_of_all_containers() -> None:
    assert requests_any(pod(container(limits={"nvidia.com/gpu": "1"})), ["nvidia.com/gpu"])
    assert requests_any(
        pod(container(), initContainers=[container({"nvidia.com/gpumem": "1000"})]), ["nvidia.com/gpumem"]
    )
    assert not requests_any(pod(container({"cpu": "1"})), ["nvidia.com/gpu", "nvidia.com/gpumem"])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, True),
        ({"spec": {"schedulerName": "default-scheduler"}}, False),
        ({"spec": {"nodeName": "n1"}}, False),
        ({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}, False),
        ({"status": {"phase": "Failed"}}, False),
        ({"spec": {"schedulingGates": [{"name": "wait"}]}}, False),
    ],
)
def test_needs_scheduling(changes: Obj, expected: bool) -> None:
    p = pod()
    for part, values in changes.items():
        p[part] = {**p[part], **values}
    assert needs_scheduling(p, {"hami-scheduler"}) is expected


def test_node_usage_counts_bound_running_pods_only() -> None:
    pods = [
        pod(container({"cpu": "1"}), node_name="n1"),
        pod(container({"cpu": "2"}), node_name="n1", phase="Running"),
        pod(container({"cpu": "8"}), node_name="n1", phase="Succeeded"),
        pod(container({"cpu": "8"})),  # pending, unbound
    ]
    usage = node_usage(pods)
    assert set(usage) == {"n1"}
    assert usage["n1"].requested["cpu"] == 3 and usage["n1"].pods == 2
    assert usage["n1"].nonzero["memory"] == 2 * 200 * 1024 * 1024  # kube-scheduler's non-zero default


# --- filter -----------------------------------------------------------------------------------------------


def test_candidates_and_kube_scheduler_reasons() -> None:
    nodes = [
        node("ok"),
        node("cordoned", unschedulable=True),
        node("not-ready", ready="False"),
        node("unknown", ready=None),
        node("tainted", taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
        node("soft-taint", taints=[{"key": "soft", "effect": "PreferNoSchedule"}]),
        node("small", cpu="500m"),
        node("full", pods="1"),
    ]
    usage = {"full": NodeUsage(pods=1)}
    result = filter_nodes(pod(container({"cpu": "1", "memory": "1Gi"})), nodes, usage)
    assert [n["metadata"]["name"] for n in result.feasible] == ["ok", "soft-taint"]
    assert result.reasons == {
        "cordoned": [REASON_UNSCHEDULABLE],
        "not-ready": ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"],
        "unknown": ["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"],
        "tainted": ["node(s) had untolerated taint {dedicated: infra}"],
        "small": ["Insufficient cpu"],
        "full": [REASON_TOO_MANY_PODS],
    }


def test_tolerations() -> None:
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    nodes = [node("t", taints=[taint]), node("c", unschedulable=True)]
    equal = pod(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu"}])
    wrong_value = pod(tolerations=[{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}])
    everything = pod(tolerations=[{"operator": "Exists"}])
    assert [n["metadata"]["name"] for n in filter_nodes(equal, nodes, {}).feasible] == ["t"]
    assert filter_nodes(wrong_value, nodes[:1], {}).feasible == []
    assert [n["metadata"]["name"] for n in filter_nodes(everything, nodes, {}).feasible] == ["c", "t"]


def test_node_selector_and_required_affinity() -> None:
    nodes = [
        node("a", labels={"zone": "a", "gpu": "on", "gen": "3"}),
        node("b", labels={"zone": "b", "gpu": "on", "gen": "5"}),
        node("c", labels={"zone": "c"}),
    ]

    def names(p: Obj) -> list[str]:
        return [n["metadata"]["name"] for n in filter_nodes(p, nodes, {}).feasible]

    def affinity(*terms: Obj) -> Obj:
        required = {"nodeSelectorTerms": list(terms)}
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}

    assert names(pod(nodeSelector={"gpu": "on"})) == ["a", "b"]
    assert names(pod(nodeSelector={"gpu": "on", "zone": "b"})) == ["b"]
    in_expr = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]}]}
    assert names(pod(affinity=affinity(in_expr))) == ["a", "c"]
    notin = {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}
    assert names(pod(affinity=affinity(notin))) == ["b", "c"]
    exists = {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
    missing = {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}
    assert names(pod(affinity=affinity(exists))) == ["a", "b"]
    assert names(pod(affinity=affinity(missing))) == ["c"]
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}
    assert names(pod(affinity=affinity(missing, by_name))) == ["a", "c"]  # terms are ORed
    gt = {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}
    assert names(pod(affinity=affinity(gt))) == ["b"]
    both = {"matchExpressions": [exists["matchExpressions"][0], notin["matchExpressions"][0]]}
    assert names(pod(affinity=affinity(both))) == ["b"]
    assert names(pod(affinity=affinity({}))) == []  # an empty term matches nothing
    result = filter_nodes(pod(nodeSelector={"zone": "z"}), nodes, {})
    assert result.reasons == {n: [REASON_AFFINITY] for n in ("a", "b", "c")}


def test_resources_account_for_bound_pods_and_ignored_extended_resources() -> None:
    gpu_pod = pod(
        container({"cpu": "1", "memory": "2Gi"}, {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"})
    )
    nodes = [node("busy"), node("free"), node("gpu", extra={"nvidia.com/gpu": "10"})]
    usage = {"busy": NodeUsage(requested={"cpu": Fraction(7, 2), "memory": Fraction(7 * GIB)}, pods=3)}
    # Nothing ignored: the node must advertise every requested resource.
    strict = filter_nodes(gpu_pod, nodes, usage)
    assert strict.feasible == []
    gpu_reasons = ["Insufficient nvidia.com/gpu", "Insufficient nvidia.com/gpumem"]
    assert strict.reasons == {
        "busy": ["Insufficient cpu", "Insufficient memory", *gpu_reasons],
        "free": gpu_reasons,
        "gpu": ["Insufficient nvidia.com/gpumem"],
    }
    # managedResources with ignoredByScheduler: left to the extender.
    ignored = frozenset({"nvidia.com/gpu", "nvidia.com/gpumem"})
    relaxed = filter_nodes(gpu_pod, nodes, usage, ignored)
    assert [n["metadata"]["name"] for n in relaxed.feasible] == ["free", "gpu"]
    assert relaxed.reasons == {"busy": ["Insufficient cpu", "Insufficient memory"]}


def test_fit_error_message_is_kube_schedulers() -> None:
    reasons = {
        "a": ["Insufficient cpu", "Insufficient memory"],
        "b": ["Insufficient cpu"],
        "c": [REASON_UNSCHEDULABLE],
        "d": ["insufficient GPU memory"],  # an extender's FailedNodes reason
    }
    assert fit_error_message(5, reasons) == (
        "0/5 nodes are available: 1 Insufficient memory, 1 insufficient GPU memory, "
        "1 node(s) were unschedulable, 2 Insufficient cpu."
    )
    assert fit_error_message(0, {}) == "no nodes available to schedule pods"


# --- scores -----------------------------------------------------------------------------------------------


def test_least_allocated_score() -> None:
    request = {"cpu": Fraction(1), "memory": Fraction(GIB)}
    assert least_allocated_score(request, node("n"), NodeUsage()) == 81  # (75 + 87.5) / 2
    busy = NodeUsage(nonzero={"cpu": Fraction(2), "memory": Fraction(GIB)})
    assert least_allocated_score(request, node("n"), busy) == 50  # (25 + 75) / 2
    assert least_allocated_score(request, node("n", cpu="500m"), NodeUsage()) == 43  # cpu over: 0
    # A pod without requests counts 100m / 200Mi.
    assert least_allocated_score({}, node("n", cpu="1", memory="400Mi"), NodeUsage()) == 70  # (90 + 50) / 2


def test_combine_scores_applies_weight_times_ten_and_ties_break_by_name() -> None:
    own = {"a": 80, "b": 50, "c": 80}
    first = ({"b": 3, "c": 1}, 1)
    assert combine_scores(["a", "b", "c"], own, [first]) == {"a": 80, "b": 80, "c": 90}
    assert combine_scores(["a", "b", "c"], own, [({"b": 3}, 3)]) == {"a": 80, "b": 140, "c": 80}
    assert combine_scores(["a", "b"], own, [first, ({"a": 2}, 2)]) == {"a": 120, "b": 80}
    assert select_host({"b": 80, "a": 80, "c": 10}) == "a"
    assert select_host({"b": 81, "a": 80}) == "b"
