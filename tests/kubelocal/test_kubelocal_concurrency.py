"""Concurrent writers through the official client never lose an update."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

WORKERS = 8
INCREMENTS = 25


def run_workers(target, count: int = WORKERS) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # surfaced by the assertion in the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_read_modify_write_counter_is_exact(url, core, client_for):
    core.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="counter", annotations={"count": "0"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    )
    conflicts = [0] * WORKERS

    def worker(i: int) -> None:
        api = client.CoreV1Api(client_for(url))
        for _ in range(INCREMENTS):
            while True:
                pod = api.read_namespaced_pod("counter", "default")
                pod.metadata.annotations["count"] = str(int(pod.metadata.annotations["count"]) + 1)
                try:
                    api.replace_namespaced_pod("counter", "default", pod)
                    break
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    conflicts[i] += 1

    assert run_workers(worker) == []
    assert core.read_namespaced_pod("counter", "default").metadata.annotations["count"] == str(
        WORKERS * INCREMENTS
    )
    assert sum(conflicts) > 0, "the workers never raced; the test proves nothing"


# kube-local only: the real controller-manager's TTL controller adds its own node annotation.
@pytest.mark.kube_local_only
def test_concurrent_unconditional_patches_all_land(url, core, client_for):
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="shared")))

    def worker(i: int) -> None:
        api = client.CoreV1Api(client_for(url))
        for j in range(10):
            api.patch_node("shared", {"metadata": {"annotations": {f"w{i}-{j}": "x"}}})

    assert run_workers(worker) == []
    annotations = core.read_node("shared").metadata.annotations
    assert len(annotations) == WORKERS * 10


# kube-local only: on the real server etcd's revision is shared with every controller's writes, so a test's
# resourceVersions are not consecutive.
@pytest.mark.kube_local_only
def test_concurrent_creates_get_distinct_resource_versions(url, core, client_for):
    start = int(core.list_namespaced_pod("default").metadata.resource_version)
    seen: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        api = client.CoreV1Api(client_for(url))
        for j in range(5):
            pod = api.create_namespaced_pod(
                "default",
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name=f"p-{i}-{j}"),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
                ),
            )
            with lock:
                seen.append(int(pod.metadata.resource_version))

    assert run_workers(worker) == []
    assert sorted(seen) == list(range(start + 1, start + 1 + WORKERS * 5))
    # ...and a watch resuming at the start replays every one of them, in resourceVersion order.
    w = watch.Watch()
    replayed = []
    for event in w.stream(
        core.list_namespaced_pod, "default", resource_version=str(start), timeout_seconds=5
    ):
        replayed.append(int(event["object"].metadata.resource_version))
        if len(replayed) == len(seen):
            w.stop()
            break
    assert replayed == sorted(seen)
