"""The list+watch reflector against a real kube-local: sync, events, watch resume, 410 re-list, connection
errors, resync, selectors, handler failures and a prompt stop()."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from services.common.config import KubeAccess
from services.common.kube import new_api_client
from services.common.reflector import Reflector, object_key
from sim.kubelocal.server import KubeLocalThread
from tests.support import free_port


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def node(name: str, labels: dict[str, str] | None = None) -> client.V1Node:
    return client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=labels))


def pod(name: str, node_name: str | None = None, labels: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            node_name=node_name, containers=[client.V1Container(name="c", image="busybox:1.36")]
        ),
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((event_type, object_key(obj)))

    def seen(self, *expected: tuple[str, str]) -> bool:
        with self.lock:
            return all(e in self.events for e in expected)


@pytest.fixture
def reflectors() -> Iterator[list[Reflector]]:
    made: list[Reflector] = []
    yield made
    for reflector in made:
        reflector.stop()


@pytest.fixture
def core(kube_local_url: str) -> Iterator[client.CoreV1Api]:
    api = new_api_client(KubeAccess(server=kube_local_url))
    yield client.CoreV1Api(api)
    api.close()


def start(reflectors: list[Reflector], list_func: Any, **kw: Any) -> Reflector:
    kw.setdefault("name", "test")
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    reflector = Reflector(list_func, **kw)
    reflectors.append(reflector)
    reflector.start()
    return reflector


def test_initial_sync_and_live_events(core: client.CoreV1Api, reflectors: list[Reflector]) -> None:
    core.create_node(node("n1"))
    core.create_node(node("n2"))
    recorder = Recorder()
    reflector = Reflector(core.list_node, name="nodes", on_event=recorder)
    assert not reflector.has_synced()
    reflectors.append(reflector)
    reflector.start()
    assert reflector.wait_synced(5)
    assert sorted(reflector.keys()) == ["n1", "n2"]
    assert recorder.seen(("ADDED", "n1"), ("ADDED", "n2"))

    core.create_node(node("n3"))
    core.patch_node("n1", {"metadata": {"labels": {"gpu": "on"}}})
    core.delete_node("n2")
    wait_for(lambda: recorder.seen(("ADDED", "n3"), ("MODIFIED", "n1"), ("DELETED", "n2")), what="events")
    assert sorted(reflector.keys()) == ["n1", "n3"]
    n1 = reflector.get("n1")
    assert n1 is not None and n1["metadata"]["labels"] == {"gpu": "on"}
    assert isinstance(n1, dict)  # raw JSON, not a client model
    assert reflector.get("n2") is None
    assert len(reflector) == 2 and len(reflector.objects()) == 2
    assert int(reflector.resource_version) >= int(n1["metadata"]["resourceVersion"])
    assert reflector.stats.lists == 1


def test_namespaced_keys_and_selectors(core: client.CoreV1Api, reflectors: list[Reflector]) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    core.create_namespaced_pod("default", pod("gpu", labels={"hami.io/vgpu-node": "n1"}))
    core.create_namespaced_pod("team-a", pod("gpu", labels={"hami.io/vgpu-node": "n2"}))
    core.create_namespaced_pod("default", pod("plain"))
    core.create_namespaced_pod("default", pod("bound", node_name="n9"))
    labelled = start(reflectors, core.list_pod_for_all_namespaces, label_selector="hami.io/vgpu-node")
    on_n9 = start(reflectors, core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n9")
    in_team = start(reflectors, core.list_namespaced_pod, list_kwargs={"namespace": "team-a"})
    for reflector in (labelled, on_n9, in_team):
        assert reflector.wait_synced(5)
    assert sorted(labelled.keys()) == ["default/gpu", "team-a/gpu"]
    assert on_n9.keys() == ["default/bound"]
    assert in_team.keys() == ["team-a/gpu"]
    core.create_namespaced_pod("team-a", pod("late", labels={"hami.io/vgpu-node": "n3"}))
    wait_for(lambda: "team-a/late" in labelled and "team-a/late" in in_team, what="late pod")
    assert "team-a/late" not in on_n9


def test_leases_in_one_namespace(kube_local_url: str, reflectors: list[Reflector]) -> None:
    api = new_api_client(KubeAccess(server=kube_local_url))
    coordination = client.CoordinationV1Api(api)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="hami-scheduler"), spec=client.V1LeaseSpec(holder_identity="a")
    )
    coordination.create_namespaced_lease("kube-system", lease)
    reflector = start(
        reflectors, coordination.list_namespaced_lease, list_kwargs={"namespace": "kube-system"}
    )
    assert reflector.wait_synced(5)
    assert reflector.keys() == ["kube-system/hami-scheduler"]
    coordination.patch_namespaced_lease("hami-scheduler", "kube-system", {"spec": {"holderIdentity": "b"}})
    wait_for(lambda: (reflector.get("kube-system/hami-scheduler") or {})["spec"]["holderIdentity"] == "b")
    api.close()


def test_watch_resumes_after_the_server_ends_it(core: client.CoreV1Api, reflectors: list[Reflector]) -> None:
    recorder = Recorder()
    reflector = start(reflectors, core.list_node, on_event=recorder, watch_timeout=1)
    assert reflector.wait_synced(5)
    wait_for(lambda: reflector.stats.watches >= 3, timeout=8, what="several watches")  # each ends after 1-2 s
    core.create_node(node("after-resume"))
    wait_for(lambda: recorder.seen(("ADDED", "after-resume")), what="event after resume")
    assert reflector.stats.lists == 1  # resumed from the resourceVersion, never re-listed
    assert reflector.stats.gone == 0 and reflector.stats.errors == 0


def test_relist_after_410_gone(reflectors: list[Reflector]) -> None:
    server = KubeLocalThread(history_size=2)
    url = server.start()
    api = new_api_client(KubeAccess(server=url))
    core = client.CoreV1Api(api)
    try:
        core.create_node(node("keep"))
        core.create_node(node("gone-later"))
        release = threading.Event()
        blocked = threading.Event()
        recorder = Recorder()

        def slow_handler(event_type: str, obj: dict[str, Any]) -> None:
            recorder(event_type, obj)
            if not release.is_set():
                blocked.set()
                release.wait(10)

        reflector = start(reflectors, core.list_node, on_event=slow_handler)
        assert blocked.wait(5)  # stuck in the initial LIST's events, before any watch
        core.delete_node("gone-later")
        for n in range(5):
            core.create_node(node(f"new-{n}"))  # pushes the listed resourceVersion out of the history
        release.set()
        wait_for(lambda: len(reflector) == 6, what="re-listed store")
        assert sorted(reflector.keys()) == ["keep", *(f"new-{n}" for n in range(5))]
        assert reflector.stats.gone >= 1
        assert reflector.stats.lists >= 2
        assert recorder.seen(("DELETED", "gone-later"), *(("ADDED", f"new-{n}") for n in range(5)))
        core.create_node(node("live"))
        wait_for(lambda: recorder.seen(("ADDED", "live")), what="watch after re-list")
    finally:
        for reflector in reflectors:
            reflector.stop()
        api.close()
        server.close()


def test_resync_lists_again(core: client.CoreV1Api, reflectors: list[Reflector]) -> None:
    core.create_node(node("n1"))
    recorder = Recorder()
    reflector = start(reflectors, core.list_node, on_event=recorder, resync_period=1)
    assert reflector.wait_synced(5)
    wait_for(lambda: reflector.stats.lists >= 3, timeout=6, what="periodic re-lists")
    # An unchanged object is not reported again by a re-list.
    assert recorder.events.count(("ADDED", "n1")) == 1
    assert ("MODIFIED", "n1") not in recorder.events


def test_connection_errors_back_off_and_recover(reflectors: list[Reflector]) -> None:
    port = free_port()
    api = new_api_client(KubeAccess(server=f"http://127.0.0.1:{port}"))
    core = client.CoreV1Api(api)
    reflector = start(reflectors, core.list_node, request_timeout=2)
    wait_for(lambda: reflector.stats.errors >= 2, what="failed attempts")
    assert not reflector.has_synced()
    server = KubeLocalThread(port=port)
    server.start()
    try:
        core.create_node(node("n1"))
        assert reflector.wait_synced(5)
        assert reflector.keys() == ["n1"]
        server.close()  # the watch breaks; the reflector keeps trying
        errors = reflector.stats.errors
        wait_for(lambda: reflector.stats.errors > errors, what="errors after the server went away")
        assert reflector.keys() == ["n1"]  # the cache is kept while the server is gone
    finally:
        server.close()
        reflector.stop()
        api.close()


def test_a_failing_handler_does_not_stop_the_reflector(
    core: client.CoreV1Api, reflectors: list[Reflector]
) -> None:
    recorder = Recorder()

    def broken(event_type: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    reflector = Reflector(core.list_node, name="nodes", on_event=broken)
    reflector.add_handler(recorder)
    reflectors.append(reflector)
    reflector.start()
    assert reflector.wait_synced(5)
    core.create_node(node("n1"))
    core.create_node(node("n2"))
    wait_for(
        lambda: recorder.seen(("ADDED", "n1"), ("ADDED", "n2")), what="events despite the failing handler"
    )
    with pytest.raises(RuntimeError, match="before start"):
        reflector.add_handler(recorder)


def test_stop_is_prompt_during_a_long_watch(core: client.CoreV1Api) -> None:
    reflector = Reflector(core.list_node, name="nodes", watch_timeout=300)
    reflector.start()
    assert reflector.wait_synced(5)
    wait_for(lambda: reflector.stats.watches == 1, what="watch open")
    time.sleep(0.1)
    started = time.monotonic()
    reflector.stop()
    assert time.monotonic() - started < 1.0
    assert reflector._thread is not None and not reflector._thread.is_alive()


def test_stop_before_sync_and_twice(reflectors: list[Reflector]) -> None:
    api = new_api_client(KubeAccess(server=f"http://127.0.0.1:{free_port()}"))
    reflector = Reflector(client.CoreV1Api(api).list_node, name="nodes", backoff_initial=5, backoff_max=5)
    reflector.start()
    time.sleep(0.2)
    started = time.monotonic()
    reflector.stop()
    reflector.stop()
    assert time.monotonic() - started < 1.0
    assert not reflector.wait_synced(0)
    with pytest.raises(RuntimeError, match="already started"):
        reflector.start()
    api.close()
