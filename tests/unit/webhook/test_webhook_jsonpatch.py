"""The JSON patch diff: exact operations for the shapes the webhook produces, and a property check that
the patch, applied by an independent RFC 6902 implementation (kube-local's), turns the original into the
target."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.webhook.jsonpatch import diff, escape_token, json_equal, pointer
from sim.kubelocal.patch import json_patch


@pytest.mark.parametrize(
    ("token", "escaped"),
    [("nvidia.com/gpu", "nvidia.com~1gpu"), ("a~b", "a~0b"), ("~/", "~0~1"), ("plain", "plain"), ("", "")],
)
def test_escape_token(token: str, escaped: str) -> None:
    assert escape_token(token) == escaped


def test_pointer() -> None:
    assert pointer(["spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"]) == (
        "/spec/containers/0/resources/limits/nvidia.com~1gpu"
    )
    assert pointer([]) == ""


@pytest.mark.parametrize(
    ("a", "b", "ops"),
    [
        pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
        pytest.param({"a": 1}, {"a": 2}, [{"op": "replace", "path": "/a", "value": 2}], id="replace"),
        pytest.param({}, {"a/b": 1}, [{"op": "add", "path": "/a~1b", "value": 1}], id="add-escaped"),
        pytest.param({"a": 1, "b": 2}, {"b": 2}, [{"op": "remove", "path": "/a"}], id="remove"),
        pytest.param(
            {"a": 1}, {"a": 1.0}, [{"op": "replace", "path": "/a", "value": 1.0}], id="int-vs-float"
        ),
        pytest.param(
            {"a": 1}, {"a": True}, [{"op": "replace", "path": "/a", "value": True}], id="int-vs-bool"
        ),
        pytest.param(
            {"a": None}, {"a": {}}, [{"op": "replace", "path": "/a", "value": {}}], id="null-to-object"
        ),
        pytest.param(
            {"env": [{"n": 1}]},
            {"env": [{"n": 1}, {"n": 2}, {"n": 3}]},
            [
                {"op": "add", "path": "/env/1", "value": {"n": 2}},
                {"op": "add", "path": "/env/2", "value": {"n": 3}},
            ],
            id="append",
        ),
        pytest.param(
            {"env": [{"n": 1}, {"n": 2}]},
            {"env": [{"n": 1}, {"n": 9}]},
            [{"op": "replace", "path": "/env/1/n", "value": 9}],
            id="change-in-place",
        ),
        pytest.param(
            {"env": [{"n": 1}, {"n": 2}]},
            {"env": [{"n": 2}]},
            [{"op": "replace", "path": "/env", "value": [{"n": 2}]}],
            id="shrink-replaces",
        ),
        pytest.param(
            {"env": [{"n": 1}]},
            {"env": [{"n": 0}, {"n": 1}]},
            [{"op": "replace", "path": "/env", "value": [{"n": 0}, {"n": 1}]}],
            id="prepend-replaces",
        ),
        pytest.param([1], {"a": 1}, [{"op": "replace", "path": "", "value": {"a": 1}}], id="root"),
    ],
)
def test_diff_operations(a: Any, b: Any, ops: list[dict[str, Any]]) -> None:
    assert diff(a, b) == ops
    assert json_equal(json_patch(copy.deepcopy(a), ops), b)


def test_json_equal_is_type_strict() -> None:
    assert json_equal({"a": [1, "x", None]}, {"a": [1, "x", None]})
    assert not json_equal(1, 1.0)
    assert not json_equal(0, False)
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal([1], [1, 2])


json_scalars = (
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from([0.5, 1.0]) | st.text(max_size=3)
)
json_keys = st.sampled_from(["a", "b", "a/b", "~", "nvidia.com/gpu", "", "0"])
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(a=json_values, b=json_values)
def test_patch_turns_any_document_into_any_other(a: Any, b: Any) -> None:
    ops = diff(a, b)
    assert json_equal(json_patch(copy.deepcopy(a), ops), b)
    assert (ops == []) == json_equal(a, b)


@settings(max_examples=200, deadline=None)
@given(a=st.dictionaries(json_keys, json_values, max_size=4), data=st.data())
def test_patch_of_small_edits(a: dict[str, Any], data: st.DataObject) -> None:
    b = copy.deepcopy(a)
    key = data.draw(json_keys)
    b[key] = data.draw(json_values)
    if isinstance(b.get("a"), list):
        b["a"].append(data.draw(json_scalars))
    assert json_equal(json_patch(copy.deepcopy(a), diff(a, b)), b)
