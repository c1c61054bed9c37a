"""Server-side printing (sim/kubelocal/tables.py, tables_cells.py): the cell rules by table, the Accept and
includeObject handling, the watch encoding, and the Table answers over HTTP on both servers.

tests/kubelocal/test_tables_differential.py compares whole Tables with the real server's on the same
objects; these tests pin each rule, including cases that need no real server to state."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from sim.kubelocal import tables_cells as cells
from sim.kubelocal.resources import ALL_RESOURCES, LEASES, PODS
from sim.kubelocal.tables import (
    TableOptions,
    TableWatchEncoding,
    column_definitions,
    list_table,
    object_table,
    table_version,
)
from tests.kubelocal.conftest import Served

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


def ago(seconds: int) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("seconds", "printed"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (599, "9m59s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 20 * 60, "3h20m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (51 * 3600, "2d3h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (830 * 86400, "2y100d"),
        (8 * 365 * 86400, "8y"),
    ],
)
def test_human_duration(seconds: int, printed: str) -> None:
    assert cells.human_duration(seconds) == printed


def test_age_of_unset_or_unreadable_timestamps_is_unknown() -> None:
    assert cells.age(None, NOW) == "<unknown>"
    assert cells.age("yesterday", NOW) == "<unknown>"
    assert cells.age(ago(90), NOW) == "90s"
    assert cells.age("2026-06-01T11:59:00.123456Z", NOW) == "59s"  # a MicroTime; whole seconds, rounded down


def cs(name: str, state: dict[str, Any], *, ready: bool = False, restarts: int = 0, **extra: Any) -> Any:
    return {"name": name, "ready": ready, "restartCount": restarts, "state": state, **extra}


def pod(
    *,
    containers: tuple[str, ...] = ("main",),
    init: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
    deleting: bool = False,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "creationTimestamp": ago(30)}
    if deleting:
        metadata["deletionTimestamp"] = ago(1)
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": c} for c in containers], "initContainers": init or [], **spec},
        "status": status or {},
    }


RUNNING = {"running": {"startedAt": ago(100)}}
CRASH_RESTART = {"terminated": {"exitCode": 1, "finishedAt": ago(300)}}


@pytest.mark.parametrize(
    ("name", "obj", "status", "ready"),
    [
        ("no status", pod(status={}), "", "0/1"),
        ("pending", pod(status={"phase": "Pending"}), "Pending", "0/1"),
        ("status reason wins", pod(status={"phase": "Failed", "reason": "Evicted"}), "Evicted", "0/1"),
        (
            "waiting reason",
            pod(
                status={
                    "phase": "Pending",
                    "containerStatuses": [cs("main", {"waiting": {"reason": "Pull"}})],
                }
            ),
            "Pull",
            "0/1",
        ),
        (
            "running and ready",
            pod(status={"phase": "Running", "containerStatuses": [cs("main", RUNNING, ready=True)]}),
            "Running",
            "1/1",
        ),
        (
            "running, not ready",
            pod(status={"phase": "Running", "containerStatuses": [cs("main", RUNNING)]}),
            "Running",
            "0/1",
        ),
        (
            "first container decides",
            pod(
                containers=("a", "b"),
                status={
                    "phase": "Running",
                    "containerStatuses": [
                        cs("a", {"waiting": {"reason": "CrashLoopBackOff"}}),
                        cs("b", {"waiting": {"reason": "ImagePullBackOff"}}),
                    ],
                },
            ),
            "CrashLoopBackOff",
            "0/2",
        ),
        (
            "terminated without reason: exit code",
            pod(
                status={"phase": "Failed", "containerStatuses": [cs("main", {"terminated": {"exitCode": 3}})]}
            ),
            "ExitCode:3",
            "0/1",
        ),
        (
            "terminated without reason: signal",
            pod(
                status={
                    "phase": "Failed",
                    "containerStatuses": [cs("main", {"terminated": {"exitCode": 137, "signal": 9}})],
                }
            ),
            "Signal:9",
            "0/1",
        ),
        (
            "completed beside a running container, Ready",
            pod(
                containers=("a", "b"),
                status={
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        cs("a", {"terminated": {"exitCode": 0, "reason": "Completed"}}),
                        cs("b", RUNNING, ready=True),
                    ],
                },
            ),
            "Running",
            "1/2",
        ),
        (
            "completed beside a running container, not Ready",
            pod(
                containers=("a", "b"),
                status={
                    "phase": "Running",
                    "containerStatuses": [
                        cs("a", {"terminated": {"exitCode": 0, "reason": "Completed"}}),
                        cs("b", RUNNING, ready=True),
                    ],
                },
            ),
            "NotReady",
            "1/2",
        ),
        (
            "init container not started",
            pod(
                init=[{"name": "i1"}, {"name": "i2"}],
                status={
                    "phase": "Pending",
                    "initContainerStatuses": [
                        cs("i1", {"terminated": {"exitCode": 0}}),
                        cs("i2", {"waiting": {"reason": "PodInitializing"}}),
                    ],
                },
            ),
            "Init:1/2",
            "0/1",
        ),
        (
            "init container failed with a reason",
            pod(
                init=[{"name": "i1"}],
                status={
                    "initContainerStatuses": [cs("i1", {"terminated": {"exitCode": 1, "reason": "Error"}})]
                },
            ),
            "Init:Error",
            "0/1",
        ),
        (
            "init container failed without one",
            pod(
                init=[{"name": "i1"}],
                status={"initContainerStatuses": [cs("i1", {"terminated": {"exitCode": 4}})]},
            ),
            "Init:ExitCode:4",
            "0/1",
        ),
        (
            "init container killed",
            pod(
                init=[{"name": "i1"}],
                status={"initContainerStatuses": [cs("i1", {"terminated": {"exitCode": 1, "signal": 15}})]},
            ),
            "Init:Signal:15",
            "0/1",
        ),
        (
            "init container crash looping",
            pod(
                init=[{"name": "i1"}],
                status={"initContainerStatuses": [cs("i1", {"waiting": {"reason": "CrashLoopBackOff"}})]},
            ),
            "Init:CrashLoopBackOff",
            "0/1",
        ),
        (
            "started sidecar counts as a container",
            pod(
                init=[{"name": "proxy", "restartPolicy": "Always"}],
                status={
                    "phase": "Running",
                    "conditions": [{"type": "Initialized", "status": "True"}],
                    "initContainerStatuses": [cs("proxy", RUNNING, ready=True, started=True)],
                    "containerStatuses": [cs("main", RUNNING, ready=True)],
                },
            ),
            "Running",
            "2/2",
        ),
        (
            "scheduling gated",
            pod(
                status={
                    "phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
                }
            ),
            "SchedulingGated",
            "0/1",
        ),
        ("terminating", pod(deleting=True, status={"phase": "Running"}), "Terminating", "0/1"),
        (
            "finished pod is not Terminating",
            pod(deleting=True, status={"phase": "Succeeded"}),
            "Succeeded",
            "0/1",
        ),
        (
            "node lost while deleting",
            pod(deleting=True, status={"phase": "Running", "reason": "NodeLost"}),
            "Unknown",
            "0/1",
        ),
    ],
)
def test_pod_status_and_ready(name: str, obj: dict[str, Any], status: str, ready: str) -> None:
    printed = cells.pod_cells(obj, NOW)
    assert (printed[2], printed[1]) == (status, ready), name


def test_pod_restarts_name_the_last_restart() -> None:
    obj = pod(
        init=[{"name": "proxy", "restartPolicy": "Always"}],
        status={
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [
                cs(
                    "proxy",
                    RUNNING,
                    started=True,
                    restarts=1,
                    lastState={"terminated": {"finishedAt": ago(900)}},
                )
            ],
            "containerStatuses": [cs("main", RUNNING, restarts=2, lastState=CRASH_RESTART)],
        },
    )
    assert cells.pod_cells(obj, NOW)[3] == "3 (5m ago)"
    assert (
        cells.pod_cells(pod(status={"containerStatuses": [cs("main", RUNNING, restarts=2)]}), NOW)[3] == "2"
    )


def test_pod_wide_columns() -> None:
    obj = pod(
        nodeName="gpu-node-a",
        readinessGates=[{"conditionType": "a"}, {"conditionType": "b"}, {"conditionType": "c"}],
        status={
            "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}],
            "nominatedNodeName": "gpu-node-b",
            "conditions": [{"type": "a", "status": "True"}, {"type": "b", "status": "False"}],
        },
    )
    assert cells.pod_cells(obj, NOW)[4:] == ["30s", "10.0.0.7", "gpu-node-a", "gpu-node-b", "1/3"]
    assert cells.pod_cells(pod(), NOW)[5:] == ["<none>"] * 4


def test_finished_pods_carry_the_completed_row_condition() -> None:
    assert cells.pod_row_conditions(pod(status={"phase": "Running"})) is None
    succeeded = cells.pod_row_conditions(pod(status={"phase": "Succeeded"}))
    failed = cells.pod_row_conditions(pod(status={"phase": "Failed"}))
    assert succeeded is not None and failed is not None
    assert [(c["type"], c["reason"]) for c in succeeded + failed] == [
        ("Completed", "Succeeded"),
        ("Completed", "Failed"),
    ]


@pytest.mark.parametrize(
    ("labels", "roles"),
    [
        ({}, []),
        ({"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/gpu": "x"}, ["gpu", "worker"]),
        ({"node-role.kubernetes.io/": "", "kubernetes.io/role": ""}, []),
        ({"kubernetes.io/role": "infra", "node-role.kubernetes.io/infra": ""}, ["infra"]),
    ],
)
def test_node_roles(labels: dict[str, str], roles: list[str]) -> None:
    assert cells.node_roles(labels) == roles


@pytest.mark.parametrize(
    ("spec", "conditions", "status"),
    [
        ({}, [], "Unknown"),
        ({}, [{"type": "Ready", "status": "True"}], "Ready"),
        ({}, [{"type": "Ready", "status": "Unknown"}], "NotReady"),
        ({"unschedulable": True}, [{"type": "Ready", "status": "True"}], "Ready,SchedulingDisabled"),
        ({"unschedulable": True}, [], "Unknown,SchedulingDisabled"),
        ({}, [{"type": "MemoryPressure", "status": "True"}], "Unknown"),
    ],
)
def test_node_status(spec: dict[str, Any], conditions: list[Any], status: str) -> None:
    node = {"metadata": {"name": "n"}, "spec": spec, "status": {"conditions": conditions}}
    assert cells.node_cells(node, NOW)[1] == status


def test_node_wide_columns() -> None:
    node = {
        "metadata": {"name": "n", "creationTimestamp": ago(7200)},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "n"},
                {"type": "InternalIP", "address": "10.0.0.2"},
            ],
            "nodeInfo": {"kubeletVersion": "v1.37.2", "kernelVersion": "6.8.0", "architecture": "arm64"},
        },
    }
    assert cells.node_cells(node, NOW)[3:] == [
        "120m",
        "v1.37.2",
        "10.0.0.2",
        "<none>",
        "<unknown>",
        "6.8.0 (arm64)",
        "<unknown>",
    ]


def test_event_columns() -> None:
    old_style = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{main}"},
        "type": "Normal",
        "reason": "Pulled",
        "message": " done \n",
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": ago(600),
        "lastTimestamp": ago(60),
        "count": 7,
    }
    assert cells.event_cells(old_style, NOW) == [
        "60s",
        "Normal",
        "Pulled",
        "pod/p",
        "spec.containers{main}",
        "kubelet, node-a",
        "done",
        "10m",
        7,
        "e1",
    ]
    new_style = {
        "metadata": {"name": "e2"},
        "involvedObject": {"kind": "Node"},
        "eventTime": "2026-06-01T11:50:00.000000Z",
        "series": {"count": 4, "lastObservedTime": "2026-06-01T11:59:30.000000Z"},
        "reportingComponent": "kube-vgpu-scheduler",
        "reportingInstance": "sched-0",
    }
    printed = cells.event_cells(new_style, NOW)
    assert (printed[0], printed[3], printed[5], printed[7], printed[8]) == (
        "30s",
        "node",
        "kube-vgpu-scheduler, sched-0",
        "10m",
        4,
    )
    singleton = {"metadata": {"name": "e3"}, "firstTimestamp": ago(5)}
    assert cells.event_cells(singleton, NOW)[0] == "5s"  # no lastTimestamp: the first one
    assert cells.event_cells(singleton, NOW)[8] == 1  # no count: a singleton
    assert cells.event_cells({"metadata": {"name": "e4"}}, NOW)[0] == "<unknown>"


def test_resource_quota_splits_requests_and_limits() -> None:
    quota = {
        "metadata": {"name": "q", "creationTimestamp": ago(10)},
        "status": {
            "hard": {"pods": "10", "limits.cpu": "4", "requests.nvidia.com/gpu": "2", "limits.memory": "1Gi"},
            "used": {"pods": "3", "limits.cpu": "500m"},
        },
    }
    assert cells.resource_quota_cells(quota, NOW) == [
        "q",
        "pods: 3/10, requests.nvidia.com/gpu: 0/2",
        "limits.cpu: 500m/4, limits.memory: 0/1Gi",
        "10s",
    ]
    assert cells.resource_quota_cells({"metadata": {"name": "empty"}}, NOW)[1:3] == ["", ""]


def test_lease_webhook_and_namespace_columns() -> None:
    lease = {"metadata": {"name": "l", "creationTimestamp": ago(3)}, "spec": {"holderIdentity": "a"}}
    assert cells.lease_cells(lease, NOW) == ["l", "a", "3s"]
    assert cells.lease_cells({"metadata": {"name": "free"}, "spec": {}}, NOW)[1] == ""
    hooks = {"metadata": {"name": "w"}, "webhooks": [{"name": "a"}, {"name": "b"}]}
    assert cells.webhook_configuration_cells(hooks, NOW)[:2] == ["w", 2]
    namespace = {"metadata": {"name": "ns"}, "status": {"phase": "Terminating"}}
    assert cells.namespace_cells(namespace, NOW) == ["ns", "Terminating", "<unknown>"]


@pytest.mark.parametrize("rt", ALL_RESOURCES, ids=lambda rt: rt.key)
def test_every_served_resource_prints_one_cell_per_real_column(rt: Any) -> None:
    columns = column_definitions(rt)
    assert columns, f"no columns for {rt.key}: regenerate with scripts/gen_kubelocal_apidocs.py"
    printed = cells.PRINTERS[rt.key]({"metadata": {"name": "x"}}, NOW)
    assert len(printed) == len(columns)
    assert columns[0]["format"] == "name" or rt.key == "events"


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (KUBECTL_ACCEPT, "v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", "v1beta1"),
        ("application/json", None),
        ("", None),
        ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", None),
        ("application/json;as=Table;v=v1;g=meta.k8s.io;q=0.5, application/json", None),
        ("application/json;q=0.5, application/json;as=Table;v=v1;g=meta.k8s.io", "v1"),
        ("application/vnd.kubernetes.protobuf, application/json;as=Table;v=v1;g=meta.k8s.io", "v1"),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io, application/json", None),
        ("application/json;as=Table;v=v2;g=meta.k8s.io, application/json", None),
        ("application/yaml;as=Table;v=v1;g=meta.k8s.io", None),
    ],
)
def test_table_version_from_accept(accept: str, version: str | None) -> None:
    assert table_version(accept) == version


def lease(name: str, rv: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": rv,
            "creationTimestamp": ago(5),
        },
        "spec": {"holderIdentity": "me"},
    }


def test_list_and_object_tables_follow_include_object() -> None:
    items = [lease("a", "7"), lease("b", "8")]
    table = list_table(LEASES, items, "9", TableOptions("v1"))
    assert (table["kind"], table["apiVersion"], table["metadata"]) == (
        "Table",
        "meta.k8s.io/v1",
        {"resourceVersion": "9"},
    )
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Holder", "Age"]
    assert [row["object"]["kind"] for row in table["rows"]] == ["PartialObjectMetadata"] * 2
    assert table["rows"][0]["object"]["metadata"]["resourceVersion"] == "7"
    whole = list_table(LEASES, items, "9", TableOptions("v1", "Object"))["rows"][1]["object"]
    assert (whole["kind"], whole["apiVersion"], whole["spec"]) == (
        "Lease",
        "coordination.k8s.io/v1",
        {"holderIdentity": "me"},
    )
    assert list_table(LEASES, items, "9", TableOptions("v1", "None"))["rows"][0]["object"] is None
    single = object_table(LEASES, items[1], TableOptions("v1beta1"))
    assert (single["apiVersion"], single["metadata"], len(single["rows"])) == (
        "meta.k8s.io/v1beta1",
        {"resourceVersion": "8"},
        1,
    )


def test_watch_encoding_sends_columns_once_and_passes_errors_through() -> None:
    encoding = TableWatchEncoding(PODS, TableOptions("v1", "None"))
    first = json.loads(encoding.frame(json.dumps({"type": "ADDED", "object": pod()}).encode() + b"\n"))
    second = json.loads(encoding.frame(json.dumps({"type": "MODIFIED", "object": pod()}).encode() + b"\n"))
    assert first["object"]["columnDefinitions"] and second["object"]["columnDefinitions"] is None
    assert second["type"] == "MODIFIED" and second["object"]["rows"][0]["cells"][0] == "p"
    assert second["object"]["rows"][0]["object"] is None
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "metadata": {"resourceVersion": "42", "creationTimestamp": None}},
    }
    marked = json.loads(encoding.frame(json.dumps(bookmark).encode()))["object"]
    # A bookmark keeps its resourceVersion in the row's metadata even with includeObject=None.
    assert marked["metadata"] == {"resourceVersion": "42"}
    assert marked["rows"][0]["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "42"},
    }
    error = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410}}).encode() + b"\n"
    assert encoding.frame(error) == error


# ----- over HTTP, on kube-local and the real server


def raw_get(served: Served, path: str, accept: str, *, stream: bool = False) -> tuple[int, Any]:
    """GET as the server's admin with this Accept; a watch (``stream``) answers a list of events."""
    request = urllib.request.Request(served.url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=15, context=served.tls) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    if stream:
        return status, [json.loads(line) for line in body.splitlines() if line.strip()]
    return status, json.loads(body)


def test_kubectl_get_answers_tables(
    served: Served, core: client.CoreV1Api, new_pod: Callable[..., Any]
) -> None:
    core.create_namespaced_pod("default", new_pod("table-a"))
    core.create_namespaced_pod("default", new_pod("table-b"))
    status, table = raw_get(served, "/api/v1/namespaces/default/pods?limit=500", KUBECTL_ACCEPT)
    assert status == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
        "IP",
        "Node",
        "Nominated Node",
        "Readiness Gates",
    ]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    rows = {row["cells"][0]: row for row in table["rows"]}
    assert set(rows) == {"table-a", "table-b"}
    assert rows["table-a"]["cells"][1:4] == ["0/1", "Pending", "0"]
    assert rows["table-a"]["object"]["kind"] == "PartialObjectMetadata"
    status, single = raw_get(
        served, "/api/v1/namespaces/default/pods/table-b?includeObject=Object", KUBECTL_ACCEPT
    )
    assert status == 200 and [row["object"]["metadata"]["name"] for row in single["rows"]] == ["table-b"]
    assert single["metadata"]["resourceVersion"] == single["rows"][0]["object"]["metadata"]["resourceVersion"]
    status, plain = raw_get(served, "/api/v1/namespaces/default/pods", "application/json")
    assert (status, plain["kind"]) == (200, "PodList")
    status, missing = raw_get(served, "/api/v1/namespaces/default/pods/nope", KUBECTL_ACCEPT)
    assert (status, missing["reason"]) == (404, "NotFound")


def test_unknown_include_object_is_refused(served: Served) -> None:
    status, answer = raw_get(served, "/api/v1/nodes?includeObject=Everything", KUBECTL_ACCEPT)
    assert status == 400 and answer["reason"] == "BadRequest"
    assert 'includeObject: Invalid value: "Everything"' in answer["message"]


def test_kubectl_get_watch_streams_tables(
    served: Served, core: client.CoreV1Api, new_pod: Callable[..., Any]
) -> None:
    core.create_namespaced_pod("default", new_pod("watched"))
    path = "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1&includeObject=None"
    status, events = raw_get(served, path, KUBECTL_ACCEPT, stream=True)
    assert status == 200
    assert [event["type"] for event in events] == ["ADDED"]
    table = events[0]["object"]
    assert (table["kind"], table["rows"][0]["cells"][0], table["rows"][0]["object"]) == (
        "Table",
        "watched",
        None,
    )
    assert table["columnDefinitions"][0]["name"] == "Name"
