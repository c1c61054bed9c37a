"""Extender JSON (docs/hami-wire.md#extender-routes): any key casing in, Go field names out, HAMi's error
texts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.scheduler.extender_api import (
    MISSING_POD,
    BindArgs,
    ExtenderRequestError,
    bind_result,
    decode_bind_args,
    decode_extender_args,
    filter_result,
    priority_list,
)

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {"containers": []}}
NODE_A = {"metadata": {"name": "a"}}
NODE_B = {"metadata": {"name": "b"}}


@pytest.mark.parametrize(
    ("body", "names", "nodes"),
    [
        ({"Pod": POD, "NodeNames": ["a", "b"]}, ["a", "b"], None),
        ({"pod": POD, "nodenames": ["a"]}, ["a"], None),
        ({"POD": POD, "NODENAMES": ["a"], "Nodes": None}, ["a"], None),
        ({"pOd": POD, "nodeNames": ["x"], "NodeNames": ["a", "b"]}, ["a", "b"], None),  # last spelling wins
        ({"Pod": POD, "Nodes": {"items": [NODE_A, NODE_B]}, "NodeNames": None}, ["a", "b"], ["a", "b"]),
        ({"Pod": POD, "nodes": {"items": None}}, [], []),
        ({"Pod": POD}, [], None),
        ({"Pod": POD, "NodeNames": None, "Unknown": 1}, [], None),
    ],
)
def test_extender_args_accept_any_key_casing(
    body: dict[str, Any], names: list[str], nodes: list[str] | None
) -> None:
    args = decode_extender_args(json.dumps(body))
    assert args.pod == POD
    assert args.candidate_names == names
    assert (None if args.nodes is None else [n["metadata"]["name"] for n in args.nodes]) == nodes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"NodeNames":["a"]}', MISSING_POD),
        (b'{"Pod":null,"NodeNames":["a"]}', MISSING_POD),
        (b"{}", MISSING_POD),
        (b"not json", "cannot decode extender args"),
        (b"", "cannot decode extender args"),
        (b"[1,2]", "want a JSON object"),
        (b'{"Pod":"p"}', "Pod must be an object"),
        (b'{"Pod":{},"NodeNames":"a"}', "NodeNames must be a list of strings"),
        (b'{"Pod":{},"NodeNames":[1]}', "NodeNames must be a list of strings"),
        (b'{"Pod":{},"Nodes":[]}', "Nodes must be a NodeList object"),
        (b'{"Pod":{},"Nodes":{"items":[1]}}', "Nodes.items must hold Node objects"),
        (b"\xff\xfe", "cannot decode extender args"),
    ],
)
def test_extender_args_errors(body: bytes, message: str) -> None:
    with pytest.raises(ExtenderRequestError) as err:
        decode_extender_args(body)
    assert message in str(err.value)


def test_missing_pod_is_hamis_exact_text() -> None:
    with pytest.raises(ExtenderRequestError) as err:
        decode_extender_args('{"NodeNames":["a"]}')
    assert str(err.value) == "extender args missing pod"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "n"},
            BindArgs("p", "ns", "u", "n"),
        ),
        ({"podname": "p", "podnamespace": "ns", "poduid": "u", "node": "n"}, BindArgs("p", "ns", "u", "n")),
        ({"PODNAME": "p", "NODE": "n"}, BindArgs("p", "default", "", "n")),
        ({"PodName": "p", "Node": "n", "PodUID": None}, BindArgs("p", "default", "", "n")),
    ],
)
def test_bind_args_accept_any_key_casing(body: dict[str, Any], expected: BindArgs) -> None:
    assert decode_bind_args(json.dumps(body)) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"Node":"n"}', "missing PodName"),
        (b'{"PodName":"p"}', "missing Node"),
        (b'{"PodName":"p","Node":3}', "Node must be a string"),
        (b"{", "cannot decode extender binding args"),
        (b"null", "want a JSON object"),
    ],
)
def test_bind_args_errors(body: bytes, message: str) -> None:
    with pytest.raises(ExtenderRequestError) as err:
        decode_bind_args(body)
    assert message in str(err.value)


def test_filter_result_has_all_five_go_keys() -> None:
    assert filter_result(node_names=["a"]) == {
        "Nodes": None,
        "NodeNames": ["a"],
        "FailedNodes": None,
        "FailedAndUnresolvableNodes": None,
        "Error": "",
    }
    assert filter_result(error="boom") == {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": None,
        "FailedAndUnresolvableNodes": None,
        "Error": "boom",
    }
    full = filter_result(nodes=[NODE_A], failed={"b": "node unregistered"})
    assert full["Nodes"] == {"metadata": {}, "items": [NODE_A]}
    assert full["NodeNames"] is None
    assert full["FailedNodes"] == {"b": "node unregistered"}


def test_priority_list_and_bind_result_shapes() -> None:
    assert priority_list({"a": 10, "b": 3}, ["b", "a", "c"]) == [
        {"Host": "b", "Score": 3},
        {"Host": "a", "Score": 10},
        {"Host": "c", "Score": 0},
    ]
    assert bind_result() == {"Error": ""}
    assert bind_result("no") == {"Error": "no"}


def test_nesting_deeper_than_the_decoder_allows_is_a_request_error() -> None:
    """Issue 17: such a body used to escape as RecursionError and answer 500."""
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ExtenderRequestError, match="cannot decode"):
        decode_extender_args(deep)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"PodName": "..", "Node": "n1"}, "PodName '..' is not a valid name"),
        ({"PodName": "p/../x", "Node": "n1"}, "PodName 'p/../x'"),
        ({"PodName": "P", "Node": "n1"}, "PodName 'P'"),
        ({"PodName": "p", "PodNamespace": "a.b", "Node": "n1"}, "PodNamespace 'a.b'"),
        ({"PodName": "p", "Node": "../nodes"}, "Node '../nodes'"),
        ({"PodName": "x" * 254, "Node": "n1"}, "no more than 253 characters"),
    ],
)
def test_bind_args_with_names_that_could_reach_another_path_are_refused(
    fields: dict[str, str], fragment: str
) -> None:
    """Issue 17: a bind for pod `..` used to read the Namespace object."""
    with pytest.raises(ExtenderRequestError, match=re.escape(fragment)):
        decode_bind_args(json.dumps(fields))


def test_valid_dotted_names_bind() -> None:
    args = decode_bind_args(
        json.dumps({"PodName": "web-0.v2", "PodNamespace": "team-a", "Node": "gpu-1.zone"})
    )
    assert (args.pod_name, args.pod_namespace, args.node) == ("web-0.v2", "team-a", "gpu-1.zone")
