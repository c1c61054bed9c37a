"""Namespace quota accounting on its own (docs/hami-wire.md#quota, docs/hami-wire.md#quota-cases): a
ResourceQuota's tracked limits, the view built from limits and counted pods, and the per-container quota
check the fit asks."""

from __future__ import annotations

from typing import Any

from services.common.model import ContainerDevice
from services.scheduler.decoders import PodContext, PodUsage, pod_finished
from services.scheduler.quota import QuotaLimit, build_quota_view, container_quota_check, tracked_limits

MEM_KEY = "limits.nvidia.com/gpumem"
CORE_KEY = "limits.nvidia.com/gpucores"


def resource_quota(hard: Any, name: str = "q", namespace: str = "team") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"hard": hard}}


def usage(namespace: str, mem: int, cores: int, uid: str = "u1") -> PodUsage:
    card = ContainerDevice(uuid="GPU-a", type="NVIDIA", usedmem=mem, usedcores=cores)
    return PodUsage(uid=uid, namespace=namespace, name=uid, node="n1", allocation=[[card]])


def test_tracked_limits_reads_only_the_gpu_keys_with_valid_quantities() -> None:
    hard = {MEM_KEY: "2000", CORE_KEY: "1.5", "pods": "10", "limits.example.com/mem": "7"}
    assert tracked_limits(resource_quota(hard), "nvidia.com/gpumem", "nvidia.com/gpucores") == [
        QuotaLimit("team", "q", MEM_KEY, 2000)
    ]
    custom = {"limits.example.com/mem": "7", "limits.example.com/cores": 50}
    assert tracked_limits(resource_quota(custom), "example.com/mem", "example.com/cores") == [
        QuotaLimit("team", "q", "limits.example.com/mem", 7),
        QuotaLimit("team", "q", "limits.example.com/cores", 50),
    ]
    assert tracked_limits(resource_quota(None), "nvidia.com/gpumem", "nvidia.com/gpucores") == []
    assert tracked_limits({}, "nvidia.com/gpumem", "nvidia.com/gpucores") == []


def test_build_quota_view_keeps_the_strictest_limit_and_counts_only_limited_namespaces() -> None:
    limits = [
        QuotaLimit("team", "q1", MEM_KEY, 5000),
        QuotaLimit("team", "q2", MEM_KEY, 3000),
        QuotaLimit("team", "q1", CORE_KEY, 100),
    ]
    usages = [usage("team", 1000, 20, "a"), usage("team", 500, 10, "b"), usage("elsewhere", 9000, 90, "c")]
    view = build_quota_view(
        limits,
        usages,
        memory_factor=2,
        memory_resource="nvidia.com/gpumem",
        core_resource="nvidia.com/gpucores",
    )
    assert set(view.namespaces) == {"team"}
    team = view.namespaces["team"].resources
    assert (team[MEM_KEY].limit, team[MEM_KEY].used) == (3000, 1500)
    assert (team[CORE_KEY].limit, team[CORE_KEY].used) == (100, 30)
    assert view.memory_factor == 2
    assert view.fits("team", 4500, 70)  # 1500 + 4500 <= 3000 x 2, 30 + 70 <= 100
    assert not view.fits("team", 4501, 0)
    assert not view.fits("team", 0, 71)
    assert view.fits("elsewhere", 10**9, 10**9)


def test_container_quota_check_sees_the_allocation_as_the_fit_fills_it() -> None:
    view = build_quota_view(
        [QuotaLimit("team", "q", MEM_KEY, 3000)],
        [],
        memory_factor=1,
        memory_resource="nvidia.com/gpumem",
        core_resource="nvidia.com/gpucores",
    )
    pod = PodContext(namespace="team", name="p", uid="u", annotations={}, requests=(None, None))
    allocation: list[list[ContainerDevice]] = [[], []]
    assert container_quota_check(None, pod, allocation, 0) is None
    check = container_quota_check(view, pod, allocation, 1)
    assert check is not None
    card = ContainerDevice(uuid="GPU-b", type="NVIDIA", usedmem=2000, usedcores=0)
    assert check([card])
    allocation[0] = [ContainerDevice(uuid="GPU-a", type="NVIDIA", usedmem=1500, usedcores=0)]
    assert not check([card])  # slot 0 filled since the check was made: 1500 + 2000 > 3000


def test_pod_finished_only_for_terminal_phases() -> None:
    assert pod_finished({"status": {"phase": "Succeeded"}})
    assert pod_finished({"status": {"phase": "Failed"}})
    assert not pod_finished({"status": {"phase": "Running"}})
    assert not pod_finished({"status": {"phase": ["Failed"]}})
    assert not pod_finished({"status": "Failed"})
    assert not pod_finished({})
