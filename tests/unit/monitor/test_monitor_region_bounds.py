"""Region values above what the device holds (issue 17, defect 5): the pure clamping rules as a table, then
the monitor reporting them clamped, logging each once and counting it in `/metrics`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from services.common import wire
from services.monitor.bounds import (
    BUFFER_BYTES,
    CONTEXT_BYTES,
    FIELDS,
    LIMIT_BYTES,
    MODULE_BYTES,
    SM_UTIL,
    USED_BYTES,
    Clamp,
    DeviceBounds,
    clamp_device,
    device_bounds,
    device_memory_totals,
)
from services.monitor.codec import DeviceReading
from services.monitor.metrics import CLAMP_LABELS, MonitorCounters, MonitorMetrics
from services.monitor.monitor import Monitor
from services.monitor.pods import PodIndex, RegisteredGpu, pod_info
from services.monitor.regions import RegionStore
from sim.regions import MIB, ProcUse, make_region, rewrite_in_place, write_cache

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
MIG = GPU_A + "-mig-1g.5gb-0000000000000000"
UID1 = "33333333-0000-4000-8000-000000000001"
UID2 = "33333333-0000-4000-8000-000000000002"
NOW = 2_000_000_000.0
GIB = 1024 * MIB
HUGE = 2**62
# prometheus_client's parser names a counter family without its `_total`.
CLAMPED = "hami_vgpu_region_values_clamped"


def reading(**values: Any) -> DeviceReading:
    """A device of a region: 4 GiB limit, 50 % SM limit, 1 GiB used at 30 %, unless `values` say otherwise."""
    honest = DeviceReading(index=0, uuid=GPU_A, limit_bytes=4 * GIB, sm_limit=50, used_bytes=GIB, sm_util=30)
    return dataclasses.replace(honest, **values)


# --- pure rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered_mib", "host_bytes", "expected"),
    [
        ({}, {}, {}),
        ({GPU_A: 16384}, {}, {GPU_A: 16 * GIB}),  # no NVML: the registered inventory
        ({}, {GPU_A: 15 * GIB}, {GPU_A: 15 * GIB}),  # not registered yet: NVML
        ({GPU_A: 32768}, {GPU_A: 16 * GIB}, {GPU_A: 32 * GIB}),  # deviceMemoryScaling 2: oversubscribed
        ({GPU_A: 14745}, {GPU_A: 16 * GIB}, {GPU_A: 16 * GIB}),  # scaling 0.9: the card itself
        ({GPU_A: 0, GPU_B: 8192}, {GPU_A: 0}, {GPU_B: 8 * GIB}),  # zeros say nothing
        ({MIG: 5120}, {}, {MIG[:40]: 5 * GIB}),  # keyed as regions name devices (40 characters)
    ],
)
def test_device_memory_totals(
    registered_mib: dict[str, int], host_bytes: dict[str, int], expected: dict[str, int]
) -> None:
    assert device_memory_totals(registered_mib, host_bytes, 40) == expected


@pytest.mark.parametrize(
    ("memory_total", "allocated_limit", "expected"),
    [
        (16 * GIB, 4 * GIB, DeviceBounds(limit_bytes=16 * GIB, usage_bytes=16 * GIB)),
        (None, 4 * GIB, DeviceBounds(limit_bytes=None, usage_bytes=4 * GIB)),  # the scheduler's limit
        (0, 4 * GIB, DeviceBounds(limit_bytes=None, usage_bytes=4 * GIB)),
        (None, 0, DeviceBounds(limit_bytes=None, usage_bytes=None)),  # nothing known: only SM is bounded
    ],
)
def test_device_bounds(memory_total: int | None, allocated_limit: int, expected: DeviceBounds) -> None:
    assert device_bounds(memory_total, allocated_limit) == expected


DEVICE_16G = DeviceBounds(limit_bytes=16 * GIB, usage_bytes=16 * GIB)
UNKNOWN = DeviceBounds(limit_bytes=None, usage_bytes=None)


@pytest.mark.parametrize(
    ("values", "bounds", "clamps"),
    [
        ({}, DEVICE_16G, ()),
        ({"used_bytes": 16 * GIB, "limit_bytes": 16 * GIB, "sm_util": 100}, DEVICE_16G, ()),  # at the bound
        ({"used_bytes": HUGE}, DEVICE_16G, (Clamp(USED_BYTES, HUGE, 16 * GIB),)),
        ({"used_bytes": 16 * GIB + 1}, DEVICE_16G, (Clamp(USED_BYTES, 16 * GIB + 1, 16 * GIB),)),
        ({"limit_bytes": 2**64 - 1}, DEVICE_16G, (Clamp(LIMIT_BYTES, 2**64 - 1, 16 * GIB),)),
        ({"sm_util": 1600}, DEVICE_16G, (Clamp(SM_UTIL, 1600, 100),)),
        ({"sm_util": 101}, UNKNOWN, (Clamp(SM_UTIL, 101, 100),)),  # SM is bounded without any total
        ({"used_bytes": HUGE, "limit_bytes": HUGE}, UNKNOWN, ()),  # no bound known: reported as claimed
        (
            {"used_bytes": 5 * GIB},
            DeviceBounds(limit_bytes=None, usage_bytes=4 * GIB),  # the allocated limit as the bound
            (Clamp(USED_BYTES, 5 * GIB, 4 * GIB),),
        ),
        (
            {"limit_bytes": HUGE, "used_bytes": HUGE, "sm_util": HUGE},
            DEVICE_16G,
            (
                Clamp(LIMIT_BYTES, HUGE, 16 * GIB),
                Clamp(USED_BYTES, HUGE, 16 * GIB),
                Clamp(SM_UTIL, HUGE, 100),
            ),
        ),
        (
            {"context_bytes": HUGE, "module_bytes": 17 * GIB, "buffer_bytes": HUGE},
            DEVICE_16G,
            (
                Clamp(CONTEXT_BYTES, HUGE, 16 * GIB),
                Clamp(MODULE_BYTES, 17 * GIB, 16 * GIB),
                Clamp(BUFFER_BYTES, HUGE, 16 * GIB),
            ),
        ),
    ],
)
def test_clamp_device(values: dict[str, int], bounds: DeviceBounds, clamps: tuple[Clamp, ...]) -> None:
    original = reading(**values)
    clamped, found = clamp_device(original, bounds)
    assert found == clamps
    if not clamps:
        assert clamped is original  # nothing to clamp: nothing allocated
    for clamp in clamps:
        assert getattr(clamped, clamp.field) == clamp.bound
    untouched = {"index", "uuid", "sm_limit", *FIELDS} - {c.field for c in clamps}
    for name in untouched:
        assert getattr(clamped, name) == getattr(original, name)


# --- the monitor ---------------------------------------------------------------------------------------


def pod(uid: str, name: str, allocated: str) -> Any:
    return pod_info(
        {
            "metadata": {
                "uid": uid,
                "namespace": "ml",
                "name": name,
                "annotations": {wire.VGPU_DEVICES_ALLOCATED: allocated},
            },
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running"},
        }
    )


class Setup:
    def __init__(self, root: Path, store: RegionStore, pods: PodIndex, monitor: Monitor) -> None:
        self.root = root
        self.store = store
        self.pods = pods
        self.monitor = monitor
        self.caches: dict[str, Path] = {}
        self.metrics = MonitorMetrics(
            monitor.snapshot,
            lambda: [],
            lambda: MonitorCounters({}, 0, 0, 0, 0, clamped_values=monitor.stats.clamped),
            clock=lambda: NOW,
        )

    def write(self, uid: str, used: int, sm_util: int = 30, limit: int = 4 * GIB) -> None:
        """The container's region, updated in place once it exists (as libvgpu does)."""
        region = make_region(
            [GPU_A],
            limits=[limit],
            sm_limits=[50],
            procs=[ProcUse(7, buffer=[used], sm_util=[sm_util])],
            last_kernel_time=int(NOW) - 5,
        )
        existing = self.caches.get(uid)
        if existing is None:
            self.caches[uid] = write_cache(self.root, uid, "main", region)
        else:
            rewrite_in_place(existing, region)
        self.monitor.scan()

    def scrape(self) -> dict[str, list[Sample]]:
        text = self.metrics.render().decode()
        assert text == self.metrics.render_uncached().decode()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    root = tmp_path / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")
    pods.set_registered({GPU_A: RegisteredGpu(0, "NVIDIA-A100", devmem_mib=16384)})
    pods.replace([pod(UID1, "liar", f"{GPU_A},NVIDIA,4096,50:;")])
    monitor = Monitor("node-a", store, pods, clock=lambda: NOW)
    yield Setup(root, store, pods, monitor)
    store.close()


def value(fams: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in fams.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, fams.get(name))
    return found[0]


def test_a_region_claiming_2_to_the_62_bytes_is_exported_as_the_device_size(setup: Setup) -> None:
    setup.write(UID1, used=HUGE, sm_util=5000)
    with capture_logs() as logs:
        fams = setup.scrape()
        for _ in range(3):  # later scrapes neither log nor count it again
            fams = setup.scrape()
    liar = {"pod": "liar", "container": "main", "device_uuid": GPU_A}
    assert value(fams, "hami_vgpu_memory_used_bytes", **liar) == 16 * GIB
    assert value(fams, "hami_container_device_memory_bytes", **liar) == 16 * GIB
    assert value(fams, "hami_vgpu_memory_buffer_bytes", **liar) == 16 * GIB
    assert value(fams, "hami_vgpu_core_used_percent", **liar) == 100
    assert value(fams, "hami_container_device_utilization_ratio", **liar) == 100
    assert value(fams, "hami_vgpu_memory_limit_bytes", **liar) == 4 * GIB  # in bounds: as the region says
    for field in ("used_bytes", "buffer_bytes", "sm_util"):
        sample = [s for s in fams[CLAMPED] if s.labels["field"] == field]
        assert len(sample) == 1 and sample[0].value == 1
        assert sample[0].labels == {
            "zone": "vGPU",
            "node": "node-a",
            "namespace": "ml",
            "pod": "liar",
            "container": "main",
            "device_uuid": GPU_A,
            "field": field,
        }
    assert set(fams[CLAMPED][0].labels) == set(CLAMP_LABELS)
    assert len(fams[CLAMPED]) == 3
    clamped_logs = [e for e in logs if e["event"] == "region_value_clamped"]
    assert sorted(e["field"] for e in clamped_logs) == ["buffer_bytes", "sm_util", "used_bytes"]
    used_log = next(e for e in clamped_logs if e["field"] == "used_bytes")
    assert used_log["log_level"] == "warning"
    assert (used_log["pod"], used_log["container"], used_log["device"]) == ("ml/liar", "main", GPU_A)
    assert (used_log["claimed"], used_log["reported"]) == (HUGE, 16 * GIB)


def test_a_value_back_in_bounds_and_out_again_counts_twice(setup: Setup) -> None:
    setup.write(UID1, used=HUGE)
    setup.scrape()
    setup.write(UID1, used=GIB)
    fams = setup.scrape()
    assert value(fams, "hami_vgpu_memory_used_bytes", pod="liar") == GIB
    assert value(fams, CLAMPED, field="used_bytes") == 1  # the count stays while the container does
    with capture_logs() as logs:
        setup.write(UID1, used=HUGE + 1)
        fams = setup.scrape()
    assert value(fams, CLAMPED, field="used_bytes") == 2
    logged = [(e["field"], e["claimed"]) for e in logs if e["event"] == "region_value_clamped"]
    assert logged == [("used_bytes", HUGE + 1), ("buffer_bytes", HUGE + 1)]  # the buffer is all the usage


def test_the_count_goes_with_the_container_and_honest_regions_have_none(setup: Setup) -> None:
    honest = pod(UID2, "honest", f"{GPU_A},NVIDIA,1,1:;")
    setup.pods.replace([pod(UID1, "liar", f"{GPU_A},NVIDIA,4096,50:;"), honest])
    setup.write(UID1, used=HUGE)
    setup.write(UID2, used=GIB, limit=16 * GIB)
    fams = setup.scrape()
    assert {s.labels["pod"] for s in fams[CLAMPED]} == {"liar"}
    assert value(fams, "hami_vgpu_memory_used_bytes", pod="honest") == GIB
    assert value(fams, "hami_vgpu_memory_limit_bytes", pod="honest") == 16 * GIB
    setup.pods.replace([honest])
    fams = setup.scrape()
    assert CLAMPED not in fams or not fams[CLAMPED]


def test_a_limit_beyond_the_device_and_nvml_as_the_only_total(tmp_path: Path) -> None:
    root = tmp_path / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")  # nothing registered: the monitor is given NVML's total
    pods.replace([pod(UID1, "liar", f"{GPU_A},NVIDIA,4096,50:;")])
    monitor = Monitor("node-a", store, pods, clock=lambda: NOW, memory_totals=lambda: {GPU_A: 8 * GIB})
    setup = Setup(root, store, pods, monitor)
    try:
        setup.write(UID1, used=GIB, limit=HUGE)
        fams = setup.scrape()
        assert value(fams, "hami_vgpu_memory_limit_bytes", pod="liar") == 8 * GIB
        assert value(fams, CLAMPED, field="limit_bytes") == 1
        assert value(fams, "hami_vgpu_memory_used_bytes", pod="liar") == GIB
    finally:
        store.close()


def test_without_any_device_total_usage_is_bounded_by_the_allocated_limit(setup: Setup) -> None:
    setup.pods.set_registered({GPU_A: RegisteredGpu(0, "NVIDIA-A100")})  # inventory without devmem
    setup.write(UID1, used=HUGE, limit=HUGE)
    fams = setup.scrape()
    assert value(fams, "hami_vgpu_memory_used_bytes", pod="liar") == 4096 * MIB  # the pod's allocation
    assert value(fams, "hami_vgpu_memory_limit_bytes", pod="liar") == HUGE  # no device bound to hold it to
    assert {s.labels["field"] for s in fams[CLAMPED]} == {"used_bytes", "buffer_bytes"}


def test_a_new_inventory_rebounds_cached_views(setup: Setup) -> None:
    setup.write(UID1, used=20 * GIB)
    assert value(setup.scrape(), "hami_vgpu_memory_used_bytes", pod="liar") == 16 * GIB
    # The plugin re-registered the card with deviceMemoryScaling 2: the same region is now within bounds.
    setup.pods.set_registered({GPU_A: RegisteredGpu(0, "NVIDIA-A100", devmem_mib=32768)})
    assert value(setup.scrape(), "hami_vgpu_memory_used_bytes", pod="liar") == 20 * GIB
