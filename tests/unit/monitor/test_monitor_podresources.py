"""The optional PodResources source, against a fake kubelet PodResourcesLister on a unix socket."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubevgpu.kubelet.podresources.v1 import api_pb2, api_pb2_grpc
from services.common.grpc_server import build_server
from services.monitor.podresources import PodResourcesClient, PodResourcesSource, physical_uuid

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"


class FakeLister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def List(self, request: Any, context: Any) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name="trainer",
                    namespace="ml",
                    containers=[
                        api_pb2.ContainerResources(
                            name="main",
                            devices=[
                                api_pb2.ContainerDevices(
                                    resource_name="nvidia.com/gpu", device_ids=[f"{GPU_A}-3", f"{GPU_B}-0"]
                                ),
                                api_pb2.ContainerDevices(
                                    resource_name="example.com/nic", device_ids=["nic0"]
                                ),
                            ],
                        ),
                        api_pb2.ContainerResources(name="cpu-only"),
                    ],
                ),
                api_pb2.PodResources(name="web", namespace="default", containers=[]),
            ]
        )


@pytest.fixture
async def kubelet_socket() -> AsyncIterator[tuple[str, FakeLister]]:
    directory = tempfile.mkdtemp(dir="/tmp", prefix="kv-pr-")  # short path: unix socket names are limited
    path = f"{directory}/kubelet.sock"
    lister = FakeLister()
    handle = build_server(
        [(api_pb2_grpc.add_PodResourcesListerServicer_to_server, lister, "v1.PodResourcesLister")],
        f"unix:{path}",
    )
    await handle.start()
    try:
        yield path, lister
    finally:
        await handle.stop(grace=None)


def test_physical_uuid() -> None:
    assert physical_uuid(f"{GPU_A}-7") == GPU_A
    assert physical_uuid(f"{GPU_A}::2") == GPU_A
    assert physical_uuid(GPU_A) == GPU_A
    assert physical_uuid("MIG-1234") == "MIG-1234"


async def test_lists_gpu_devices_per_container(kubelet_socket: tuple[str, FakeLister]) -> None:
    path, lister = kubelet_socket
    client = PodResourcesClient(path)
    assert client.available()
    devices = await asyncio.to_thread(client.list_devices)
    assert devices == {("ml", "trainer"): {"main": (GPU_A, GPU_B)}}
    source = PodResourcesSource(client)
    await asyncio.to_thread(source.refresh)
    assert source.devices("ml", "trainer", "main") == (GPU_A, GPU_B)
    assert source.devices("ml", "trainer", "cpu-only") == ()
    assert lister.calls == 2


async def test_missing_or_dead_socket_is_not_an_error(tmp_path: Path) -> None:
    missing = PodResourcesSource(PodResourcesClient(str(tmp_path / "absent.sock")))
    missing.refresh()
    assert missing.devices("ml", "trainer", "main") == ()
    dead = tmp_path / "dead.sock"
    dead.write_text("")  # exists, nobody listens
    source = PodResourcesSource(PodResourcesClient(str(dead), timeout=1.0))
    await asyncio.to_thread(source.refresh)
    assert source.devices("ml", "trainer", "main") == ()
