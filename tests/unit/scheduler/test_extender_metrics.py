"""Scheduler metrics (docs/hami-wire.md#scheduler-metrics) computed from the cache at scrape time, parsed back
as Prometheus text."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from services.common.codecs import encode_node_devices
from services.common.model import DeviceInfo
from services.scheduler.cache import UsageCache
from services.scheduler.metrics import SchedulerMetrics

MIB = 1024 * 1024
NOW = datetime(2026, 8, 21, 10, 0, 0, tzinfo=UTC)


def scrape(metrics: SchedulerMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def loaded_cache() -> UsageCache:
    cache = UsageCache(clock=lambda: NOW)
    devices = [
        DeviceInfo(id="GPU-a", index=0, count=10, devmem=16000, devcore=100, type="NVIDIA-Tesla T4"),
        DeviceInfo(id="GPU-b", index=1, count=10, devmem=8000, devcore=100, type="NVIDIA-Tesla T4"),
    ]
    cache.on_node_event(
        "ADDED",
        {
            "metadata": {
                "name": "n1",
                "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devices)},
            },
            "status": {"allocatable": {"nvidia.com/gpu": "20"}},
        },
    )
    cache.on_pod_event(
        "ADDED",
        {
            "metadata": {
                "name": "p",
                "namespace": "team",
                "uid": "u-p",
                "annotations": {
                    "hami.io/vgpu-node": "n1",
                    "hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,3000,30:;GPU-a,NVIDIA,1000,10:;",
                },
            },
            "status": {"phase": "Running"},
        },
    )
    cache.on_quota_event(
        "ADDED",
        {
            "metadata": {"name": "q", "namespace": "team"},
            "spec": {"hard": {"limits.nvidia.com/gpumem": "20000", "limits.nvidia.com/gpucores": "200"}},
        },
    )
    return cache


def test_hami_gauges_from_the_cache() -> None:
    metrics = SchedulerMetrics(loaded_cache())
    samples = scrape(metrics)
    a = {
        "zone": "vGPU",
        "node": "n1",
        "device_uuid": "GPU-a",
        "device_index": "0",
        "device_type": "NVIDIA-Tesla T4",
    }
    b = {**a, "device_uuid": "GPU-b", "device_index": "1"}
    assert (a, 16000 * MIB) in samples["hami_gpu_memory_limit_bytes"]
    assert (b, 8000 * MIB) in samples["hami_gpu_memory_limit_bytes"]
    assert (a, 100) in samples["hami_gpu_core_limit_ratio"]
    assert samples["hami_gpu_memory_allocated_bytes"][0] == ({**a, "device_cores": "40"}, 4000 * MIB)
    assert (a, 2) in samples["hami_gpu_shared_count"]
    assert (b, 0) in samples["hami_gpu_shared_count"]
    assert (a, 40) in samples["hami_gpu_core_allocated_ratio"]
    assert ({**a, "device_cores": "40", "device_memory_limit": "16000"}, 4000 * MIB) in samples[
        "hami_node_gpu_overview"
    ]
    assert (a, 0.25) in samples["hami_node_gpu_memory_allocated_ratio"]
    pod_labels = {
        "zone": "vGPU",
        "namespace": "team",
        "node": "n1",
        "pod": "p",
        "container_index": "0",
        "device_uuid": "GPU-a",
    }
    assert samples["hami_vgpu_memory_allocated_bytes"] == [(pod_labels, 4000 * MIB)]
    assert samples["hami_vgpu_core_allocated_ratio"] == [(pod_labels, 40)]
    assert sorted(samples["hami_resource_quota_used"], key=lambda s: s[0]["quota_name"]) == [
        ({"zone": "vGPU", "namespace": "team", "quota_name": "nvidia.com/gpucores", "limit": "200"}, 40),
        ({"zone": "vGPU", "namespace": "team", "quota_name": "nvidia.com/gpumem", "limit": "20000"}, 4000),
    ]
    assert ({"zone": "vGPU", "namespace": "team", "quota_name": "nvidia.com/gpumem"}, 20000) in samples[
        "hami_resource_quota_limit"
    ]
    [(info, value)] = samples["hami_build_info"]
    assert value == 1 and "zone" not in info
    assert set(info) == {"version", "revision", "build_date", "go_version", "compiler", "platform"}


def test_latency_histograms_are_in_the_same_registry() -> None:
    metrics = SchedulerMetrics(UsageCache())
    metrics.filter_seconds.observe(0.003)
    metrics.bind_seconds.labels("success").observe(0.2)
    samples = scrape(metrics)
    assert samples["kube_vgpu_scheduler_filter_duration_seconds_count"] == [({}, 1.0)]
    assert samples["kube_vgpu_scheduler_prioritize_duration_seconds_count"] == [({}, 0.0)]
    assert samples["kube_vgpu_scheduler_bind_duration_seconds_count"] == [({"result": "success"}, 1.0)]
    # An empty cache still renders (no nodes, no pods).
    assert "hami_gpu_memory_limit_bytes" not in samples
