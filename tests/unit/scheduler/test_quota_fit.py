"""Namespace quota inside Fit (docs/hami-wire.md#quota, docs/hami-wire.md#quota-cases)."""

from __future__ import annotations

import pytest

from services.common import wire
from services.common.model import (
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceUsage,
    MigPlacement,
    MigProfile,
)
from services.scheduler.decoders import PodContext
from services.scheduler.fit import NodeSnapshot, SchedulingPolicy, fit_pod
from services.scheduler.quota import NamespaceQuota, QuotaEntry, QuotaView

MEM_KEY = "limits.nvidia.com/gpumem"
CORE_KEY = "limits.nvidia.com/gpucores"


def quota(
    mem: QuotaEntry | None = None, cores: QuotaEntry | None = None, factor: int = 1, namespace: str = "team"
) -> QuotaView:
    resources = {}
    if mem is not None:
        resources[MEM_KEY] = mem
    if cores is not None:
        resources[CORE_KEY] = cores
    return QuotaView({namespace: NamespaceQuota(resources)}, memory_factor=factor)


def fixture_quota() -> QuotaView:
    return quota(QuotaEntry(1000, 2000, True), QuotaEntry(200, 400, True))


def cards(n: int) -> list[DeviceUsage]:
    return [
        DeviceUsage(id=f"GPU-{i}", count=10, totalmem=16000, totalcore=100, type="NVIDIA") for i in range(n)
    ]


def req(memreq: int, nums: int = 1, cores: int = 0) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(
        nums=nums, type="NVIDIA", memreq=memreq, mem_percentage_req=101, coresreq=cores
    )


def run(
    *requests: ContainerDeviceRequest, init: int = 0, q: QuotaView | None = None, n: int = 2
) -> tuple[bool, str]:
    pod = PodContext("team", "p", "u", {}, tuple(requests), init)
    fit = fit_pod(
        pod, NodeSnapshot("node", cards(n)), SchedulingPolicy(), q if q is not None else fixture_quota()
    )
    return fit.fits, fit.reason


@pytest.mark.parametrize(
    ("requests", "init", "expected"),
    [
        pytest.param((req(100),), 0, (True, ""), id="app-1x100"),
        pytest.param((req(1024),), 0, (False, "2/2 ResourceQuotaNotFit"), id="app-1x1024"),
        pytest.param((req(1024, nums=2),), 0, (False, "2/2 ResourceQuotaNotFit"), id="app-2x1024"),
        pytest.param((req(400, nums=2),), 0, (True, ""), id="app-2x400"),
        pytest.param((req(800), req(800), req(500)), 2, (True, ""), id="init-800-init-800-app-500"),
        pytest.param((req(1500), req(100)), 1, (False, "2/2 ResourceQuotaNotFit"), id="init-1500-app-100"),
        pytest.param(
            (req(100, cores=60), req(100, cores=60), req(100, cores=90)),
            0,
            (False, "2/2 ResourceQuotaNotFit"),
            id="cores-sum",
        ),
        pytest.param((req(100, cores=250),), 0, (True, ""), id="cores-clamped-to-100-before-quota"),
        pytest.param((req(100, cores=200),), 0, (True, ""), id="cores-at-limit"),
    ],
)
def test_fit_resource_quota(
    requests: tuple[ContainerDeviceRequest, ...], init: int, expected: tuple[bool, str]
) -> None:
    assert run(*requests, init=init) == expected


def test_init_800_init_800_app_500_would_not_fit_if_summed() -> None:
    # The same three containers as app containers add up: the second already makes 2600 > 2000.
    assert run(req(800), req(800), req(500)) == (False, "2/2 ResourceQuotaNotFit")


def test_explicit_zero_limit_blocks_any_usage() -> None:
    q = quota(QuotaEntry(0, 0, True))
    assert run(req(1), q=q) == (False, "2/2 ResourceQuotaNotFit")
    zero_cores = quota(cores=QuotaEntry(0, 0, True))
    assert run(req(100, cores=1), q=zero_cores) == (False, "2/2 ResourceQuotaNotFit")
    assert run(req(100, cores=0), q=zero_cores) == (True, "")


def test_unset_limit_and_other_namespaces_are_unconstrained() -> None:
    assert run(req(15000), q=quota(QuotaEntry(5000, 0, False))) == (True, "")
    assert run(req(15000), q=quota(QuotaEntry(0, 1, True), namespace="elsewhere")) == (True, "")
    assert run(req(15000), q=QuotaView()) == (True, "")


def test_memory_limit_is_scaled_by_the_memory_factor() -> None:
    q = quota(QuotaEntry(1000, 2000, True), factor=2)  # 4000 in memory-factor scale
    assert run(req(3000), q=q) == (True, "")
    assert run(req(3001), q=q) == (False, "2/2 ResourceQuotaNotFit")


def test_quota_is_checked_before_card_memory() -> None:
    pod = PodContext("team", "p", "u", {}, (req(5000),))
    small = [DeviceUsage(id="GPU-0", count=10, totalmem=4000, totalcore=100, type="NVIDIA")]
    fit = fit_pod(pod, NodeSnapshot("node", small), SchedulingPolicy(), fixture_quota())
    assert fit.reason == "1/1 ResourceQuotaNotFit"
    fit = fit_pod(pod, NodeSnapshot("node", small), SchedulingPolicy(), None)
    assert fit.reason == "1/1 CardInsufficientMemory"


def test_custom_resource_names() -> None:
    q = QuotaView(
        {"team": NamespaceQuota({"limits.example.com/vmem": QuotaEntry(0, 100, True)})},
        memory_resource="example.com/vmem",
    )
    assert q.memory_key == "limits.example.com/vmem"
    assert q.core_key == "limits.nvidia.com/gpucores"
    assert q.fits("team", 100, 0)
    assert not q.fits("team", 101, 0)


def nv(uuid: str, mem: int, cores: int = 0) -> ContainerDevice:
    return ContainerDevice(uuid, "NVIDIA", mem, cores)


def test_fits_allocation_collapses_init_against_app() -> None:
    q = fixture_quota()
    assert q.fits_allocation("team", [[nv("a", 800)], [nv("a", 800)], [nv("a", 500)]], init_count=2)
    assert not q.fits_allocation("team", [[nv("a", 800)], [nv("a", 800)], [nv("a", 500)]], init_count=0)
    # Different cards are different usage: an init container on another card still counts on its own card.
    assert not q.fits_allocation("team", [[nv("a", 800)], [nv("b", 500)]], init_count=1)
    # A sidecar counts with the app containers.
    assert not q.fits_allocation(
        "team", [[nv("a", 600)], [nv("a", 500)]], init_count=1, sidecar_slots=frozenset({0})
    )
    assert q.fits_allocation("team", [[nv("a", 600)], [nv("a", 500)]], init_count=1)


def test_mig_slices_are_charged_at_the_profile_size() -> None:
    profile = MigProfile("2g.20gb", 19968, 28, 2, (MigPlacement(0, 2), MigPlacement(2, 2)))
    mig = DeviceUsage(
        id="GPU-0",
        count=7,
        totalmem=81920,
        totalcore=100,
        type="NVIDIA",
        mode=wire.MODE_MIG,
        mig_profiles=(profile,),
    )
    pod = PodContext("team", "p", "u", {}, (req(10000),))
    # 10000 MiB requested fits a 15000 MiB quota, but the slice that serves it books 19968.
    tight = quota(QuotaEntry(0, 15000, True))
    fit = fit_pod(pod, NodeSnapshot("node", [mig]), SchedulingPolicy(), tight)
    assert fit.reason == "1/1 ResourceQuotaNotFit"
    roomy = quota(QuotaEntry(0, 20000, True))
    assert fit_pod(pod, NodeSnapshot("node", [mig]), SchedulingPolicy(), roomy).fits
