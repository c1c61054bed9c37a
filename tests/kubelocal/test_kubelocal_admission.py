"""The admission hook points of the write pipeline (where admission webhooks plug in later)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain, AdmissionRequest


@pytest.fixture
def hooked(server_factory, client_for):
    seen: list[AdmissionRequest] = []

    async def add_label(req: AdmissionRequest):
        seen.append(req)
        if req.resource.kind != "Pod" or req.object is None or req.subresource:
            return None
        obj = dict(req.object)
        obj["metadata"] = {
            **obj["metadata"],
            "labels": {**(obj["metadata"].get("labels") or {}), "mutated": "yes"},
        }
        return obj

    async def deny_forbidden(req: AdmissionRequest) -> None:
        seen.append(req)
        if req.object is not None and (req.object["metadata"].get("labels") or {}).get("deny") == "true":
            raise errors.ApiError(400, "BadRequest", 'admission webhook "test" denied the request: no')
        if (
            req.operation == "DELETE"
            and (req.old_object["metadata"].get("labels") or {}).get("keep") == "true"
        ):
            raise errors.forbidden("pods", req.name, "kept by policy")

    server = server_factory(admission=AdmissionChain(mutating=[add_label], validating=[deny_forbidden]))
    return client.CoreV1Api(client_for(server.url)), seen


def test_mutating_hook_changes_created_and_updated_objects(hooked, new_pod):
    core, seen = hooked
    created = core.create_namespaced_pod("default", new_pod("p", labels={"a": "b"}))
    assert created.metadata.labels == {"a": "b", "mutated": "yes"}
    create = next(r for r in seen if r.operation == "CREATE")
    assert create.namespace == "default" and create.name == "p"
    assert "uid" not in create.object["metadata"]  # system fields come after mutating admission
    patched = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"mutated": None, "c": "d"}}})
    assert patched.metadata.labels == {"a": "b", "c": "d", "mutated": "yes"}
    update = next(r for r in seen if r.operation == "UPDATE")
    assert update.old_object["metadata"]["labels"] == {"a": "b", "mutated": "yes"}


def test_validating_hook_denies(hooked, new_pod):
    core, _ = hooked
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("bad", labels={"deny": "true"}))
    assert err.value.status == 400
    assert "denied the request" in json.loads(err.value.body)["message"]
    assert core.list_namespaced_pod("default").items == []
    core.create_namespaced_pod("default", new_pod("kept", labels={"keep": "true"}))
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_pod("kept", "default")
    assert err.value.status == 403
    assert core.read_namespaced_pod("kept", "default").metadata.name == "kept"


def test_binding_goes_through_admission(hooked, new_pod):
    core, seen = hooked
    core.create_namespaced_pod("default", new_pod("p"))
    body = client.V1Binding(
        metadata=client.V1ObjectMeta(name="p"), target=client.V1ObjectReference(kind="Node", name="n")
    )
    core.create_namespaced_pod_binding("p", "default", body, _preload_content=False)
    binds = [r for r in seen if r.subresource == "binding"]
    assert binds and binds[0].object["target"]["name"] == "n"
    assert core.read_namespaced_pod("p", "default").spec.node_name == "n"


def test_a_crashing_hook_is_a_500_status_and_the_server_survives(server_factory, client_for, new_pod):
    async def crash(req: AdmissionRequest) -> None:
        if req.name == "boom":
            raise RuntimeError("hook exploded")

    server = server_factory(admission=AdmissionChain(validating=[crash]))
    core = client.CoreV1Api(client_for(server.url))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("boom"))
    assert err.value.status == 500
    body = json.loads(err.value.body)
    assert body["reason"] == "InternalError" and "hook exploded" in body["message"]
    assert core.create_namespaced_pod("default", new_pod("fine")).metadata.name == "fine"
