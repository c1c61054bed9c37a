"""kube-local's Tables against the upstream kube-apiserver's: the same objects (pods in every state kubectl
names - Pending, ContainerCreating, Running with restarts, CrashLoopBackOff, Completed, ExitCode/Signal,
Evicted, Init:..., sidecars, SchedulingGated, readiness gates, Terminating -, nodes Ready/NotReady/
cordoned/bare, events old and new style, a quota, leases, a webhook configuration, namespaces) are created
on both servers, then each resource's Table is fetched as ``kubectl get`` fetches it and compared.

Column definitions must be equal exactly; cells exactly, except ages (``45s``, ``3m``, ``2 (5m ago)``),
which depend on when each server wrote the object and are normalised. Row conditions, row objects per
``includeObject``, a single object's Table and a watch's Table events are compared too."""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from sim.kubelocal.server import KubeLocalThread
from tests.kubelocal.real_access import admin_tls
from tests.support.apiservers import ApiServer, reset_real

# What kubectl get sends.
TABLE = ",".join(
    (
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
        "application/json",
    )
)
MERGE = "application/merge-patch+json"
NS = "tables-ns"
QUOTA_NS = "tables-quota"
NODE = "tables-node"
AGE = re.compile(r"^(\d+[smhdy])+$")
RESTARTS = re.compile(r"^(\d+) \((\d+[smhdy])+ ago\)$")


def stamp(seconds_ago: int, *, micro: bool = False) -> str:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Server:
    url: str
    tls: ssl.SSLContext | None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": accept},
        )
        try:
            with urllib.request.urlopen(request, timeout=15, context=self.tls) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        if b"\n{" in raw.strip():  # a watch stream: one JSON document per line
            return status, [json.loads(line) for line in raw.splitlines() if line.strip()]
        return status, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        status, answer = self.call(method, path, body, content_type)
        assert status in (200, 201), f"{method} {path}: {status} {answer}"
        return answer

    def wait_for(self, path: str, ready: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status, answer = self.call("GET", path)
            if status == 200 and ready(answer):
                return
            assert time.monotonic() < deadline, f"{path} not ready: {answer}"
            time.sleep(0.2)


def container(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.36", **extra}


def pod(name: str, *, containers: tuple[str, ...] = ("main",), node: str | None = NODE, **spec: Any) -> Any:
    body: dict[str, Any] = {
        "containers": [container(c) for c in containers],
        "restartPolicy": "Never",
        **spec,
    }
    if node is not None:
        body["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


def state(name: str, st: dict[str, Any], *, ready: bool = False, restarts: int = 0, **extra: Any) -> Any:
    return {
        "name": name,
        "image": "busybox:1.36",
        "imageID": "",
        "ready": ready,
        "restartCount": restarts,
        "state": st,
        **extra,
    }


def running(since: int = 120) -> dict[str, Any]:
    return {"running": {"startedAt": stamp(since)}}


def terminated(code: int, reason: str | None = None, signal: int | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": code, "startedAt": stamp(400), "finishedAt": stamp(300)}
    if reason is not None:
        term["reason"] = reason
    if signal is not None:
        term["signal"] = signal
    return {"terminated": term}


def waiting(reason: str) -> dict[str, Any]:
    return {"waiting": {"reason": reason}}


def cond(kind: str, status: str = "True", reason: str | None = None) -> dict[str, Any]:
    out = {"type": kind, "status": status, "lastTransitionTime": stamp(60)}
    if reason is not None:
        out["reason"] = reason
    return out


INIT = [container("init-a"), container("init-b")]
SIDECAR = [container("proxy", restartPolicy="Always")]
RESTARTED = {
    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": stamp(900), "finishedAt": stamp(300)}
}

# name -> (pod, status or None)
PODS: dict[str, tuple[Any, Any]] = {
    "pending": (pod("pending", node=None), None),
    "creating": (
        pod("creating"),
        {"phase": "Pending", "containerStatuses": [state("main", waiting("ContainerCreating"))]},
    ),
    "running": (
        pod("running", restartPolicy="Always"),
        {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "podIPs": [{"ip": "10.1.2.3"}],
            "conditions": [cond("Initialized"), cond("Ready")],
            "containerStatuses": [
                state("main", running(), ready=True, restarts=3, started=True, lastState=RESTARTED)
            ],
        },
    ),
    "crashloop": (
        pod("crashloop", restartPolicy="Always"),
        {
            "phase": "Running",
            "containerStatuses": [
                state("main", waiting("CrashLoopBackOff"), restarts=5, lastState=RESTARTED)
            ],
        },
    ),
    "completed": (
        pod("completed"),
        {"phase": "Succeeded", "containerStatuses": [state("main", terminated(0, "Completed"))]},
    ),
    "exit-code": (pod("exit-code"), {"phase": "Failed", "containerStatuses": [state("main", terminated(2))]}),
    "signal": (
        pod("signal"),
        {"phase": "Failed", "containerStatuses": [state("main", terminated(137, None, 9))]},
    ),
    "evicted": (pod("evicted"), {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
    "init-waiting": (
        pod("init-waiting", initContainers=INIT),
        {
            "phase": "Pending",
            "initContainerStatuses": [
                state("init-a", waiting("PodInitializing")),
                state("init-b", waiting("PodInitializing")),
            ],
            "containerStatuses": [state("main", waiting("PodInitializing"))],
        },
    ),
    "init-error": (
        pod("init-error", initContainers=INIT),
        {
            "phase": "Failed",
            "initContainerStatuses": [
                state("init-a", terminated(0, "Completed")),
                state("init-b", terminated(1, "Error")),
            ],
            "containerStatuses": [state("main", waiting("PodInitializing"))],
        },
    ),
    "init-crash": (
        pod("init-crash", initContainers=INIT, restartPolicy="Always"),
        {
            "phase": "Pending",
            "initContainerStatuses": [
                state("init-a", waiting("CrashLoopBackOff"), restarts=2, lastState=RESTARTED)
            ],
            "containerStatuses": [state("main", waiting("PodInitializing"))],
        },
    ),
    "sidecar": (
        pod("sidecar", initContainers=SIDECAR, restartPolicy="Always"),
        {
            "phase": "Running",
            "conditions": [cond("Initialized"), cond("Ready")],
            "initContainerStatuses": [
                state("proxy", running(), ready=True, started=True, restarts=1, lastState=RESTARTED)
            ],
            "containerStatuses": [state("main", running(), ready=True, started=True)],
        },
    ),
    "half-done": (
        pod("half-done", containers=("main", "helper"), restartPolicy="Never"),
        {
            "phase": "Running",
            "conditions": [cond("Ready")],
            "containerStatuses": [
                state("helper", running(), ready=True),
                state("main", terminated(0, "Completed")),
            ],
        },
    ),
    "half-done-unready": (
        pod("half-done-unready", containers=("main", "helper"), restartPolicy="Never"),
        {
            "phase": "Running",
            "containerStatuses": [
                state("helper", running(), ready=True),
                state("main", terminated(0, "Completed")),
            ],
        },
    ),
    "gated": (
        pod("gated", node=None, schedulingGates=[{"name": "example.com/quota"}]),
        {"phase": "Pending", "conditions": [cond("PodScheduled", "False", "SchedulingGated")]},
    ),
    "gates": (
        pod(
            "gates",
            node=None,  # the real server keeps nominatedNodeName off bound pods
            readinessGates=[{"conditionType": "example.com/ready"}, {"conditionType": "example.com/lb"}],
        ),
        {"phase": "Pending", "nominatedNodeName": "other-node", "conditions": [cond("example.com/ready")]},
    ),
    "terminating": (pod("terminating", node=None), None),
    "node-lost": (pod("node-lost", restartPolicy="Always"), {"phase": "Running", "reason": "NodeLost"}),
}
# Pods created with a finalizer and deleted, so they stay marked for deletion until release().
HELD = ("terminating", "node-lost")
NODES: list[tuple[Any, Any]] = [
    (
        {
            "metadata": {
                "name": NODE,
                "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "gpu"},
            }
        },
        {
            "conditions": [cond("Ready")],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "ExternalIP", "address": "1.2.3.4"},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.2",
                "osImage": "Ubuntu 24.04 LTS",
                "kernelVersion": "6.8.0",
                "containerRuntimeVersion": "containerd://2.0.0",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    ),
    (
        {"metadata": {"name": "tables-cordoned"}, "spec": {"unschedulable": True}},
        {"conditions": [cond("Ready", "False")]},
    ),
    ({"metadata": {"name": "tables-bare"}}, None),
]
EVENTS: list[dict[str, Any]] = [
    {
        "metadata": {"name": "ev-old-style"},
        "involvedObject": {
            "kind": "Pod",
            "name": "running",
            "namespace": NS,
            "fieldPath": "spec.containers{main}",
        },
        "reason": "Pulled",
        "message": "  pulled busybox:1.36\n",
        "type": "Normal",
        "source": {"component": "kubelet", "host": NODE},
        "firstTimestamp": stamp(3600),
        "lastTimestamp": stamp(60),
        "count": 4,
    },
    {
        "metadata": {"name": "ev-series"},
        "involvedObject": {"kind": "Pod", "name": "pending", "namespace": NS},
        "reason": "FailedScheduling",
        "message": "0/1 nodes are available",
        "type": "Warning",
        "eventTime": stamp(600, micro=True),
        "series": {"count": 3, "lastObservedTime": stamp(30, micro=True)},
        "reportingComponent": "kube-vgpu-scheduler",
        "reportingInstance": "scheduler-0",
        "action": "Scheduling",
    },
    {
        "metadata": {"name": "ev-node"},
        "involvedObject": {"kind": "ReplicaSet", "namespace": NS},  # no name: OBJECT is the kind
        "reason": "Rebooted",
        "message": "rebooted",
        "type": "Warning",
        "source": {"component": "kube-vgpu-monitor"},
        "firstTimestamp": stamp(90),
        "lastTimestamp": stamp(90),
        "count": 1,
    },
]
QUOTA_HARD = {"pods": "10", "limits.cpu": "4", "requests.memory": "1Gi", "limits.memory": "2Gi"}
WEBHOOK_RULES = [
    {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}
]
WEBHOOKS = {
    "metadata": {"name": "tables-hooks"},
    "webhooks": [
        {
            "name": f"{name}.tables.example.com",
            "clientConfig": {"url": f"https://127.0.0.1:1/{name}"},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "rules": WEBHOOK_RULES,
        }
        for name in ("first", "second")
    ],
}
# (what kubectl lists, the row names of this test's objects in it)
LISTS = {
    "pods": (f"/api/v1/namespaces/{NS}/pods", set(PODS)),
    "nodes": ("/api/v1/nodes", {NODE, "tables-cordoned", "tables-bare"}),
    "namespaces": ("/api/v1/namespaces", {NS, QUOTA_NS, "default"}),
    "events": (f"/api/v1/namespaces/{NS}/events", {e["metadata"]["name"] for e in EVENTS}),
    "resourcequotas": (f"/api/v1/namespaces/{QUOTA_NS}/resourcequotas", {"tables-quota"}),
    "leases": (f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", {"tables-held", "tables-free"}),
    "mutatingwebhookconfigurations": (
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        {"tables-hooks"},
    ),
}


def populate(server: Server, *, real: bool) -> None:
    for namespace in (NS, QUOTA_NS):
        server.ok("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        if real:  # pods need the namespace's default ServiceAccount, made by the controller-manager
            server.wait_for(f"/api/v1/namespaces/{namespace}/serviceaccounts/default", lambda _: True)
    for node, status in NODES:
        server.ok("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", **node})
        if status is not None:
            server.ok("PATCH", f"/api/v1/nodes/{node['metadata']['name']}/status", {"status": status}, MERGE)
    pods = f"/api/v1/namespaces/{NS}/pods"
    for name, (body, status) in PODS.items():
        if name in HELD:
            body = {**body, "metadata": {**body["metadata"], "finalizers": ["example.com/hold"]}}
        server.ok("POST", pods, body)
        if status is not None:
            server.ok("PATCH", f"{pods}/{name}/status", {"status": status}, MERGE)
    for name in HELD:
        server.ok("DELETE", f"{pods}/{name}")
    for event in EVENTS:
        server.ok("POST", f"/api/v1/namespaces/{NS}/events", {"apiVersion": "v1", "kind": "Event", **event})
    quotas = f"/api/v1/namespaces/{QUOTA_NS}/resourcequotas"
    server.ok("POST", quotas, {"metadata": {"name": "tables-quota"}, "spec": {"hard": QUOTA_HARD}})
    used = {resource: "0" for resource in QUOTA_HARD}
    if real:  # the resource quota controller fills in the status
        server.wait_for(f"{quotas}/tables-quota", lambda q: (q.get("status") or {}).get("used") == used)
    else:
        server.ok(
            "PATCH", f"{quotas}/tables-quota/status", {"status": {"hard": QUOTA_HARD, "used": used}}, MERGE
        )
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    server.ok(
        "POST", leases, {"metadata": {"name": "tables-held"}, "spec": {"holderIdentity": "scheduler-a"}}
    )
    server.ok("POST", leases, {"metadata": {"name": "tables-free"}, "spec": {}})
    server.ok("POST", LISTS["mutatingwebhookconfigurations"][0], WEBHOOKS)


def release(server: Server) -> None:
    """Lets the pods held for deletion go, so the namespace can be deleted."""
    for name in HELD:
        server.call(
            "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}", {"metadata": {"finalizers": None}}, MERGE
        )


def normalise(cell: Any) -> Any:
    if isinstance(cell, str):
        if AGE.match(cell):
            return "<age>"
        restarts = RESTARTS.match(cell)
        if restarts:
            return f"{restarts.group(1)} (<age> ago)"
    return cell


def table_view(table: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """What must be equal: kind, columns, and per row of this test's objects its cells, conditions and
    the kind of its object."""
    name_at = next(i for i, c in enumerate(table["columnDefinitions"]) if c["format"] == "name")
    rows = {}
    for row in table["rows"]:
        name = row["cells"][name_at]
        if name in names:
            obj = row.get("object")
            rows[name] = {
                "keys": sorted(row),
                "cells": [normalise(c) for c in row["cells"]],
                "conditions": row.get("conditions"),
                "object": None if obj is None else (obj.get("kind"), obj.get("apiVersion")),
            }
    assert set(rows) == names, f"rows {sorted(rows)}, expected {sorted(names)}"
    return {
        "kind": table["kind"],
        "apiVersion": table["apiVersion"],
        "metadata": sorted(table["metadata"]),
        "columnDefinitions": table["columnDefinitions"],
        "rows": rows,
    }


def observe(server: Server) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for resource, (path, names) in LISTS.items():
        for include in ("", "None", "Object"):
            query = f"?includeObject={include}" if include else ""
            status, table = server.call("GET", path + query, accept=TABLE)
            assert status == 200, f"{path}{query}: {status} {table}"
            seen[f"{resource}{query}"] = table_view(table, names)
    status, table = server.call("GET", f"/api/v1/namespaces/{NS}/pods/running", accept=TABLE)
    seen["get-pod"] = {"status": status, **table_view(table, {"running"})}
    status, table = server.call("GET", "/api/v1/nodes/tables-node?includeObject=Object", accept=TABLE)
    seen["get-node"] = {"status": status, **table_view(table, {NODE})}
    status, error = server.call("GET", f"/api/v1/namespaces/{NS}/pods?includeObject=All", accept=TABLE)
    seen["bad-include"] = {"status": status, "message": error["message"], "reason": error["reason"]}
    status, events = server.call("GET", LISTS["leases"][0] + "?watch=true&timeoutSeconds=1", accept=TABLE)
    assert status == 200 and isinstance(events, list), events
    tables = [event["object"] for event in events]
    seen["watch-leases"] = {
        "types": sorted(
            {
                (event["type"], table["kind"], table["apiVersion"])
                for event, table in zip(events, tables, strict=True)
            }
        ),
        "columns": [table["columnDefinitions"] is not None for table in tables],
        "events": sorted(
            ([normalise(c) for c in table["rows"][0]["cells"]], sorted(table["rows"][0]["object"]))
            for table in tables
        ),
    }
    return seen


def test_tables_match_the_real_server(real_api_server: ApiServer) -> None:
    local = KubeLocalThread()
    try:
        server = Server(local.start(), None)
        populate(server, real=False)
        local_seen = observe(server)
    finally:
        local.close()
    real = Server(real_api_server.url, admin_tls(real_api_server))
    try:
        populate(real, real=True)
        real_seen = observe(real)
    finally:
        release(real)
        reset_real(real_api_server)
    assert local_seen.keys() == real_seen.keys()
    report = [
        f"{key} {part}:\n  kube-local {mine}\n  real       {theirs}"
        for key in local_seen
        for part, mine, theirs in differences(local_seen[key], real_seen[key])
    ]
    assert not report, "\n".join(report)


def differences(mine: Any, theirs: Any) -> list[tuple[str, Any, Any]]:
    """The parts of two observations that differ: per row for a Table, else the whole."""
    if not (isinstance(mine, dict) and isinstance(theirs, dict) and "rows" in mine and "rows" in theirs):
        return [] if mine == theirs else [("", mine, theirs)]
    found = [
        (part, mine.get(part), theirs.get(part))
        for part in sorted((set(mine) | set(theirs)) - {"rows"})
        if mine.get(part) != theirs.get(part)
    ]
    rows_mine, rows_theirs = mine["rows"], theirs["rows"]
    for name in sorted(set(rows_mine) | set(rows_theirs)):
        if rows_mine.get(name) != rows_theirs.get(name):
            found.append((f"row {name}", rows_mine.get(name), rows_theirs.get(name)))
    return found
