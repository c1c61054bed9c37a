"""Monitor: regions joined with pods, limits before the first CUDA call, stale cleanup, feedback writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import shared_region as sr
from services.common import wire
from services.monitor.monitor import Monitor
from services.monitor.podresources import PodResourcesClient, PodResourcesSource
from services.monitor.pods import PodIndex, RegisteredGpu, pod_info
from services.monitor.regions import RegionStore
from sim.regions import MIB, ProcUse, make_region, write_cache

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
UID1 = "11111111-0000-4000-8000-000000000001"
UID2 = "11111111-0000-4000-8000-000000000002"
GONE = "11111111-0000-4000-8000-0000000000ff"
NOW = 2_000_000_000.0


def pod(uid: str, name: str, allocated: str, containers: tuple[str, ...] = ("main",), **extra: Any) -> Any:
    obj = {
        "metadata": {
            "uid": uid,
            "namespace": "team",
            "name": name,
            "annotations": {wire.VGPU_DEVICES_ALLOCATED: allocated},
        },
        "spec": {"containers": [{"name": c} for c in containers]},
        "status": {"phase": extra.get("phase", "Running")},
    }
    return pod_info(obj)


@pytest.fixture
def pods() -> PodIndex:
    index = PodIndex("node-a")
    index.set_registered({GPU_A: RegisteredGpu(3, "NVIDIA-T4"), GPU_B: RegisteredGpu(5, "NVIDIA-T4")})
    return index


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegionStore]:
    s = RegionStore(tmp_path / "containers")
    (tmp_path / "containers").mkdir()
    yield s
    s.close()


def make_monitor(store: RegionStore, pods: PodIndex, **kw: Any) -> Monitor:
    return Monitor("node-a", store, pods, clock=lambda: NOW, **kw)


def test_limits_are_reported_from_the_allocation_before_any_cuda_call(
    store: RegionStore, pods: PodIndex
) -> None:
    pods.replace([pod(UID1, "trainer", f"{GPU_A},NVIDIA,3000,30:{GPU_B},NVIDIA,1000,0:;")])
    monitor = make_monitor(store, pods)
    monitor.scan()
    (view,) = monitor.snapshot().containers
    assert (view.namespace, view.pod, view.container, view.has_region) == ("team", "trainer", "main", False)
    a, b = view.devices
    assert (a.vindex, a.uuid, a.host_index, a.memory_limit_bytes, a.core_limit_percent) == (
        0,
        GPU_A,
        "3",
        3000 * MIB,
        30,
    )
    assert (a.memory_used_bytes, a.core_used_percent) == (0, 0)
    assert (b.vindex, b.host_index, b.memory_limit_bytes, b.core_limit_percent) == (1, "5", 1000 * MIB, 0)


def test_the_region_takes_over_matched_by_uuid(store: RegionStore, pods: PodIndex) -> None:
    pods.replace([pod(UID1, "trainer", f"{GPU_A},NVIDIA,3000,30:{GPU_B},NVIDIA,1000,0:;")])
    # CUDA lists B first inside the container: the region's device 0 is B.
    write_cache(
        store.containers_dir,
        UID1,
        "main",
        make_region(
            [GPU_B, GPU_A],
            limits=[1000 * MIB, 3000 * MIB],
            sm_limits=[100, 30],
            procs=[ProcUse(7, context=[10, 20], buffer=[100, 200], sm_util=[5, 25])],
            last_kernel_time=1_999_999_990,
            priority=0,
        ),
    )
    monitor = make_monitor(store, pods)
    monitor.scan()
    (view,) = monitor.snapshot().containers
    assert view.has_region and view.last_kernel_time == 1_999_999_990 and view.priority == 0
    b, a = view.devices  # sorted by the index inside the container
    assert (b.vindex, b.uuid, b.memory_used_bytes, b.core_used_percent, b.core_limit_percent) == (
        0,
        GPU_B,
        110,
        5,
        0,
    )
    assert (a.vindex, a.uuid, a.memory_used_bytes, a.buffer_bytes, a.context_bytes) == (
        1,
        GPU_A,
        220,
        200,
        20,
    )
    assert (a.memory_limit_bytes, a.core_limit_percent, a.host_index) == (3000 * MIB, 30, "3")


def test_empty_slots_terminal_pods_and_unknown_pods(store: RegionStore, pods: PodIndex) -> None:
    pods.replace(
        [
            pod(UID1, "web", f";{GPU_A},NVIDIA,500,10:;", containers=("sidecar", "app")),
            pod(UID2, "done", f"{GPU_A},NVIDIA,500,10:;", phase="Succeeded"),
        ]
    )
    write_cache(store.containers_dir, GONE, "main", make_region([GPU_B], limits=[MIB]))
    write_cache(store.containers_dir, UID2, "main", make_region([GPU_A], limits=[MIB]))
    monitor = make_monitor(store, pods)
    monitor.scan()
    views = monitor.snapshot().containers
    assert [(v.pod, v.container, v.attributed) for v in views] == [("web", "app", True), ("", "main", False)]
    assert views[1].pod_uid == GONE


def test_kubelet_devices_when_the_pod_has_no_allocation(store: RegionStore, pods: PodIndex) -> None:
    pods.replace([pod(UID1, "legacy", "")])
    source = PodResourcesSource(PodResourcesClient("/nonexistent/kubelet.sock"))
    source._devices = {("team", "legacy"): {"main": (GPU_B,)}}  # what the kubelet would have answered
    monitor = make_monitor(store, pods, podresources=source)
    (view,) = monitor.snapshot().containers
    assert [(d.uuid, d.host_index, d.memory_limit_bytes) for d in view.devices] == [(GPU_B, "5", 0)]


# --- stale directories ---------------------------------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    os.utime(path, (NOW - seconds, NOW - seconds))


def test_only_stale_dirs_of_gone_pods_are_removed(store: RegionStore, pods: PodIndex) -> None:
    root = store.containers_dir
    pods.replace([pod(UID1, "live", f"{GPU_A},NVIDIA,500,10:;")])
    pods.attach_source()
    live = write_cache(root, UID1, "main", make_region([GPU_A])).parent
    stale = write_cache(root, GONE, "main", make_region([GPU_A])).parent
    fresh = write_cache(root, UID2, "main", make_region([GPU_A])).parent
    other = root / "not-a-pod_main"
    other.mkdir()
    loose = root / "README"
    loose.write_text("keep me")
    for path in (live, stale, other, loose):
        age(path, 3600)
    age(fresh, 10)
    monitor = make_monitor(store, pods, stale_grace_seconds=300)

    monitor.scan()  # the pod list is not synced yet: an empty list must not look like "all gone"
    assert stale.exists()

    pods.mark_synced()
    monitor.scan()
    assert not stale.exists()
    assert live.exists() and fresh.exists() and other.exists() and loose.exists()
    assert monitor.stats.stale_removed == 1
    assert not any(str(stale) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_nothing_is_removed_without_a_pod_source(store: RegionStore, pods: PodIndex) -> None:
    stale = write_cache(store.containers_dir, GONE, "main", make_region([GPU_A])).parent
    age(stale, 3600)
    pods.mark_synced()  # synced but no source attached (no API access)
    make_monitor(store, pods).scan()
    assert stale.exists()


# --- feedback -------------------------------------------------------------------------------------------


def test_feedback_writes_the_two_fields(store: RegionStore, pods: PodIndex, tmp_path: Path) -> None:
    pods.replace(
        [
            pod(UID1, "high", f"{GPU_A},NVIDIA,500,10:;"),
            pod(UID2, "low", f"{GPU_A},NVIDIA,500,10:;"),
        ]
    )
    high = write_cache(store.containers_dir, UID1, "main", make_region([GPU_A], priority=0, recent_kernel=2))
    low = write_cache(
        store.containers_dir,
        UID2,
        "main",
        make_region([GPU_A], priority=1, recent_kernel=2, utilization_switch=0),
    )
    unknown = write_cache(
        store.containers_dir, GONE, "main", make_region([GPU_A], priority=0, recent_kernel=3)
    )
    monitor = make_monitor(store, pods)
    monitor.scan()
    # high: recent 2 -> 1, switch 1 -> 0 (alone at priority 0); low: blocked, recent -> -1, switch -> 1.
    assert monitor.feedback() == 4
    high_r = sr.parse_region(high.read_bytes())
    low_r = sr.parse_region(low.read_bytes())
    assert (high_r.recent_kernel, high_r.utilization_switch) == (1, 0)
    assert (low_r.recent_kernel, low_r.utilization_switch) == (-1, 1)
    assert sr.parse_region(unknown.read_bytes()).recent_kernel == 3  # regions of unknown pods are left alone

    lock = tmp_path / "mig.lock"
    lock.write_text("")
    paused = make_monitor(store, pods, mig_apply_lock_file=str(lock))
    assert paused.feedback() == 0
    assert sr.parse_region(high.read_bytes()).recent_kernel == 1
    lock.unlink()
    assert paused.feedback() > 0
