"""The scheduler extender against an API server, kube-local and the upstream kube-apiserver from the same
test bodies (the `api_server` fixture): filter, prioritize, bind with the node lock, rollback, phantom-usage
scenarios, metrics, and a clean stop. The extender runs with the deploy's kube-vgpu-scheduler
ServiceAccount (on the real server exactly the rights deploy/ grants it); set-up and assertions are the
admin's."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from services.common.codecs import encode_node_devices
from services.common.config import KubeAccess
from services.common.model import DeviceInfo
from services.scheduler.config import SchedulerConfig
from services.scheduler.extender_api import BindArgs
from services.scheduler.runtime import SchedulerRuntime
from tests.support import poll_until
from tests.support.apiservers import ApiServer

NS = "default"
MERGE = "application/merge-patch+json"
LOCK = "hami.io/mutex.lock"
SERVICE_ACCOUNT = "kube-vgpu-scheduler"


def gpus(node: str, count: int, mem: int = 16000, split: int = 10) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=f"GPU-{node}-{i}",
            index=i,
            count=split,
            devmem=mem,
            devcore=100,
            type="NVIDIA-Tesla T4",
            numa=0,
        )
        for i in range(count)
    ]


def node_body(name: str, devices: Sequence[DeviceInfo], allocatable: int | None = None) -> dict[str, Any]:
    slots = sum(d.count for d in devices) if allocatable is None else allocatable
    return {
        "metadata": {
            "name": name,
            "labels": {"gpu": "on"},
            "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devices)},
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(slots), "cpu": "16"}},
    }


def pod_body(
    name: str,
    mem: int | None = 1000,
    cores: int = 10,
    *,
    gpus_per_container: int = 1,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if mem is not None:
        resources = {
            "limits": {
                "nvidia.com/gpu": str(gpus_per_container),
                "nvidia.com/gpumem": str(mem),
                "nvidia.com/gpucores": str(cores),
            }
        }
    return {
        "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [{"name": "main", "image": "cuda:12", "resources": resources}],
        },
    }


class Cluster:
    """The API server under test plus the admin's official-client helpers used by the tests."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.api = server.api_client()
        self.core = client.CoreV1Api(self.api)

    @property
    def scheduler_access(self) -> KubeAccess:
        """What the extender under test runs with: the deploy's ServiceAccount on the real server."""
        return self.server.service_access(SERVICE_ACCOUNT)

    def raw(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        return json.loads(call(*args, _preload_content=False, **kwargs).data)

    def add_node(self, name: str, devices: Sequence[DeviceInfo], allocatable: int | None = None) -> None:
        body: Any = node_body(name, devices, allocatable)
        self.core.create_node(body)

    def add_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.raw(self.core.create_namespaced_pod, NS, body)
        return created

    def pod(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.raw(self.core.read_namespaced_pod, name, NS)
        return found

    def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.raw(self.core.read_node, name)
        return found

    def lock(self, node: str) -> str | None:
        value = (self.node(node)["metadata"].get("annotations") or {}).get(LOCK)
        return value if isinstance(value, str) else None

    def release_lock(self, node: str, owner: str | None = None) -> bool:
        """What the device plugin's Allocate does: drop the lock (only `owner`'s when given)."""
        obj = self.node(node)
        value = (obj["metadata"].get("annotations") or {}).get(LOCK)
        if value is None or (owner is not None and not value.endswith("," + owner)):
            return False
        body: Any = {
            "metadata": {"annotations": {LOCK: None}, "resourceVersion": obj["metadata"]["resourceVersion"]}
        }
        try:
            self.core.patch_node(node, body, _content_type=MERGE, _preload_content=False)
        except client.ApiException as exc:
            if exc.status == 409:
                return self.release_lock(node, owner)
            raise
        return True

    def patch_pod(self, name: str, body: dict[str, Any]) -> None:
        payload: Any = body
        self.core.patch_namespaced_pod(name, NS, payload, _content_type=MERGE, _preload_content=False)

    def patch_pod_status(self, name: str, status: dict[str, Any]) -> None:
        payload: Any = {"status": status}
        self.core.patch_namespaced_pod_status(name, NS, payload, _content_type=MERGE, _preload_content=False)

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = self.raw(self.core.list_namespaced_event, NS)["items"]
        return [e for e in items if e.get("reason") == reason]


@pytest.fixture
def cluster(api_server: ApiServer) -> Iterator[Cluster]:
    c = Cluster(api_server)
    c.add_node("node-a", gpus("node-a", 2))
    c.add_node("node-b", gpus("node-b", 1))
    try:
        yield c
    finally:
        c.api.close()


def scheduler_config(access: KubeAccess, **overrides: Any) -> SchedulerConfig:
    values: dict[str, Any] = {
        "http_bind": "127.0.0.1:0",
        "metrics_bind_address": "127.0.0.1:0",
        "grpc_bind": "127.0.0.1:0",
        "kube": access.model_dump(exclude_none=True),
        "bind_lock_wait_seconds": 60,
        "resync_seconds": 0,
        **overrides,
    }
    return SchedulerConfig.model_validate(values)


def bind_args(pod: dict[str, Any], node: str) -> BindArgs:
    meta = pod["metadata"]
    return BindArgs(meta["name"], meta["namespace"], meta["uid"], node)


class Extender:
    """A running SchedulerRuntime plus an HTTP client onto its extender."""

    def __init__(self, runtime: SchedulerRuntime, session: aiohttp.ClientSession) -> None:
        self.runtime = runtime
        self.session = session
        self.base = f"http://127.0.0.1:{runtime.http_port}"

    async def post(self, verb: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(f"{self.base}/{verb}", data=data) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def filter(self, pod: dict[str, Any], nodes: Sequence[str] = ("node-a", "node-b")) -> Any:
        return await self.post("filter", {"Pod": pod, "NodeNames": list(nodes)})

    async def bind(self, pod: dict[str, Any], node: str) -> str:
        meta = pod["metadata"]
        result = await self.post(
            "bind",
            {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node},
        )
        error: str = result["Error"]
        return error

    def usage(self, node: str) -> dict[str, tuple[int, int, int]]:
        snapshot = self.runtime.cache.snapshot(node)
        assert snapshot is not None
        return {d.id: (d.used, d.usedmem, d.usedcores) for d in snapshot.devices}

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        async with self.session.get(f"http://127.0.0.1:{self.runtime.metrics_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples


async def start_extender(cluster: Cluster, session: aiohttp.ClientSession, **overrides: Any) -> Extender:
    runtime = SchedulerRuntime(scheduler_config(cluster.scheduler_access, **overrides))
    await runtime.start()
    await poll_until(runtime.ready, what="caches synced")
    return Extender(runtime, session)


@pytest.fixture
async def extender(cluster: Cluster) -> AsyncIterator[Extender]:
    async with aiohttp.ClientSession() as session:
        ext = await start_extender(cluster, session)
        await poll_until(lambda: len(ext.runtime.cache.node_names()) == 2, what="nodes cached")
        try:
            yield ext
        finally:
            await ext.runtime.stop()


# --- filter / prioritize ------------------------------------------------------------------------------------


async def test_filter_returns_every_fitting_node_with_reasons(cluster: Cluster, extender: Extender) -> None:
    pod = cluster.add_pod(pod_body("small", 1000))
    result = await extender.filter(pod, ["node-a", "node-b", "node-x"])
    assert result == {
        "Nodes": None,
        "NodeNames": ["node-a", "node-b"],
        "FailedNodes": {"node-x": "node unregistered"},
        "FailedAndUnresolvableNodes": None,
        "Error": "",
    }
    big = cluster.add_pod(pod_body("big", 20000))
    result = await extender.filter(big)
    assert result["NodeNames"] is None
    assert result["FailedNodes"] == {
        "node-a": "2/2 CardInsufficientMemory",
        "node-b": "1/1 CardInsufficientMemory",
    }
    # No side effects: nothing was written on the pods, no usage was booked.
    assert "hami.io/vgpu-node" not in (cluster.pod("small")["metadata"].get("annotations") or {})
    assert extender.usage("node-a") == {"GPU-node-a-0": (0, 0, 0), "GPU-node-a-1": (0, 0, 0)}
    await extender.runtime.events.drain()
    assert any("find fit node(" in e["message"] for e in cluster.events("FilteringSucceed"))
    assert any(
        e["message"] == "no available node, 2 nodes do not meet" for e in cluster.events("FilteringFailed")
    )


async def test_repeated_filter_failures_of_one_pod_grow_one_events_count(
    cluster: Cluster, extender: Extender
) -> None:
    big = cluster.add_pod(pod_body("big", 20000))
    summary = "no available node, 2 nodes do not meet"
    names: set[str] = set()
    for attempt in range(1, 5):
        result = await extender.filter(big)
        assert result["NodeNames"] is None
        await extender.runtime.events.drain()  # each retry's Event is written before the next one
        found = [e for e in cluster.events("FilteringFailed") if e["message"] == summary]
        assert [e["count"] for e in found] == [attempt]  # one Event, patched, never a second one
        assert found[0]["involvedObject"]["uid"] == big["metadata"]["uid"]
        names.add(found[0]["metadata"]["name"])
    assert len(names) == 1
    assert extender.runtime.events.patched >= 3 and extender.runtime.events.failed == 0


async def test_filter_edge_cases(cluster: Cluster, extender: Extender) -> None:
    plain = cluster.add_pod(pod_body("cpu-only", None))
    assert (await extender.filter(plain, ["node-a", "anything"]))["NodeNames"] == ["node-a", "anything"]
    assert (await extender.post("filter", {"NodeNames": ["node-a"]}))["Error"] == "extender args missing pod"
    assert "cannot decode" in (await extender.post("filter", b"{not json"))["Error"]
    huge = b'{"Pod":{"metadata":{"name":"' + b"x" * (1 << 20) + b'"}}}'
    assert "larger than" in (await extender.post("filter", huge))["Error"]
    weights = cluster.add_pod(
        pod_body("bad-weights", annotations={"hami.io/device-scoring-weights": "slot=x"})
    )
    assert "hami.io/device-scoring-weights" in (await extender.filter(weights))["Error"]
    # Case-insensitive keys, full Node objects (not nodeCacheCapable): Node objects back, no side effects.
    pod = cluster.add_pod(pod_body("full", 1000))
    nodes = [cluster.node("node-a"), {"metadata": {"name": "template"}}]
    result = await extender.post("filter", {"pod": pod, "nodes": {"items": nodes}})
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["node-a"]
    assert result["NodeNames"] is None
    assert result["FailedNodes"] == {"template": "node unregistered"}
    # The service is still healthy after all that.
    async with extender.session.get(f"{extender.base}/healthz") as resp:
        assert resp.status == 200
    async with extender.session.get(f"{extender.base}/readyz") as resp:
        assert resp.status == 200


async def test_hami_filter_mode_returns_the_single_best_node(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        ext = await start_extender(cluster, session, filter_mode="hami", node_scheduler_policy="spread")
        try:
            await poll_until(lambda: len(ext.runtime.cache.node_names()) == 2)
            busy = cluster.add_pod(pod_body("busy", 8000, 50))
            assert await ext.bind(busy, "node-b") == ""
            await poll_until(lambda: ext.usage("node-b")["GPU-node-b-0"][1] == 8000)
            pod = cluster.add_pod(pod_body("next", 1000))
            result = await ext.filter(pod)
            assert result["NodeNames"] == ["node-a"]  # spread: the emptier node
        finally:
            await ext.runtime.stop()


async def test_prioritize_orders_nodes_by_policy(cluster: Cluster, extender: Extender) -> None:
    busy = cluster.add_pod(pod_body("busy", 8000, 50))
    assert await extender.bind(busy, "node-b") == ""
    cluster.release_lock("node-b")
    await poll_until(lambda: extender.usage("node-b")["GPU-node-b-0"] == (1, 8000, 50))
    await poll_until(
        lambda: "node-b" not in extender.runtime.cache.busy_nodes(), what="node-b's lock release seen"
    )
    pod = cluster.add_pod(pod_body("p", 1000))
    body = {"Pod": pod, "NodeNames": ["node-a", "node-b", "ghost"]}
    assert await extender.post("prioritize", body) == [
        {"Host": "node-a", "Score": 0},
        {"Host": "node-b", "Score": 10},  # binpack (default): the busiest node first
        {"Host": "ghost", "Score": 0},
    ]
    spread = cluster.add_pod(pod_body("s", 1000, annotations={"hami.io/node-scheduler-policy": "spread"}))
    ranked = await extender.post("prioritize", {"Pod": spread, "NodeNames": ["node-a", "node-b"]})
    assert ranked == [{"Host": "node-a", "Score": 10}, {"Host": "node-b", "Score": 0}]
    async with extender.session.post(f"{extender.base}/prioritize", data=b"[") as resp:
        assert resp.status == 400
        assert "cannot decode" in (await resp.json())["Error"]


async def test_prioritize_ranks_nodes_with_a_bind_under_way_last(
    cluster: Cluster, extender: Extender
) -> None:
    """Pods of a burst are scored before the binds of the pods ahead of them land: prioritize ranks last a
    node whose lock is held, and the node it just ranked alone at the top for another pod, so consecutive
    pods spread instead of queueing on one node's lock. Without either, the policy's order stands."""
    busy = cluster.add_pod(pod_body("busy", 8000, 50))
    assert await extender.bind(busy, "node-b") == ""  # its lock stays held until Allocate
    await poll_until(lambda: "node-b" in extender.runtime.cache.busy_nodes(), what="node-b's lock seen")
    first = cluster.add_pod(pod_body("first", 1000))
    names = {"NodeNames": ["node-a", "node-b"]}
    # binpack prefers the busier node-b, but a bind there would wait for the lock.
    assert await extender.post("prioritize", {"Pod": first, **names}) == [
        {"Host": "node-a", "Score": 10},
        {"Host": "node-b", "Score": 0},
    ]
    cluster.release_lock("node-b")
    await poll_until(
        lambda: "node-b" not in extender.runtime.cache.busy_nodes(), what="node-b's lock release seen"
    )
    assert await extender.post("prioritize", {"Pod": first, **names}) == [
        {"Host": "node-a", "Score": 0},
        {"Host": "node-b", "Score": 10},
    ]
    # `first` is likely to be bound to node-b: the next pod, scored before that bind arrives, goes elsewhere.
    second = cluster.add_pod(pod_body("second", 1000))
    assert await extender.post("prioritize", {"Pod": second, **names}) == [
        {"Host": "node-a", "Score": 10},
        {"Host": "node-b", "Score": 0},
    ]
    assert await extender.bind(first, "node-b") == ""  # its bind arrives: the binder's own bookkeeping
    cluster.release_lock("node-b")
    await poll_until(
        lambda: "node-b" not in extender.runtime.cache.busy_nodes(), what="node-b's lock release seen"
    )
    assert (await extender.post("prioritize", {"Pod": second, **names}))[1] == {"Host": "node-b", "Score": 10}


async def test_prioritize_of_a_cycle_reuses_its_filter_outcome(cluster: Cluster, extender: Extender) -> None:
    """kube-scheduler's prioritize right after the pod's filter scores from that filter's outcome, even when
    binds changed the cache in between (the scores are advisory: the bind re-fits); another pod's prioritize
    evaluates afresh."""
    pod = cluster.add_pod(pod_body("cycle", 1000))
    filtered = await extender.filter(pod)
    assert filtered["NodeNames"] == ["node-a", "node-b"]
    busy = cluster.add_pod(pod_body("busy", 8000, 50))
    assert await extender.bind(busy, "node-b") == ""
    cluster.release_lock("node-b")
    await poll_until(lambda: extender.usage("node-b")["GPU-node-b-0"] == (1, 8000, 50))
    # Prioritize ranks a node whose lock it still sees last (a bind there would queue): wait for the release.
    await poll_until(
        lambda: "node-b" not in extender.runtime.cache.busy_nodes(), what="node-b's lock release seen"
    )
    body = {"Pod": pod, "NodeNames": ["node-a", "node-b"]}
    assert await extender.post("prioritize", body) == [
        {"Host": "node-a", "Score": 10},  # both nodes were empty when this pod was filtered
        {"Host": "node-b", "Score": 10},
    ]
    other = cluster.add_pod(pod_body("other", 1000))
    assert await extender.post("prioritize", {"Pod": other, "NodeNames": ["node-a", "node-b"]}) == [
        {"Host": "node-a", "Score": 0},
        {"Host": "node-b", "Score": 10},
    ]


# --- bind ---------------------------------------------------------------------------------------------------


async def test_bind_writes_hamis_annotations_and_binds(cluster: Cluster, extender: Extender) -> None:
    pod = cluster.add_pod(pod_body("gpu-pod", 3000, 30))
    assert await extender.bind(pod, "node-a") == ""
    bound = cluster.pod("gpu-pod")
    meta = bound["metadata"]
    annotations = meta["annotations"]
    assert bound["spec"]["nodeName"] == "node-a"
    assert meta["labels"] == {"hami.io/vgpu-node": "node-a"}
    assert set(annotations) == {
        "hami.io/vgpu-node",
        "hami.io/vgpu-time",
        "hami.io/vgpu-devices-to-allocate",
        "hami.io/vgpu-devices-allocated",
        "hami.io/bind-phase",
        "hami.io/bind-time",
    }
    assert annotations["hami.io/vgpu-node"] == "node-a"
    assert annotations["hami.io/bind-phase"] == "allocating"
    assert annotations["hami.io/vgpu-time"].isdigit() and annotations["hami.io/bind-time"].isdigit()
    allocated = annotations["hami.io/vgpu-devices-allocated"]
    assert allocated in ("GPU-node-a-0,NVIDIA,3000,30:;", "GPU-node-a-1,NVIDIA,3000,30:;")
    assert annotations["hami.io/vgpu-devices-to-allocate"] == allocated
    # The node lock is left for the device plugin's Allocate, in HAMi's format.
    lock = cluster.lock("node-a")
    assert lock is not None and lock.endswith(",default,gpu-pod") and lock[:4].isdigit()
    assert "Z," in lock
    await poll_until(lambda: sum(u[1] for u in extender.usage("node-a").values()) == 3000, what="usage")
    await poll_until(lambda: extender.runtime.cache.reservations() == [], what="reservation superseded")
    await extender.runtime.events.drain()
    assert [e["message"] for e in cluster.events("BindingSucceed")] == [
        "Successfully binding node [node-a] to default/gpu-pod"
    ]


async def test_second_bind_waits_for_the_lock_and_succeeds_after_release(
    cluster: Cluster, extender: Extender
) -> None:
    first = cluster.add_pod(pod_body("first", 1000))
    second = cluster.add_pod(pod_body("second", 1000))
    assert await extender.bind(first, "node-a") == ""
    waiting = asyncio.create_task(extender.bind(second, "node-a"))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the second bind must wait while the first pod holds the node lock"
    assert cluster.pod("second")["spec"].get("nodeName") is None
    assert cluster.release_lock("node-a", "default/first".replace("/", ","))
    assert await asyncio.wait_for(waiting, 30) == ""
    assert cluster.pod("second")["spec"]["nodeName"] == "node-a"
    lock = cluster.lock("node-a")
    assert lock is not None and lock.endswith(",default,second")


async def test_stale_and_dangling_locks_are_taken_over(cluster: Cluster, extender: Extender) -> None:
    # A lock whose owner pod is gone (HAMi: 404 -> forced release) and a malformed one.
    for value in ("2099-01-01T00:00:00Z,default,ghost", "not-a-lock"):
        body: Any = {"metadata": {"annotations": {LOCK: value}}}
        cluster.core.patch_node("node-b", body, _content_type=MERGE, _preload_content=False)
        pod = cluster.add_pod(pod_body(f"p-{len(value)}", 1000))
        assert await extender.bind(pod, "node-b") == ""
        assert (cluster.lock("node-b") or "").endswith(f",default,p-{len(value)}")
        cluster.release_lock("node-b")


async def test_a_live_pods_lock_expires_after_the_ttl_and_is_taken_over(cluster: Cluster) -> None:
    """A lock whose owner still waits for Allocate (a device plugin that never came) holds the node only
    for node_lock_ttl_seconds; then the next bind takes it over, leaving the owner's own binding alone."""
    holder = cluster.add_pod(pod_body("holder", 1000))
    async with aiohttp.ClientSession() as session:
        # Lock times are whole seconds: a 3 s TTL holds the node for at least 2 s after the holder's bind.
        ext = await start_extender(cluster, session, node_lock_ttl_seconds=3)
        try:
            assert await ext.bind(holder, "node-a") == ""
            pod = cluster.add_pod(pod_body("after-ttl", 1000))
            waiting = asyncio.create_task(ext.bind(pod, "node-a"))
            await asyncio.sleep(0.3)
            assert not waiting.done(), "a live pod's fresh lock must hold the node"
            assert (cluster.lock("node-a") or "").endswith(",default,holder")
            assert await asyncio.wait_for(waiting, 30) == ""
            assert (cluster.lock("node-a") or "").endswith(",default,after-ttl")
            assert cluster.pod("after-ttl")["spec"]["nodeName"] == "node-a"
            assert cluster.pod("holder")["spec"]["nodeName"] == "node-a"
        finally:
            await ext.runtime.stop()


async def test_bind_times_out_on_a_held_lock_and_rolls_back(cluster: Cluster) -> None:
    holder = cluster.add_pod(pod_body("holder", 1000))
    async with aiohttp.ClientSession() as session:
        ext = await start_extender(cluster, session, bind_lock_wait_seconds=0.2)
        try:
            assert await ext.bind(holder, "node-a") == ""
            pod = cluster.add_pod(pod_body("late", 1000))
            error = await ext.bind(pod, "node-a")
            assert "timed out after 0.2s waiting for node node-a to be unlocked" in error
            assert "node lock contention" in error
            assert (cluster.lock("node-a") or "").endswith(",default,holder")  # someone else's: untouched
            assert "hami.io/vgpu-node" not in (cluster.pod("late")["metadata"].get("annotations") or {})
            assert ext.runtime.cache.reservations() == [] or all(
                r.name != "late" for r in ext.runtime.cache.reservations()
            )
        finally:
            await ext.runtime.stop()


async def test_failed_binding_rolls_everything_back(
    cluster: Cluster, extender: Extender, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = cluster.add_pod(pod_body("raced", 2000, 20, annotations={"keep": "me"}))
    binder = extender.runtime.binder
    assert binder is not None
    real = binder._pods_on_node

    async def bound_behind_our_back(node: str) -> list[dict[str, Any]]:
        # Another actor binds the pod after our checks: our Binding will be refused with 409.
        binding: Any = {"metadata": {"name": "raced"}, "target": {"kind": "Node", "name": "node-b"}}
        cluster.core.create_namespaced_pod_binding("raced", NS, binding, _preload_content=False)
        return await real(node)

    monkeypatch.setattr(binder, "_pods_on_node", bound_behind_our_back)
    error = await extender.bind(pod, "node-a")
    assert 'already assigned to node "node-b"' in error
    meta = cluster.pod("raced")["metadata"]
    assert meta["annotations"] == {"keep": "me"}  # every bind annotation reverted
    assert "hami.io/vgpu-node" not in (meta.get("labels") or {})
    assert cluster.lock("node-a") is None  # our lock released
    assert extender.runtime.cache.reservations() == []
    await poll_until(
        lambda: all(u == (0, 0, 0) for u in extender.usage("node-a").values()), what="usage freed"
    )
    await extender.runtime.events.drain()
    assert any("already assigned" in e["message"] for e in cluster.events("BindingFailed"))


async def test_bind_of_a_bound_pod(cluster: Cluster, extender: Extender) -> None:
    pod = cluster.add_pod(pod_body("twice", 1000))
    assert await extender.bind(pod, "node-a") == ""
    before = cluster.pod("twice")["metadata"]["annotations"]
    # kube-scheduler retrying a bind that did succeed (e.g. after its HTTP timeout): success, nothing redone.
    assert await extender.bind(pod, "node-a") == ""
    assert cluster.pod("twice")["metadata"]["annotations"] == before
    # A bind onto another node is refused without touching the pod.
    assert 'already assigned to node "node-a"' in await extender.bind(pod, "node-b")
    assert cluster.pod("twice")["metadata"]["annotations"] == before
    assert cluster.lock("node-b") is None


async def test_bind_refits_against_current_usage(cluster: Cluster, extender: Extender) -> None:
    first = cluster.add_pod(pod_body("first", 12000, 10))
    second = cluster.add_pod(pod_body("second", 12000, 10))
    # Both pass filter (nothing is reserved there) ...
    assert (await extender.filter(first, ["node-b"]))["NodeNames"] == ["node-b"]
    assert (await extender.filter(second, ["node-b"]))["NodeNames"] == ["node-b"]
    # ... but only one fits the single 16000 MiB card at bind time.
    assert await extender.bind(first, "node-b") == ""
    cluster.release_lock("node-b")
    error = await extender.bind(second, "node-b")
    assert "does not fit node node-b any more: 1/1 CardInsufficientMemory" in error
    assert cluster.lock("node-b") is None
    assert cluster.pod("second")["spec"].get("nodeName") is None


async def test_bind_of_a_pod_without_gpus_just_binds(cluster: Cluster, extender: Extender) -> None:
    pod = cluster.add_pod(pod_body("cpu", None))
    assert await extender.bind(pod, "node-a") == ""
    assert cluster.pod("cpu")["spec"]["nodeName"] == "node-a"
    assert cluster.lock("node-a") is None
    missing = {"metadata": {"name": "ghost", "namespace": NS, "uid": ""}}
    assert "failed to get pod default/ghost" in await extender.bind(missing, "node-a")
    assert (await extender.post("bind", {"PodName": "x"}))["Error"] == "extender binding args missing Node"


async def test_only_the_leader_binds(cluster: Cluster) -> None:
    # kube-scheduler's Lease lives in the install namespace, where the deploy lets the extender read it.
    lease_namespace = cluster.server.install_namespace
    async with aiohttp.ClientSession() as session:
        ext = await start_extender(
            cluster, session, leader_elect=True, identity="replica-1", lease_namespace=lease_namespace
        )
        try:
            pod = cluster.add_pod(pod_body("p", 1000))
            assert "not the leader" in await ext.bind(pod, "node-a")
            lease: Any = {
                "metadata": {"name": "hami-scheduler", "namespace": lease_namespace},
                "spec": {"holderIdentity": "replica-1_abc", "leaseDurationSeconds": 60},
            }
            coordination = client.CoordinationV1Api(cluster.api)
            coordination.create_namespaced_lease(lease_namespace, lease, _preload_content=False)
            await poll_until(ext.runtime.leader.is_leader, what="leadership")
            assert await ext.bind(pod, "node-a") == ""
        finally:
            await ext.runtime.stop()


# --- phantom usage (docs/weaknesses.md#phantom-usage) -------------------------------------------------------


async def _bound_pod(cluster: Cluster, extender: Extender, name: str, node: str = "node-b") -> dict[str, Any]:
    pod = cluster.add_pod(pod_body(name, 4000, 20))
    assert await extender.bind(pod, node) == ""
    cluster.release_lock(node)
    await poll_until(lambda: extender.runtime.cache.pod_uid(NS, name) is not None, what=f"{name} cached")
    return pod


async def test_deleted_pod_frees_usage(cluster: Cluster, extender: Extender) -> None:
    await _bound_pod(cluster, extender, "doomed")
    assert extender.usage("node-b") == {"GPU-node-b-0": (1, 4000, 20)}
    # No kubelet confirms the pod's shutdown on the real server: it is deleted at once, as a kubelet would.
    cluster.core.delete_namespaced_pod("doomed", NS, grace_period_seconds=0, _preload_content=False)
    await poll_until(lambda: extender.usage("node-b") == {"GPU-node-b-0": (0, 0, 0)}, what="usage freed")


async def test_terminating_pod_keeps_usage_and_succeeded_frees_it(
    cluster: Cluster, extender: Extender
) -> None:
    await _bound_pod(cluster, extender, "finishing")
    # A finalizer keeps the pod around while it terminates: its GPU is still in use.
    cluster.patch_pod("finishing", {"metadata": {"finalizers": ["example.com/hold"]}})
    try:
        cluster.core.delete_namespaced_pod("finishing", NS, _preload_content=False)
        await poll_until(lambda: bool(cluster.pod("finishing")["metadata"].get("deletionTimestamp")))
        await poll_until(lambda: extender.runtime.cache.pods()[0].terminating, what="terminating seen")
        assert extender.usage("node-b") == {"GPU-node-b-0": (1, 4000, 20)}
        # Restarting the cache replays the same state (HAMi PR #2812: the terminating pod still counts).
        async with aiohttp.ClientSession() as session:
            restarted = await start_extender(cluster, session)
            try:
                await poll_until(lambda: restarted.runtime.cache.snapshot("node-b") is not None)
                assert restarted.usage("node-b") == extender.usage("node-b")
            finally:
                await restarted.runtime.stop()
        cluster.patch_pod_status("finishing", {"phase": "Succeeded"})
        await poll_until(
            lambda: extender.usage("node-b") == {"GPU-node-b-0": (0, 0, 0)}, what="freed on Succeeded"
        )
    finally:
        # Else the finalizer keeps the pod for ever on the real server, which outlives the test.
        cluster.patch_pod("finishing", {"metadata": {"finalizers": None}})


async def test_restart_replays_the_same_usage(cluster: Cluster, extender: Extender) -> None:
    await _bound_pod(cluster, extender, "one", "node-a")
    await _bound_pod(cluster, extender, "two", "node-a")
    await _bound_pod(cluster, extender, "three", "node-b")
    cluster.patch_pod_status("two", {"phase": "Failed"})
    await poll_until(lambda: sum(u[0] for u in extender.usage("node-a").values()) == 1)
    before = {n: extender.usage(n) for n in ("node-a", "node-b")}
    async with aiohttp.ClientSession() as session:
        restarted = await start_extender(cluster, session)
        try:
            await poll_until(lambda: len(restarted.runtime.cache.node_names()) == 2)
            assert {n: restarted.usage(n) for n in ("node-a", "node-b")} == before
        finally:
            await restarted.runtime.stop()


async def test_node_registration_and_health(cluster: Cluster, extender: Extender) -> None:
    # A new node whose kubelet does not show GPUs yet gets a handshake request and stays schedulable.
    cluster.add_node("node-c", gpus("node-c", 1), allocatable=0)
    await poll_until(lambda: "node-c" in extender.runtime.cache.node_names())
    await extender.runtime.registration_pass()
    handshake = (cluster.node("node-c")["metadata"].get("annotations") or {}).get(
        "hami.io/node-handshake", ""
    )
    assert handshake.startswith("Requesting_")
    pod = cluster.add_pod(pod_body("p", 1000))
    assert (await extender.filter(pod, ["node-c"]))["NodeNames"] == ["node-c"]
    # node-a reboots: its allocatable drops to 0 -> unschedulable, then comes back -> schedulable (no wedge).
    status: Any = {"status": {"allocatable": {"nvidia.com/gpu": "0"}}}
    cluster.core.patch_node_status("node-a", status, _content_type=MERGE, _preload_content=False)
    await poll_until(lambda: extender.runtime.cache.snapshot("node-a") is None, what="node-a unhealthy")
    assert (await extender.filter(pod, ["node-a"]))["FailedNodes"] == {"node-a": "node unregistered"}
    status = {"status": {"allocatable": {"nvidia.com/gpu": "20"}}}
    cluster.core.patch_node_status("node-a", status, _content_type=MERGE, _preload_content=False)
    await poll_until(lambda: extender.runtime.cache.snapshot("node-a") is not None, what="node-a back")
    assert (await extender.filter(pod, ["node-a"]))["NodeNames"] == ["node-a"]
    # An undecodable register annotation skips the node, and the service carries on.
    bad: Any = {"metadata": {"annotations": {"hami.io/node-nvidia-register": "[{"}}}
    cluster.core.patch_node("node-c", bad, _content_type=MERGE, _preload_content=False)
    await poll_until(lambda: extender.runtime.cache.snapshot("node-c") is None, what="node-c skipped")
    assert (await extender.filter(pod, ["node-c", "node-b"]))["NodeNames"] == ["node-b"]


# --- metrics ------------------------------------------------------------------------------------------------


async def test_metrics_endpoint(cluster: Cluster, extender: Extender) -> None:
    pod = cluster.add_pod(pod_body("metered", 3000, 30))
    assert (await extender.filter(pod))["NodeNames"]
    assert await extender.bind(pod, "node-b") == ""
    await poll_until(lambda: extender.runtime.cache.pod_uid(NS, "metered") is not None)
    samples = await extender.metrics()
    device = {
        "zone": "vGPU",
        "node": "node-b",
        "device_uuid": "GPU-node-b-0",
        "device_index": "0",
        "device_type": "NVIDIA-Tesla T4",
    }
    assert (device, 16000 * 1024 * 1024) in samples["hami_gpu_memory_limit_bytes"]
    assert (device, 1) in samples["hami_gpu_shared_count"]
    assert (device, 30) in samples["hami_gpu_core_allocated_ratio"]
    assert ({**device, "device_cores": "30"}, 3000 * 1024 * 1024) in samples[
        "hami_gpu_memory_allocated_bytes"
    ]
    pod_labels = {
        "zone": "vGPU",
        "namespace": NS,
        "node": "node-b",
        "pod": "metered",
        "container_index": "0",
        "device_uuid": "GPU-node-b-0",
    }
    assert samples["hami_vgpu_memory_allocated_bytes"] == [(pod_labels, 3000 * 1024 * 1024)]
    assert samples["kube_vgpu_scheduler_filter_duration_seconds_count"] == [({}, 1.0)]
    assert samples["kube_vgpu_scheduler_bind_duration_seconds_count"] == [({"result": "success"}, 1.0)]
    assert len(samples["hami_build_info"]) == 1


# --- shutdown -----------------------------------------------------------------------------------------------


async def test_stop_cancels_binds_under_way_and_releases_their_locks(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aiohttp.ClientSession() as session:
        ext = await start_extender(cluster, session)
        binder = ext.runtime.binder
        assert binder is not None
        stuck = threading.Event()
        reached = threading.Event()
        real = binder._pods_on_node

        async def slow_list(node: str) -> list[dict[str, Any]]:
            reached.set()
            await asyncio.to_thread(stuck.wait, 30)  # an API call that hangs after the node lock was taken
            return await real(node)

        monkeypatch.setattr(binder, "_pods_on_node", slow_list)
        pod = cluster.add_pod(pod_body("stuck", 1000))
        bind = asyncio.create_task(binder.bind(bind_args(pod, "node-a")))
        await poll_until(reached.is_set, what="bind past the lock")
        assert (cluster.lock("node-a") or "").endswith(",default,stuck")
        try:
            await ext.runtime.stop(grace=0.1)
        finally:
            stuck.set()
        with pytest.raises(asyncio.CancelledError):
            await bind
        assert cluster.lock("node-a") is None
        assert binder.held_locks == {}
        assert "not the leader" not in await binder.bind(bind_args(pod, "node-a"))  # refused: shutting down


async def test_without_an_api_server_it_serves_probes_and_answers_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = SchedulerConfig.model_validate(
        {"http_bind": "127.0.0.1:0", "metrics_bind_address": "127.0.0.1:0", "grpc_bind": "127.0.0.1:0"}
    )
    runtime = SchedulerRuntime(cfg)
    await runtime.start()
    try:
        assert runtime.kube_error is not None and not runtime.ready()
        async with aiohttp.ClientSession() as session:
            ext = Extender(runtime, session)
            pod = pod_body("p")
            pod["metadata"]["uid"] = "u"
            assert "no Kubernetes API" in (await ext.filter(pod))["Error"]
            assert "no Kubernetes API" in await ext.bind(pod, "node-a")
            async with session.get(f"{ext.base}/readyz") as resp:
                assert resp.status == 503
            async with session.get(f"{ext.base}/healthz") as resp:
                assert resp.status == 200
        assert runtime.grpc is not None
        async with grpc.aio.insecure_channel(runtime.grpc.target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await runtime.stop()
