"""Server-side field validation from the published OpenAPI schemas (sim/kubelocal/openapi_fields.py): with
``/openapi/v3`` served, kubectl leaves manifest validation to the server (``?fieldValidation=Strict``), so
a misspelt field must be refused as the real server refuses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.kubelocal.openapi_fields import unknown_fields
from sim.kubelocal.resources import ALL_RESOURCES, LEASES, MUTATING_WEBHOOK_CONFIGURATIONS, NODES, PODS

PODS_PATH = "/api/v1/namespaces/default/pods"
DEMO_PODS = Path(__file__).resolve().parents[2] / "deploy" / "local" / "demo-pods.yaml"
TYPO_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "typo", "labels": {"any-key": "is fine"}, "bogusMeta": 1},
    "zzz": 1,
    "spec": {
        "containers": [
            {
                "name": "a",
                "image": "busybox:1.36",
                "imagePullPolicyy": "Always",
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            }
        ],
        "foo": {"bar": 1},
    },
}
CLEAN_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "typo"},
    "spec": {"containers": [{"name": "a", "image": "busybox:1.36"}]},
}
STRICT_MESSAGE = (
    'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
    'unknown field "metadata.bogusMeta", unknown field "zzz", '
    'unknown field "spec.containers[0].imagePullPolicyy", unknown field "spec.foo"'
)


@pytest.mark.parametrize(
    ("rt", "obj", "unknown"),
    [
        (PODS, {"metadata": {"name": "p", "annotations": {"x": "y"}}, "spec": {"containers": []}}, []),
        (PODS, TYPO_POD, ["metadata.bogusMeta", "zzz", "spec.containers[0].imagePullPolicyy", "spec.foo"]),
        (
            PODS,
            {"spec": {"initContainers": [{}, {"restartPolicyy": "Always"}]}},
            ["spec.initContainers[1].restartPolicyy"],
        ),
        (
            PODS,
            {"status": {"phasee": "Running", "conditions": [{"typ": "Ready"}]}},
            ["status.phasee", "status.conditions[0].typ"],
        ),
        (
            NODES,
            {"status": {"capacity": {"nvidia.com/gpu": "8"}, "nodeInfo": {"gpus": 8}}},
            ["status.nodeInfo.gpus"],
        ),
        (LEASES, {"spec": {"holderIdentityy": "a", "leaseDurationSeconds": 15}}, ["spec.holderIdentityy"]),
        (
            MUTATING_WEBHOOK_CONFIGURATIONS,
            {"webhooks": [{"name": "w", "clientConfig": {"url": "https://x", "caBundel": ""}}]},
            ["webhooks[0].clientConfig.caBundel"],
        ),
    ],
)
def test_unknown_fields(rt: Any, obj: dict[str, Any], unknown: list[str]) -> None:
    assert unknown_fields(rt, obj) == unknown


@pytest.mark.parametrize("rt", ALL_RESOURCES, ids=lambda rt: rt.key)
def test_every_served_kind_has_a_schema(rt: Any) -> None:
    assert unknown_fields(rt, {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {}}) == []
    assert unknown_fields(rt, {"metadata": {"nam": "x"}}) == ["metadata.nam"]


def test_demo_pods_have_no_unknown_fields() -> None:
    pods = [doc for doc in yaml.safe_load_all(DEMO_PODS.read_text(encoding="utf-8")) if doc]
    assert pods and all(unknown_fields(PODS, pod) == [] for pod in pods)


# ----- over HTTP, on kube-local and the real server


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_strict_create_and_replace_refuse_unknown_fields(raw: Callable[..., Any]) -> None:
    status, answer = raw("POST", f"{PODS_PATH}?fieldValidation=Strict", body(TYPO_POD))
    assert (status, answer["reason"], answer["message"]) == (400, "BadRequest", STRICT_MESSAGE)
    status, answer = raw("POST", f"{PODS_PATH}?fieldValidation=Bogus", body(TYPO_POD))
    assert (status, answer["reason"]) == (422, "Invalid")
    assert 'fieldValidation: Unsupported value: "Bogus"' in answer["message"]
    clean = CLEAN_POD
    status, created = raw("POST", f"{PODS_PATH}?fieldValidation=Strict", body(clean))
    assert status == 201, created
    replaced = {**created, "spec": {**created["spec"], "bogus": True}}
    status, answer = raw("PUT", f"{PODS_PATH}/typo?fieldValidation=Strict", body(replaced))
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert answer["message"].endswith('strict decoding error: unknown field "spec.bogus"')


@pytest.mark.parametrize(
    "content_type", ["application/strategic-merge-patch+json", "application/merge-patch+json"]
)
def test_strict_patch_refuses_unknown_fields(raw: Callable[..., Any], content_type: str) -> None:
    clean = CLEAN_POD
    assert raw("POST", PODS_PATH, body(clean))[0] == 201
    patch = {"metadata": {"labelz": {}}, "spec": {"containers": [{"name": "a", "imagePullPolicyy": "x"}]}}
    status, answer = raw("PATCH", f"{PODS_PATH}/typo?fieldValidation=Strict", body(patch), content_type)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"].endswith(
        'strict decoding error: unknown field "metadata.labelz", '
        'unknown field "spec.containers[0].imagePullPolicyy"'
    )
    status, answer = raw(
        "PATCH",
        f"{PODS_PATH}/typo?fieldValidation=Strict",
        body({"metadata": {"labels": {"a": "b"}}}),
        content_type,
    )
    assert status == 200 and answer["metadata"]["labels"] == {"a": "b"}


def test_without_strict_unknown_fields_are_accepted(raw: Callable[..., Any]) -> None:
    for directive in ("", "?fieldValidation=Ignore", "?fieldValidation=Warn"):
        name = f"lenient{len(directive)}"
        status, created = raw("POST", PODS_PATH + directive, body({**TYPO_POD, "metadata": {"name": name}}))
        assert status == 201, created


def test_strict_patch_judges_only_what_the_patch_brings(raw: Callable[..., Any]) -> None:
    """A field a lenient write left behind (the real server dropped it, kube-local kept it) does not make a
    later strict patch fail."""
    assert raw("POST", PODS_PATH, body({**CLEAN_POD, "zzz": 1}))[0] == 201
    patch = body({"metadata": {"labels": {"app": "x"}}})
    status, answer = raw(
        "PATCH", f"{PODS_PATH}/typo?fieldValidation=Strict", patch, "application/merge-patch+json"
    )
    assert status == 200 and answer["metadata"]["labels"] == {"app": "x"}, answer
