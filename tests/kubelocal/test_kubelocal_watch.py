"""Watch semantics through ``kubernetes.watch.Watch().stream``: initial state, resume, 410, selectors."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from sim.kubelocal.resources import PODS
from sim.kubelocal.store import Store, WatchFilter


def collect(func, *args, count: int, timeout: int = 5, **kwargs) -> list[tuple[str, str]]:
    """The first ``count`` events as (type, name); stops early so tests stay fast."""
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    for event in w.stream(func, *args, timeout_seconds=timeout, **kwargs):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) >= count:
            w.stop()
            break
    return seen


def test_watch_from_zero_sends_current_state_then_live_events(core, new_pod):
    core.create_namespaced_pod("default", new_pod("a"))
    core.create_namespaced_pod("default", new_pod("b"))
    w = watch.Watch()
    seen: list[tuple[str, str]] = []

    def writer() -> None:
        time.sleep(0.2)
        core.create_namespaced_pod("default", new_pod("c"))

    thread = threading.Thread(target=writer)
    thread.start()
    for event in w.stream(core.list_namespaced_pod, "default", resource_version="0", timeout_seconds=5):
        assert isinstance(event["object"], client.V1Pod)
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            w.stop()
            break
    thread.join()
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


# kube-local only: the real apiserver deletes a pod gracefully (MODIFIED with deletionTimestamp first;
# docs/kubelocal-differences.md).
@pytest.mark.kube_local_only
def test_resume_replays_exactly_the_missed_events_in_order(core, new_pod):
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", new_pod("x"))
    core.patch_namespaced_pod("x", "default", {"metadata": {"labels": {"v": "2"}}})
    core.create_namespaced_pod("default", new_pod("y"))
    core.delete_namespaced_pod("x", "default")
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1")))  # another resource: not replayed
    w = watch.Watch()
    events = []
    for event in w.stream(core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=5):
        events.append(event)
        if len(events) == 4:
            w.stop()
            break
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "x"),
        ("MODIFIED", "x"),
        ("ADDED", "y"),
        ("DELETED", "x"),
    ]
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and rvs[0] == int(start) + 1
    assert events[1]["object"].metadata.labels == {"v": "2"}


def test_resume_from_latest_sees_nothing_old(core, new_pod):
    core.create_namespaced_pod("default", new_pod("old"))
    latest = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", new_pod("new"))
    assert collect(core.list_namespaced_pod, "default", resource_version=latest, count=1) == [
        ("ADDED", "new")
    ]


def test_too_old_resource_version_is_410(server_factory, client_for):
    server = server_factory(history_size=3)
    core = client.CoreV1Api(client_for(server.url))
    start = core.list_namespaced_pod("default").metadata.resource_version
    for i in range(5):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=f"ns-{i}")))
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(
            core.list_namespaced_pod, "default", resource_version=start, timeout_seconds=2
        ):
            pass
    assert err.value.status == 410
    assert "Expired" in err.value.reason and f"too old resource version: {start}" in err.value.reason


def test_expired_watch_stream_shape(server_factory):
    server = server_factory(history_size=1)
    for name in ("a", "b", "c"):
        body = json.dumps({"metadata": {"name": name}}).encode()
        req = urllib.request.Request(
            server.url + "/api/v1/namespaces",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).close()
    with urllib.request.urlopen(server.url + "/api/v1/pods?watch=1&resourceVersion=1", timeout=5) as resp:
        assert resp.status == 200
        lines = resp.read().decode().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    status = event["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"].startswith("too old resource version: 1 (")


def test_label_selector_watch_turns_unmatching_into_deleted(core, new_pod):
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", new_pod("g", labels={"gpu": "yes"}))
    core.create_namespaced_pod("default", new_pod("h", labels={"gpu": "no"}))
    core.patch_namespaced_pod("g", "default", {"metadata": {"labels": {"gpu": "no"}}})
    core.patch_namespaced_pod("h", "default", {"metadata": {"labels": {"gpu": "yes"}}})
    seen = collect(
        core.list_namespaced_pod, "default", resource_version=start, label_selector="gpu=yes", count=3
    )
    assert seen == [("ADDED", "g"), ("DELETED", "g"), ("ADDED", "h")]


def test_field_selector_watch_on_node_name(core, new_pod):
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", new_pod("on-a", node="node-a"))
    core.create_namespaced_pod("default", new_pod("on-b", node="node-b"))
    core.create_namespaced_pod("default", new_pod("on-a-2", node="node-a"))
    seen = collect(
        core.list_pod_for_all_namespaces,
        resource_version=start,
        field_selector="spec.nodeName=node-a",
        count=2,
    )
    assert seen == [("ADDED", "on-a"), ("ADDED", "on-a-2")]


def test_all_namespaces_watch_gets_live_events(core, new_pod):
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))

    def writer() -> None:
        time.sleep(0.2)
        core.create_namespaced_pod("other", new_pod("o"))
        core.create_namespaced_pod("default", new_pod("d"))

    thread = threading.Thread(target=writer)
    thread.start()
    seen = collect(core.list_pod_for_all_namespaces, count=2)
    thread.join()
    assert seen == [("ADDED", "o"), ("ADDED", "d")]


def test_timeout_seconds_ends_the_stream(core):
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3


def test_bookmarks_when_allowed(server_factory):
    server = server_factory(bookmark_interval=0.2)
    path = "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=5"
    started = time.monotonic()
    with urllib.request.urlopen(server.url + path, timeout=5) as resp:
        events = [json.loads(resp.readline()) for _ in range(2)]
    assert time.monotonic() - started < 2
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["kind"] == "Pod"
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) >= 2


def test_send_initial_events_ends_with_marked_bookmark(kube_local, core, new_pod):
    core.create_namespaced_pod("default", new_pod("a"))
    path = (
        "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
        "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5"
    )
    with urllib.request.urlopen(kube_local.url + path, timeout=5) as resp:
        events = [json.loads(resp.readline()) for _ in range(2)]
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "a"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_slow_watcher_is_closed_without_blocking_writers():
    store = Store(watch_queue_size=3)
    slow = store.watch(WatchFilter(PODS), since=None)
    other = store.watch(WatchFilter(PODS, namespace="elsewhere"), since=None)
    for i in range(10):
        store.create(
            PODS, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": f"p{i}", "namespace": "default"}}
        )
    assert slow.closed == "overflow"
    assert other.closed is None  # filtered out every event, never backed up
    assert store.watcher_count == 1
    from sim.kubelocal.resources import SYSTEM_NAMESPACES

    # One resourceVersion per system namespace, then one per pod: no write was refused.
    assert store.resource_version == str(len(SYSTEM_NAMESPACES) + 10)


def test_unwatched_stream_is_released_when_client_disconnects(kube_local, core):
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "default", timeout_seconds=30, allow_watch_bookmarks=False)

    def consume() -> None:
        with contextlib.suppress(Exception):  # the client reports the shut-down socket its own way
            list(stream)

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 5
    while kube_local.call(lambda: kube_local.server.store.watcher_count) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert kube_local.call(lambda: kube_local.server.store.watcher_count) == 1
    w.stop()
    thread.join(5)
    while kube_local.call(lambda: kube_local.server.store.watcher_count) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube_local.call(lambda: kube_local.server.store.watcher_count) == 0


# kube-local only: the real apiserver waits for a future resourceVersion instead of failing at once.
@pytest.mark.kube_local_only
def test_resource_version_from_the_future_is_an_error(core):
    future = int(core.list_namespaced_pod("default").metadata.resource_version) + 100
    with pytest.raises(ApiException) as err:
        list(
            watch.Watch().stream(
                core.list_namespaced_pod, "default", resource_version=str(future), timeout_seconds=2
            )
        )
    assert err.value.status == 504
    assert "Too large resource version" in err.value.reason
