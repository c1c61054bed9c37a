"""CRUD conformance of kube-local through the official kubernetes client."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client import ApiException


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_system_namespaces_exist(core):
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system"} <= names
    default = core.read_namespace("default")
    assert default.status.phase == "Active"
    assert default.metadata.labels["kubernetes.io/metadata.name"] == "default"


def test_create_sets_system_fields(core, new_pod):
    before = int(core.list_namespaced_pod("default").metadata.resource_version)
    pod = core.create_namespaced_pod("default", new_pod("p1"))
    assert pod.metadata.uid
    assert pod.metadata.creation_timestamp is not None
    assert int(pod.metadata.resource_version) == before + 1
    assert pod.metadata.generation == 1
    assert pod.metadata.namespace == "default"
    assert pod.status.phase == "Pending"
    assert pod.spec.scheduler_name == "default-scheduler"
    assert pod.kind == "Pod" and pod.api_version == "v1"
    got = core.read_namespaced_pod("p1", "default")
    assert got.metadata.uid == pod.metadata.uid
    assert got.metadata.resource_version == pod.metadata.resource_version


def test_generate_name(core):
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="worker-"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    first = core.create_namespaced_pod("default", body)
    second = core.create_namespaced_pod("default", body)
    assert first.metadata.name.startswith("worker-") and len(first.metadata.name) == len("worker-") + 5
    assert first.metadata.name != second.metadata.name


def test_create_twice_is_already_exists(core, new_pod):
    core.create_namespaced_pod("default", new_pod("dup"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("dup"))
    assert err.value.status == 409
    body = status_of(err.value)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "pods"}


# kube-local only: kube-local sets kind/apiVersion on list items; the real apiserver leaves them out
# (docs/kubelocal-differences.md).
@pytest.mark.kube_local_only
def test_list_items_carry_kind_and_list_rv(core, new_pod, raw):
    core.create_namespaced_pod("default", new_pod("a"))
    core.create_namespaced_pod("default", new_pod("b"))
    status, body = raw("GET", "/api/v1/namespaces/default/pods")
    assert status == 200
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    assert all(i["kind"] == "Pod" and i["apiVersion"] == "v1" for i in body["items"])
    assert int(body["metadata"]["resourceVersion"]) >= int(body["items"][1]["metadata"]["resourceVersion"])
    # limit/continue are accepted and ignored: everything comes back, no continue token.
    listed = core.list_namespaced_pod("default", limit=1)
    assert len(listed.items) == 2 and not listed.metadata._continue


def test_list_across_namespaces(core, new_pod):
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    core.create_namespaced_pod("team-a", new_pod("x"))
    core.create_namespaced_pod("default", new_pod("y"))
    items = core.list_pod_for_all_namespaces().items
    assert {(p.metadata.namespace, p.metadata.name) for p in items} == {("team-a", "x"), ("default", "y")}
    assert [p.metadata.name for p in core.list_namespaced_pod("team-a").items] == ["x"]


def test_update_with_stale_resource_version_conflicts(core, new_pod):
    created = core.create_namespaced_pod("default", new_pod("u"))
    created.metadata.labels = {"step": "one"}
    updated = core.replace_namespaced_pod("u", "default", created)
    assert updated.metadata.labels == {"step": "one"}
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    created.metadata.labels = {"step": "stale"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_pod("u", "default", created)
    assert err.value.status == 409
    body = status_of(err.value)
    assert body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert core.read_namespaced_pod("u", "default").metadata.labels == {"step": "one"}


def test_update_without_resource_version_is_unconditional(core, new_pod):
    created = core.create_namespaced_pod("default", new_pod("uu"))
    core.patch_namespaced_pod("uu", "default", {"metadata": {"labels": {"moved": "on"}}})
    created.metadata.resource_version = None
    created.metadata.labels = {"replaced": "yes"}
    replaced = core.replace_namespaced_pod("uu", "default", created)
    assert replaced.metadata.labels == {"replaced": "yes"}


def test_update_keeps_system_fields_and_status(core, new_pod):
    created = core.create_namespaced_pod("default", new_pod("keep"))
    body = core.read_namespaced_pod("keep", "default")
    body.status.phase = "Running"  # ignored on the main resource, as in the apiserver
    body.metadata.annotations = {"a": "b"}
    updated = core.replace_namespaced_pod("keep", "default", body)
    assert updated.status.phase == "Pending"
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert updated.metadata.generation == 1  # spec unchanged
    updated.spec.active_deadline_seconds = 30
    assert core.replace_namespaced_pod("keep", "default", updated).metadata.generation == 2


def test_status_subresource_changes_only_status(core, new_pod):
    core.create_namespaced_pod("default", new_pod("st"))
    body = core.read_namespaced_pod_status("st", "default")
    body.status.phase = "Running"
    body.spec.containers[0].image = "ignored:latest"
    result = core.replace_namespaced_pod_status("st", "default", body)
    assert result.status.phase == "Running"
    assert result.spec.containers[0].image == "busybox:1.36"
    patched = core.patch_namespaced_pod_status("st", "default", {"status": {"phase": "Succeeded"}})
    assert patched.status.phase == "Succeeded"


def test_pod_update_may_not_change_node_name(core, new_pod):
    pod = core.create_namespaced_pod("default", new_pod("pinned"))
    pod.spec.node_name = "node-x"
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_pod("pinned", "default", pod)
    assert err.value.status == 422
    assert status_of(err.value)["reason"] == "Invalid"


def test_delete_returns_object_and_removes_it(core, new_pod):
    created = core.create_namespaced_pod("default", new_pod("gone"))
    deleted = core.delete_namespaced_pod("gone", "default")
    assert deleted.metadata.uid == created.metadata.uid
    assert int(deleted.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("gone", "default")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_pod("gone", "default")
    assert err.value.status == 404


# kube-local only: the real apiserver words a failed UID precondition as a Conflict message without
# 'Precondition failed'.
@pytest.mark.kube_local_only
def test_delete_precondition_uid(core, new_pod):
    core.create_namespaced_pod("default", new_pod("pre"))
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_pod("pre", "default", body=options)
    assert err.value.status == 409
    assert "Precondition failed" in status_of(err.value)["message"]
    assert core.read_namespaced_pod("pre", "default").metadata.name == "pre"


def test_finalizers_defer_deletion(core, new_pod):
    pod = new_pod("fin")
    pod.metadata.finalizers = ["example.com/hold"]
    core.create_namespaced_pod("default", pod)
    marked = core.delete_namespaced_pod("fin", "default")
    assert marked.metadata.deletion_timestamp is not None
    still = core.read_namespaced_pod("fin", "default")
    assert still.metadata.finalizers == ["example.com/hold"]
    core.patch_namespaced_pod(
        "fin", "default", {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("fin", "default")
    assert err.value.status == 404


def test_delete_collection_with_selector(core, new_pod):
    core.create_namespaced_pod("default", new_pod("d1", labels={"batch": "x"}))
    core.create_namespaced_pod("default", new_pod("d2", labels={"batch": "x"}))
    core.create_namespaced_pod("default", new_pod("d3", labels={"batch": "y"}))
    core.delete_collection_namespaced_pod("default", label_selector="batch=x")
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["d3"]


def test_missing_namespace_is_404(core, new_pod):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("nowhere", new_pod("p"))
    assert err.value.status == 404
    body = status_of(err.value)
    assert body["reason"] == "NotFound"
    assert body["details"] == {"name": "nowhere", "kind": "namespaces"}
    assert body["message"] == 'namespaces "nowhere" not found'


# kube-local only: the real namespace controller empties a deleted namespace asynchronously.
@pytest.mark.kube_local_only
def test_namespace_delete_cascades_and_system_namespaces_are_protected(core, new_pod):
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="tmp")))
    core.create_namespaced_pod("tmp", new_pod("p"))
    core.delete_namespace("tmp")
    assert core.list_namespaced_pod("tmp").items == []
    with pytest.raises(ApiException) as err:
        core.read_namespace("tmp")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        core.delete_namespace("default")
    assert err.value.status == 403


def test_namespace_mismatch_and_invalid_name(core, new_pod):
    body = new_pod("mismatch")
    body.metadata.namespace = "kube-system"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", body)
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", new_pod("Not_Valid"))
    assert err.value.status == 422
    assert status_of(err.value)["reason"] == "Invalid"


def test_dry_run_does_not_persist(core, new_pod):
    rv = core.list_namespaced_pod("default").metadata.resource_version
    created = core.create_namespaced_pod("default", new_pod("dry"), dry_run="All")
    assert created.metadata.name == "dry"
    assert core.list_namespaced_pod("default").items == []
    assert core.list_namespaced_pod("default").metadata.resource_version == rv


# kube-local only: the real controller-manager's TTL controller adds its own node annotation.
@pytest.mark.kube_local_only
def test_nodes_and_node_status(core):
    node = client.V1Node(
        metadata=client.V1ObjectMeta(name="gpu-node-1", labels={"gpu": "on"}),
        status=client.V1NodeStatus(capacity={"nvidia.com/gpu": "4"}),
    )
    created = core.create_node(node)
    assert created.status.capacity == {"nvidia.com/gpu": "4"}  # nodes keep status on create
    patched = core.patch_node_status("gpu-node-1", {"status": {"allocatable": {"nvidia.com/gpu": "4"}}})
    assert patched.status.allocatable == {"nvidia.com/gpu": "4"}
    annotated = core.patch_node("gpu-node-1", {"metadata": {"annotations": {"hami.io/node-lock": "x"}}})
    assert annotated.metadata.annotations == {"hami.io/node-lock": "x"}
    assert [n.metadata.name for n in core.list_node(label_selector="gpu=on").items] == ["gpu-node-1"]
    result = core.delete_node("gpu-node-1")
    assert result["kind"] == "Status" and result["status"] == "Success"
    assert core.list_node().items == []


# kube-local only: the real control plane keeps its own leases (apiserver identity, leader election).
@pytest.mark.kube_local_only
def test_leases_crud(coordination):
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="scheduler-lock"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = coordination.create_namespaced_lease("kube-system", lease)
    assert created.spec.holder_identity == "a"
    created.spec.holder_identity = "b"
    renewed = coordination.replace_namespaced_lease("scheduler-lock", "kube-system", created)
    assert renewed.spec.holder_identity == "b"
    created.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:  # a contender with the stale copy loses
        coordination.replace_namespaced_lease("scheduler-lock", "kube-system", created)
    assert err.value.status == 409
    items = coordination.list_namespaced_lease("kube-system").items
    assert [(i.metadata.name, i.spec.holder_identity) for i in items] == [("scheduler-lock", "b")]
    coordination.delete_namespaced_lease("scheduler-lock", "kube-system")
    with pytest.raises(ApiException) as err:
        coordination.read_namespaced_lease("scheduler-lock", "kube-system")
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'leases.coordination.k8s.io "scheduler-lock" not found'


def test_events_create_and_list(core):
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="p1.17a"),
        involved_object=client.V1ObjectReference(kind="Pod", name="p1", namespace="default"),
        reason="FilteringFailed",
        message="no node fits",
        type="Warning",
    )
    core.create_namespaced_event("default", event)
    other = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="p2.17b"),
        involved_object=client.V1ObjectReference(kind="Pod", name="p2", namespace="default"),
        reason="Scheduled",
        type="Normal",
    )
    core.create_namespaced_event("default", other)
    found = core.list_namespaced_event("default", field_selector="involvedObject.name=p1")
    assert [(e.metadata.name, e.reason) for e in found.items] == [("p1.17a", "FilteringFailed")]
    assert len(core.list_namespaced_event("default").items) == 2


# kube-local only: the real resource-quota controller rewrites status.used, racing the test's status update.
@pytest.mark.kube_local_only
def test_resource_quotas(core):
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpu-quota"),
        spec=client.V1ResourceQuotaSpec(hard={"limits.nvidia.com/gpu": "2"}),
    )
    core.create_namespaced_resource_quota("default", quota)
    got = core.read_namespaced_resource_quota("gpu-quota", "default")
    assert got.spec.hard == {"limits.nvidia.com/gpu": "2"}
    got.status = client.V1ResourceQuotaStatus(used={"limits.nvidia.com/gpu": "1"})
    with_status = core.replace_namespaced_resource_quota_status("gpu-quota", "default", got)
    assert with_status.status.used == {"limits.nvidia.com/gpu": "1"}
    deleted = core.delete_namespaced_resource_quota("gpu-quota", "default")
    assert deleted.metadata.name == "gpu-quota"
