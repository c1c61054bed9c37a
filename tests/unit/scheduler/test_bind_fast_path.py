"""The bind fast path: lock-only node updates keep the cache's snapshots, the node lock tried first from the
watch cache's view, and binds that start from the filtered pod copy (guarded by its resourceVersion)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.config import KubeAccess
from services.common.kube import call_json, core_path, new_api_client
from services.common.model import DeviceInfo
from services.scheduler.cache import UsageCache
from services.scheduler.config import SchedulerConfig
from services.scheduler.nodelock import LockError, NodeLocks
from services.scheduler.runtime import SchedulerRuntime
from tests.support import poll_until

NS = "default"
MERGE = "application/merge-patch+json"
LOCK = wire.NODE_LOCK


def gpus(node: str, count: int = 1) -> list[DeviceInfo]:
    return [
        DeviceInfo(id=f"GPU-{node}-{i}", index=i, count=10, devmem=16000, devcore=100, type="NVIDIA-Tesla T4")
        for i in range(count)
    ]


def node_obj(
    name: str = "n1",
    *,
    rv: str = "1",
    devices: Sequence[DeviceInfo] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    allocatable: str = "10",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": rv,
            "labels": dict(labels or {}),
            "annotations": {
                wire.NODE_NVIDIA_REGISTER: encode_node_devices(gpus(name) if devices is None else devices),
                **(annotations or {}),
            },
        },
        "status": {"allocatable": {"nvidia.com/gpu": allocatable}},
    }


# --- (a) the usage cache: lock-only node updates ------------------------------------------------------------

HELD = "2026-08-21T10:15:04Z,default,p"


@pytest.mark.parametrize(
    ("before", "after", "bumps"),
    [
        pytest.param(node_obj(), node_obj(rv="2", annotations={LOCK: HELD}), False, id="lock-taken"),
        pytest.param(node_obj(annotations={LOCK: HELD}), node_obj(rv="2"), False, id="lock-released"),
        pytest.param(
            node_obj(annotations={LOCK: HELD}),
            node_obj(rv="2", annotations={LOCK: "2026-08-21T10:16:00Z,default,q"}),
            False,
            id="lock-changed-hands",
        ),
        pytest.param(node_obj(), node_obj(rv="2"), False, id="resource-version-only"),
        pytest.param(node_obj(), node_obj(), False, id="identical"),
        pytest.param(node_obj(), node_obj(rv="2", devices=gpus("n1", 2)), True, id="register-changed"),
        pytest.param(
            node_obj(),
            node_obj(rv="2", annotations={LOCK: HELD, wire.DEVICE_CORDON: "GPU-n1-0"}),
            True,
            id="cordon-with-lock",
        ),
        pytest.param(
            node_obj(annotations={wire.DEVICE_CORDON: "GPU-n1-0"}), node_obj(rv="2"), True, id="uncordon"
        ),
        pytest.param(node_obj(), node_obj(rv="2", allocatable="5"), True, id="allocatable-changed"),
        pytest.param(node_obj(), node_obj(rv="2", labels={"gpu": "on"}), True, id="label-changed"),
        pytest.param(
            node_obj(),
            node_obj(rv="2", annotations={wire.NODE_HANDSHAKE: "Requesting_x"}),
            True,
            id="handshake",
        ),
    ],
)
def test_lock_only_node_updates_keep_generation_and_snapshot(
    before: dict[str, Any], after: dict[str, Any], bumps: bool
) -> None:
    cache = UsageCache()
    cache.on_node_event("ADDED", before)
    cache.on_node_event("ADDED", node_obj("other"))
    snapshot = cache.snapshot("n1")
    other = cache.snapshot("other")
    assert snapshot is not None and other is not None
    generation = cache.generation
    cache.on_node_event("MODIFIED", after)
    assert (cache.generation != generation) is bumps
    assert (cache.snapshot("n1") is snapshot) is not bumps
    assert cache.snapshot("other") is other  # another node's snapshot is never touched
    # Whatever changed, the cache now shows the node as this event has it.
    view = cache.node_lock_view("n1")
    assert view == (after["metadata"]["annotations"].get(LOCK), after["metadata"]["resourceVersion"])


def test_a_register_change_is_seen_by_the_next_snapshot() -> None:
    cache = UsageCache()
    cache.on_node_event("ADDED", node_obj())
    first = cache.snapshot("n1")
    assert first is not None and [d.id for d in first.devices] == ["GPU-n1-0"]
    cache.on_node_event("MODIFIED", node_obj(rv="2", annotations={LOCK: HELD}))
    cache.on_node_event("MODIFIED", node_obj(rv="3", devices=gpus("n1", 2), annotations={LOCK: HELD}))
    second = cache.snapshot("n1")
    assert second is not None and [d.id for d in second.devices] == ["GPU-n1-0", "GPU-n1-1"]


def test_node_lock_view() -> None:
    cache = UsageCache()
    assert cache.node_lock_view("n1") is None  # unknown node
    cache.on_node_event("ADDED", node_obj(rv="5"))
    assert cache.node_lock_view("n1") == (None, "5")
    cache.on_node_event("MODIFIED", node_obj(rv="6", annotations={LOCK: HELD}))
    assert cache.node_lock_view("n1") == (HELD, "6")
    cache.on_node_event("MODIFIED", node_obj(rv="7"))
    assert cache.node_lock_view("n1") == (None, "7")
    cache.on_node_event("DELETED", node_obj(rv="8"))
    assert cache.node_lock_view("n1") is None
    without_rv = node_obj("bare")
    del without_rv["metadata"]["resourceVersion"]
    cache.on_node_event("ADDED", without_rv)
    assert cache.node_lock_view("bare") is None  # nothing a write could be conditioned on


# --- shared: a kube-local with the official client ----------------------------------------------------------


class Kube:
    """Plain-JSON helpers onto this test's kube-local."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.api = new_api_client(KubeAccess(server=url))
        self.core = client.CoreV1Api(self.api)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        return call_json(self.api, method, path, body=body, content_type=content_type)

    def add_node(self, name: str, devices: Sequence[DeviceInfo]) -> dict[str, Any]:
        body = node_obj(name, devices=devices, labels={"gpu": "on"}, allocatable=str(10 * len(devices)))
        del body["metadata"]["resourceVersion"]
        created: dict[str, Any] = self.call("POST", core_path("nodes"), body)
        return created

    def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", core_path("nodes", name))
        return found

    def lock(self, node: str) -> str | None:
        value = (self.node(node)["metadata"].get("annotations") or {}).get(LOCK)
        return value if isinstance(value, str) else None

    def set_lock(self, node: str, value: str | None) -> dict[str, Any]:
        patched: dict[str, Any] = self.call(
            "PATCH", core_path("nodes", node), {"metadata": {"annotations": {LOCK: value}}}, MERGE
        )
        return patched

    def add_pod(self, name: str, mem: int | None = 1000, cores: int = 10) -> dict[str, Any]:
        limits = (
            {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mem), "nvidia.com/gpucores": str(cores)}
            if mem is not None
            else {}
        )
        body = {
            "metadata": {"name": name, "namespace": NS, "annotations": {"keep": "me"}},
            "spec": {
                "schedulerName": "hami-scheduler",
                "containers": [{"name": "main", "image": "cuda:12", "resources": {"limits": limits}}],
            },
        }
        created: dict[str, Any] = self.call("POST", core_path("pods", namespace=NS), body)
        return created

    def pod(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", core_path("pods", name, namespace=NS))
        return found

    def patch_pod(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.call("PATCH", core_path("pods", name, namespace=NS), body, MERGE)
        return patched


@pytest.fixture
def kube(kube_local_url: str) -> Iterator[Kube]:
    k = Kube(kube_local_url)
    try:
        yield k
    finally:
        k.api.close()  # type: ignore[no-untyped-call]


# --- (b) the node lock tried first from the view ------------------------------------------------------------


class SpyLocks(NodeLocks):
    """The real `NodeLocks` (real API calls), noting the node reads and the resourceVersions written with."""

    def __init__(self, core: client.CoreV1Api, view: tuple[str | None, str] | None, **kwargs: Any) -> None:
        self.views: list[str] = []
        self.reads: list[str] = []
        self.writes: list[tuple[str | None, str]] = []
        self.owner_reads: list[str] = []

        def node_view(node: str) -> tuple[str | None, str] | None:
            self.views.append(node)
            return view

        super().__init__(core, ttl_seconds=300, node_view=node_view, poll_initial=0.01, **kwargs)

    async def _read_node(self, node: str) -> dict[str, Any]:
        self.reads.append(node)
        return await super()._read_node(node)

    async def _read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.owner_reads.append(f"{namespace}/{name}")
        return await super()._read_pod(namespace, name)

    async def _write(self, node: str, value: str | None, resource_version: str) -> str:
        self.writes.append((value, resource_version))
        return await super()._write(node, value, resource_version)


def rv(obj: dict[str, Any]) -> str:
    value: str = obj["metadata"]["resourceVersion"]
    return value


async def test_a_current_free_view_takes_the_lock_without_reading_the_node(kube: Kube) -> None:
    node = kube.add_node("node-a", gpus("node-a"))
    locks = SpyLocks(kube.core, (None, rv(node)))
    await locks.acquire("node-a", NS, "me", wait_seconds=0)
    assert locks.views == ["node-a"]
    assert locks.reads == []  # the fast path: no GET
    assert [v for _, v in locks.writes] == [rv(node)]
    assert (kube.lock("node-a") or "").endswith(",default,me")


async def test_a_stale_free_view_costs_a_409_then_a_read_and_still_takes_the_lock(kube: Kube) -> None:
    node = kube.add_node("node-a", gpus("node-a"))
    stale = rv(node)
    # The node moved on since the view (someone's lock came and went); the view still says free at `stale`.
    kube.set_lock("node-a", "2026-08-21T10:15:04Z,default,gone")
    current = rv(kube.set_lock("node-a", None))
    assert current != stale
    locks = SpyLocks(kube.core, (None, stale))
    await locks.acquire("node-a", NS, "me", wait_seconds=0)
    assert [v for _, v in locks.writes] == [stale, current]  # refused (409), then written at the fresh one
    assert locks.reads == ["node-a"]
    lock = kube.lock("node-a")
    assert lock is not None and lock.endswith(",default,me")
    assert locks.writes[-1][0] == lock


async def test_a_stale_free_view_does_not_take_a_lock_another_pod_now_holds(kube: Kube) -> None:
    node = kube.add_node("node-a", gpus("node-a"))
    kube.add_pod("holder")
    holder = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ},default,holder"
    kube.set_lock("node-a", holder)
    locks = SpyLocks(kube.core, (None, rv(node)))
    with pytest.raises(LockError, match="held by pod default/holder"):
        await locks.acquire("node-a", NS, "me", wait_seconds=0)
    assert kube.lock("node-a") == holder  # untouched
    assert len(locks.writes) == 1  # only the refused one


@pytest.mark.parametrize(
    "view_lock",
    [
        pytest.param("held-by-live-pod", id="held-by-live-pod"),
        pytest.param("mine", id="mine"),
    ],
)
async def test_a_view_saying_held_is_checked_against_the_node_before_waiting(
    kube: Kube, view_lock: str
) -> None:
    node = kube.add_node("node-a", gpus("node-a"))
    kube.add_pod("holder")  # alive: its lock would be honoured
    now = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    value = f"{now},default,holder" if view_lock == "held-by-live-pod" else f"{now},default,me"
    locks = SpyLocks(kube.core, (value, rv(node)))
    # wait_seconds=0: trusting the view would fail at once with "node lock contention".
    await locks.acquire("node-a", NS, "me", wait_seconds=0)
    assert locks.reads == ["node-a"]
    assert locks.owner_reads == []  # the view's holder was not even looked up
    lock = kube.lock("node-a")
    assert lock is not None and lock.endswith(",default,me")


async def test_without_a_view_the_node_is_read(kube: Kube) -> None:
    kube.add_node("node-a", gpus("node-a"))
    locks = SpyLocks(kube.core, None)
    await locks.acquire("node-a", NS, "me", wait_seconds=0)
    assert locks.reads == ["node-a"]
    assert (kube.lock("node-a") or "").endswith(",default,me")


async def test_the_runtime_wires_the_cache_view_into_the_locks(
    kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube.add_node("node-a", gpus("node-a"))
    async with running_scheduler(kube) as ext:
        locks = ext.runtime.locks
        assert locks is not None

        def settled() -> bool:
            # The leader writes its handshake request onto the new node first; after that the node is
            # quiet, and the view must be the node as it is now.
            node = kube.node("node-a")
            handshake = (node["metadata"].get("annotations") or {}).get(wire.NODE_HANDSHAKE)
            return bool(handshake) and ext.runtime.cache.node_lock_view("node-a") == (None, rv(node))

        await poll_until(settled, what="node cached after the handshake request")

        # No more handshake passes (the leader's first pass and its loop's may both write at start): with no
        # other writer, a view that matches the node twice, a moment apart, stays current for the acquire.
        async def no_pass() -> None:
            return None

        monkeypatch.setattr(ext.runtime, "registration_pass", no_pass)
        async with asyncio.timeout(30):
            while True:
                before = rv(kube.node("node-a"))
                await asyncio.sleep(0.3)
                if rv(kube.node("node-a")) == before and settled():
                    break
        reads: list[str] = []
        real = locks._read_node

        async def read_node(node: str) -> dict[str, Any]:
            reads.append(node)
            return await real(node)

        monkeypatch.setattr(locks, "_read_node", read_node)
        await locks.acquire("node-a", NS, "me", wait_seconds=0)
        assert reads == []  # decided from the watch cache's view
        taken = kube.lock("node-a")
        assert taken is not None and taken.endswith(",default,me")
        await poll_until(
            lambda: (ext.runtime.cache.node_lock_view("node-a") or (None, ""))[0] == taken, what="lock seen"
        )


async def test_the_leader_clears_locks_past_their_ttl_and_only_those(kube: Kube) -> None:
    """A scheduler killed between taking a lock and binding leaves the lock; its pod may then be bound
    elsewhere, so nobody would release it. The leader's registration pass clears it once past the TTL."""
    kube.add_node("node-a", gpus("node-a"))
    kube.add_node("node-b", gpus("node-b"))
    now = datetime.now(UTC)
    expired = f"{(now - timedelta(seconds=120)).strftime('%Y-%m-%dT%H:%M:%SZ')},default,crashed"
    fresh = f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')},default,binding"
    kube.set_lock("node-a", expired)
    kube.set_lock("node-b", fresh)
    async with running_scheduler(kube) as ext:
        await poll_until(lambda: len(ext.runtime.cache.node_locks()) == 2, what="both locks cached")

        def settled() -> bool:
            # The leader's own loop writes a handshake request onto each new node first; the sweep's write is
            # conditioned on the cached resourceVersion, so wait until the cache shows the nodes as they are.
            return all(
                (ext.runtime.cache.node_lock_view(node) or (None, ""))[1] == rv(kube.node(node))
                and not ext.runtime.cache.handshake_due()
                for node in ("node-a", "node-b")
            )

        await poll_until(settled, what="nodes cached as they are now")
        await ext.runtime.registration_pass()
        assert kube.lock("node-a") is None
        assert kube.lock("node-b") == fresh
        # A view gone stale (the node changed since) is not written over: the write is conditional.
        locks = ext.runtime.locks
        assert locks is not None
        assert not await locks.clear_expired("node-b", expired, "1")
        assert kube.lock("node-b") == fresh


# --- (c) binds from the filtered copy -----------------------------------------------------------------------


def scheduler_config(url: str, bind_writes: str = "auto") -> SchedulerConfig:
    return SchedulerConfig.model_validate(
        {
            "http_bind": "127.0.0.1:0",
            "metrics_bind_address": "127.0.0.1:0",
            "grpc_bind": "127.0.0.1:0",
            "kube": {"server": url},
            "bind_lock_wait_seconds": 10,
            "resync_seconds": 0,
            "bind_writes": bind_writes,
        }
    )


@dataclass
class Extender:
    runtime: SchedulerRuntime
    session: aiohttp.ClientSession

    async def post(self, verb: str, body: Any) -> Any:
        url = f"http://127.0.0.1:{self.runtime.http_port}/{verb}"
        async with self.session.post(url, data=json.dumps(body).encode()) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def filter(self, pod: dict[str, Any], nodes: Sequence[str] = ("node-a",)) -> Any:
        return await self.post("filter", {"Pod": pod, "NodeNames": list(nodes)})

    async def bind(self, pod: dict[str, Any], node: str) -> str:
        meta = pod["metadata"]
        body = {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": node,
        }
        error: str = (await self.post("bind", body))["Error"]
        return error


@asynccontextmanager
async def running_scheduler(kube: Kube, bind_writes: str = "auto") -> AsyncIterator[Extender]:
    """A started `SchedulerRuntime` (the same one the service runs) with its caches synced."""
    runtime = SchedulerRuntime(scheduler_config(kube.url, bind_writes))
    await runtime.start()
    try:
        async with aiohttp.ClientSession() as session:
            await poll_until(runtime.ready, what="caches synced")
            yield Extender(runtime, session)
    finally:
        await runtime.stop()


@pytest.fixture(params=["binding", "patch-then-binding"])
async def extender(kube: Kube, request: pytest.FixtureRequest) -> AsyncIterator[Extender]:
    """Binds with the allocation inside the Binding (one write), and HAMi's patch then Binding."""
    kube.add_node("node-a", gpus("node-a", 2))
    kube.add_node("node-b", gpus("node-b"))
    async with running_scheduler(kube, request.param) as ext:
        await poll_until(lambda: len(ext.runtime.cache.node_names()) == 2, what="nodes cached")
        yield ext


HAMI_ANNOTATIONS = {
    wire.VGPU_NODE,
    "hami.io/vgpu-time",
    "hami.io/vgpu-devices-to-allocate",
    "hami.io/vgpu-devices-allocated",
    "hami.io/bind-phase",
    "hami.io/bind-time",
}


def used_memory(ext: Extender, node: str) -> int:
    snapshot = ext.runtime.cache.snapshot(node)
    return sum(d.usedmem for d in snapshot.devices) if snapshot is not None else -1


def spy_pod_writes(ext: Extender, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The resourceVersion precondition of each write of an allocation to the pod (still sent for real): the
    pod patch in HAMi's two writes, the Binding carrying the annotations in the one-write bind."""
    binder = ext.runtime.binder
    assert binder is not None
    sent: list[str | None] = []
    real_patch, real_binding = binder._patch_pod, binder._post_binding

    async def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        sent.append(body["metadata"].get("resourceVersion"))
        await real_patch(namespace, name, body)

    async def post_binding(namespace: str, name: str, uid: str, node: str, **metadata: Any) -> None:
        if metadata.get("annotations"):
            sent.append(metadata.get("resource_version") or None)
        await real_binding(namespace, name, uid, node, **metadata)

    monkeypatch.setattr(binder, "_patch_pod", patch)
    monkeypatch.setattr(binder, "_post_binding", post_binding)
    return sent


async def test_filter_remembers_the_pod_and_bind_starts_from_it(
    kube: Kube, extender: Extender, monkeypatch: pytest.MonkeyPatch
) -> None:
    binder = extender.runtime.binder
    assert binder is not None
    pod = kube.add_pod("fresh")
    assert (await extender.filter(pod))["NodeNames"] == ["node-a"]
    assert len(binder.recent_pods) == 1
    writes = spy_pod_writes(extender, monkeypatch)
    assert await extender.bind(pod, "node-a") == ""
    assert len(binder.recent_pods) == 0  # taken
    # One write of the allocation, conditioned on the filtered copy's resourceVersion.
    assert writes == [rv(pod)]
    bound = kube.pod("fresh")
    assert bound["spec"]["nodeName"] == "node-a"
    assert set(bound["metadata"]["annotations"]) >= HAMI_ANNOTATIONS


async def test_a_bind_from_a_stale_filtered_copy_rereads_and_binds(
    kube: Kube, extender: Extender, monkeypatch: pytest.MonkeyPatch
) -> None:
    binder = extender.runtime.binder
    assert binder is not None
    pod = kube.add_pod("moved", 3000, 30)
    assert (await extender.filter(pod))["NodeNames"] == ["node-a"]
    assert len(binder.recent_pods) == 1
    # The pod changes after kube-scheduler filtered it: the remembered copy is stale.
    changed = kube.patch_pod("moved", {"metadata": {"annotations": {"touched": "after-filter"}}})
    assert rv(changed) != rv(pod)
    writes = spy_pod_writes(extender, monkeypatch)
    assert await extender.bind(pod, "node-a") == ""
    # The stale copy's write was refused as a whole (409); the second one came from a fresh read.
    assert writes == [rv(pod), rv(changed)]
    bound = kube.pod("moved")
    meta = bound["metadata"]
    assert bound["spec"]["nodeName"] == "node-a"
    assert meta["labels"] == {wire.VGPU_NODE: "node-a"}
    assert set(meta["annotations"]) == HAMI_ANNOTATIONS | {"keep", "touched"}
    assert meta["annotations"]["touched"] == "after-filter"  # the later change survived
    assert meta["annotations"]["keep"] == "me"
    assert meta["annotations"]["hami.io/bind-phase"] == "allocating"
    allocated = meta["annotations"]["hami.io/vgpu-devices-allocated"]
    assert allocated in ("GPU-node-a-0,NVIDIA,3000,30:;", "GPU-node-a-1,NVIDIA,3000,30:;")
    assert meta["annotations"]["hami.io/vgpu-devices-to-allocate"] == allocated
    assert (kube.lock("node-a") or "").endswith(",default,moved")  # left for the device plugin
    await poll_until(lambda: extender.runtime.cache.reservations() == [], what="reservation superseded")
    await poll_until(lambda: used_memory(extender, "node-a") == 3000, what="usage counted once")
    await extender.runtime.events.drain()
    events = kube.call("GET", core_path("events", namespace=NS))["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "moved"]
    assert "BindingSucceed" in reasons and "BindingFailed" not in reasons


async def test_a_repeated_bind_from_a_stale_pre_bind_copy_succeeds_without_changes(
    kube: Kube, extender: Extender
) -> None:
    binder = extender.runtime.binder
    assert binder is not None
    pod = kube.add_pod("twice")
    assert (await extender.filter(pod))["NodeNames"] == ["node-a"]
    assert await extender.bind(pod, "node-a") == ""
    before = kube.pod("twice")
    lock = kube.lock("node-a")
    assert lock is not None and lock.endswith(",default,twice")
    # kube-scheduler filters again with its old (pre-bind) copy and retries the bind that did succeed.
    await extender.filter(pod)
    assert len(binder.recent_pods) == 1
    assert await extender.bind(pod, "node-a") == ""
    assert len(binder.recent_pods) == 0
    after = kube.pod("twice")
    assert after["spec"]["nodeName"] == "node-a"
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert rv(after) == rv(before)  # nothing was written to the pod at all
    # A bind onto another node from the same stale copy is refused without touching the pod.
    await extender.filter(pod)
    assert 'already assigned to node "node-a"' in await extender.bind(pod, "node-b")
    assert rv(kube.pod("twice")) == rv(before)
    assert kube.lock("node-b") is None  # whatever the refused bind took there, it gave back
    assert used_memory(extender, "node-b") == 0


async def test_a_repeated_bind_from_a_stale_copy_keeps_the_lock_for_the_device_plugin(
    kube: Kube, extender: Extender
) -> None:
    pod = kube.add_pod("twice")
    assert (await extender.filter(pod))["NodeNames"] == ["node-a"]
    assert await extender.bind(pod, "node-a") == ""
    lock = kube.lock("node-a")
    assert lock is not None and lock.endswith(",default,twice")
    await extender.filter(pod)
    assert await extender.bind(pod, "node-a") == ""
    # The device plugin's Allocate has not run yet: the lock the first bind left must still be there.
    assert kube.lock("node-a") == lock


# --- (d) the node's pods from the watch when it has passed the lock write -----------------------------------


def spy_node_reads(ext: Extender, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The nodes whose pods the binder LISTs (still read for real)."""
    binder = ext.runtime.binder
    assert binder is not None
    listed: list[str] = []
    real = binder._pods_on_node

    async def pods_on_node(node: str) -> list[dict[str, Any]]:
        listed.append(node)
        return await real(node)

    monkeypatch.setattr(binder, "_pods_on_node", pods_on_node)
    return listed


async def test_the_lock_write_returns_the_nodes_new_resource_version(kube: Kube) -> None:
    before = rv(kube.add_node("n1", gpus("n1")))
    locks = NodeLocks(kube.core, ttl_seconds=300, poll_initial=0.01)
    try:
        assert await locks.acquire("n1", NS, "p", wait_seconds=5)
        written = locks.written_versions["n1"]
        assert written == rv(kube.node("n1")) and written != before
    finally:
        await locks.close()


@pytest.mark.parametrize(
    ("applied", "lists"),
    [
        pytest.param("999999999", [], id="watch-past-the-lock-write"),
        pytest.param("1", ["node-a"], id="watch-behind-the-lock-write"),
        pytest.param("", ["node-a"], id="watch-not-running"),
    ],
)
async def test_bind_reads_the_nodes_pods_only_when_the_watch_has_not_passed_its_lock(
    kube: Kube, extender: Extender, monkeypatch: pytest.MonkeyPatch, applied: str, lists: list[str]
) -> None:
    binder = extender.runtime.binder
    assert binder is not None
    listed = spy_node_reads(extender, monkeypatch)
    monkeypatch.setattr(binder, "_pods_applied", lambda: applied)
    pod = kube.add_pod("p1", 2000, 20)
    assert await extender.bind(pod, "node-a") == ""
    assert listed == lists
    bound = kube.pod("p1")
    assert bound["spec"]["nodeName"] == "node-a"
    await poll_until(lambda: used_memory(extender, "node-a") == 2000, what="usage counted once")


async def test_the_runtime_feeds_the_binder_the_pod_watchs_progress(kube: Kube, extender: Extender) -> None:
    binder = extender.runtime.binder
    assert binder is not None
    applied = binder._pods_applied
    assert applied is not None
    created = kube.add_pod("seen")
    await poll_until(lambda: int(applied() or 0) >= int(rv(created)), what="pod watch past the new pod")
