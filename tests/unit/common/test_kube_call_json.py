"""`call_json` and `core_path` against a real kube-local, through the official client's REST layer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import KubeAccess
from services.common.kube import call_json, core_path, new_api_client

NS = "default"
MERGE = "application/merge-patch+json"


@pytest.fixture
def api(kube_local_url: str) -> Iterator[client.ApiClient]:
    api_client = new_api_client(KubeAccess(server=kube_local_url))
    try:
        yield api_client
    finally:
        api_client.close()  # type: ignore[no-untyped-call]


def create_pod(api: client.ApiClient, name: str, **metadata: Any) -> dict[str, Any]:
    body = {
        "metadata": {"name": name, **metadata},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
    }
    created: dict[str, Any] = call_json(api, "POST", core_path("pods", namespace=NS), body=body)
    return created


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        (("pods",), {}, "/api/v1/pods"),
        (("pods",), {"namespace": "default"}, "/api/v1/namespaces/default/pods"),
        (("nodes", "node-a"), {}, "/api/v1/nodes/node-a"),
        (("pods", "p"), {"namespace": "ns"}, "/api/v1/namespaces/ns/pods/p"),
        (
            ("pods", "a/b"),
            {"namespace": "ns x", "subresource": "binding"},
            "/api/v1/namespaces/ns%20x/pods/a%2Fb/binding",
        ),
        (("pods", "../../nodes/n"), {"namespace": "ns"}, "/api/v1/namespaces/ns/pods/..%2F..%2Fnodes%2Fn"),
        (("pods", "p?watch=1#x"), {"namespace": "a/b"}, "/api/v1/namespaces/a%2Fb/pods/p%3Fwatch%3D1%23x"),
        (("events",), {"namespace": "kube-system"}, "/api/v1/namespaces/kube-system/events"),
    ],
)
def test_core_path(args: tuple[str, ...], kwargs: dict[str, str], path: str) -> None:
    assert core_path(*args, **kwargs) == path


def test_get_returns_the_pods_json(api: client.ApiClient) -> None:
    created = create_pod(api, "p1", labels={"app": "x"}, annotations={"k": "v"})
    got = call_json(api, "GET", core_path("pods", "p1", namespace=NS))
    assert isinstance(got, dict)  # plain JSON, not a client model
    assert got["metadata"]["name"] == "p1"
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert got["metadata"]["labels"] == {"app": "x"}
    assert got["metadata"]["annotations"] == {"k": "v"}
    assert got["spec"]["containers"][0]["image"] == "busybox:1.36"


def test_query_parameters_are_sent(api: client.ApiClient) -> None:
    create_pod(api, "yes", labels={"pick": "me"})
    create_pod(api, "no", labels={"pick": "other"})
    listed = call_json(api, "GET", core_path("pods"), query=[("labelSelector", "pick=me")])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["yes"]


def test_a_missing_object_raises_404(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as raised:
        call_json(api, "GET", core_path("pods", "ghost", namespace=NS))
    assert raised.value.status == 404
    assert "ghost" in (raised.value.body or "")


def test_a_merge_patch_with_a_stale_resource_version_raises_409(api: client.ApiClient) -> None:
    created = create_pod(api, "p1")
    stale = created["metadata"]["resourceVersion"]
    path = core_path("pods", "p1", namespace=NS)
    patched = call_json(api, "PATCH", path, body={"metadata": {"labels": {"a": "1"}}}, content_type=MERGE)
    assert patched["metadata"]["resourceVersion"] != stale
    body = {"metadata": {"labels": {"a": "2"}, "resourceVersion": stale}}
    with pytest.raises(ApiException) as raised:
        call_json(api, "PATCH", path, body=body, content_type=MERGE)
    assert raised.value.status == 409
    assert call_json(api, "GET", path)["metadata"]["labels"] == {"a": "1"}  # refused as a whole
    # With the current resourceVersion the same patch applies.
    body["metadata"]["resourceVersion"] = patched["metadata"]["resourceVersion"]
    assert call_json(api, "PATCH", path, body=body, content_type=MERGE)["metadata"]["labels"] == {"a": "2"}


def test_sequential_calls_reuse_one_pooled_connection(api: client.ApiClient) -> None:
    create_pod(api, "p1")
    path = core_path("pods", "p1", namespace=NS)
    event = {
        "metadata": {"generateName": "p1."},
        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": NS},
        "reason": "Test",
        "message": "call_json",
        "type": "Normal",
    }
    for i in range(20):
        kind = i % 4
        if kind == 0:
            assert call_json(api, "GET", path)["metadata"]["name"] == "p1"
        elif kind == 1:
            body = {"metadata": {"annotations": {"i": str(i)}}}
            assert call_json(api, "PATCH", path, body=body, content_type=MERGE)["metadata"][
                "annotations"
            ] == {"i": str(i)}
        elif kind == 2:
            assert call_json(api, "POST", core_path("events", namespace=NS), body=event)["reason"] == "Test"
        else:
            with pytest.raises(ApiException):  # an error answer's body is read too
                call_json(api, "GET", core_path("pods", "ghost", namespace=NS))
    events = call_json(api, "GET", core_path("events", namespace=NS))["items"]
    assert len(events) == 5
    pools = api.rest_client.pool_manager.pools
    assert len(pools) == 1
    pool = pools[next(iter(pools.keys()))]
    assert pool.num_connections == 1
    assert pool.pool is not None
    idle = [conn for conn in pool.pool.queue if conn is not None]
    assert len(idle) == 1  # back in the pool, not left checked out
