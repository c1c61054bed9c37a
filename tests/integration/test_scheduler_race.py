"""Two extender instances (two caches, one API server) binding many pods at once onto a few nodes: the node
lock plus the bind-time re-fit must never over-commit a GPU (memory, cores or task slots).

The issue's scale: 2 scheduler replicas, 200 pods bound concurrently onto 5 nodes, through kube-local and
through the upstream kube-apiserver (where the replicas run with the deploy's ServiceAccount and RBAC, and
etcd's optimistic concurrency arbitrates the node lock). The test releases each node lock right after the
Binding, standing in for the device plugin's Allocate. Demand exceeds the cluster on every axis (memory,
cores and slots), so every limit is reached and defended."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import aiohttp
from kubernetes import client

from services.common.codecs import decode_node_devices, decode_pod_single_device, encode_node_devices
from services.common.config import KubeAccess
from services.common.model import DeviceInfo
from services.scheduler.config import SchedulerConfig
from services.scheduler.runtime import SchedulerRuntime
from tests.support.apiservers import ApiServer

NS = "default"
MERGE = "application/merge-patch+json"
LOCK = "hami.io/mutex.lock"
NODES = tuple(f"race-{i}" for i in range(1, 6))
GPUS_PER_NODE = 4
PODS = 200
SPLIT = 8
GPU_MEM = 16000


def node_body(name: str) -> dict[str, Any]:
    devices = [
        DeviceInfo(id=f"GPU-{name}-{i}", index=i, count=SPLIT, devmem=GPU_MEM, devcore=100, type="NVIDIA-A10")
        for i in range(GPUS_PER_NODE)
    ]
    return {
        "metadata": {
            "name": name,
            "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devices)},
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(GPUS_PER_NODE * SPLIT)}},
    }


def pod_body(name: str, mem: int, cores: int) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mem), "nvidia.com/gpucores": str(cores)}
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {"containers": [{"name": "main", "image": "cuda:12", "resources": {"limits": limits}}]},
    }


def config(access: KubeAccess) -> SchedulerConfig:
    return SchedulerConfig.model_validate(
        {
            "http_bind": "127.0.0.1:0",
            "metrics_bind_address": "127.0.0.1:0",
            "grpc_bind": "127.0.0.1:0",
            "kube": access,
            # Generous: the outcome must not depend on how fast this machine is.
            "bind_lock_wait_seconds": 120,
            "emit_events": False,
            "resync_seconds": 0,
        }
    )


async def test_two_extenders_binding_concurrently_never_overcommit(api_server: ApiServer) -> None:
    api = api_server.api_client()
    core = client.CoreV1Api(api)
    for name in NODES:
        node: Any = node_body(name)
        core.create_node(node)
    rng = random.Random(20260821)
    pods: list[dict[str, Any]] = []
    for i in range(PODS):
        body: Any = pod_body(
            f"job-{i:03d}", rng.choice((500, 1000, 2500, 4000)), rng.choice((0, 0, 10, 20, 30))
        )
        pods.append(json.loads(core.create_namespaced_pod(NS, body, _preload_content=False).data))

    # The replicas run as the deploy's scheduler ServiceAccount; set-up and the lock release are admin's.
    extender_access = api_server.service_access("kube-vgpu-scheduler")
    runtimes = [SchedulerRuntime(config(extender_access)) for _ in range(2)]
    for runtime in runtimes:
        await runtime.start()

    def release(node: str, owner: str) -> None:
        """The device plugin's Allocate: drop the lock if `owner` (ns,name) still holds it."""
        while True:
            obj = json.loads(core.read_node(node, _preload_content=False).data)
            value = (obj["metadata"].get("annotations") or {}).get(LOCK)
            if value is None or not value.endswith("," + owner):
                return
            patch: Any = {
                "metadata": {
                    "annotations": {LOCK: None},
                    "resourceVersion": obj["metadata"]["resourceVersion"],
                }
            }
            try:
                core.patch_node(node, patch, _content_type=MERGE, _preload_content=False)
                return
            except client.ApiException as exc:
                if exc.status != 409:
                    raise

    outcomes: Counter[str] = Counter()
    binds_by: Counter[int] = Counter()  # successful binds per replica

    async def schedule(session: aiohttp.ClientSession, pod: dict[str, Any], seed: int) -> None:
        local = random.Random(seed)
        meta = pod["metadata"]
        for _ in range(3):
            filterer, binder = local.choice(runtimes), local.choice(runtimes)
            args = {"Pod": pod, "NodeNames": list(NODES)}
            async with session.post(f"http://127.0.0.1:{filterer.http_port}/filter", json=args) as resp:
                result = await resp.json()
            assert result["Error"] == ""
            if not result["NodeNames"]:
                outcomes["unschedulable"] += 1
                return
            node = local.choice(result["NodeNames"])
            bind = {"PodName": meta["name"], "PodNamespace": NS, "PodUID": meta["uid"], "Node": node}
            async with session.post(f"http://127.0.0.1:{binder.http_port}/bind", json=bind) as resp:
                error = (await resp.json())["Error"]
            if not error:
                outcomes["bound"] += 1
                binds_by[runtimes.index(binder)] += 1
                await asyncio.to_thread(release, node, f"{NS},{meta['name']}")
                return
            assert "does not fit" in error, error
            outcomes["refit-rejected"] += 1
        outcomes["gave-up"] += 1

    try:
        for runtime in runtimes:
            while not runtime.ready() or len(runtime.cache.node_names()) < len(NODES):
                await asyncio.sleep(0.02)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            await asyncio.gather(*(schedule(session, pod, i) for i, pod in enumerate(pods)))
    finally:
        for runtime in runtimes:
            await runtime.stop()

    # Verify from what the API server holds, not from either cache: the inventories the nodes registered
    # and the allocations written on the bound pods.
    inventory: dict[str, tuple[str, DeviceInfo]] = {}
    for item in json.loads(core.list_node(_preload_content=False).data)["items"]:
        annotations = item["metadata"].get("annotations") or {}
        assert LOCK not in annotations, item["metadata"]["name"]  # every lock was released
        for card in decode_node_devices(annotations["hami.io/node-nvidia-register"]):
            inventory[card.id] = (item["metadata"]["name"], card)
    items = json.loads(core.list_namespaced_pod(NS, _preload_content=False).data)["items"]
    mem: Counter[str] = Counter()
    cores: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    bound = 0
    for item in items:
        meta, spec = item["metadata"], item["spec"]
        annotations = meta.get("annotations") or {}
        if not spec.get("nodeName"):
            # Not bound: every bind attempt was rolled back completely.
            assert "hami.io/vgpu-devices-allocated" not in annotations, meta["name"]
            assert "hami.io/vgpu-node" not in (meta.get("labels") or {})
            continue
        bound += 1
        assert annotations["hami.io/vgpu-node"] == spec["nodeName"]
        assert meta["labels"]["hami.io/vgpu-node"] == spec["nodeName"]
        for slot in decode_pod_single_device(annotations["hami.io/vgpu-devices-allocated"]):
            for device in slot:
                assert inventory[device.uuid][0] == spec["nodeName"], (meta["name"], device.uuid)
                mem[device.uuid] += device.usedmem
                cores[device.uuid] += device.usedcores
                tasks[device.uuid] += 1
    assert bound == outcomes["bound"]
    over = {
        uuid: (tasks[uuid], mem[uuid], cores[uuid])
        for uuid, (_, card) in inventory.items()
        if tasks[uuid] > card.count or mem[uuid] > card.devmem or cores[uuid] > card.devcore
    }
    assert not over, over
    # Liveness: 160 task slots and ~8 pods' worth per GPU on every axis; contention must not starve binds,
    # and each limit is reached somewhere (so each one is actually defended).
    assert bound >= 100, outcomes
    assert binds_by[0] > 0 and binds_by[1] > 0, binds_by  # both replicas bound pods
    assert any(tasks[u] == c.count for u, (_, c) in inventory.items()), tasks
    assert any(cores[u] == c.devcore for u, (_, c) in inventory.items()), cores
    assert any(mem[u] >= c.devmem - 500 for u, (_, c) in inventory.items()), mem
    api.close()
