"""The NVIDIA Fit over an ordered card list (docs/hami-wire.md#fit, docs/hami-wire.md#fit-cases)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common import wire
from services.common.codecs import parse_cordon
from services.common.model import (
    MEM_PERCENTAGE_UNSET,
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceUsage,
    MigPlacement,
    MigProfile,
)
from services.scheduler.fit import ContainerFit, PodFilters, fit_container, fit_devices


def dev(
    uuid: str,
    *,
    totalmem: int = 1280,
    used: int = 0,
    usedmem: int = 0,
    usedcores: int = 0,
    count: int = 100,
    totalcore: int = 100,
    type: str = "NVIDIA",
    numa: int = 0,
    health: bool = True,
    index: int = 0,
    mode: str = wire.MODE_HAMI_CORE,
    mig_profiles: tuple[MigProfile, ...] = (),
) -> DeviceUsage:
    return DeviceUsage(
        id=uuid,
        index=index,
        used=used,
        count=count,
        usedmem=usedmem,
        totalmem=totalmem,
        usedcores=usedcores,
        totalcore=totalcore,
        type=type,
        numa=numa,
        mode=mode,
        health=health,
        mig_profiles=mig_profiles,
    )


def req(nums: int, memreq: int, pct: int, cores: int, type: str = "NVIDIA") -> ContainerDeviceRequest:
    return ContainerDeviceRequest(nums=nums, type=type, memreq=memreq, mem_percentage_req=pct, coresreq=cores)


def uuids(result: ContainerFit) -> list[str]:
    return [d.uuid for d in result.devices]


# --- Fixture table 7.3 (TestDevices_Fit) --------------------------------------------------------------------


def test_fit_walks_the_list_from_the_end() -> None:
    result = fit_devices(req(1, 64, 0, 50), [dev("dev-0", totalmem=128), dev("dev-1", totalmem=128)])
    assert result.fits
    assert result.reason == ""
    assert result.devices == (ContainerDevice("dev-1", "NVIDIA", 64, 50),)


@pytest.mark.parametrize(
    ("device", "request_", "reason"),
    [
        pytest.param(dev("dev-0", totalmem=128), req(1, 512, 0, 50), "1/1 CardInsufficientMemory", id="mem"),
        pytest.param(
            dev("dev-0", totalmem=1024, usedcores=100),
            req(1, 512, 0, 50),
            "1/1 CardInsufficientCore",
            id="core",
        ),
        pytest.param(
            dev("dev-0", totalmem=1024),
            req(1, 512, 0, 50, type="OtherType"),
            "1/1 CardTypeMismatch",
            id="type",
        ),
        pytest.param(
            dev("dev-0", totalmem=1024, used=100),
            req(1, 512, 0, 50),
            "1/1 CardTimeSlicingExhausted",
            id="time-slicing",
        ),
        pytest.param(
            dev("dev-0", used=20),
            req(1, 512, 0, 100),
            "1/1 ExclusiveDeviceAllocateConflict",
            id="whole-card-on-a-used-card",
        ),
        pytest.param(
            dev("dev-0", used=20, usedcores=100),
            req(1, 512, 0, 0),
            "1/1 CardComputeUnitsExhausted",
            id="compute-units-exhausted",
        ),
        pytest.param(
            dev("dev-0", used=20, usedcores=10),
            req(2, 512, 0, 20),
            "1/1 AllocatedCardsInsufficientRequest",
            id="one-of-two-cards",
        ),
        pytest.param(dev("dev-0", health=False), req(1, 0, 10, 20), "1/1 CardNotHealth", id="unhealthy"),
    ],
)
def test_fit_failures(device: DeviceUsage, request_: ContainerDeviceRequest, reason: str) -> None:
    result = fit_devices(request_, [device])
    assert not result.fits
    assert result.devices == ()
    assert result.reason == reason


def test_use_gpuuuid_rejects_other_cards() -> None:
    filters = PodFilters.from_annotations({wire.USE_GPU_UUID: "dev-0"})
    result = fit_devices(req(2, 512, 0, 50), [dev("dev-1", totalmem=1024)], filters=filters)
    assert result.reason == "1/1 CardUuidMismatch"


def test_two_free_cards_cannot_serve_three() -> None:
    result = fit_devices(req(3, 512, 0, 20), [dev("dev-0"), dev("dev-1")])
    assert not result.fits
    assert result.reason == "2/2 AllocatedCardsInsufficientRequest"


def test_cores_above_100_are_clamped() -> None:
    result = fit_devices(req(1, 512, 0, 120), [dev("dev-0")])
    assert result.fits
    assert result.devices == (ContainerDevice("dev-0", "NVIDIA", 512, 100),)


def test_memory_percentage_of_the_card() -> None:
    result = fit_devices(req(1, 0, 10, 20), [dev("dev-0", used=20, usedcores=10)])
    assert result.fits
    assert result.devices == (ContainerDevice("dev-0", "NVIDIA", 128, 20),)


def test_no_memory_and_no_percentage_books_zero_memory() -> None:
    result = fit_devices(req(1, 0, MEM_PERCENTAGE_UNSET, 10), [dev("dev-0", usedmem=1280)])
    assert result.fits
    assert result.devices[0].usedmem == 0


# --- Cordon (TestFit_DeviceCordon) --------------------------------------------------------------------------


def test_cordoned_card_is_skipped() -> None:
    cards = [dev("dev-0"), dev("dev-1")]
    result = fit_devices(req(1, 64, 0, 10), cards, cordoned=frozenset({"dev-1"}))
    assert uuids(result) == ["dev-0"]
    assert result.reasons == {"CardCordoned": 1}


def test_every_card_cordoned() -> None:
    result = fit_devices(
        req(1, 64, 0, 10), [dev("dev-0"), dev("dev-1")], cordoned=frozenset({"dev-0", "dev-1"})
    )
    assert result.reason == "2/2 CardCordoned"


def test_cordon_from_the_node_annotation_through_fit_container() -> None:
    cards = [dev("dev-0"), dev("dev-1")]
    result = fit_container(req(1, 64, 0, 10), cards, cordoned=parse_cordon("dev-1, "))
    assert uuids(result) == ["dev-0"]


# --- Mixed reasons (Test_fitInCertainDevice) and NUMA -------------------------------------------------------


def test_mixed_reasons_on_ten_cards() -> None:
    cards = [
        dev("a", totalmem=8000, used=10, count=10),
        dev("b", totalmem=8000, count=10),
        dev("c", totalmem=8000, used=10, count=10),
        dev("d", totalmem=8000, used=10, count=10),
        dev("e", totalmem=8000, used=10, count=10),
        dev("f", totalmem=8000, count=10, usedmem=7500),
        dev("g", totalmem=8000, count=10, usedmem=7200),
        dev("h", totalmem=8000, count=10, usedcores=90),
        dev("i", totalmem=8000, count=10),
        dev("k", totalmem=8000, count=10),
    ]
    filters = PodFilters.from_annotations({wire.USE_GPU_UUID: "a,f,c,d,e,g,h,j,l,u,m"})
    result = fit_container(req(2, 1024, MEM_PERCENTAGE_UNSET, 20), cards, filters=filters)
    assert not result.fits
    assert result.reasons == {
        "CardUuidMismatch": 3,
        "CardTimeSlicingExhausted": 4,
        "CardInsufficientMemory": 2,
        "CardInsufficientCore": 1,
    }
    assert result.reason == (
        "1/10 CardInsufficientCore, 2/10 CardInsufficientMemory, 3/10 CardUuidMismatch, "
        "4/10 CardTimeSlicingExhausted"
    )
    assert all(c.used in (0, 10) for c in cards), "a failed fit books nothing"


def test_numa_not_fit() -> None:
    filters = PodFilters(numa_bind=True)
    result = fit_devices(req(2, 64, 0, 10), [dev("dev-0", numa=0), dev("dev-1", numa=1)], filters=filters)
    assert not result.fits
    assert result.reason == "1/2 AllocatedCardsInsufficientRequest, 1/2 NumaNotFit"


# --- Type filters (check 3) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "fits"),
    [
        pytest.param({wire.USE_GPU_TYPE: "a100,v100"}, True, id="use-type-substring-case-insensitive"),
        pytest.param({wire.USE_GPU_TYPE: "T4"}, False, id="use-type-other"),
        pytest.param({wire.NOUSE_GPU_TYPE: "A100"}, False, id="nouse-type"),
        pytest.param({wire.NOUSE_GPU_TYPE: "1080,2080"}, True, id="nouse-type-other"),
        pytest.param({wire.VGPU_MODE: "hami-core"}, True, id="mode-matches"),
        pytest.param({wire.VGPU_MODE: "mig"}, False, id="mode-differs"),
        pytest.param({wire.USE_GPU_TYPE: ""}, True, id="empty-use-type-is-no-constraint"),
    ],
)
def test_type_and_mode_filters(annotations: dict[str, str], fits: bool) -> None:
    card = dev("GPU-a", type="NVIDIA-A100-SXM4-80GB")
    result = fit_devices(req(1, 64, 0, 10), [card], filters=PodFilters.from_annotations(annotations))
    assert result.fits is fits
    if not fits:
        assert result.reason == "1/1 CardTypeMismatch"


def test_nouse_gpuuuid() -> None:
    filters = PodFilters.from_annotations({wire.NOUSE_GPU_UUID: " dev-1 ,"})
    result = fit_devices(req(1, 64, 0, 10), [dev("dev-0"), dev("dev-1")], filters=filters)
    assert uuids(result) == ["dev-0"]
    assert result.reasons == {"CardUuidMismatch": 1}


def test_checks_run_in_order_first_failure_counts() -> None:
    # Unhealthy AND cordoned AND out of memory: only the first check (health) is counted.
    card = dev("dev-0", health=False, totalmem=10)
    result = fit_devices(req(1, 64, 0, 10), [card], cordoned=frozenset({"dev-0"}))
    assert result.reasons == {"CardNotHealth": 1}
    # Cordoned and time-slicing exhausted: cordon (check 2) comes first.
    card = dev("dev-0", used=100)
    assert fit_devices(req(1, 64, 0, 10), [card], cordoned=frozenset({"dev-0"})).reason == "1/1 CardCordoned"
    # Out of memory and out of cores: memory (check 11) before cores (check 12).
    card = dev("dev-0", usedmem=1280, usedcores=100)
    assert fit_devices(req(1, 64, 0, 10), [card]).reason == "1/1 CardInsufficientMemory"


# --- fitInDevices level -------------------------------------------------------------------------------------


def test_more_cards_requested_than_the_node_has() -> None:
    result = fit_container(req(3, 64, 0, 10), [dev("dev-0"), dev("dev-1")])
    assert not result.fits
    assert result.reason == "NodeInsufficientDevice"


def test_cards_of_another_type_do_not_count_as_candidates() -> None:
    cards = [dev("dev-0", type="NVIDIA-T4"), dev("npu-0", type="Ascend910")]
    assert fit_container(req(2, 64, 0, 10), cards).reason == "NodeInsufficientDevice"
    result = fit_container(req(1, 64, 0, 10), cards)
    assert uuids(result) == ["dev-0"]


def test_request_type_without_an_implementation() -> None:
    # Lower-case "nvidia" selects the NVIDIA cards (case-insensitive) but is no registered device type.
    result = fit_container(req(1, 64, 0, 10, type="nvidia"), [dev("dev-0")])
    assert not result.fits
    assert result.reason == "Device type not found"


def test_fit_container_books_the_chosen_cards() -> None:
    cards = [dev("dev-0", used=1, usedmem=100, usedcores=5), dev("dev-1")]
    result = fit_container(req(2, 200, 0, 30), cards)
    assert result.fits
    assert sorted(uuids(result)) == ["dev-0", "dev-1"]
    assert (cards[0].used, cards[0].usedmem, cards[0].usedcores) == (2, 300, 35)
    assert (cards[1].used, cards[1].usedmem, cards[1].usedcores) == (1, 200, 30)


def test_fit_container_failure_books_nothing() -> None:
    cards = [dev("dev-0"), dev("dev-1", usedmem=1280)]
    before = [(c.used, c.usedmem, c.usedcores) for c in cards]
    result = fit_container(req(2, 200, 0, 30), cards)
    assert not result.fits
    assert [(c.used, c.usedmem, c.usedcores) for c in cards] == before


def test_fit_devices_never_mutates_the_cards() -> None:
    cards = [dev("dev-0"), dev("dev-1")]
    snapshot = [replace(c) for c in cards]
    assert fit_devices(req(2, 100, 0, 10), cards).fits
    assert cards == snapshot


# --- MIG and the custom filter rule (checks 15-16) ----------------------------------------------------------

PROFILES = (
    MigProfile("1g.10gb", 9856, 14, 1, tuple(MigPlacement(s, 1) for s in range(7))),
    MigProfile("2g.20gb", 19968, 28, 2, (MigPlacement(0, 2), MigPlacement(2, 2), MigPlacement(4, 2))),
    MigProfile("7g.80gb", 80000, 100, 7, (MigPlacement(0, 8),)),
)


def mig_card(uuid: str = "GPU-mig") -> DeviceUsage:
    return dev(uuid, totalmem=81920, count=7, mode=wire.MODE_MIG, mig_profiles=PROFILES)


def test_mig_takes_the_smallest_fitting_profile_highest_start_first_for_1g() -> None:
    result = fit_devices(req(1, 8000, MEM_PERCENTAGE_UNSET, 0), [mig_card()])
    assert result.fits
    assert result.devices == (ContainerDevice("GPU-mig", "NVIDIA", 9856, 14),)
    assert result.mig[0] is not None
    assert (result.mig[0].profile, result.mig[0].placement) == ("1g.10gb", MigPlacement(6, 1))


def test_mig_other_profiles_fill_from_the_lowest_start() -> None:
    result = fit_devices(req(1, 15000, MEM_PERCENTAGE_UNSET, 0), [mig_card()])
    assert result.mig[0] is not None
    assert (result.mig[0].profile, result.mig[0].placement) == ("2g.20gb", MigPlacement(0, 2))


def test_mig_card_is_revisited_for_several_slices() -> None:
    # Two cards requested, one MIG GPU: both slices land on it, on different placements.
    result = fit_container(req(2, 8000, MEM_PERCENTAGE_UNSET, 0), [mig_card()])
    assert result.fits
    assert uuids(result) == ["GPU-mig", "GPU-mig"]
    placements = [m.placement for m in result.mig if m is not None]
    assert placements == [MigPlacement(6, 1), MigPlacement(5, 1)]


def test_mig_skips_occupied_placements() -> None:
    occupied = {"GPU-mig": [MigPlacement(6, 1), MigPlacement(4, 2)]}
    result = fit_devices(req(1, 8000, MEM_PERCENTAGE_UNSET, 0), [mig_card()], mig_placements=occupied)
    assert result.mig[0] is not None
    assert result.mig[0].placement == MigPlacement(3, 1)


def test_mig_topology_infeasible() -> None:
    occupied = {"GPU-mig": [MigPlacement(0, 8)]}
    result = fit_devices(req(1, 8000, MEM_PERCENTAGE_UNSET, 0), [mig_card()], mig_placements=occupied)
    assert not result.fits
    assert result.reason == "1/1 CardMigTopologyInfeasible"


def test_mig_no_profile_large_enough() -> None:
    result = fit_devices(req(1, 81000, MEM_PERCENTAGE_UNSET, 0), [mig_card()])
    assert result.reason == "1/1 CardMigTopologyInfeasible"


def test_shared_card_carrying_mig_slices_fails_the_custom_rule() -> None:
    result = fit_devices(req(1, 64, 0, 10), [dev("dev-0")], mig_placements={"dev-0": [MigPlacement(0, 1)]})
    assert result.reason == "1/1 CardNotFoundCustomFilterRule"
