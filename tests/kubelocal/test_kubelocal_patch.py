"""Patch semantics: pure tables for patch.py, then each patch type through the official client."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client import ApiException

from sim.kubelocal.patch import (
    InvalidPatch,
    PatchConflict,
    PatchTestFailed,
    json_patch,
    merge_patch,
    parse_pointer,
    strategic_merge_patch,
)

# --- RFC 7386 merge patch (the RFC's own appendix examples) --------------------------------------

MERGE_CASES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), MERGE_CASES)
def test_merge_patch_rfc7386_examples(target, patch, expected):
    original = copy.deepcopy(target)
    assert merge_patch(target, patch) == expected
    assert target == original  # inputs untouched


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(json_objects, json_objects)
def test_merge_patch_is_idempotent(target, patch):
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


# --- strategic merge patch -----------------------------------------------------------------------

POD = {
    "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
    "spec": {
        "containers": [
            {"name": "main", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "envoy"},
        ],
        "tolerations": [{"key": "k1"}],
    },
    "status": {
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]
    },
}

SMP_CASES = [
    (
        "labels merge and null deletes",
        {"metadata": {"labels": {"a": None, "c": "3"}}},
        lambda r: r["metadata"]["labels"] == {"b": "2", "c": "3"},
    ),
    (
        "containers merge by name",
        {"spec": {"containers": [{"name": "side", "image": "envoy:2"}]}},
        lambda r: (
            [(c["name"], c["image"]) for c in r["spec"]["containers"]]
            == [("main", "busybox"), ("side", "envoy:2")]
        ),
    ),
    (
        "new container appended",
        {"spec": {"containers": [{"name": "extra", "image": "x"}]}},
        lambda r: [c["name"] for c in r["spec"]["containers"]] == ["main", "side", "extra"],
    ),
    (
        "nested env merged by name",
        {"spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "2"}]}]}},
        lambda r: [e["name"] for e in r["spec"]["containers"][0]["env"]] == ["A", "B"],
    ),
    (
        "$patch delete removes a list element",
        {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}},
        lambda r: [c["name"] for c in r["spec"]["containers"]] == ["main"],
    ),
    (
        "conditions merge by type",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        lambda r: (
            r["status"]["conditions"]
            == [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]
        ),
    ),
    (
        "lists without a merge key are replaced",
        {"spec": {"tolerations": [{"key": "k2"}]}},
        lambda r: r["spec"]["tolerations"] == [{"key": "k2"}],
    ),
    (
        "finalizers merge as a set",
        {"metadata": {"finalizers": ["y", "x"]}},
        lambda r: r["metadata"]["finalizers"] == ["x", "y"],
    ),
    (
        "$deleteFromPrimitiveList",
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}},
        lambda r: r["metadata"]["finalizers"] == [],
    ),
    (
        "$patch replace on a map",
        {"metadata": {"labels": {"$patch": "replace", "only": "me"}}},
        lambda r: r["metadata"]["labels"] == {"only": "me"},
    ),
    (
        "$setElementOrder is accepted and ignored",
        {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "main"}]}},
        lambda r: [c["name"] for c in r["spec"]["containers"]] == ["main", "side"],
    ),
    (
        "$retainKeys drops unlisted keys",
        {"spec": {"$retainKeys": ["containers"], "containers": []}},
        lambda r: set(r["spec"]) == {"containers"} and len(r["spec"]["containers"]) == 2,
    ),
]


@pytest.mark.parametrize(("patch", "check"), [c[1:] for c in SMP_CASES], ids=[c[0] for c in SMP_CASES])
def test_strategic_merge_patch(patch, check):
    original = copy.deepcopy(POD)
    result = strategic_merge_patch(POD, patch)
    assert check(result), result
    assert original == POD


def test_strategic_merge_patch_errors():
    with pytest.raises(InvalidPatch):
        strategic_merge_patch(POD, [{"op": "add"}])
    with pytest.raises(InvalidPatch, match="merge key"):
        strategic_merge_patch(POD, {"spec": {"containers": [{"image": "no-name"}]}})


# --- RFC 6902 JSON patch -------------------------------------------------------------------------

DOC = {"foo": "bar", "baz": [1, 2, 3], "a/b": 1, "m~n": 2, "obj": {"x": {"y": 1}}}

JSON_PATCH_CASES = [
    ("add member", [{"op": "add", "path": "/new", "value": 1}], {**DOC, "new": 1}),
    ("add null value", [{"op": "add", "path": "/new", "value": None}], {**DOC, "new": None}),
    ("add into array", [{"op": "add", "path": "/baz/1", "value": 9}], {**DOC, "baz": [1, 9, 2, 3]}),
    ("append with -", [{"op": "add", "path": "/baz/-", "value": 4}], {**DOC, "baz": [1, 2, 3, 4]}),
    ("remove", [{"op": "remove", "path": "/foo"}], {k: v for k, v in DOC.items() if k != "foo"}),
    ("remove array element", [{"op": "remove", "path": "/baz/0"}], {**DOC, "baz": [2, 3]}),
    ("replace", [{"op": "replace", "path": "/foo", "value": "qux"}], {**DOC, "foo": "qux"}),
    ("escaped ~1", [{"op": "replace", "path": "/a~1b", "value": 5}], {**DOC, "a/b": 5}),
    ("escaped ~0", [{"op": "remove", "path": "/m~0n"}], {k: v for k, v in DOC.items() if k != "m~n"}),
    (
        "move",
        [{"op": "move", "from": "/obj/x", "path": "/moved"}],
        {**DOC, "obj": {}, "moved": {"y": 1}},
    ),
    ("copy", [{"op": "copy", "from": "/baz", "path": "/copy"}], {**DOC, "copy": [1, 2, 3]}),
    ("test passes", [{"op": "test", "path": "/baz", "value": [1, 2, 3]}], DOC),
    ("test int equals float", [{"op": "test", "path": "/a~1b", "value": 1.0}], DOC),
    ("replace whole document", [{"op": "replace", "path": "", "value": {"x": 1}}], {"x": 1}),
]


@pytest.mark.parametrize(
    ("ops", "expected"), [c[1:] for c in JSON_PATCH_CASES], ids=[c[0] for c in JSON_PATCH_CASES]
)
def test_json_patch(ops, expected):
    original = copy.deepcopy(DOC)
    assert json_patch(DOC, ops) == expected
    assert original == DOC


JSON_PATCH_FAILURES = [
    ("test fails", [{"op": "test", "path": "/foo", "value": "nope"}], PatchTestFailed),
    ("test bool is not int", [{"op": "test", "path": "/a~1b", "value": True}], PatchTestFailed),
    ("remove missing", [{"op": "remove", "path": "/missing"}], PatchConflict),
    ("replace missing", [{"op": "replace", "path": "/missing", "value": 1}], PatchConflict),
    ("add under missing parent", [{"op": "add", "path": "/no/such", "value": 1}], PatchConflict),
    ("index out of range", [{"op": "add", "path": "/baz/7", "value": 1}], PatchConflict),
    ("leading zero index", [{"op": "remove", "path": "/baz/01"}], PatchConflict),
    ("move into own child", [{"op": "move", "from": "/obj", "path": "/obj/x/z"}], PatchConflict),
    ("unknown op", [{"op": "frobnicate", "path": "/foo"}], InvalidPatch),
    ("missing value", [{"op": "add", "path": "/foo"}], InvalidPatch),
    ("missing from", [{"op": "copy", "path": "/foo"}], InvalidPatch),
    ("not a list", {"op": "add", "path": "/x", "value": 1}, InvalidPatch),
    ("bad pointer", [{"op": "add", "path": "foo", "value": 1}], InvalidPatch),
    ("bad escape", [{"op": "add", "path": "/a~2", "value": 1}], InvalidPatch),
]


@pytest.mark.parametrize(
    ("ops", "error"), [c[1:] for c in JSON_PATCH_FAILURES], ids=[c[0] for c in JSON_PATCH_FAILURES]
)
def test_json_patch_failures(ops, error):
    with pytest.raises(error):
        json_patch(DOC, ops)


def test_json_patch_is_atomic():
    ops = [{"op": "add", "path": "/new", "value": 1}, {"op": "test", "path": "/foo", "value": "x"}]
    with pytest.raises(PatchTestFailed):
        json_patch(DOC, ops)
    assert "new" not in DOC


def test_parse_pointer():
    assert parse_pointer("") == []
    assert parse_pointer("/") == [""]
    assert parse_pointer("/a~1b/m~0n/~01") == ["a/b", "m~n", "~1"]


# --- through the client --------------------------------------------------------------------------


def test_strategic_merge_is_the_client_default(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p", labels={"keep": "me"}))
    patched = core.patch_namespaced_pod(
        "p",
        "default",
        {"metadata": {"labels": {"added": "yes"}}, "spec": {"containers": [{"name": "main", "image": "v2"}]}},
    )
    assert patched.metadata.labels == {"keep": "me", "added": "yes"}
    assert [(c.name, c.image) for c in patched.spec.containers] == [("main", "v2")]


def test_merge_patch_null_deletes_annotation(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p", annotations={"a": "1", "b": "2"}))
    patched = core.patch_namespaced_pod(
        "p",
        "default",
        {"metadata": {"annotations": {"a": None}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.metadata.annotations == {"b": "2"}
    smp = core.patch_namespaced_pod("p", "default", {"metadata": {"annotations": {"b": None}}})
    assert not smp.metadata.annotations


def test_json_patch_via_list_body(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p", annotations={"hami.io/x": "1"}))
    patched = core.patch_namespaced_pod(
        "p",
        "default",
        [
            {"op": "test", "path": "/metadata/annotations/hami.io~1x", "value": "1"},
            {"op": "replace", "path": "/metadata/annotations/hami.io~1x", "value": "2"},
            {"op": "add", "path": "/metadata/labels", "value": {"l": "v"}},
        ],
    )
    assert patched.metadata.annotations == {"hami.io/x": "2"}
    assert patched.metadata.labels == {"l": "v"}


# kube-local only: the real apiserver answers an unknown JSON-patch op with 422, kube-local with 400
# (docs/kubelocal-differences.md).
@pytest.mark.kube_local_only
def test_failed_json_patch_test_is_422(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p", annotations={"k": "v"}))
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod(
            "p", "default", [{"op": "test", "path": "/metadata/annotations/k", "value": "other"}]
        )
    assert err.value.status == 422
    assert json.loads(err.value.body)["reason"] == "Invalid"
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p", "default", [{"op": "explode", "path": "/x"}])
    assert err.value.status == 400


# kube-local only: the real controller-manager's TTL controller writes the node between the test's read and
# its patch.
@pytest.mark.kube_local_only
@pytest.mark.parametrize(
    "content_type",
    [None, "application/merge-patch+json"],
    ids=["strategic", "merge"],
)
def test_patch_resource_version_is_a_precondition(core, content_type):
    """HAMi's node lock: patch annotations conditioned on the resourceVersion it read."""
    node = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1")))
    read_rv = node.metadata.resource_version
    kwargs = {"_content_type": content_type} if content_type else {}
    locked = core.patch_node(
        "n1",
        {"metadata": {"resourceVersion": read_rv, "annotations": {"hami.io/mutex.lock": "t1"}}},
        **kwargs,
    )
    assert locked.metadata.annotations == {"hami.io/mutex.lock": "t1"}
    with pytest.raises(ApiException) as err:
        core.patch_node(
            "n1",
            {"metadata": {"resourceVersion": read_rv, "annotations": {"hami.io/mutex.lock": "t2"}}},
            **kwargs,
        )
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "Conflict"
    assert core.read_node("n1").metadata.annotations == {"hami.io/mutex.lock": "t1"}


def test_json_patch_resource_version_precondition(core, new_pod):
    pod = core.create_namespaced_pod("default", new_pod("p"))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"bump": "1"}}})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod(
            "p",
            "default",
            [
                {
                    "op": "replace",
                    "path": "/metadata/resourceVersion",
                    "value": pod.metadata.resource_version,
                },
                {"op": "add", "path": "/metadata/labels/late", "value": "x"},
            ],
        )
    assert err.value.status == 409


def test_patch_missing_object_is_404(core):
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("nope", "default", {"metadata": {"labels": {"a": "b"}}})
    assert err.value.status == 404


def test_patch_cannot_rename(core, new_pod):
    core.create_namespaced_pod("default", new_pod("p"))
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p", "default", {"metadata": {"name": "q"}})
    assert err.value.status == 400
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["p"]


def test_lease_patch_through_coordination_api(coordination):
    coordination.create_namespaced_lease(
        "default",
        client.V1Lease(metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(holder_identity="a")),
    )
    patched = coordination.patch_namespaced_lease("l", "default", {"spec": {"holderIdentity": "b"}})
    assert patched.spec.holder_identity == "b"
