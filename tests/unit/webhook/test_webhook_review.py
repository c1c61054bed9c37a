"""The AdmissionReview protocol around the decision: versions, uid, patch encoding, status conventions,
bad bodies, and a fuzz of arbitrary bodies and pod-ish objects (never an exception, always a well-formed
answer)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_builders import CORES, GPU, MEM, PCT, PRIORITY, ctr, decode_patch, gpu_ctr, patched, pod, review

from services.common.device_config import NvidiaConfig
from services.webhook.mutate import MutationPolicy, NodeGpus, QuotaEntry
from services.webhook.server import HttpReply, WebhookHandler


class Views:
    def __init__(self, quota: dict[str, Any] | None = None, inventory: list[NodeGpus] | None = None) -> None:
        self.quota = quota
        self.nodes = inventory
        self.namespaces: list[str] = []

    def quota_view(self, namespace: str) -> Any:
        self.namespaces.append(namespace)
        return self.quota

    def inventory(self) -> Any:
        return self.nodes

    def status(self) -> dict[str, Any]:
        return {}


def send(body: Any, handler: WebhookHandler | None = None) -> HttpReply:
    handler = handler or WebhookHandler(MutationPolicy())
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return handler.review(raw)


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_same_version_out_uid_echoed_patch_base64(api_version: str) -> None:
    obj = pod(gpu_ctr(gpu="1"))
    reply = send(review(obj, api_version=api_version, uid="7f0c-uid"))
    assert reply.status == 200
    assert reply.body["apiVersion"] == api_version
    assert reply.body["kind"] == "AdmissionReview"
    response = reply.body["response"]
    assert response["uid"] == "7f0c-uid"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert "status" not in response
    result = patched(obj, decode_patch(response))
    assert result["spec"]["schedulerName"] == "hami-scheduler"
    assert result["spec"]["containers"][0]["resources"]["limits"][CORES] == "100"


def test_non_gpu_pod_is_allowed_with_no_patch() -> None:
    response = send(review(pod(ctr(limits={"cpu": "1"})))).body["response"]
    assert response == {"uid": "uid-1", "allowed": True}


def test_denial_follows_controller_runtime_conventions() -> None:
    response = send(review(pod(gpu_ctr(gpu="1"), node="n1"))).body["response"]
    assert response == {
        "uid": "uid-1",
        "allowed": False,
        "status": {"metadata": {}, "code": 403, "message": "pod has node assigned", "reason": "Forbidden"},
    }


def test_errors_carry_their_code() -> None:
    bad_pct = send(review(pod(gpu_ctr(gpu="1", pct="150")))).body["response"]
    assert bad_pct["allowed"] is False
    assert bad_pct["status"]["code"] == 500
    assert bad_pct["status"]["message"].startswith("invalid nvidia.com/gpumem-percentage value 150")
    undecodable = send(review({"spec": {"containers": "x"}})).body["response"]
    assert (undecodable["allowed"], undecodable["status"]["code"]) == (False, 400)


def test_allowed_with_message_has_status_200() -> None:
    response = send(review(pod(gpu_ctr(gpu="1"), scheduler="volcano"))).body["response"]
    assert response["status"] == {
        "metadata": {},
        "code": 200,
        "message": "pod already has different scheduler assigned",
    }


def test_quota_denial_explains_in_warnings() -> None:
    handler = WebhookHandler(MutationPolicy(), Views(quota={MEM: QuotaEntry(1000, 900)}))
    response = send(review(pod(gpu_ctr(gpu="1", mem="200"))), handler).body["response"]
    assert response["status"]["message"] == "exceeding resource quota"
    assert response["warnings"] == [
        "limits.nvidia.com/gpumem: the pod needs 200, the namespace already uses 900 of 1000"
    ]


def test_quota_view_is_read_for_the_request_namespace() -> None:
    views = Views(quota={})
    handler = WebhookHandler(MutationPolicy(), views)
    obj = pod(gpu_ctr(gpu="1"))
    del obj["metadata"]["namespace"]  # CREATE objects often carry no namespace
    send(review(obj, namespace="team-a"), handler)
    send(review(obj, namespace=""), handler)
    assert views.namespaces == ["team-a", "default"]


def test_quota_check_can_be_disabled() -> None:
    handler = WebhookHandler(MutationPolicy(), Views(quota={MEM: QuotaEntry(0, 0)}), quota_check=False)
    assert send(review(pod(gpu_ctr(gpu="1", mem="200"))), handler).body["response"]["allowed"]


def test_inventory_is_used_when_enabled() -> None:
    views = Views(inventory=[NodeGpus("n", (1000,))])
    on = WebhookHandler(MutationPolicy(), views)
    off = WebhookHandler(MutationPolicy(reject_unplaceable=False), views)
    body = review(pod(gpu_ctr(gpu="2")))
    assert not send(body, on).body["response"]["allowed"]
    assert send(body, off).body["response"]["allowed"]


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        pytest.param(
            {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}, "admits pods only", id="kind"
        ),
        pytest.param({"operation": "UPDATE"}, "only pod CREATE is mutated", id="update"),
        pytest.param({"operation": "DELETE", "object": None}, "only pod CREATE", id="delete"),
        pytest.param(
            {"subResource": "ephemeralcontainers"}, "subresource ephemeralcontainers", id="subresource"
        ),
    ],
)
def test_requests_the_webhook_is_not_for_are_allowed_untouched(
    request_fields: dict[str, Any], message: str
) -> None:
    response = send(review(pod(gpu_ctr(gpu="1"), node="n"), **request_fields)).body["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert message in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"{", "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="binary"),
        pytest.param(b'{"a": NaN}', "not valid JSON", id="nan"),
        pytest.param(b"[1, 2]", "must be a JSON object", id="array"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(
            {"kind": "AdmissionReview", "request": {}},
            "unsupported AdmissionReview apiVersion",
            id="no-version",
        ),
        pytest.param({"apiVersion": "admission.k8s.io/v2", "request": {}}, "unsupported", id="v2"),
        pytest.param(
            {"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {}}, "expected kind", id="kind"
        ),
        pytest.param(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "no request", id="no-request"
        ),
        pytest.param(
            {"apiVersion": "admission.k8s.io/v1", "request": {"uid": 5}}, "uid must be a string", id="uid"
        ),
        pytest.param(b"[" * 100000 + b"]" * 100000, "not valid JSON", id="deep-nesting"),
    ],
)
def test_bodies_that_are_not_admission_reviews_get_400(body: Any, message: str) -> None:
    reply = send(body)
    assert reply.status == 400
    assert reply.body["kind"] == "AdmissionReview"
    assert reply.body["response"]["allowed"] is False
    assert reply.body["response"]["status"]["code"] == 400
    assert message in reply.body["response"]["status"]["message"]


def test_internal_failure_becomes_an_errored_review(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.webhook.server as server

    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "admit_pod", explode)
    reply = send(review(pod(gpu_ctr(gpu="1"))))
    assert reply.status == 500
    assert reply.body["response"]["allowed"] is False
    assert reply.body["response"]["status"]["message"] == "internal error: RuntimeError"


# --- fuzz ---------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
quantities = st.sampled_from(
    ["1", "2", "0", "-1", "100", "150", "1000", "16Gi", "500m", "1.5", "x", "", "1e3"]
) | (st.integers(-(2**40), 2**40))
resource_names = st.sampled_from([GPU, MEM, PCT, CORES, PRIORITY, "cpu", "memory"])
resource_maps = st.none() | st.dictionaries(resource_names, quantities, max_size=5)
odd_resource_maps = st.dictionaries(resource_names, quantities | json_values, max_size=5)
containers = st.fixed_dictionaries(
    {"name": st.sampled_from(["main", "side", "init", ""])},
    optional={
        "resources": st.none()
        | st.fixed_dictionaries({}, optional={"limits": resource_maps, "requests": resource_maps}),
        "env": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["A", "CUDA_TASK_PRIORITY", "NVIDIA_VISIBLE_DEVICES"])},
                optional={"value": st.text(max_size=3)},
            ),
            max_size=3,
        ),
        "securityContext": st.none()
        | st.fixed_dictionaries({}, optional={"privileged": st.none() | st.booleans()}),
        "restartPolicy": st.sampled_from(["Always", "Never"]),
    },
)
odd_containers = containers | st.fixed_dictionaries(
    {"resources": st.fixed_dictionaries({"limits": odd_resource_maps})}
)
specs = st.fixed_dictionaries(
    {"containers": st.lists(containers, min_size=1, max_size=3)},
    optional={
        "initContainers": st.none() | st.lists(containers, max_size=2),
        "schedulerName": st.sampled_from(["", "default-scheduler", "hami-scheduler", "other"]),
        "nodeName": st.none() | st.sampled_from(["", "node-1"]),
        "runtimeClassName": st.none() | st.sampled_from(["", "kata"]),
    },
)
odd_specs = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.none() | st.lists(odd_containers | json_values, max_size=3),
        "initContainers": st.none() | st.lists(odd_containers | json_values, max_size=2),
        "schedulerName": json_values,
        "nodeName": json_values,
        "runtimeClassName": json_values,
    },
)
metadata = st.fixed_dictionaries(
    {"name": st.text(max_size=5)},
    optional={"labels": st.dictionaries(st.text(max_size=3), st.text(max_size=3))},
)
pods = st.one_of(
    *[st.fixed_dictionaries({"kind": st.just("Pod"), "metadata": metadata, "spec": specs})] * 4,
    st.fixed_dictionaries(
        {},
        optional={
            "kind": st.just("Pod"),
            "metadata": metadata | json_values,
            "spec": odd_specs | json_values,
        },
    ),
)
policies = st.builds(
    MutationPolicy,
    scheduler_name=st.sampled_from(["hami-scheduler", ""]),
    force_overwrite_default_scheduler=st.booleans(),
    nvidia=st.builds(
        lambda **kw: NvidiaConfig.model_validate(kw),
        gpuCorePolicy=st.sampled_from(["default", "force", "disable"]),
        overwriteEnv=st.booleans(),
        defaultGPUNum=st.integers(0, 2),
        defaultMemory=st.sampled_from([0, 512]),
        memoryFactor=st.sampled_from([1, 2]),
        runtimeClassName=st.sampled_from(["", "nvidia"]),
    ),
)
inventories = st.none() | st.lists(
    st.builds(NodeGpus, st.text(max_size=3), st.lists(st.integers(0, 100000), max_size=4).map(tuple)),
    max_size=3,
)
quotas = st.none() | st.dictionaries(
    st.sampled_from([MEM, CORES]), st.builds(QuotaEntry, st.integers(0, 5000), st.integers(0, 5000))
)


def assert_well_formed(reply: HttpReply, sent: Any) -> None:
    assert reply.status in (200, 400)
    body = json.loads(json.dumps(reply.body, allow_nan=False))  # serialisable as strict JSON
    assert body["kind"] == "AdmissionReview"
    response = body["response"]
    assert isinstance(response["allowed"], bool)
    assert isinstance(response["uid"], str)
    if reply.status == 400:
        assert response["allowed"] is False
        return
    assert body["apiVersion"] == sent["apiVersion"]
    assert response["uid"] == sent["request"]["uid"]
    if response["allowed"]:
        ops = decode_patch(response)
        patched(sent["request"]["object"], ops)  # applies cleanly to the original
    else:
        assert "patch" not in response
        assert response["status"]["code"] in (400, 403, 500)
        assert response["status"]["message"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | st.binary(max_size=64))
def test_fuzz_arbitrary_bodies(body: Any) -> None:
    reply = send(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert reply.status in (200, 400)
    json.dumps(reply.body, allow_nan=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    obj=pods | json_values,
    policy=policies,
    quota=quotas,
    inventory=inventories,
    version=st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
    extra=st.dictionaries(
        st.sampled_from(["operation", "namespace", "kind", "subResource"]), json_values, max_size=2
    ),
)
def test_fuzz_pod_ish_objects(
    obj: Any, policy: MutationPolicy, quota: Any, inventory: Any, version: str, extra: dict[str, Any]
) -> None:
    sent = review(obj, api_version=version, **extra)
    handler = WebhookHandler(policy, Views(quota=quota, inventory=inventory))
    assert_well_formed(handler.review(json.dumps(sent).encode()), sent)


@pytest.mark.parametrize(
    "quantity",
    ["9" * 4000 + "e1000", "9" * 5000, "1e1001", "1e1000"],
)
def test_enormous_quantities_are_answered(quantity: str) -> None:
    reply = send(review(pod(ctr(limits={GPU: "1", PRIORITY: quantity, MEM: quantity}))))
    assert reply.status == 200
    json.dumps(reply.body)
