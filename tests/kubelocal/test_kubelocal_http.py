"""Raw HTTP behaviour: discovery, health, error Status bodies, and that errors never stop the server."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client import ApiException


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/livez"])
def test_health_endpoints(raw, path):
    assert raw("GET", path) == (200, "ok")


def test_version_through_client(api_client):
    info = client.VersionApi(api_client).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")


def test_core_discovery(raw):
    status, versions = raw("GET", "/api")
    assert status == 200 and versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    status, resources = raw("GET", "/api/v1")
    assert status == 200
    assert resources["kind"] == "APIResourceList" and resources["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert {"pods", "pods/status", "pods/binding", "nodes", "nodes/status", "namespaces", "events"} <= set(
        by_name
    )
    assert by_name["pods"]["namespaced"] is True and by_name["pods"]["kind"] == "Pod"
    assert "watch" in by_name["pods"]["verbs"]
    assert by_name["nodes"]["namespaced"] is False
    assert by_name["pods/binding"]["verbs"] == ["create"]


# kube-local only: the real apiserver serves every built-in group; kube-local the few our services use.
@pytest.mark.kube_local_only
def test_group_discovery(raw, api_client):
    status, groups = raw("GET", "/apis")
    assert status == 200 and groups["kind"] == "APIGroupList"
    assert [g["name"] for g in groups["groups"]] == ["admissionregistration.k8s.io", "coordination.k8s.io"]
    status, resources = raw("GET", "/apis/coordination.k8s.io/v1")
    assert status == 200 and resources["groupVersion"] == "coordination.k8s.io/v1"
    assert [r["name"] for r in resources["resources"]] == ["leases"]
    group = client.CoordinationApi(api_client).get_api_group()
    assert group.name == "coordination.k8s.io" and group.preferred_version.version == "v1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]


# kube-local only: the real apiserver's decode-error message differs in wording (same 400 BadRequest).
@pytest.mark.kube_local_only
def test_malformed_json_is_400_and_server_keeps_serving(raw, core):
    status, body = raw("POST", "/api/v1/namespaces/default/pods", b'{"metadata": {"name": "x"')
    assert status == 400
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["reason"] == "BadRequest" and body["code"] == 400
    assert "not valid JSON" in body["message"]
    status, body = raw("PATCH", "/api/v1/namespaces/default", b"{oops", "application/merge-patch+json")
    assert status == 400
    assert core.read_namespace("default").metadata.name == "default"


def test_non_object_body_is_400(raw):
    status, body = raw("POST", "/api/v1/namespaces/default/pods", b"[1, 2]")
    assert status == 400 and body["reason"] == "BadRequest"


# kube-local only: the real apiserver serves apps/v1 and pods/log.
@pytest.mark.kube_local_only
def test_unknown_paths_and_methods(raw):
    status, body = raw("GET", "/api/v1/widgets")
    assert status == 404 and body["reason"] == "NotFound"
    status, body = raw("GET", "/apis/apps/v1")
    assert status == 404
    status, body = raw("GET", "/api/v1/namespaces/default/pods/p/logs")
    assert status == 404
    status, body = raw("PUT", "/api/v1/namespaces/default/pods", b"{}")
    assert status == 405 and body["reason"] == "MethodNotAllowed"
    status, body = raw("POST", "/api/v1/pods", b"{}")
    assert status == 405


# kube-local only: the real apiserver supports server-side apply (docs/kubelocal-differences.md).
@pytest.mark.kube_local_only
def test_unsupported_patch_type_is_415(raw, core, new_pod):
    core.create_namespaced_pod("default", new_pod("p"))
    status, body = raw("PATCH", "/api/v1/namespaces/default/pods/p", b"{}", "application/apply-patch+yaml")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"
    status, body = raw("POST", "/api/v1/namespaces/default/pods", b"kind: Pod", "text/plain")
    assert status == 415


# kube-local only: the real apiserver's message names the conversion, not the word 'kind'.
@pytest.mark.kube_local_only
def test_kind_mismatch_is_400(raw):
    body = json.dumps({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n"}}).encode()
    status, reply = raw("POST", "/api/v1/namespaces/default/pods", body)
    assert status == 400 and "kind" in reply["message"]


def test_error_statuses_reach_client_as_api_exception(core):
    with pytest.raises(ApiException) as err:
        core.read_node("missing-node")
    assert err.value.status == 404
    assert json.loads(err.value.body)["details"] == {"name": "missing-node", "kind": "nodes"}


# kube-local only: the real apiserver answers 500 InternalError here; kube-local's 400 is the clearer
# answer.
@pytest.mark.kube_local_only
def test_resource_version_on_create_is_rejected(raw):
    body = json.dumps(
        {
            "metadata": {"name": "x", "resourceVersion": "5"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }
    ).encode()
    status, reply = raw("POST", "/api/v1/namespaces/default/pods", body)
    assert status == 400 and "resourceVersion" in reply["message"]
