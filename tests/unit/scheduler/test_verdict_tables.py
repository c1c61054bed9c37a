"""Incremental filtering (services/scheduler/verdicts.py) and what it reads from the cache: the change
journal, events that change nothing a snapshot shows, busy nodes, fresh pods already seen by the watch."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.codecs import encode_node_devices
from services.common.model import ContainerDevice, DeviceInfo
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import pod_context
from services.scheduler.filtering import evaluate, evaluation_key
from services.scheduler.fit import SchedulingPolicy
from services.scheduler.snapshots import Reservation
from services.scheduler.verdicts import VerdictTables

NOW = datetime(2026, 8, 21, 10, 0, 0, tzinfo=UTC)
NODES = [f"n{i}" for i in range(6)]


def gpus(node: str) -> list[DeviceInfo]:
    return [
        DeviceInfo(id=f"GPU-{node}-{i}", index=i, count=4, devmem=16000, devcore=100, type="NVIDIA-T4")
        for i in range(2)
    ]


def node_obj(name: str, *, lock: str | None = None, allocatable: str = "8", rv: str = "1") -> dict[str, Any]:
    annotations = {"hami.io/node-nvidia-register": encode_node_devices(gpus(name))}
    if lock is not None:
        annotations["hami.io/mutex.lock"] = lock
    return {
        "metadata": {"name": name, "annotations": annotations, "resourceVersion": rv},
        "status": {"allocatable": {"nvidia.com/gpu": allocatable}},
    }


def allocation(node: str, gpu: int, mem: int, cores: int) -> str:
    return f"GPU-{node}-{gpu},NVIDIA,{mem},{cores}:;"


def pod_obj(name: str, node: str | None, value: str | None, *, rv: str = "1", phase: str = "Running") -> Any:
    annotations: dict[str, str] = {}
    if node is not None and value is not None:
        annotations = {"hami.io/vgpu-node": node, "hami.io/vgpu-devices-allocated": value}
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": phase},
    }


def pending_pod(mem: int, cores: int) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mem), "nvidia.com/gpucores": str(cores)}
    return {
        "metadata": {"name": "new", "namespace": "default", "uid": "uid-new", "annotations": {}},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]},
    }


def cluster() -> UsageCache:
    cache = UsageCache(clock=lambda: NOW)
    for name in NODES:
        cache.on_node_event("ADDED", node_obj(name))
    return cache


def outcome_view(outcome: Any) -> Any:
    return (
        [(v.node, v.fits, v.reason, v.score, v.devices) for v in outcome.verdicts],
        dict(outcome.failed),
        outcome.best.node if outcome.best is not None else None,
        [f.node for f in outcome.fitting],
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("node_policy", ["binpack", "spread"])
def test_incremental_outcomes_equal_a_full_evaluation_after_random_events(
    seed: int, node_policy: str
) -> None:
    """Whatever the cache went through between two cycles, the verdict tables answer exactly what fitting
    every candidate afresh answers, while re-fitting only the nodes that changed."""
    rng = random.Random(seed)
    cache = cluster()
    tables = VerdictTables(cache)
    policy = SchedulingPolicy(node_policy, "spread")
    shapes = [pod_context(pending_pod(mem, cores)) for mem, cores in ((3000, 20), (9000, 50), (15000, 0))]
    versions = iter(range(2, 100_000))
    for step in range(150):
        roll = rng.random()
        node = rng.choice(NODES)
        name = f"p{rng.randrange(10)}"
        if roll < 0.1:
            lock = rng.choice([None, "2026-08-21T10:00:00Z,default,x"])
            cache.on_node_event(
                "MODIFIED", node_obj(node, lock=lock, allocatable=rng.choice(["8", "8", "0"]))
            )
        elif roll < 0.55:
            value = rng.choice([allocation(node, rng.randrange(2), 2000 * rng.randrange(1, 5), 10), None])
            kind = rng.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED"])
            phase = rng.choice(["Running", "Running", "Succeeded"])
            cache.on_pod_event(kind, pod_obj(name, node, value, rv=str(next(versions)), phase=phase))
        elif roll < 0.8:
            alloc = [[ContainerDevice(f"GPU-{node}-{rng.randrange(2)}", "NVIDIA", 3000, 10)]]
            cache.reserve(
                Reservation(uid=f"uid-{name}", namespace="default", name=name, node=node, allocation=alloc)
            )
        elif roll < 0.9:
            cache.commit_reservation(f"uid-{name}")
        else:
            cache.drop_reservation(f"uid-{name}")
        ctx = rng.choice(shapes)
        candidates = rng.sample([*NODES, "unknown"], rng.randrange(1, len(NODES) + 2))
        quota = cache.quota_view(exclude_uid=ctx.uid)
        shape = evaluation_key(ctx, policy, quota)
        before = tables.refits
        incremental = tables.evaluate(shape, ctx, candidates, policy, quota)
        snapshots, _ = cache.snapshots(candidates, exclude_uid=ctx.uid)
        assert outcome_view(incremental) == outcome_view(
            evaluate(ctx, candidates, snapshots, policy, quota)
        ), step
        again = tables.refits
        tables.evaluate(shape, ctx, candidates, policy, quota)
        assert tables.refits == again  # nothing changed since: every verdict from the table
        assert again - before <= len(candidates)


def test_only_changed_nodes_are_fitted_again() -> None:
    cache = cluster()
    tables = VerdictTables(cache)
    policy = SchedulingPolicy("binpack", "spread")
    ctx = pod_context(pending_pod(3000, 20))
    quota = cache.quota_view()
    shape = evaluation_key(ctx, policy, quota)
    tables.evaluate(shape, ctx, NODES, policy, quota)
    assert tables.refits == len(NODES)
    cache.on_pod_event("ADDED", pod_obj("a", "n2", allocation("n2", 0, 4000, 10)))
    outcome = tables.evaluate(shape, ctx, NODES, policy, quota)
    assert tables.refits == len(NODES) + 1  # n2 alone
    assert outcome.best is not None and outcome.best.node == "n2"  # binpack: now the busiest
    # A node lock taken and released changes nothing fitting reads.
    cache.on_node_event("MODIFIED", node_obj("n3", lock="2026-08-21T10:00:00Z,default,x", rv="2"))
    cache.on_node_event("MODIFIED", node_obj("n3", rv="3"))
    tables.evaluate(shape, ctx, NODES, policy, quota)
    assert tables.refits == len(NODES) + 1


def test_a_binds_watch_events_touch_its_node_once() -> None:
    """A reservation changes its node; the pod's own annotations, its Binding and its bind-phase arriving
    through the watch afterwards repeat what the reservation counted, and leave the node's snapshot alone."""
    cache = cluster()
    generation = cache.generation
    alloc = [[ContainerDevice("GPU-n1-0", "NVIDIA", 3000, 10)]]
    cache.reserve(Reservation(uid="uid-b", namespace="default", name="b", node="n1", allocation=alloc))
    reserved = cache.snapshot("n1")
    assert reserved is not None
    assert [(d.used, d.usedmem, d.usedcores) for d in reserved.devices] == [(1, 3000, 10), (0, 0, 0)]
    cache.on_pod_event("MODIFIED", pod_obj("b", "n1", allocation("n1", 0, 3000, 10), rv="2"))
    cache.commit_reservation("uid-b")
    cache.on_pod_event("MODIFIED", pod_obj("b", "n1", allocation("n1", 0, 3000, 10), rv="3"))
    assert cache.snapshot("n1") is reserved  # the same shared snapshot: nothing was rebuilt
    assert cache.changed_since(generation)[1] == {"n1"}
    # Deleting the pod does change the node.
    cache.on_pod_event("DELETED", pod_obj("b", "n1", allocation("n1", 0, 3000, 10), rv="4"))
    after = cache.snapshot("n1")
    assert after is not None and [d.used for d in after.devices] == [0, 0]


def test_changed_since_reports_touched_nodes_and_gives_up_past_the_journal() -> None:
    cache = cluster()
    start = cache.generation
    cache.on_pod_event("ADDED", pod_obj("a", "n1", allocation("n1", 0, 1000, 10)))
    middle = cache.generation
    cache.on_pod_event("ADDED", pod_obj("b", "n4", allocation("n4", 1, 1000, 10)))
    assert cache.changed_since(start) == (cache.generation, {"n1", "n4"})
    assert cache.changed_since(middle) == (cache.generation, {"n4"})
    assert cache.changed_since(cache.generation) == (cache.generation, set())
    for i in range(60_000):  # more changes than the journal keeps
        cache.on_pod_event("ADDED", pod_obj(f"x{i % 5}", "n2", allocation("n2", i % 2, 1000 + i % 7, 10)))
    assert cache.changed_since(start) == (cache.generation, None)


def test_busy_nodes_are_locked_nodes_and_binds_not_yet_bound() -> None:
    cache = cluster()
    assert cache.busy_nodes() == set()
    cache.on_node_event("MODIFIED", node_obj("n1", lock="2026-08-21T10:00:00Z,default,x", rv="2"))
    alloc = [[ContainerDevice("GPU-n2-0", "NVIDIA", 1000, 10)]]
    cache.reserve(Reservation(uid="uid-r", namespace="default", name="r", node="n2", allocation=alloc))
    assert cache.busy_nodes() == {"n1", "n2"}
    cache.commit_reservation("uid-r")  # bound: its usage still counts, the node is free to bind again
    cache.on_node_event("MODIFIED", node_obj("n1", rv="3"))
    assert cache.busy_nodes() == set()


def test_fresh_pods_the_watch_already_applied_keep_the_shared_snapshot() -> None:
    cache = cluster()
    listed = pod_obj("a", "n1", allocation("n1", 0, 4000, 10), rv="7")
    cache.on_pod_event("ADDED", listed)
    shared = cache.snapshot("n1")
    assert cache.snapshot("n1", fresh_pods=[listed]) is shared
    newer = pod_obj("a", "n1", allocation("n1", 1, 6000, 20), rv="8")  # the watch has not shown it yet
    fresh = cache.snapshot("n1", fresh_pods=[newer])
    assert fresh is not None and fresh is not shared
    assert [(d.used, d.usedmem) for d in fresh.devices] == [(0, 0), (1, 6000)]
