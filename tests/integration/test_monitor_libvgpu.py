"""The monitor reading a region that the real libvgpu writes (on the fake driver), and the feedback loop
writing back into it while the library runs. Skipped unless libvgpu has been built (`make -C libvgpu`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import wire
from services.monitor.monitor import Monitor
from services.monitor.pods import PodIndex, pod_info
from services.monitor.regions import RegionStore

REPO = Path(__file__).resolve().parents[2]
if not (REPO / "libvgpu" / "build" / "libvgpu.so").exists():
    pytest.skip("libvgpu is not built (make -C libvgpu)", allow_module_level=True)
sys.path.insert(0, str(REPO / "tests" / "libvgpu"))

from libvgpu_harness import Built, MiB, Runner, build, finish, wait_ready  # noqa: E402

UID = "44444444-0000-4000-8000-000000000001"
CTX = 64 * MiB  # the fake driver's context size


@pytest.fixture(scope="module")
def built() -> Built:
    return build()


@pytest.fixture
def containers(tmp_path: Path) -> Path:
    return tmp_path / "containers"


@pytest.fixture
def runner(built: Built, containers: Path) -> Runner:
    cache_dir = containers / f"{UID}_main"
    cache_dir.mkdir(parents=True)
    return Runner(built, cache_dir / "5b0e9d4a-1c2f-4e55-8f0a-6d3c2b1a0f9e.cache")


@pytest.fixture
def monitor(containers: Path) -> Iterator[Monitor]:
    pods = PodIndex("node-a")
    first = "GPU-fa4e6b00-0000-0000-0000-000000000000"
    second = "GPU-fa4e6b00-0000-0000-0000-000000000001"
    info = pod_info(
        {
            "metadata": {
                "uid": UID,
                "namespace": "ml",
                "name": "real",
                "annotations": {
                    wire.VGPU_DEVICES_ALLOCATED: f"{first},NVIDIA,2048,40:{second},NVIDIA,1024,40:;"
                },
            },
            "spec": {"containers": [{"name": "main"}]},
        }
    )
    assert info is not None
    pods.replace([info])
    store = RegionStore(containers)
    yield Monitor("node-a", store, pods)
    store.close()


def test_monitor_reads_and_steers_the_real_library(runner: Runner, monitor: Monitor) -> None:
    env = {
        "CUDA_DEVICE_MEMORY_LIMIT_0": "2g",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "1g",
        "CUDA_DEVICE_SM_LIMIT": "40",
    }
    proc = runner.spawn("region", "10", "20", env=env)
    try:
        wait_ready(proc)
        monitor.scan()
        (view,) = monitor.snapshot().containers
        assert view.has_region and view.last_kernel_time > 0
        first, second = view.devices
        assert (first.vindex, first.memory_used_bytes, first.buffer_bytes, first.context_bytes) == (
            0,
            CTX + 10 * MiB,
            10 * MiB,
            CTX,
        )
        assert (first.memory_limit_bytes, first.core_limit_percent) == (2 << 30, 40)
        assert (second.memory_used_bytes, second.memory_limit_bytes) == (CTX + 20 * MiB, 1 << 30)

        # Alone on its GPUs: the feedback loop turns the switch off and lets recent_kernel decay.
        assert monitor.feedback() == 2
        reading = monitor.store.read(f"{UID}_main")
        assert reading is not None and (reading.utilization_switch, reading.recent_kernel) == (0, 1)

        # The library goes on with the region the monitor wrote into.
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("free\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "freed"
        (view,) = monitor.snapshot().containers
        assert view.devices[0].memory_used_bytes == CTX
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        (view,) = monitor.snapshot().containers
        assert view.devices[0].memory_used_bytes == 0  # its slot is gone
    finally:
        finish([proc])
