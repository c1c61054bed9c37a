"""kube-local's protobuf against the upstream kube-apiserver (docs/kubelocal-differences.md#protobuf).

1. The codec on the real server's own bytes: objects made on the real server are read back as JSON and as
   protobuf; decoding the protobuf must give exactly the JSON the server sent (managedFields, quantities,
   Time/MicroTime, intstr and defaults included), and JSON -> protobuf -> JSON must give it back too.
2. The same protobuf requests (what kubectl's typed clients send: create, get, list, watch, patch with a
   protobuf answer, eviction, delete with DeleteOptions, errors) to kube-local and to the real server: each
   step's status, media type, kind, Status reason/code and the checked fields must agree."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from sim.kubelocal.pb.codec import PROTOBUF, decode_object, decode_watch_frames, encode_object
from sim.kubelocal.server import KubeLocalThread
from tests.kubelocal.real_access import admin_tls
from tests.support.apiservers import ApiServer, reset_real

ACCEPT_PROTOBUF = f"{PROTOBUF},application/json"  # what kubectl's typed clients send
JSON = "application/json"
NS = "pb-test"


@dataclass(frozen=True)
class Answer:
    status: int
    media_type: str
    body: bytes

    def decoded(self) -> Any:
        if self.media_type == PROTOBUF:
            return decode_object(self.body)
        return json.loads(self.body)


def send(
    url: str,
    tls: ssl.SSLContext | None,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = JSON,
    accept: str = ACCEPT_PROTOBUF,
) -> Answer:
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20, context=tls) as response:
            status, media, raw = response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        status, media, raw = err.code, err.headers.get("Content-Type", ""), err.read()
    return Answer(status, media.split(";")[0].strip(), raw)


# --- 1. the codec on the real server's bytes --------------------------------------------------------------

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "pb-pod", "labels": {"app": "pb"}, "annotations": {"hami.io/note": "x"}},
    "spec": {
        "nodeName": "pb-node",
        "hostPID": True,
        "terminationGracePeriodSeconds": 0,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "main",
                "image": "busybox:1.36",
                "command": ["sleep", "3600"],
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 7},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
    },
}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pb-node", "labels": {"gpu": "yes"}}}
NODE_STATUS = {
    "capacity": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
    "allocatable": {"cpu": "7500m", "memory": "30Gi", "nvidia.com/gpu": "4"},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "ready",
            "lastHeartbeatTime": "2026-01-02T03:04:05Z",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        }
    ],
}
LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "pb-lock"},
    "spec": {
        "holderIdentity": "scheduler-a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-02T03:04:05.123456Z",
        "renewTime": "2026-01-02T03:04:15.000001Z",
    },
}
EVENT = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "pb-pod.scheduled"},
    "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "pb-pod", "namespace": NS},
    "reason": "Scheduled",
    "message": "placed on pb-node",
    "type": "Normal",
    "source": {"component": "kube-vgpu-scheduler"},
    "firstTimestamp": "2026-01-02T03:04:05Z",
    "lastTimestamp": "2026-01-02T03:04:05Z",
    "count": 1,
}
WEBHOOKS = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": "pb-webhook"},
    "webhooks": [
        {
            "name": "vgpu.pb.example.com",
            "clientConfig": {"url": "https://127.0.0.1:9443/mutate"},
            "rules": [
                {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
            ],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }
    ],
}
NAMESPACED = f"/api/v1/namespaces/{NS}"
READS = {
    "namespace": NAMESPACED,
    "node": "/api/v1/nodes/pb-node",
    "pod": f"{NAMESPACED}/pods/pb-pod",
    "pod-list": f"{NAMESPACED}/pods",
    "lease": f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/pb-lock",
    "event": f"{NAMESPACED}/events/pb-pod.scheduled",
    "webhooks": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pb-webhook",
    "not-found": f"{NAMESPACED}/pods/missing",
}


def _wait_for_default_service_account(url: str, tls: ssl.SSLContext | None) -> None:
    deadline = time.monotonic() + 30
    while send(url, tls, "GET", f"{NAMESPACED}/serviceaccounts/default", accept=JSON).status != 200:
        assert time.monotonic() < deadline, "the controller-manager made no default ServiceAccount"
        time.sleep(0.2)


def _create(url: str, tls: ssl.SSLContext | None, path: str, obj: dict[str, Any]) -> None:
    answer = send(url, tls, "POST", path, json.dumps(obj).encode(), accept=JSON)
    assert answer.status == 201, answer.body


def _read_both(url: str, tls: ssl.SSLContext | None, path: str) -> tuple[Any, Answer]:
    """The JSON and the protobuf answer for one object, read until no write fell between the two reads
    (the controllers of the real server write Nodes and lists' resourceVersions move)."""
    for _ in range(5):
        before = json.loads(send(url, tls, "GET", path, accept=JSON).body)
        answer = send(url, tls, "GET", path)
        after = json.loads(send(url, tls, "GET", path, accept=JSON).body)
        if before == after:
            return after, answer
    return after, answer


def test_decoding_the_real_servers_protobuf_gives_its_json(real_api_server: ApiServer) -> None:
    url, tls = real_api_server.url, admin_tls(real_api_server)
    try:
        _create(
            url,
            tls,
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        )
        _wait_for_default_service_account(url, tls)
        _create(url, tls, "/api/v1/nodes", NODE)
        status = json.dumps({"status": NODE_STATUS}).encode()
        patched = send(
            url, tls, "PATCH", READS["node"] + "/status", status, "application/merge-patch+json", JSON
        )
        assert patched.status == 200, patched.body
        _create(url, tls, f"{NAMESPACED}/pods", POD)
        _create(url, tls, f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", LEASE)
        _create(url, tls, f"{NAMESPACED}/events", EVENT)
        _create(url, tls, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", WEBHOOKS)
        for name, path in READS.items():
            as_json, answer = _read_both(url, tls, path)
            assert answer.media_type == PROTOBUF, f"{name}: the real server answered {answer.media_type}"
            assert decode_object(answer.body) == as_json, f"{name}: protobuf decodes to other JSON"
            assert decode_object(encode_object(as_json)) == as_json, (
                f"{name}: JSON -> protobuf -> JSON differs"
            )
    finally:
        reset_real(real_api_server)


# --- 2. the same protobuf requests to both servers --------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None  # sent as protobuf unless `content_type` says otherwise
    content_type: str = PROTOBUF
    expect: int = 200
    checks: tuple[str, ...] = ()  # dotted paths of the decoded answer both servers must agree on
    watch: bool = False


STEPS = (
    Step(
        "create-namespace",
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        expect=201,
        checks=("metadata.name", "status.phase", "metadata.labels"),
    ),
    Step(
        "create-node", "POST", "/api/v1/nodes", NODE, expect=201, checks=("metadata.name", "metadata.labels")
    ),
    Step(
        "create-pod",
        "POST",
        f"{NAMESPACED}/pods",
        POD,
        expect=201,
        checks=(
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.hostPID",
            "spec.terminationGracePeriodSeconds",
            # (the real server's defaulting adds requests, probe timeouts and port protocols, which
            # kube-local leaves out: docs/kubelocal-differences.md#step-create-node says why)
            "spec.containers.0.resources.limits",
            "spec.containers.0.livenessProbe.httpGet.port",
            "spec.containers.0.livenessProbe.periodSeconds",
            "spec.containers.0.readinessProbe.tcpSocket.port",
            "spec.containers.0.ports.0.containerPort",
            "status.phase",
        ),
    ),
    Step("get-pod", "GET", f"{NAMESPACED}/pods/pb-pod", checks=("metadata.name", "spec.volumes.0.emptyDir")),
    Step(
        "list-pods-on-node",
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dpb-node",
        checks=("items.0.metadata.name", "items.0.spec.nodeName"),
    ),
    Step(
        "watch-pods",
        "GET",
        f"{NAMESPACED}/pods?watch=true&resourceVersion=0&timeoutSeconds=1",
        watch=True,
    ),
    Step(
        "cordon-node",
        "PATCH",
        "/api/v1/nodes/pb-node",
        {"spec": {"unschedulable": True}},
        content_type="application/strategic-merge-patch+json",
        checks=("spec.unschedulable",),
    ),
    Step(
        "create-lease",
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        LEASE,
        expect=201,
        checks=("spec.holderIdentity", "spec.acquireTime", "spec.renewTime", "spec.leaseDurationSeconds"),
    ),
    Step(
        "create-invalid-namespace",
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Not_Valid"}},
        expect=422,
        checks=("reason", "code", "details.name", "details.kind"),
    ),
    Step(
        "get-missing-pod",
        "GET",
        f"{NAMESPACED}/pods/missing",
        expect=404,
        checks=("reason", "code", "details"),
    ),
    Step(
        "evict-wrong-name",
        "POST",
        f"{NAMESPACED}/pods/pb-pod/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "other", "namespace": NS}},
        expect=400,
        checks=("reason", "code", "message"),
    ),
    Step(
        "evict-pod",
        "POST",
        f"{NAMESPACED}/pods/pb-pod/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "pb-pod", "namespace": NS},
            "deleteOptions": {"gracePeriodSeconds": 0},
        },
        expect=201,
        checks=("status", "code"),
    ),
    Step(
        "get-evicted-pod", "GET", f"{NAMESPACED}/pods/pb-pod", expect=404, checks=("reason", "details.name")
    ),
    Step(
        "delete-lease-with-options",
        "DELETE",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/pb-lock",
        {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
        checks=("status", "details.name", "details.kind"),
    ),
)


def _pick(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)] if int(part) < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def replay(url: str, tls: ssl.SSLContext | None) -> dict[str, dict[str, Any]]:
    """Each step's answer as the comparison sees it."""
    seen: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        body = None
        if step.body is not None:
            body = (
                encode_object(step.body) if step.content_type == PROTOBUF else json.dumps(step.body).encode()
            )
        answer = send(url, tls, step.method, step.path, body, step.content_type)
        assert answer.status == step.expect, f"{step.name}: {answer.status} {answer.body[:300]!r}"
        if step.name == "create-namespace" and tls is not None:
            _wait_for_default_service_account(url, tls)
        if step.watch:
            events, rest = decode_watch_frames(answer.body)
            seen[step.name] = {
                "media_type": answer.media_type,
                "events": [(e["type"], e["object"]["kind"], e["object"]["metadata"]["name"]) for e in events],
                "rest": rest,
            }
            continue
        decoded = answer.decoded()
        seen[step.name] = {
            "media_type": answer.media_type,
            "kind": decoded.get("kind"),
            "apiVersion": decoded.get("apiVersion"),
            **{path: _pick(decoded, path) for path in step.checks},
        }
    return seen


def test_protobuf_requests_get_the_same_answers_from_both_servers(real_api_server: ApiServer) -> None:
    local = KubeLocalThread()
    try:
        local_answers = replay(local.start(), None)
    finally:
        local.close()
    try:
        real_answers = replay(real_api_server.url, admin_tls(real_api_server))
    finally:
        reset_real(real_api_server)
    differing = [
        f"{step.name}:\n  kube-local {local_answers[step.name]}\n  real       {real_answers[step.name]}"
        for step in STEPS
        if local_answers[step.name] != real_answers[step.name]
    ]
    assert not differing, "\n".join(differing)
    assert real_answers["watch-pods"]["events"] == [("ADDED", "Pod", "pb-pod")]
    assert real_answers["watch-pods"]["media_type"] == PROTOBUF


@pytest.mark.parametrize(
    "accept", ["application/json", "application/json, */*", f"{PROTOBUF};q=0.5,application/json"]
)
def test_a_client_preferring_json_still_gets_json(accept: str) -> None:
    with KubeLocalThread() as local:
        answer = send(local.url, None, "GET", "/api/v1/namespaces/default", accept=accept)
        missing = send(local.url, None, "GET", "/api/v1/namespaces/missing", accept=accept)
    assert (answer.status, answer.media_type) == (200, JSON)
    assert json.loads(answer.body)["metadata"]["name"] == "default"
    assert (missing.status, missing.media_type) == (404, JSON)


def test_a_malformed_protobuf_body_is_a_400_naming_the_problem() -> None:
    with KubeLocalThread() as local:
        answer = send(local.url, None, "POST", "/api/v1/namespaces", b"k8s\x00\xff\xff", PROTOBUF)
        wrong_kind = send(
            local.url,
            None,
            "POST",
            "/api/v1/namespaces",
            encode_object(
                {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}}
            ),
            PROTOBUF,
        )
    assert (answer.status, answer.media_type) == (400, PROTOBUF)
    assert "protobuf" in answer.decoded()["message"]
    assert wrong_kind.status == 400
    assert "Lease" in wrong_kind.decoded()["message"]


def test_a_protobuf_watch_replays_history_and_ends_a_too_old_version_with_an_error_frame() -> None:
    """kube-local alone: its history size decides when a resourceVersion is too old (the real server's
    watch-cache window cannot be set from a test)."""
    with KubeLocalThread(history_size=4) as local:
        made = []
        for index in range(6):
            lease = {**LEASE, "metadata": {"name": f"lock-{index}"}}
            answer = send(
                local.url,
                None,
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                encode_object(lease),
                PROTOBUF,
            )
            assert answer.status == 201
            made.append(answer.decoded()["metadata"]["resourceVersion"])
        leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases?watch=true&timeoutSeconds=1"
        recent = send(local.url, None, "GET", f"{leases}&resourceVersion={made[3]}")
        too_old = send(local.url, None, "GET", f"{leases}&resourceVersion={made[0]}")
    assert (recent.status, recent.media_type) == (200, PROTOBUF)
    events, rest = decode_watch_frames(recent.body)
    assert rest == b""
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "lock-4"),
        ("ADDED", "lock-5"),
    ]
    assert events[0]["object"]["spec"]["acquireTime"] == LEASE["spec"]["acquireTime"]
    errors, _ = decode_watch_frames(too_old.body)
    assert [(e["type"], e["object"]["kind"], e["object"]["code"]) for e in errors] == [
        ("ERROR", "Status", 410)
    ]
