"""pods/binding: the scheduler's way to set spec.nodeName, exactly once."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException


def binding(pod: str, node: str, uid: str | None = None) -> client.V1Binding:
    return client.V1Binding(
        metadata=client.V1ObjectMeta(name=pod, uid=uid),
        target=client.V1ObjectReference(kind="Node", name=node),
    )


def bind(core: client.CoreV1Api, pod: str, node: str, uid: str | None = None) -> int:
    # Like the real apiserver, kube-local answers a Status (201), which this client version cannot
    # deserialise into V1Binding; callers read the raw response instead.
    resp = core.create_namespaced_pod_binding(pod, "default", binding(pod, node, uid), _preload_content=False)
    body = json.loads(resp.data)
    assert body["kind"] == "Status" and body["status"] == "Success"
    return resp.status


def test_binding_sets_node_name_once(core, new_pod):
    created = core.create_namespaced_pod("default", new_pod("p"))
    assert bind(core, "p", "node-a") == 201
    pod = core.read_namespaced_pod("p", "default")
    assert pod.spec.node_name == "node-a"
    assert int(pod.metadata.resource_version) > int(created.metadata.resource_version)
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert len(scheduled) == 1 and scheduled[0].status == "True"
    with pytest.raises(ApiException) as err:
        bind(core, "p", "node-b")
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert 'pod p is already assigned to node "node-a"' in status["message"]
    assert core.read_namespaced_pod("p", "default").spec.node_name == "node-a"


def test_binding_missing_pod_is_404(core):
    with pytest.raises(ApiException) as err:
        bind(core, "ghost", "node-a")
    assert err.value.status == 404


def test_binding_uid_mismatch_is_409(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p"))
    with pytest.raises(ApiException) as err:
        bind(core, "p", "node-a", uid="00000000-0000-0000-0000-000000000000")
    assert err.value.status == 409
    assert core.read_namespaced_pod("p", "default").spec.node_name is None


def test_binding_with_matching_uid_and_legacy_bindings_endpoint(core, new_pod):
    pod = core.create_namespaced_pod("default", new_pod("p"))
    assert bind(core, "p", "node-a", uid=pod.metadata.uid) == 201
    core.create_namespaced_pod("default", new_pod("q"))
    resp = core.create_namespaced_binding("default", binding("q", "node-b"), _preload_content=False)
    assert resp.status == 201
    assert core.read_namespaced_pod("q", "default").spec.node_name == "node-b"


def test_binding_emits_modified(core, new_pod):
    pod = core.create_namespaced_pod("default", new_pod("p"))
    bind(core, "p", "node-a")
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_pod, "default", resource_version=pod.metadata.resource_version, timeout_seconds=5
    )
    event = next(stream)
    w.stop()
    stream.close()
    assert (event["type"], event["object"].spec.node_name) == ("MODIFIED", "node-a")


def test_binding_metadata_is_merged_into_the_pod_under_its_preconditions(core, new_pod):
    """What the extender's one-write bind relies on: a Binding's annotations and labels land on the pod
    with spec.nodeName (labels: Kubernetes >= 1.35), and its resourceVersion is a precondition."""
    body = new_pod("p", labels={"app": "x"}, annotations={"keep": "1"})
    created = core.create_namespaced_pod("default", body)
    stale = client.V1Binding(
        metadata=client.V1ObjectMeta(name="p", uid=created.metadata.uid, resource_version="1"),
        target=client.V1ObjectReference(kind="Node", name="node-a"),
    )
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod_binding("p", "default", stale, _preload_content=False)
    assert err.value.status == 409
    assert core.read_namespaced_pod("p", "default").spec.node_name is None
    current = client.V1Binding(
        metadata=client.V1ObjectMeta(
            name="p",
            uid=created.metadata.uid,
            resource_version=created.metadata.resource_version,
            annotations={"hami.io/vgpu-node": "node-a", "keep": "2"},
            labels={"hami.io/vgpu-node": "node-a"},
        ),
        target=client.V1ObjectReference(kind="Node", name="node-a"),
    )
    resp = core.create_namespaced_pod_binding("p", "default", current, _preload_content=False)
    assert resp.status == 201
    pod = core.read_namespaced_pod("p", "default")
    assert pod.spec.node_name == "node-a"
    assert pod.metadata.annotations == {"hami.io/vgpu-node": "node-a", "keep": "2"}
    assert pod.metadata.labels == {"app": "x", "hami.io/vgpu-node": "node-a"}
