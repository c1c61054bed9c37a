"""SchedulerService over a real gRPC unix socket, answered from a UsageCache fed with plain objects."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from kubevgpu.scheduler.v1 import scheduler_service_pb2 as pb
from kubevgpu.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.grpc_server import build_server
from services.common.model import DeviceInfo
from services.common.resources import NvidiaRequestConfig
from services.scheduler.cache import UsageCache
from services.scheduler.fit import SchedulingPolicy
from services.scheduler.servicer import SchedulerServicer
from services.vgpuctl.cli import main as vgpuctl_main


def _node(name: str, mem: int, gpus: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    devices = [
        DeviceInfo(id=f"GPU-{name}-{i}", index=i, count=10, devmem=mem, devcore=100, type="NVIDIA-T4")
        for i in range(gpus)
    ]
    return {
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {wire.NODE_NVIDIA_REGISTER: encode_node_devices(devices)},
        },
        "status": {"allocatable": {wire.RESOURCE_GPU: str(10 * gpus)}},
    }


def _pod(name: str, *, mem: int, cores: int = 0, node: str = "", allocated: str = "") -> dict[str, Any]:
    annotations = {}
    if node:
        annotations = {
            wire.VGPU_NODE: node,
            wire.VGPU_DEVICES_ALLOCATED: allocated,
            wire.VGPU_DEVICES_TO_ALLOCATE: allocated,
            wire.BIND_PHASE: "success",
        }
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "resources": {
                        "limits": {
                            wire.RESOURCE_GPU: "1",
                            wire.RESOURCE_GPUMEM: str(mem),
                            wire.RESOURCE_GPUCORES: str(cores),
                        }
                    },
                }
            ],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


@pytest.fixture
async def server_target() -> AsyncIterator[str]:
    cache = UsageCache()
    cache.on_node_event("ADDED", _node("small", 4000, 1, {"zone": "a"}))
    cache.on_node_event("ADDED", _node("big", 16000, 2, {"zone": "b"}))
    cache.on_pod_event(
        "ADDED", _pod("running", mem=3000, cores=20, node="small", allocated="GPU-small-0,NVIDIA,3000,20:;")
    )
    pods = {"default/pending": _pod("pending", mem=2000)}

    async def get_pod(namespace: str, name: str) -> Mapping[str, Any] | None:
        return pods.get(f"{namespace}/{name}")

    servicer = SchedulerServicer(
        cache,
        policy=SchedulingPolicy("binpack", "spread"),
        request_config=NvidiaRequestConfig(),
        get_pod=get_pod,
    )
    handle = build_server([servicer.registration()], f"unix:{tempfile.mkdtemp(dir='/tmp')}/s.sock")
    await handle.start()
    yield handle.target
    await handle.stop(grace=0)


@pytest.fixture
async def stub(server_target: str) -> AsyncIterator[pb_grpc.SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(server_target) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


async def test_list_nodes_reports_capacity_and_usage(stub: pb_grpc.SchedulerServiceStub) -> None:
    reply = await stub.ListNodes(pb.ListNodesRequest())
    by_name = {n.name: n for n in reply.nodes}
    assert sorted(by_name) == ["big", "small"]
    small = by_name["small"]
    assert small.total_memory_mib == 4000 and small.used_memory_mib == 3000
    assert small.used_slots == 1 and small.total_slots == 10 and small.used_cores_percent == 20
    assert small.devices[0].device.uuid == "GPU-small-0"
    assert by_name["big"].used_memory_mib == 0 and len(by_name["big"].devices) == 2
    filtered = await stub.ListNodes(pb.ListNodesRequest(label_selector="zone=b"))
    assert [n.name for n in filtered.nodes] == ["big"]


async def test_get_node_and_not_found(stub: pb_grpc.SchedulerServiceStub) -> None:
    assert (await stub.GetNode(pb.GetNodeRequest(node_name="big"))).node.total_memory_mib == 32000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetNode(pb.GetNodeRequest(node_name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (info.value.details() or "")


async def test_list_pod_allocations(stub: pb_grpc.SchedulerServiceStub) -> None:
    reply = await stub.ListPodAllocations(pb.ListPodAllocationsRequest(node_name="small"))
    assert [a.pod.name for a in reply.allocations] == ["running"]
    card = reply.allocations[0].pod.containers[0].devices[0]
    assert (card.uuid, card.used_memory_mib, card.used_cores_percent) == ("GPU-small-0", 3000, 20)
    assert not (await stub.ListPodAllocations(pb.ListPodAllocationsRequest(node_name="big"))).allocations


async def test_explain_pod_gives_each_node_a_verdict(stub: pb_grpc.SchedulerServiceStub) -> None:
    reply = await stub.ExplainPod(pb.ExplainPodRequest(namespace="default", name="pending"))
    verdicts = {v.node_name: v for v in reply.verdicts}
    assert verdicts["big"].fits
    assert not verdicts["small"].fits
    assert verdicts["small"].reason == "1/1 CardInsufficientMemory"
    assert [(r.reason, r.count, r.total) for r in verdicts["small"].reasons] == [
        ("CardInsufficientMemory", 1, 1)
    ]
    assert verdicts["big"].containers[0].container_name == "main"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ExplainPod(pb.ExplainPodRequest(namespace="default", name="ghost"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_simulate_has_no_side_effects(stub: pb_grpc.SchedulerServiceStub) -> None:
    pod = json.dumps(_pod("what-if", mem=1000)).encode()
    first = await stub.Simulate(pb.SimulateRequest(pod_json=pod))
    second = await stub.Simulate(pb.SimulateRequest(pod_json=pod))
    assert first.fits and first.node_name == "small"  # binpack: the busier node that still fits
    assert first.containers[0].devices[0].uuid == "GPU-small-0"
    assert first == second
    nodes = await stub.ListNodes(pb.ListNodesRequest(node_name="small"))
    assert nodes.nodes[0].used_memory_mib == 3000
    none = await stub.Simulate(pb.SimulateRequest(pod_json=json.dumps(_pod("huge", mem=99999)).encode()))
    assert not none.fits and "no node fits" in none.message
    only_big = await stub.Simulate(pb.SimulateRequest(pod_json=pod, node_names=["big"]))
    assert only_big.node_name == "big"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"metadata": {}}', b"[" * 200_000 + b"]" * 200_000],
    ids=["syntax", "list", "no-spec", "deep"],
)
async def test_simulate_rejects_bad_pods(stub: pb_grpc.SchedulerServiceStub, body: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Simulate(pb.SimulateRequest(pod_json=body))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_nodes_set_based_selector_and_bad_selector(stub: pb_grpc.SchedulerServiceStub) -> None:
    reply = await stub.ListNodes(pb.ListNodesRequest(label_selector="zone in (a,c)"))
    assert [n.name for n in reply.nodes] == ["small"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListNodes(pb.ListNodesRequest(label_selector="zone in (a"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label_selector" in (info.value.details() or "")


async def _vgpuctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # vgpuctl uses a blocking channel; run it off the loop that serves the RPCs.
    code = await asyncio.to_thread(vgpuctl_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_vgpuctl_nodes_table_and_json(server_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await _vgpuctl(capsys, "--scheduler", server_target, "nodes")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NODE", "GPU", "TYPE", "SLOTS"]
    small = next(line for line in lines if line.startswith("small"))
    assert "1/10" in small and "3000/4000" in small and "75%" in small
    code, out, _ = await _vgpuctl(capsys, "--scheduler", server_target, "-o", "json", "nodes", "big")
    assert code == 0
    assert [n["name"] for n in json.loads(out)["nodes"]] == ["big"]


async def test_vgpuctl_pods_explain_simulate(
    server_target: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = await _vgpuctl(capsys, "--scheduler", server_target, "pods")
    assert code == 0 and "running" in out and "GPU-small-0 3000MiB/20%" in out
    code, out, _ = await _vgpuctl(capsys, "--scheduler", server_target, "explain", "default/pending")
    assert code == 0
    assert "pod default/pending: not bound" in out
    assert "1/1 CardInsufficientMemory" in out
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(_pod("what-if", mem=99999)))
    code, out, _ = await _vgpuctl(capsys, "--scheduler", server_target, "simulate", "-f", str(pod_file))
    assert code == 1 and "no node fits" in out
    code, _, err = await _vgpuctl(capsys, "--scheduler", server_target, "explain", "ghost")
    assert code == 1 and "NOT_FOUND" in err


async def test_vgpuctl_unreachable_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await _vgpuctl(capsys, "--scheduler", "unix:/tmp/kube-vgpu-no-such.sock", "nodes")
    assert code == 1 and "cannot reach the scheduler" in err
