"""The usage cache (docs/hami-wire.md#caches) fed event by event: phantom usage, init release, reservations,
replay."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.codecs import encode_node_devices
from services.common.model import ContainerDevice, DeviceInfo
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import init_containers_done, pod_usage_from_object
from services.scheduler.snapshots import Reservation, build_snapshot

NOW = datetime(2026, 8, 21, 10, 0, 0, tzinfo=UTC)
GPU_A = "GPU-aaaa"
GPU_B = "GPU-bbbb"


def node_obj(
    name: str = "n1",
    *,
    devices: Sequence[DeviceInfo] | None = None,
    register: str | None = None,
    allocatable: str | None = "20",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    if devices is None:
        devices = [
            DeviceInfo(id=GPU_A, index=0, count=10, devmem=16000, devcore=100, type="NVIDIA-T4"),
            DeviceInfo(id=GPU_B, index=1, count=10, devmem=16000, devcore=100, type="NVIDIA-T4"),
        ]
    meta_annotations = dict(annotations or {})
    meta_annotations["hami.io/node-nvidia-register"] = (
        register if register is not None else encode_node_devices(devices)
    )
    status: dict[str, Any] = (
        {"allocatable": {"nvidia.com/gpu": allocatable}} if allocatable is not None else {}
    )
    return {
        "metadata": {"name": name, "annotations": meta_annotations, "resourceVersion": "1"},
        "status": status,
    }


def pod_obj(
    name: str,
    allocated: str | None,
    *,
    node: str = "n1",
    uid: str | None = None,
    namespace: str = "default",
    phase: str = "Running",
    deleting: bool = False,
    init: Sequence[dict[str, Any]] = (),
    init_statuses: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if allocated is not None:
        annotations = {"hami.io/vgpu-node": node, "hami.io/vgpu-devices-allocated": allocated}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{name}",
        "annotations": annotations,
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-08-21T10:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if init_statuses is not None:
        status["initContainerStatuses"] = list(init_statuses)
    return {
        "metadata": metadata,
        "spec": {"initContainers": list(init), "containers": [{"name": "main", "image": "x"}]},
        "status": status,
    }


def usage_of(cache: UsageCache, node: str = "n1") -> dict[str, tuple[int, int, int]]:
    snapshot = cache.snapshot(node)
    assert snapshot is not None
    return {d.id: (d.used, d.usedmem, d.usedcores) for d in snapshot.devices}


def fresh_cache() -> UsageCache:
    cache = UsageCache(clock=lambda: NOW)
    cache.on_node_event("ADDED", node_obj())
    return cache


def test_node_inventory_and_pod_usage() -> None:
    cache = fresh_cache()
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (0, 0, 0)}
    cache.on_pod_event("ADDED", pod_obj("p1", f"{GPU_A},NVIDIA,3000,30:;"))
    cache.on_pod_event("ADDED", pod_obj("p2", f"{GPU_A},NVIDIA,1000,0:{GPU_B},NVIDIA,1000,10:;"))
    assert usage_of(cache) == {GPU_A: (2, 4000, 30), GPU_B: (1, 1000, 10)}
    assert [p.name for p in cache.pods()] == ["p1", "p2"]
    assert cache.pod_uid("default", "p1") == "uid-p1"


def test_pods_without_the_node_annotation_or_devices_hold_nothing() -> None:
    cache = fresh_cache()
    cache.on_pod_event("ADDED", pod_obj("plain", None))
    cache.on_pod_event("ADDED", pod_obj("empty", ";"))
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (0, 0, 0)}
    assert cache.pods() == []


def test_undecodable_pod_annotation_is_skipped() -> None:
    usage, problem = pod_usage_from_object(pod_obj("bad", f"{GPU_A},NVIDIA:;"))
    assert usage is None and problem is not None and "missing fields" in problem
    cache = fresh_cache()
    cache.on_pod_event("ADDED", pod_obj("bad", f"{GPU_A},NVIDIA:;"))
    assert usage_of(cache)[GPU_A] == (0, 0, 0)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_free_their_usage(phase: str) -> None:
    cache = fresh_cache()
    pod = pod_obj("p", f"{GPU_A},NVIDIA,3000,30:;")
    cache.on_pod_event("ADDED", pod)
    assert usage_of(cache)[GPU_A] == (1, 3000, 30)
    done = copy.deepcopy(pod)
    done["status"]["phase"] = phase
    cache.on_pod_event("MODIFIED", done)
    assert usage_of(cache)[GPU_A] == (0, 0, 0)


def test_deleted_pod_frees_usage_hami_2923() -> None:
    cache = fresh_cache()
    pod = pod_obj("p", f"{GPU_A},NVIDIA,3000,30:;{GPU_B},NVIDIA,3000,30:;")
    cache.on_pod_event("ADDED", pod)
    cache.on_pod_event("DELETED", pod)
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (0, 0, 0)}
    assert cache.pods() == []


def test_terminating_pod_keeps_usage_even_when_first_seen_after_a_restart() -> None:
    terminating = pod_obj("p", f"{GPU_A},NVIDIA,3000,30:;", deleting=True)
    live = fresh_cache()
    live.on_pod_event("ADDED", pod_obj("p", f"{GPU_A},NVIDIA,3000,30:;"))
    live.on_pod_event("MODIFIED", terminating)
    restarted = fresh_cache()  # HAMi PR #2812: the replayed terminating pod must count
    restarted.on_pod_event("ADDED", terminating)
    assert usage_of(live)[GPU_A] == usage_of(restarted)[GPU_A] == (1, 3000, 30)
    assert restarted.pods()[0].terminating


def test_restart_replays_to_the_same_state() -> None:
    history = [
        ("ADDED", pod_obj("a", f"{GPU_A},NVIDIA,1000,10:;")),
        ("ADDED", pod_obj("b", f"{GPU_B},NVIDIA,2000,20:;")),
        ("ADDED", pod_obj("c", f"{GPU_A},NVIDIA,4000,40:;")),
        ("MODIFIED", pod_obj("b", f"{GPU_B},NVIDIA,2000,20:;", phase="Succeeded")),
        ("DELETED", pod_obj("c", f"{GPU_A},NVIDIA,4000,40:;")),
        ("ADDED", pod_obj("d", f"{GPU_B},NVIDIA,500,5:;", deleting=True)),
    ]
    live = fresh_cache()
    final: dict[str, dict[str, Any]] = {}
    for event, pod in history:
        live.on_pod_event(event, pod)
        if event == "DELETED":
            final.pop(pod["metadata"]["name"], None)
        else:
            final[pod["metadata"]["name"]] = pod
    replayed = fresh_cache()
    for pod in final.values():  # what a LIST after a restart reports
        replayed.on_pod_event("ADDED", pod)
    assert usage_of(live) == usage_of(replayed) == {GPU_A: (1, 1000, 10), GPU_B: (1, 500, 5)}


INIT = [{"name": "init", "image": "x"}]


def test_init_container_usage_is_released_once_init_containers_exit_0() -> None:
    # Init slot 0 takes 8000 on A; the app slot 1 takes 2000 on B. Collapsed: A 8000, B 2000.
    allocated = f"{GPU_A},NVIDIA,8000,50:;{GPU_B},NVIDIA,2000,20:;"
    cache = fresh_cache()
    running = [{"name": "init", "state": {"running": {}}}]
    cache.on_pod_event("ADDED", pod_obj("p", allocated, init=INIT, init_statuses=running))
    assert usage_of(cache) == {GPU_A: (1, 8000, 50), GPU_B: (1, 2000, 20)}
    failed = [{"name": "init", "state": {"terminated": {"exitCode": 1}}}]
    cache.on_pod_event("MODIFIED", pod_obj("p", allocated, init=INIT, init_statuses=failed))
    assert usage_of(cache)[GPU_A] == (1, 8000, 50)
    done = [{"name": "init", "state": {"terminated": {"exitCode": 0}}}]
    cache.on_pod_event("MODIFIED", pod_obj("p", allocated, init=INIT, init_statuses=done))
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (1, 2000, 20)}


@pytest.mark.parametrize(
    ("init", "statuses", "done"),
    [
        ([], [], False),
        (INIT, [], False),
        (INIT, [{"name": "init", "state": {"terminated": {"exitCode": 0}}}], True),
        (
            [*INIT, {"name": "side", "image": "x", "restartPolicy": "Always"}],
            [
                {"name": "init", "state": {"terminated": {"exitCode": 0}}},
                {"name": "side", "state": {"running": {}}},
            ],
            True,
        ),
        ([{"name": "side", "image": "x", "restartPolicy": "Always"}], [{"name": "side"}], False),
    ],
)
def test_init_containers_done(init: list[dict[str, Any]], statuses: list[dict[str, Any]], done: bool) -> None:
    pod = pod_obj("p", ";", init=init, init_statuses=statuses)
    assert init_containers_done(pod) is done


def test_reservations_count_until_the_pods_own_annotations_arrive() -> None:
    cache = fresh_cache()
    alloc = [[ContainerDevice(GPU_A, "NVIDIA", 5000, 50)]]
    cache.reserve(Reservation(uid="uid-p", namespace="default", name="p", node="n1", allocation=alloc))
    assert usage_of(cache)[GPU_A] == (1, 5000, 50)
    # Excluding the pod itself (a re-fit of the same pod) leaves it out.
    snapshot = cache.snapshot("n1", exclude_uid="uid-p")
    assert snapshot is not None and snapshot.devices[0].usedmem == 0
    cache.commit_reservation("uid-p")
    assert usage_of(cache)[GPU_A] == (1, 5000, 50)
    # The watch delivers the annotated pod: counted once, the reservation is gone.
    cache.on_pod_event("MODIFIED", pod_obj("p", f"{GPU_A},NVIDIA,5000,50:;"))
    assert usage_of(cache)[GPU_A] == (1, 5000, 50)
    assert cache.reservations() == []


def test_reservation_overrides_stale_pod_state_and_rollback_drops_it() -> None:
    cache = fresh_cache()
    # The pod still carries annotations of an earlier attempt on GPU B.
    cache.on_pod_event("ADDED", pod_obj("p", f"{GPU_B},NVIDIA,1000,10:;"))
    cache.reserve(
        Reservation(
            uid="uid-p",
            namespace="default",
            name="p",
            node="n1",
            allocation=[[ContainerDevice(GPU_A, "NVIDIA", 2000, 20)]],
        )
    )
    assert usage_of(cache) == {GPU_A: (1, 2000, 20), GPU_B: (0, 0, 0)}
    assert cache.drop_reservation("uid-p") is not None
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (1, 1000, 10)}


def test_deleted_pod_drops_its_reservation_and_sweep_drops_orphans() -> None:
    cache = fresh_cache()
    alloc = [[ContainerDevice(GPU_A, "NVIDIA", 2000, 20)]]
    cache.reserve(Reservation(uid="uid-p", namespace="default", name="p", node="n1", allocation=alloc))
    cache.on_pod_event("DELETED", pod_obj("p", None))
    assert cache.reservations() == []
    cache.reserve(
        Reservation(uid="uid-q", namespace="default", name="q", node="n1", allocation=alloc, created=0)
    )
    assert cache.sweep_reservations(60, now=1000) == []  # not committed: a bind is still under way
    cache.commit_reservation("uid-q")
    assert cache.sweep_reservations(60) == []  # committed just now
    [dropped] = cache.sweep_reservations(60, now=10**9)
    assert dropped.uid == "uid-q"


def test_fresh_pods_take_precedence_over_the_watch() -> None:
    cache = fresh_cache()
    snapshot = cache.snapshot("n1", fresh_pods=[pod_obj("p", f"{GPU_A},NVIDIA,7000,70:;")])
    assert snapshot is not None and snapshot.devices[0].usedmem == 7000


def test_unknown_uuid_is_ignored() -> None:
    cache = fresh_cache()
    cache.on_pod_event("ADDED", pod_obj("p", "GPU-zzzz,NVIDIA,7000,70:;"))
    assert usage_of(cache) == {GPU_A: (0, 0, 0), GPU_B: (0, 0, 0)}


def test_undecodable_register_annotation_skips_the_node() -> None:
    cache = UsageCache(clock=lambda: NOW)
    cache.on_node_event("ADDED", node_obj("bad", register="[{"))
    cache.on_node_event("ADDED", node_obj("good"))
    assert cache.snapshot("bad") is None
    assert cache.snapshot("good") is not None
    health = cache.health("bad")
    assert health is not None and "undecodable" in health.reason
    assert cache.health("ghost") is None


def test_node_reboot_is_not_wedged() -> None:
    cache = UsageCache(clock=lambda: NOW)
    cache.on_node_event("ADDED", node_obj(allocatable="20"))
    assert cache.snapshot("n1") is not None
    cache.on_node_event("MODIFIED", node_obj(allocatable="0"))  # kubelet restarted, plugin not back yet
    assert cache.snapshot("n1") is None
    cache.on_node_event("MODIFIED", node_obj(allocatable="20"))  # plugin registered again
    assert cache.snapshot("n1") is not None
    cache.on_node_event("DELETED", node_obj())
    assert cache.snapshot("n1") is None and cache.node_names() == []


def test_handshake_due_for_new_nodes_and_re_registration() -> None:
    cache = UsageCache(clock=lambda: NOW)
    cache.on_node_event("ADDED", node_obj(allocatable=None))
    assert cache.handshake_due() == ["n1"]
    requested = {"hami.io/node-handshake": "Requesting_2026-08-21 10:00:00"}
    cache.on_node_event("MODIFIED", node_obj(allocatable=None, annotations=requested))
    assert cache.handshake_due() == []
    one_gpu = [DeviceInfo(id=GPU_A, count=10, devmem=16000, devcore=100, type="NVIDIA-T4")]
    cache.on_node_event("MODIFIED", node_obj(allocatable=None, annotations=requested, devices=one_gpu))
    assert cache.handshake_due() == ["n1"]  # re-registered without GPUs in allocatable: new grace period
    cache.on_node_event("MODIFIED", node_obj(allocatable=None, annotations=requested, devices=one_gpu))
    assert cache.handshake_due() == ["n1"]  # sticky until the handshake changes
    renewed = {"hami.io/node-handshake": "Requesting_2026-08-21 10:05:00"}
    cache.on_node_event("MODIFIED", node_obj(allocatable=None, annotations=renewed, devices=one_gpu))
    assert cache.handshake_due() == []


def quota_obj(name: str, hard: dict[str, str], namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"hard": hard}}


def test_quota_view_tracks_limits_and_usage() -> None:
    cache = fresh_cache()
    cache.on_quota_event(
        "ADDED",
        quota_obj(
            "q1", {"limits.nvidia.com/gpumem": "20000", "limits.nvidia.com/gpucores": "300", "pods": "5"}
        ),
    )
    cache.on_quota_event("ADDED", quota_obj("q2", {"limits.nvidia.com/gpumem": "10000"}))
    cache.on_quota_event("ADDED", quota_obj("other", {"limits.nvidia.com/gpumem": "1"}, namespace="other"))
    cache.on_pod_event("ADDED", pod_obj("p", f"{GPU_A},NVIDIA,3000,30:{GPU_B},NVIDIA,3000,30:;"))
    view = cache.quota_view()
    default = view.namespaces["default"].resources
    assert default["limits.nvidia.com/gpumem"].limit == 10000  # the strictest of q1 and q2
    assert default["limits.nvidia.com/gpumem"].used == 6000
    assert default["limits.nvidia.com/gpucores"].used == 60
    assert view.namespaces["other"].resources["limits.nvidia.com/gpumem"].used == 0
    assert (
        cache.quota_view(exclude_uid="uid-p").namespaces["default"].resources["limits.nvidia.com/gpumem"].used
        == 0
    )
    cache.on_quota_event("DELETED", quota_obj("q2", {}))
    assert cache.quota_view().namespaces["default"].resources["limits.nvidia.com/gpumem"].limit == 20000


def test_a_stale_copy_on_the_same_node_does_not_end_the_reservation() -> None:
    cache = fresh_cache()
    alloc = [[ContainerDevice(GPU_A, "NVIDIA", 2000, 20)]]
    cache.reserve(Reservation(uid="uid-p", namespace="default", name="p", node="n1", allocation=alloc))
    cache.on_pod_event(
        "MODIFIED", pod_obj("p", f"{GPU_B},NVIDIA,1000,10:;")
    )  # an older attempt's annotations
    assert len(cache.reservations()) == 1
    assert usage_of(cache) == {GPU_A: (1, 2000, 20), GPU_B: (0, 0, 0)}
    cache.on_pod_event("MODIFIED", pod_obj("p", f"{GPU_A},NVIDIA,2000,20:;"))
    assert cache.reservations() == []


@pytest.mark.parametrize("seed", range(6))
def test_cached_snapshots_equal_a_fresh_build_after_random_events(seed: int) -> None:
    """Whatever mix of node, pod and reservation events arrives, every snapshot the cache hands out (shared
    or not, one node or many) equals one built afresh from the node and the pods that count on it."""
    rng = random.Random(seed)
    cache = UsageCache(clock=lambda: NOW)
    nodes = ["n1", "n2", "n3"]
    pods = [f"p{i}" for i in range(12)]
    allocations = [
        f"{GPU_A},NVIDIA,1000,10:;",
        f"{GPU_B},NVIDIA,2000,20:;",
        f"{GPU_A},NVIDIA,500,5:{GPU_B},NVIDIA,500,5:;",
    ]

    def reference(node: str, exclude: str | None) -> Any:
        state = cache.node_state(node)
        if state is None or not state.health(NOW).schedulable:
            return None
        usages = [u for u in cache.pods() if u.node == node and u.uid != exclude]
        return build_snapshot(state, usages)

    def same(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return (a.name, a.devices, dict(a.annotations), dict(a.mig_placements)) == (
            b.name,
            b.devices,
            dict(b.annotations),
            dict(b.mig_placements),
        )

    for step in range(300):
        roll = rng.random()
        node = rng.choice(nodes)
        name = rng.choice(pods)
        if roll < 0.1:
            if rng.random() < 0.3:
                cache.on_node_event("DELETED", node_obj(node))
            else:
                cache.on_node_event("MODIFIED", node_obj(node, allocatable=rng.choice(["20", "10"])))
        elif roll < 0.6:
            kind = rng.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED"])
            phase = rng.choice(["Running", "Running", "Pending", "Succeeded"])
            pod = pod_obj(name, rng.choice([*allocations, None]), node=node, phase=phase)
            cache.on_pod_event(kind, pod)
        elif roll < 0.8:
            alloc = [[ContainerDevice(rng.choice([GPU_A, GPU_B]), "NVIDIA", 700, 7)]]
            cache.reserve(
                Reservation(uid=f"uid-{name}", namespace="default", name=name, node=node, allocation=alloc)
            )
        elif roll < 0.9:
            cache.commit_reservation(f"uid-{name}")
        else:
            cache.drop_reservation(f"uid-{name}")
        for exclude in (None, f"uid-{rng.choice(pods)}"):
            bulk, _ = cache.snapshots([*nodes, "unknown"], exclude_uid=exclude)
            for node_name in [*nodes, "unknown"]:
                expected = reference(node_name, exclude)
                assert same(cache.snapshot(node_name, exclude_uid=exclude), expected), (
                    step,
                    node_name,
                    exclude,
                )
                assert same(bulk[node_name], expected), (step, node_name, exclude)


def test_warm_builds_each_missing_snapshot_once_and_reads_share_it() -> None:
    cache = fresh_cache()
    cache.on_node_event("ADDED", node_obj("n2"))
    cache.on_pod_event("ADDED", pod_obj("p", f"{GPU_A},NVIDIA,1000,10:;"))
    assert cache.warm() == 2
    assert cache.warm() == 0
    warmed = cache.snapshot("n1")
    assert warmed is not None and cache.snapshot("n1") is warmed
    snapshots, generation = cache.snapshots(["n1", "n2"])
    assert snapshots["n1"] is warmed and generation == cache.generation
    # A change drops the node's snapshot: the next warm builds it again, and only that one.
    cache.on_pod_event("DELETED", pod_obj("p", f"{GPU_A},NVIDIA,1000,10:;"))
    assert cache.warm() == 1
