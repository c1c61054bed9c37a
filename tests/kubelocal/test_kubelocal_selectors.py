"""Label and field selectors: pure parse/match tables, then list/watch filtering through the client."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiException

from services.common.selectors import SelectorError, parse_field_selector, parse_label_selector

LABELS = {"app": "web", "tier": "frontend", "gpu": "4", "empty": ""}

LABEL_CASES = [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=db", False),
    ("app!=db", True),
    ("app!=web", False),
    ("missing!=x", True),  # != matches objects without the key
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("app in (web, db)", True),
    ("app in (db)", False),
    ("missing in (web)", False),
    ("app notin (db,cache)", True),
    ("app notin (web)", False),
    ("missing notin (web)", True),
    ("app=web,tier=frontend", True),
    ("app=web,tier=backend", False),
    ("app=web, tier in (frontend, backend), !missing", True),
    ("gpu>2", True),
    ("gpu<2", False),
    ("app>2", False),  # non-numeric value never matches > / <
    ("empty=", True),
    ("empty=x", False),
    ("example.com/team=a", False),
]


@pytest.mark.parametrize(("selector", "matches"), LABEL_CASES)
def test_label_selector_matching(selector, matches):
    assert parse_label_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    "selector",
    ["app=", "app in (a,b)", "!x", "x", "k!=v", "a.b/c-d_e=f"],
)
def test_label_selector_round_trips(selector):
    parsed = parse_label_selector(selector)
    assert parse_label_selector(str(parsed)) == parsed


@pytest.mark.parametrize(
    "selector",
    [
        "app=web,",
        "app in web",
        "app in ()",
        "app in (a b)",
        "=web",
        "app=we b",
        "bad key=x",
        "-bad=x",
        "app=-bad-",
        "gpu>x",
        "app ~ web",
        "UPPER.example.com/x=y",
        "a" * 64 + "=x",
    ],
)
def test_label_selector_rejects(selector):
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


FIELDS = {
    "metadata.name": "p1",
    "spec.nodeName": "",
    "status.phase": "Running",
    "metadata.namespace": "a=b,c",
}

FIELD_CASES = [
    ("", True),
    ("metadata.name=p1", True),
    ("metadata.name==p1", True),
    ("metadata.name!=p1", False),
    ("spec.nodeName=", True),  # unscheduled pods
    ("spec.nodeName!=", False),
    ("status.phase=Running,metadata.name=p1", True),
    ("status.phase=Running,metadata.name=p2", False),
    (r"metadata.namespace=a\=b\,c", True),
]


@pytest.mark.parametrize(("selector", "matches"), FIELD_CASES)
def test_field_selector_matching(selector, matches):
    assert parse_field_selector(selector).matches(lambda f: FIELDS.get(f, "")) is matches


def test_field_selector_fields_and_errors():
    assert parse_field_selector("spec.nodeName=a,status.phase!=b").fields == {"spec.nodeName", "status.phase"}
    for bad in ["metadata.name", "=x", r"metadata.name=a\x", "metadata.name=a=b"]:
        with pytest.raises(SelectorError):
            parse_field_selector(bad)


# --- through the client --------------------------------------------------------------------------


@pytest.fixture
def pods(core, new_pod):
    core.create_namespaced_pod(
        "default", new_pod("web-1", labels={"app": "web", "tier": "fe"}, node="node-a")
    )
    core.create_namespaced_pod("default", new_pod("web-2", labels={"app": "web", "tier": "be"}))
    core.create_namespaced_pod("default", new_pod("db-1", labels={"app": "db"}, node="node-b"))
    core.patch_namespaced_pod_status("web-1", "default", {"status": {"phase": "Running"}})
    return core


def names(pod_list) -> list[str]:
    return sorted(p.metadata.name for p in pod_list.items)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["web-1", "web-2"]),
        ("app!=web", ["db-1"]),
        ("tier", ["web-1", "web-2"]),
        ("!tier", ["db-1"]),
        ("tier in (fe,xx)", ["web-1"]),
        ("tier notin (fe)", ["db-1", "web-2"]),
        ("app=web,tier=be", ["web-2"]),
    ],
)
def test_list_with_label_selector(pods, selector, expected):
    assert names(pods.list_namespaced_pod("default", label_selector=selector)) == expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("spec.nodeName=node-a", ["web-1"]),
        ("spec.nodeName=", ["web-2"]),
        ("spec.nodeName!=", ["db-1", "web-1"]),
        ("status.phase=Running", ["web-1"]),
        ("status.phase=Pending", ["db-1", "web-2"]),
        ("metadata.name=db-1", ["db-1"]),
        ("metadata.name!=db-1,status.phase==Pending", ["web-2"]),
        ("metadata.namespace=default", ["db-1", "web-1", "web-2"]),
    ],
)
def test_list_with_field_selector(pods, selector, expected):
    assert names(pods.list_pod_for_all_namespaces(field_selector=selector)) == expected


def test_label_and_field_selectors_combine(pods):
    got = pods.list_namespaced_pod("default", label_selector="app=web", field_selector="spec.nodeName=")
    assert names(got) == ["web-2"]


def test_unsupported_field_is_400_naming_it(core):
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("default", field_selector="spec.priority=5")
    assert err.value.status == 400
    body = json.loads(err.value.body)
    assert body["reason"] == "BadRequest"
    assert body["message"] == "field label not supported: spec.priority"
    with pytest.raises(ApiException) as err:  # pod-only fields are not node fields
        core.list_node(field_selector="spec.nodeName=x")
    assert err.value.status == 400


def test_malformed_label_selector_is_400(core):
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("default", label_selector="app in (web")
    assert err.value.status == 400


def test_node_field_selector(core):
    from kubernetes import client

    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name="cordoned"), spec=client.V1NodeSpec(unschedulable=True)
        )
    )
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="open")))
    assert names(core.list_node(field_selector="spec.unschedulable=false")) == ["open"]
    assert names(core.list_node(field_selector="spec.unschedulable=true")) == ["cordoned"]
