"""`/metrics`: names, labels and values, parsed with prometheus_client's own parser."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.common import wire
from services.common.prom_text import CONTENT_TYPE
from services.monitor.hostgpu import HostGpuStat
from services.monitor.metrics import (
    CONTAINER_LABELS,
    ErrorCounts,
    MonitorCounters,
    MonitorMetrics,
    metrics_app,
)
from services.monitor.monitor import Monitor
from services.monitor.pods import PodIndex, RegisteredGpu, pod_info
from services.monitor.regions import RegionStore
from sim.regions import MIB, ProcUse, make_region, write_cache

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
UID1 = "22222222-0000-4000-8000-000000000001"
UID2 = "22222222-0000-4000-8000-000000000002"
NOW = 2_000_000_000.0

HAMI_CONTAINER_FAMILIES = [
    "hami_vgpu_memory_used_bytes",
    "hami_vgpu_memory_limit_bytes",
    "hami_container_device_memory_bytes",
    "hami_container_device_utilization_ratio",
    "hami_container_last_kernel_elapsed_seconds",
    "hami_vgpu_memory_context_bytes",
    "hami_vgpu_memory_module_bytes",
    "hami_vgpu_memory_buffer_bytes",
]


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


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[MonitorMetrics]:
    root = tmp_path / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")
    pods.set_registered({GPU_A: RegisteredGpu(0, "NVIDIA-A100"), GPU_B: RegisteredGpu(1, "NVIDIA-A100")})
    pods.replace(
        [
            pod(UID1, "busy", f"{GPU_A},NVIDIA,4000,40:;"),
            pod(UID2, "idle", f"{GPU_B},NVIDIA,2000,0:;"),  # allocated, no CUDA call yet
        ]
    )
    write_cache(
        root,
        UID1,
        "main",
        make_region(
            [GPU_A],
            limits=[4000 * MIB],
            sm_limits=[40],
            procs=[ProcUse(9, context=[300], module=[20], buffer=[5000], sm_util=[37])],
            last_kernel_time=int(NOW) - 12,
        ),
    )
    monitor = Monitor("node-a", store, pods, clock=lambda: NOW)
    monitor.scan()
    errors = ErrorCounts(["bad_magic"])
    errors("truncated")
    host = [
        HostGpuStat(GPU_A, 0, "NVIDIA-A100", 6 * 1024 * MIB, 40 * 1024 * MIB, 55, 12),
        HostGpuStat(GPU_B, 1, "NVIDIA-A100", 0, 40 * 1024 * MIB, 0, 0),
    ]
    m = MonitorMetrics(
        monitor.snapshot,
        lambda: host,
        lambda: MonitorCounters(errors.snapshot(), store.open_count(), len(store.dirs()), 0, 0),
        clock=lambda: NOW,
    )
    yield m
    store.close()


def parse(text: str) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def one(samples: list[Sample], **labels: str) -> Sample:
    found = [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_container_series_names_labels_and_values(metrics: MonitorMetrics) -> None:
    fams = parse(metrics.render().decode())
    busy = {"pod": "busy", "container": "main", "namespace": "ml"}
    used = one(fams["hami_vgpu_memory_used_bytes"], **busy)
    assert set(used.labels) == set(CONTAINER_LABELS)
    assert used.labels == {
        "zone": "vGPU",
        "node": "node-a",
        "namespace": "ml",
        "pod": "busy",
        "container": "main",
        "vdevice_index": "0",
        "device_index": "0",
        "device_uuid": GPU_A,
    }
    assert used.value == 5320
    assert one(fams["hami_vgpu_memory_limit_bytes"], **busy).value == 4000 * MIB
    assert one(fams["hami_vgpu_core_used_percent"], **busy).value == 37
    assert one(fams["hami_vgpu_core_limit_percent"], **busy).value == 40
    assert one(fams["hami_container_device_memory_bytes"], **busy).value == 5320
    assert one(fams["hami_container_device_utilization_ratio"], **busy).value == 37
    assert one(fams["hami_container_last_kernel_elapsed_seconds"], **busy).value == 12
    assert one(fams["hami_vgpu_memory_context_bytes"], **busy).value == 300
    assert one(fams["hami_vgpu_memory_module_bytes"], **busy).value == 20
    assert one(fams["hami_vgpu_memory_buffer_bytes"], **busy).value == 5000


def test_an_allocated_container_has_series_before_its_first_cuda_call(metrics: MonitorMetrics) -> None:
    fams = parse(metrics.render().decode())
    idle = {"pod": "idle", "device_uuid": GPU_B}
    assert one(fams["hami_vgpu_memory_limit_bytes"], **idle).value == 2000 * MIB
    assert one(fams["hami_vgpu_memory_limit_bytes"], **idle).labels["device_index"] == "1"
    assert one(fams["hami_vgpu_core_limit_percent"], **idle).value == 100  # 0 = not limited
    assert one(fams["hami_vgpu_memory_used_bytes"], **idle).value == 0
    assert one(fams["hami_container_device_utilization_ratio"], **idle).value == 0
    # No kernel ever ran there: HAMi reports no elapsed time rather than a made-up one.
    assert not [s for s in fams["hami_container_last_kernel_elapsed_seconds"] if s.labels["pod"] == "idle"]


def test_hami_names_keep_hami_labels(metrics: MonitorMetrics) -> None:
    fams = parse(metrics.render().decode())
    hami_labels = {"zone", "namespace", "pod", "container", "vdevice_index", "device_uuid"}
    for name in HAMI_CONTAINER_FAMILIES:
        assert fams[name], name
        for sample in fams[name]:
            assert hami_labels <= set(sample.labels), name


def test_host_series_build_info_and_own_counters(metrics: MonitorMetrics) -> None:
    fams = parse(metrics.render().decode())
    host = one(fams["hami_host_gpu_memory_used_bytes"], device_uuid=GPU_A)
    assert host.labels == {
        "zone": "vGPU",
        "node": "node-a",
        "device_index": "0",
        "device_uuid": GPU_A,
        "device_type": "NVIDIA-A100",
    }
    assert host.value == 6 * 1024 * MIB
    assert one(fams["hami_host_gpu_utilization_ratio"], device_uuid=GPU_A).value == 55
    assert one(fams["hami_host_gpu_memory_controller_utilization_ratio"], device_uuid=GPU_A).value == 12
    (info,) = fams["hami_build_info"]
    assert "zone" not in info.labels
    assert set(info.labels) == {"version", "revision", "build_date", "go_version", "compiler", "platform"}
    errors = fams["kube_vgpu_monitor_region_errors"]
    assert {s.labels["reason"]: s.value for s in errors} == {"bad_magic": 0, "truncated": 1}
    assert errors[0].name == "kube_vgpu_monitor_region_errors_total"
    assert fams["kube_vgpu_monitor_regions_mapped"][0].value == 1


def test_no_host_series_without_nvml(tmp_path: Path) -> None:
    store = RegionStore(tmp_path / "none")
    monitor = Monitor("node-a", store, PodIndex("node-a"))
    m = MonitorMetrics(monitor.snapshot, list, lambda: MonitorCounters({}, 0, 0, 0, 0))
    fams = parse(m.render().decode())
    assert not any(name.startswith("hami_host_") for name in fams)
    assert "hami_build_info" in fams


def test_direct_writer_matches_the_registry(metrics: MonitorMetrics) -> None:
    direct = list(text_string_to_metric_families(metrics.render().decode()))
    generic = list(text_string_to_metric_families(metrics.render_with_registry().decode()))
    assert [(f.name, f.type, f.documentation) for f in direct] == [
        (f.name, f.type, f.documentation) for f in generic
    ]
    assert [f.samples for f in direct] == [f.samples for f in generic]


def test_label_values_are_escaped(tmp_path: Path) -> None:
    store = RegionStore(tmp_path / "c")
    pods = PodIndex('we"ird\\node\n')
    pods.replace([pod(UID1, "p", f"{GPU_A},NVIDIA,1,1:;")])
    monitor = Monitor('we"ird\\node\n', store, pods)
    m = MonitorMetrics(monitor.snapshot, list, lambda: MonitorCounters({}, 0, 0, 0, 0))
    fams = parse(m.render().decode())
    assert fams["hami_vgpu_memory_limit_bytes"][0].labels["node"] == 'we"ird\\node\n'


async def test_metrics_endpoint(metrics: MonitorMetrics) -> None:
    runner = web.AppRunner(metrics_app(metrics.render))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            body = await resp.text()
    finally:
        await runner.cleanup()
    assert "hami_vgpu_memory_used_bytes" in parse(body)


def test_cached_render_equals_a_fresh_render_after_random_changes(tmp_path: Path) -> None:
    """`render()` reuses each container's lines while its view is unchanged; after random changes of
    regions, pods (renames, new allocations, removals), registered GPUs and the clock, it must still give
    exactly the bytes of a render from freshly built families."""
    rng = random.Random(20261123)
    root = tmp_path / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")
    gpus = [f"GPU-{i:08x}-1111-2222-3333-444444444444" for i in range(4)]
    pods.set_registered({g: RegisteredGpu(i, "NVIDIA-A100") for i, g in enumerate(gpus)})
    uids = [f"33333333-0000-4000-8000-{i:012d}" for i in range(12)]
    clock = [NOW]
    monitor = Monitor("node-a", store, pods, clock=lambda: clock[0])
    m = MonitorMetrics(
        monitor.snapshot,
        lambda: [],
        lambda: MonitorCounters({}, store.open_count(), len(store.dirs()), 0, 0),
        clock=lambda: clock[0],
    )

    def pod_list() -> list[Any]:
        out = []
        for i, uid in enumerate(uids):
            if rng.random() < 0.15:
                continue  # gone (or not known yet)
            devs = rng.sample(gpus, rng.randint(1, 2))
            alloc = ":".join(f"{g},NVIDIA,{rng.choice([1000, 2000])},{rng.choice([0, 30])}" for g in devs)
            out.append(pod(uid, f"job-{i}-{rng.randint(0, 1)}", alloc + ":;"))
        return out

    for round_ in range(12):
        if round_ % 3 == 0:
            pods.replace(pod_list())
        if round_ % 4 == 1:
            chosen = rng.sample(gpus, 3)
            pods.set_registered({g: RegisteredGpu(rng.randint(0, 7), "NVIDIA-A100") for g in chosen})
        for uid in uids:
            if rng.random() < 0.5:
                devs = rng.sample(gpus, rng.randint(1, 2))
                write_cache(
                    root,
                    uid,
                    "main",
                    make_region(
                        devs,
                        limits=[rng.randint(1, 4000) * MIB for _ in devs],
                        sm_limits=[rng.choice([0, 30, 100]) for _ in devs],
                        procs=[
                            ProcUse(
                                rng.randint(1, 99),
                                context=[rng.randint(0, 500) for _ in devs],
                                buffer=[rng.randint(0, 5000) for _ in devs],
                                sm_util=[rng.randint(0, 100) for _ in devs],
                            )
                        ],
                        last_kernel_time=rng.choice([0, int(NOW) - rng.randint(0, 100)]),
                    ),
                )
        monitor.scan()
        clock[0] += rng.choice([0.0, 0.5, 7.25])
        for _ in range(2):  # the second render hits the cache everywhere
            assert m.render() == m.render_uncached()
    assert "hami_vgpu_memory_used_bytes{" in m.render().decode()
    store.close()
