"""MonitorService over a unix socket, and `vgpuctl top` against it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubevgpu.monitor.v1 import monitor_service_pb2 as pb
from kubevgpu.monitor.v1 import monitor_service_pb2_grpc as pb_grpc
from services.common import wire
from services.common.grpc_server import GrpcServerHandle, build_server
from services.monitor.hostgpu import HostGpuStat
from services.monitor.monitor import Monitor
from services.monitor.pods import PodIndex, RegisteredGpu, pod_info
from services.monitor.regions import RegionStore
from services.monitor.servicer import MonitorServicer
from services.vgpuctl import cli as vgpuctl
from sim.regions import MIB, ProcUse, make_region, write_cache

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
UID1 = "33333333-0000-4000-8000-000000000001"
UID2 = "33333333-0000-4000-8000-000000000002"


def pod(uid: str, namespace: str, name: str, allocated: str) -> Any:
    return pod_info(
        {
            "metadata": {
                "uid": uid,
                "namespace": namespace,
                "name": name,
                "annotations": {wire.VGPU_DEVICES_ALLOCATED: allocated},
            },
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running"},
        }
    )


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    root = tmp_path / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")
    pods.set_registered({GPU_A: RegisteredGpu(0, "NVIDIA-T4"), GPU_B: RegisteredGpu(1, "NVIDIA-T4")})
    pods.replace(
        [
            pod(UID1, "ml", "trainer", f"{GPU_A},NVIDIA,4096,50:;"),
            pod(UID2, "web", "api", f"{GPU_B},NVIDIA,1024,0:;"),
        ]
    )
    write_cache(
        root,
        UID1,
        "main",
        make_region(
            [GPU_A],
            limits=[4096 * MIB],
            sm_limits=[50],
            procs=[ProcUse(5, context=[256 * MIB], buffer=[768 * MIB], sm_util=[42])],
        ),
    )
    m = Monitor("node-a", store, pods)
    m.scan()
    yield m
    store.close()


@pytest.fixture
async def server(monitor: Monitor) -> AsyncIterator[GrpcServerHandle]:
    directory = tempfile.mkdtemp(dir="/tmp", prefix="kv-mon-")
    servicer = MonitorServicer(
        "node-a",
        monitor.snapshot,
        lambda: [],
        monitor.pods.registered,
        default_interval_seconds=0.1,
    )
    handle = build_server([servicer.registration()], f"unix:{directory}/monitor.sock")
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop(grace=None)


async def test_list_container_usage_and_filters(server: GrpcServerHandle) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.MonitorServiceStub(channel)
        reply = await stub.ListContainerUsage(pb.ListContainerUsageRequest())
        assert reply.node_name == "node-a"
        assert [(c.namespace, c.pod_name, c.container_name) for c in reply.containers] == [
            ("ml", "trainer", "main"),
            ("web", "api", "main"),
        ]
        trainer = reply.containers[0]
        assert trainer.pod_uid == UID1
        (dev,) = trainer.devices
        assert (dev.uuid, dev.index, dev.memory_used_bytes, dev.memory_limit_bytes) == (
            GPU_A,
            0,
            1024 * MIB,
            4096 * MIB,
        )
        assert (dev.context_bytes, dev.buffer_bytes, dev.core_used_percent, dev.core_limit_percent) == (
            256 * MIB,
            768 * MIB,
            42,
            50,
        )
        only_web = await stub.ListContainerUsage(pb.ListContainerUsageRequest(namespace="web"))
        assert [c.pod_name for c in only_web.containers] == ["api"]
        assert only_web.containers[0].devices[0].memory_limit_bytes == 1024 * MIB
        none = await stub.ListContainerUsage(pb.ListContainerUsageRequest(pod_name="nope"))
        assert list(none.containers) == []


async def test_list_devices_falls_back_to_the_registered_inventory(server: GrpcServerHandle) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        reply = await pb_grpc.MonitorServiceStub(channel).ListDevices(pb.ListDevicesRequest())
    assert [(d.uuid, d.index, d.type) for d in reply.devices] == [
        (GPU_A, 0, "NVIDIA-T4"),
        (GPU_B, 1, "NVIDIA-T4"),
    ]


async def test_list_devices_with_host_statistics(monitor: Monitor) -> None:
    stat = HostGpuStat(GPU_A, 0, "NVIDIA-T4", 5 * MIB, 16 * 1024 * MIB, 70, 30)
    servicer = MonitorServicer("node-a", monitor.snapshot, lambda: [stat], monitor.pods.registered)
    reply = await servicer.ListDevices(pb.ListDevicesRequest(), None)
    (dev,) = reply.devices
    assert (dev.memory_used_bytes, dev.memory_total_bytes, dev.utilization_percent) == (
        5 * MIB,
        16384 * MIB,
        70,
    )
    assert dev.memory_utilization_percent == 30


async def test_watch_streams_snapshots_until_cancelled(server: GrpcServerHandle) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = pb_grpc.MonitorServiceStub(channel).WatchContainerUsage(
            pb.WatchContainerUsageRequest(interval_ms=1, pod_name="trainer")
        )
        stamps = []
        async for message in call:
            assert [c.pod_name for c in message.containers] == ["trainer"]
            stamps.append(message.timestamp_unix_ms)
            if len(stamps) == 3:
                break
        call.cancel()
    assert stamps == sorted(stamps) and stamps[0] > 0


async def test_vgpuctl_top_once(server: GrpcServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(vgpuctl.main, ["--monitor", server.target, "top", "--once"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("node node-a  2 GPU container(s)")
    assert lines[1].split() == [
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "GPU",
        "MEMORY",
        "MEM%",
        "CORE%",
        "CORE_LIMIT",
        "LAST_KERNEL",
        "UUID",
    ]
    trainer = lines[2].split()
    assert trainer[:9] == ["ml", "trainer", "main", "0", "1024MiB/4096MiB", "25%", "42%", "50%", trainer[8]]
    assert trainer[9] == GPU_A
    api = lines[3].split()
    assert api[:8] == ["web", "api", "main", "0", "0MiB/1024MiB", "0%", "0%", "-"]
    assert api[8] == "-"  # never ran a kernel


async def test_vgpuctl_top_once_json(server: GrpcServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(vgpuctl.main, ["--monitor", server.target, "-o", "json", "top", "--once"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["node_name"] == "node-a"
    assert {c["pod_name"] for c in data["containers"]} == {"trainer", "api"}


def test_vgpuctl_top_unreachable_monitor(capsys: pytest.CaptureFixture[str]) -> None:
    code = vgpuctl.main(["--monitor", "unix:/nonexistent/monitor.sock", "top", "--once"])
    assert code == 1
    assert "cannot reach the monitor" in capsys.readouterr().err


async def test_vgpuctl_top_live_refreshes(server: GrpcServerHandle) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.vgpuctl",
        "--monitor",
        server.target,
        "top",
        "--interval",
        "0.1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    headers = 0
    deadline = time.monotonic() + 30
    try:
        while headers < 3 and time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            if not line:
                break
            if line.startswith(b"node node-a"):
                headers += 1
    finally:
        proc.kill()
        await proc.wait()
    assert headers == 3
