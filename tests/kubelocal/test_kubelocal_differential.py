"""Differential check of kube-local against the upstream kube-apiserver: the requests our services and
kubectl make, replayed in the same order from an empty state on both servers, must get answers of the same
shape (status code, top-level keys, kind/apiVersion, a Status's reason/code, a watch's event types).

Values (uids, timestamps, resourceVersions) are never compared. Every step whose shapes differ must have a
`## Step `name`` heading in docs/kubelocal-differences.md saying why the difference is acceptable, and
every listed step must still differ, so the list stays honest both ways."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.kubelocal.server import KubeLocalThread
from tests.kubelocal.real_access import admin_tls
from tests.support.apiservers import ApiServer, reset_real

DIFFERENCES_DOC = Path(__file__).resolve().parents[2] / "docs" / "kubelocal-differences.md"
# kube-local keeps this many events of history, so the watch from resourceVersion 1 below is too old on
# both servers (the real one compacts by its watch cache window).
HISTORY_SIZE = 8
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
JSON = "application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PODS = "/api/v1/namespaces/default/pods"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
MWCS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
Shape = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One recorded request. `$name` in the path or body is a value an earlier step saved (`save`: the
    response's metadata.resourceVersion under that name), so both servers get their own values."""

    name: str
    method: str
    path: str
    body: Any = None
    content_type: str = JSON
    accept: str = JSON
    watch: bool = False
    save: str | None = None


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "diff-pod", "labels": {"app": "diff"}},
    "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
}
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "diff-node", "labels": {"gpu": "yes"}},
}
LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "diff-lock"},
    "spec": {"holderIdentity": "scheduler-a", "leaseDurationSeconds": 15},
}
LEASE_UPDATE = {
    **LEASE,
    "metadata": {"name": "diff-lock", "resourceVersion": "$lease_rv"},
    "spec": {"holderIdentity": "scheduler-b", "leaseDurationSeconds": 15},
}
EVENT = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "diff-pod.scheduled"},
    "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "diff-pod", "namespace": "default"},
    "reason": "Scheduled",
    "message": "bound to diff-node",
    "type": "Normal",
    "source": {"component": "kube-vgpu-scheduler"},
}
WEBHOOK = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": "diff-webhook"},
    "webhooks": [
        {
            "name": "vgpu.diff.io",
            "clientConfig": {"url": "https://127.0.0.1:1/webhook"},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "rules": [
                {
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["configmaps"],
                }
            ],
        }
    ],
}
BINDING = {
    "apiVersion": "v1",
    "kind": "Binding",
    "metadata": {"name": "diff-pod"},
    "target": {"apiVersion": "v1", "kind": "Node", "name": "diff-node"},
}

STEPS = [
    Step("create-namespace", "POST", "/api/v1/namespaces", {"metadata": {"name": "diff-ns"}}),
    Step("list-pods-by-label", "GET", f"{PODS}?labelSelector=app%3Ddiff", save="pods_rv"),
    Step("create-node", "POST", "/api/v1/nodes", NODE),
    Step("list-nodes-by-label", "GET", "/api/v1/nodes?labelSelector=gpu%3Dyes"),
    Step("list-nodes-by-field", "GET", "/api/v1/nodes?fieldSelector=metadata.name%3Ddiff-node"),
    Step(
        "patch-node-annotations",
        "PATCH",
        "/api/v1/nodes/diff-node",
        {"metadata": {"annotations": {"hami.io/node-handshake": "Requesting_2024"}}},
        STRATEGIC,
    ),
    Step("create-pod", "POST", PODS, POD),
    Step("create-pod-again-409", "POST", PODS, POD),
    Step("create-pod-invalid-name-422", "POST", PODS, {**POD, "metadata": {"name": "Bad_Name"}}),
    Step("get-missing-pod-404", "GET", f"{PODS}/no-such-pod"),
    Step("patch-pod-merge", "PATCH", f"{PODS}/diff-pod", {"metadata": {"annotations": {"a": "1"}}}, MERGE),
    Step(
        "patch-pod-strategic",
        "PATCH",
        f"{PODS}/diff-pod",
        {"metadata": {"annotations": {"b": "2"}}},
        STRATEGIC,
    ),
    Step(
        "patch-pod-json-patch",
        "PATCH",
        f"{PODS}/diff-pod",
        [{"op": "add", "path": "/metadata/annotations/c", "value": "3"}],
        JSON_PATCH,
    ),
    Step("bind-pod", "POST", f"{PODS}/diff-pod/binding", BINDING),
    Step("patch-pod-status", "PATCH", f"{PODS}/diff-pod/status", {"status": {"phase": "Running"}}, MERGE),
    Step("list-pods-by-node", "GET", f"{PODS}?fieldSelector=spec.nodeName%3Ddiff-node"),
    Step("list-pods-all-namespaces", "GET", "/api/v1/pods?labelSelector=app%3Ddiff"),
    Step(
        "watch-pods-from-list",
        "GET",
        f"{PODS}?watch=true&labelSelector=app%3Ddiff&resourceVersion=$pods_rv&timeoutSeconds=1",
        watch=True,
    ),
    Step(
        "watch-nodes-by-field",
        "GET",
        "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3Ddiff-node&timeoutSeconds=1",
        watch=True,
    ),
    Step("get-missing-lease-404", "GET", f"{LEASES}/diff-lock"),
    Step("create-lease", "POST", LEASES, LEASE),
    Step("get-lease", "GET", f"{LEASES}/diff-lock", save="lease_rv"),
    Step("update-lease", "PUT", f"{LEASES}/diff-lock", LEASE_UPDATE),
    Step("update-lease-stale-409", "PUT", f"{LEASES}/diff-lock", LEASE_UPDATE),
    Step("create-event", "POST", "/api/v1/namespaces/default/events", EVENT),
    Step("list-resourcequotas", "GET", "/api/v1/namespaces/default/resourcequotas"),
    Step("create-mutatingwebhookconfiguration", "POST", MWCS, WEBHOOK),
    Step("delete-mutatingwebhookconfiguration", "DELETE", f"{MWCS}/diff-webhook"),
    Step("table-pods", "GET", PODS, accept=TABLE),
    Step("table-nodes", "GET", "/api/v1/nodes", accept=TABLE),
    Step("delete-pod", "DELETE", f"{PODS}/diff-pod?gracePeriodSeconds=0"),
    # No step watches from a too-old resourceVersion: whether the real server still covers it depends on
    # its watch cache's history in this test session (both answers are Kubernetes behaviour), so it is
    # not a stable comparison. The 410 stream itself is compared in test_expired_watch_stream_shape.
    Step("delete-namespace", "DELETE", "/api/v1/namespaces/diff-ns"),
]


@dataclass
class Replay:
    url: str
    tls: ssl.SSLContext | None
    saved: dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        for name, value in self.saved.items():
            text = text.replace(f"${name}", value)
        return text

    def send(self, step: Step) -> Shape:
        data = None if step.body is None else self.fill(json.dumps(step.body)).encode()
        headers = {"Accept": step.accept}
        if data is not None:
            headers["Content-Type"] = step.content_type
        request = urllib.request.Request(
            self.url + self.fill(step.path), data=data, method=step.method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=15, context=self.tls) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        if step.watch and status == 200:
            events = [json.loads(line) for line in raw.splitlines() if line.strip()]
            return {"status": status, "events": [event_shape(event) for event in events]}
        body = json.loads(raw)
        if step.save is not None:
            self.saved[step.save] = body["metadata"]["resourceVersion"]
        return {"status": status, **body_shape(body)}


def body_shape(body: dict[str, Any]) -> Shape:
    shape: Shape = {"keys": sorted(body), "kind": body.get("kind"), "apiVersion": body.get("apiVersion")}
    if body.get("kind") == "Status":
        shape.update(reason=body.get("reason"), code=body.get("code"), status_=body.get("status"))
    return shape


def event_shape(event: dict[str, Any]) -> Any:
    if event["type"] == "ERROR":
        return ["ERROR", event["object"].get("reason"), event["object"].get("code")]
    return event["type"]


def listed_differences() -> set[str]:
    text = DIFFERENCES_DOC.read_text(encoding="utf-8")
    return set(re.findall(r"^## Step `([a-z0-9-]+)`", text, flags=re.MULTILINE))


def replay_all(replay: Replay) -> dict[str, Shape]:
    return {step.name: replay.send(step) for step in STEPS}


def test_recorded_requests_get_the_same_shapes_from_both_servers(real_api_server: ApiServer) -> None:
    local = KubeLocalThread(history_size=HISTORY_SIZE)
    try:
        local_shapes = replay_all(Replay(local.start(), None))
    finally:
        local.close()
    try:
        real_shapes = replay_all(Replay(real_api_server.url, admin_tls(real_api_server)))
    finally:
        reset_real(real_api_server)

    differing = {name for name in local_shapes if local_shapes[name] != real_shapes[name]}
    report = "\n".join(
        f"{name}:\n  kube-local {local_shapes[name]}\n  real       {real_shapes[name]}"
        for name in sorted(differing)
    )
    listed = listed_differences()
    assert listed <= {step.name for step in STEPS}, "docs/kubelocal-differences.md names unknown steps"
    assert not differing - listed, f"differences not in docs/kubelocal-differences.md:\n{report}"
    stale = listed - differing
    assert not stale, f"listed in docs/kubelocal-differences.md but no longer differ: {sorted(stale)}"
