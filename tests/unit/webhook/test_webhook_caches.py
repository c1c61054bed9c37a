"""The per-object functions behind the quota and inventory caches, and the caches' incremental updates."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.codecs import WireFormatError, encode_node_devices
from services.common.model import DeviceInfo
from services.webhook.caches import (
    InventoryCache,
    PodUsage,
    QuotaCache,
    node_gpus,
    pod_usage,
    quota_limits,
)
from services.webhook.mutate import NodeGpus, QuotaEntry

MEM, CORES = "nvidia.com/gpumem", "nvidia.com/gpucores"


def rq(name: str, namespace: str, hard: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"hard": hard}}


def gpu_pod(
    name: str,
    allocated: str | None,
    *,
    namespace: str = "default",
    node: str | None = "node-1",
    phase: str = "Running",
    init: int = 0,
    init_exit_codes: list[int] | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if node is not None:
        annotations["hami.io/vgpu-node"] = node
    if allocated is not None:
        annotations["hami.io/vgpu-devices-allocated"] = allocated
    status: dict[str, Any] = {"phase": phase}
    if init_exit_codes is not None:
        status["initContainerStatuses"] = [
            {"name": f"i{n}", "state": {"terminated": {"exitCode": code}}}
            for n, code in enumerate(init_exit_codes)
        ]
    return {
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": f"i{n}"} for n in range(init)],
            "containers": [{"name": "main"}],
        },
        "status": status,
    }


@pytest.mark.parametrize(
    ("hard", "expected"),
    [
        pytest.param(
            {"limits.nvidia.com/gpumem": "2000", "limits.nvidia.com/gpucores": "400"},
            {MEM: 2000, CORES: 400},
            id="both",
        ),
        pytest.param({"limits.nvidia.com/gpumem": 2000}, {MEM: 2000}, id="number"),
        pytest.param({"limits.nvidia.com/gpumem": "2k"}, {MEM: 2000}, id="suffix"),
        pytest.param({"limits.nvidia.com/gpumem": "1.5"}, {}, id="fraction-ignored"),
        pytest.param({"limits.nvidia.com/gpumem": "lots"}, {}, id="garbage-ignored"),
        pytest.param(
            {"requests.nvidia.com/gpumem": "10", "nvidia.com/gpumem": "10", "cpu": "4"}, {}, id="untracked"
        ),
        pytest.param({"limits.nvidia.com/gpumem": "0"}, {MEM: 0}, id="explicit-zero"),
    ],
)
def test_quota_limits(hard: dict[str, Any], expected: dict[str, int]) -> None:
    assert quota_limits(rq("q", "ns", hard), (MEM, CORES)) == expected


def test_quota_limits_of_a_malformed_object() -> None:
    assert quota_limits({"spec": None}, (MEM,)) == {}
    assert quota_limits({}, (MEM,)) == {}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(gpu_pod("p", "GPU-a,NVIDIA,3000,30:;"), PodUsage("default", 3000, 30), id="one"),
        pytest.param(
            gpu_pod("p", "GPU-a,NVIDIA,3000,30:GPU-b,NVIDIA,3000,30:;GPU-a,NVIDIA,1000,10:;"),
            PodUsage("default", 7000, 70),
            id="two-containers",
        ),
        pytest.param(
            gpu_pod("p", "GPU-a,NVIDIA,5000,50:;GPU-a,NVIDIA,2000,20:;", init=1),
            PodUsage("default", 5000, 50),
            id="init-max",
        ),
        pytest.param(
            gpu_pod("p", "GPU-a,NVIDIA,5000,50:;GPU-a,NVIDIA,2000,20:;", init=1, init_exit_codes=[0]),
            PodUsage("default", 2000, 20),
            id="init-done-app-only",
        ),
        pytest.param(
            gpu_pod("p", "GPU-a,NVIDIA,5000,50:;GPU-a,NVIDIA,2000,20:;", init=1, init_exit_codes=[1]),
            PodUsage("default", 5000, 50),
            id="init-failed-keeps-full",
        ),
        pytest.param(gpu_pod("p", "GPU-a,NVIDIA,3000,30:;", node=None), None, id="not-placed"),
        pytest.param(gpu_pod("p", None), None, id="no-allocation"),
        pytest.param(gpu_pod("p", "GPU-a,NVIDIA,3000,30:;", phase="Succeeded"), None, id="succeeded"),
        pytest.param(gpu_pod("p", "GPU-a,NVIDIA,3000,30:;", phase="Failed"), None, id="failed"),
        pytest.param(gpu_pod("p", ";;"), PodUsage("default", 0, 0), id="empty-slots"),
    ],
)
def test_pod_usage(obj: dict[str, Any], expected: PodUsage | None) -> None:
    assert pod_usage(obj) == expected


def test_pod_usage_of_a_bad_annotation_raises() -> None:
    with pytest.raises(WireFormatError):
        pod_usage(gpu_pod("p", "uuid,type,100:;"))


def _node(name: str, register: str | None) -> dict[str, Any]:
    annotations = {} if register is None else {"hami.io/node-nvidia-register": register}
    return {"metadata": {"name": name, "annotations": annotations}}


def test_node_gpus() -> None:
    register = encode_node_devices(
        [DeviceInfo("GPU-a", 0, 10, 16384, 100, "T4"), DeviceInfo("GPU-b", 1, 10, 24576, 100, "A10")]
    )
    assert node_gpus(_node("n", register)) == NodeGpus("n", (16384, 24576))
    legacy = "GPU-a,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:"
    assert node_gpus(_node("old", legacy)) == NodeGpus("old", (32768,))
    assert node_gpus(_node("cpu", None)) is None
    assert node_gpus(_node("empty", "[]")) is None
    with pytest.raises(WireFormatError):
        node_gpus(_node("bad", "not json"))


def test_quota_cache_tracks_limits_and_usage_incrementally() -> None:
    cache = QuotaCache(MEM, CORES)
    assert cache.view("default") == {}
    cache.on_quota_event("ADDED", rq("q1", "default", {"limits.nvidia.com/gpumem": "8000"}))
    cache.on_quota_event(
        "ADDED",
        rq("q2", "default", {"limits.nvidia.com/gpumem": "6000", "limits.nvidia.com/gpucores": "300"}),
    )
    cache.on_quota_event("ADDED", rq("q3", "other", {"limits.nvidia.com/gpumem": "1"}))
    assert cache.view("default") == {MEM: QuotaEntry(6000, 0), CORES: QuotaEntry(300, 0)}

    cache.on_pod_event("ADDED", gpu_pod("a", "GPU-a,NVIDIA,1000,10:;"))
    cache.on_pod_event("ADDED", gpu_pod("b", "GPU-a,NVIDIA,2000,20:;"))
    cache.on_pod_event("ADDED", gpu_pod("c", "GPU-a,NVIDIA,4000,40:;", namespace="other"))
    assert cache.view("default") == {MEM: QuotaEntry(6000, 3000), CORES: QuotaEntry(300, 30)}

    cache.on_pod_event("MODIFIED", gpu_pod("a", "GPU-a,NVIDIA,1500,15:;"))  # replaces, not adds
    assert cache.view("default")[MEM] == QuotaEntry(6000, 3500)
    cache.on_pod_event("MODIFIED", gpu_pod("b", "GPU-a,NVIDIA,2000,20:;", phase="Succeeded"))
    assert cache.view("default")[MEM] == QuotaEntry(6000, 1500)
    cache.on_pod_event("DELETED", gpu_pod("a", "GPU-a,NVIDIA,1500,15:;"))
    cache.on_pod_event("DELETED", gpu_pod("never-seen", "GPU-a,NVIDIA,1,1:;"))
    assert cache.view("default")[MEM] == QuotaEntry(6000, 0)

    cache.on_quota_event("DELETED", rq("q2", "default", {}))
    assert cache.view("default") == {MEM: QuotaEntry(8000, 0)}
    cache.on_quota_event("MODIFIED", rq("q1", "default", {"limits.nvidia.com/gpucores": "50"}))
    assert cache.view("default") == {CORES: QuotaEntry(50, 0)}
    assert cache.view("other") == {MEM: QuotaEntry(1, 4000)}


def test_quota_cache_survives_an_undecodable_pod() -> None:
    cache = QuotaCache(MEM, CORES)
    cache.on_quota_event("ADDED", rq("q", "default", {"limits.nvidia.com/gpumem": "10"}))
    cache.on_pod_event("ADDED", gpu_pod("good", "GPU-a,NVIDIA,5,0:;"))
    cache.on_pod_event("ADDED", gpu_pod("bad", "GPU-a,NVIDIA:;"))
    cache.on_pod_event("MODIFIED", gpu_pod("good", "garbage,x:;"))  # old usage removed, nothing added
    assert cache.view("default") == {MEM: QuotaEntry(10, 0)}


def test_inventory_cache() -> None:
    cache = InventoryCache()
    register = encode_node_devices([DeviceInfo("GPU-a", 0, 10, 16384, 100, "T4")])
    cache.on_node_event("ADDED", _node("n1", register))
    cache.on_node_event("ADDED", _node("cpu", None))
    cache.on_node_event("ADDED", _node("broken", "{"))
    assert cache.snapshot() == [NodeGpus("n1", (16384,))]
    cache.on_node_event("MODIFIED", _node("n1", "[]"))  # unregistered its GPUs
    assert cache.snapshot() == []
    cache.on_node_event("MODIFIED", _node("n1", register))
    cache.on_node_event("DELETED", _node("n1", register))
    assert cache.snapshot() == []
