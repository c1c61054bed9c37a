"""The device plugin over real unix sockets, with this test as the kubelet, on both API servers (kube-local
and the upstream kube-apiserver, where the plugin runs as the deploy's ServiceAccount with its RBAC).

The plugin runs in-process on the simulated backend (GPUs GPU-aaa and GPU-bbb, split 2); the test serves
the kubelet's Registration service and dials the plugin with the v1beta1 stubs, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common import wire
from services.common.codecs import decode_node_devices
from services.common.device_config import NvidiaConfig
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.kube import new_api_client
from services.device_plugin.config import DevicePluginConfig, HealthConfig, effective_settings
from services.device_plugin.gpu import GpuEvent
from services.device_plugin.kubeops import KubeOps
from services.device_plugin.plugin import DevicePlugin
from sim.gpus.backend import SimulatedBackend
from tests.support.apiservers import ApiServer

NODE = "node-a"
TWO = "GPU-aaa,NVIDIA,3000,50:;GPU-bbb,NVIDIA,4000,60:;"
MERGE = "application/merge-patch+json"
# The deploy runs the device plugin (and the monitor beside it) with this ServiceAccount.
DEVICE_PLUGIN_SA = "kube-vgpu-device-plugin"


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self) -> None:
        self.requests: asyncio.Queue[api_pb2.RegisterRequest] = asyncio.Queue()

    async def Register(self, request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        await self.requests.put(request)
        return api_pb2.Empty()


class Harness:
    def __init__(self, plugin_dir: Path, api_server: ApiServer, tmp: Path) -> None:
        self.dir = plugin_dir
        self.tmp = tmp
        self.kubelet = FakeKubelet()
        self.kubelet_server: GrpcServerHandle | None = None
        # The test's own set-up and assertions run as admin; the plugin gets the deploy's access.
        self.api = api_server.api_client()
        self.core: Any = client.CoreV1Api(self.api)
        self.plugin_access = api_server.service_access(DEVICE_PLUGIN_SA)
        self.plugin_api = new_api_client(self.plugin_access)
        self.plugin: DevicePlugin | None = None
        self.backend: SimulatedBackend | None = None

    async def start_kubelet(self) -> None:
        self.kubelet_server = build_server(
            [(api_pb2_grpc.add_RegistrationServicer_to_server, self.kubelet, "v1beta1.Registration")],
            f"unix:{self.dir}/kubelet.sock",
        )
        await self.kubelet_server.start()

    async def restart_kubelet(self) -> None:
        """What a kubelet restart does to the plugin dir: every socket deleted, kubelet.sock re-created."""
        assert self.kubelet_server is not None
        await self.kubelet_server.stop(grace=0)
        for sock in self.dir.glob("*.sock"):
            sock.unlink()
        await self.start_kubelet()

    async def start_plugin(self, **overrides: Any) -> DevicePlugin:
        inventory = self.tmp / "gpus.yaml"
        inventory.write_text(
            "gpus:\n"
            "- {type: Tesla T4, memoryMiB: 15360, uuid: GPU-aaa, numa: 0}\n"
            "- {type: Tesla T4, memoryMiB: 15360, uuid: GPU-bbb, numa: 1}\n"
        )
        values: dict[str, Any] = {
            "node_name": NODE,
            "plugin_dir": str(self.dir),
            "host_hook_path": str(self.tmp / "hook"),
            "vgpulock_dir": str(self.tmp / "vgpulock"),
            "kubelet_watch_interval_seconds": 0.05,
            "register_retry_seconds": 0.2,
            "health": HealthConfig(recovery_seconds=overrides.pop("recovery_seconds", 0)),
            "kube": self.plugin_access,
        }
        values.update(overrides)
        cfg = DevicePluginConfig(**values)
        settings = effective_settings(NODE, NvidiaConfig(deviceSplitCount=2), None)
        self.backend = SimulatedBackend(inventory, NODE)
        self.plugin = DevicePlugin(cfg, settings, self.backend, KubeOps(self.plugin_api))
        await self.plugin.start()
        return self.plugin

    async def close(self) -> None:
        if self.plugin is not None:
            await self.plugin.stop()
        if self.kubelet_server is not None:
            await self.kubelet_server.stop(grace=0)
        self.plugin_api.close()
        self.api.close()

    # --- API helpers -----------------------------------------------------------------------------

    def node(self) -> dict[str, Any]:
        return json.loads(self.core.read_node(NODE, _preload_content=False).data)

    def pod(self, name: str = "p1") -> dict[str, Any]:
        return json.loads(self.core.read_namespaced_pod(name, "default", _preload_content=False).data)

    def set_lock(self, owner: str = "p1") -> str:
        value = f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')},default,{owner}"
        self.core.patch_node(
            NODE, {"metadata": {"annotations": {wire.NODE_LOCK: value}}}, _content_type=MERGE
        )
        return value

    def create_pod(self, to_allocate: str | None, containers: list[dict[str, Any]], name: str = "p1") -> None:
        annotations = {
            wire.VGPU_NODE: NODE,
            wire.BIND_PHASE: "allocating",
            wire.BIND_TIME: str(int(time.time())),
        }
        if to_allocate is not None:
            annotations[wire.VGPU_DEVICES_TO_ALLOCATE] = to_allocate
            annotations[wire.VGPU_DEVICES_ALLOCATED] = to_allocate
        for c in containers:
            c.setdefault("image", "cuda:12")
            c.setdefault("resources", {"limits": {wire.RESOURCE_GPU: "1"}})
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"nodeName": NODE, "containers": containers},
        }
        self.core.create_namespaced_pod("default", body)

    # --- kubelet side ----------------------------------------------------------------------------

    def channel(self) -> grpc.aio.Channel:
        assert self.plugin is not None
        return grpc.aio.insecure_channel(f"unix:{self.plugin.endpoint.socket_path}")


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def h(api_server: ApiServer, tmp_path: Path) -> AsyncIterator[Harness]:
    plugin_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="kvdp-"))
    harness = Harness(plugin_dir, api_server, tmp_path)
    harness.core.create_node(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"gpu": "on"}}}
    )
    await harness.start_kubelet()
    try:
        yield harness
    finally:
        await harness.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)


async def allocate(h: Harness, *ids: str) -> api_pb2.AllocateResponse:
    async with h.channel() as ch:
        stub = api_pb2_grpc.DevicePluginStub(ch)
        return await stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))]
            ),
            timeout=10,
        )


async def allocate_error(h: Harness, *ids: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await allocate(h, *ids)
    return err.value


# --- registration and ListAndWatch ------------------------------------------------------------------


async def test_serves_registers_and_lists_replicas(h: Harness) -> None:
    plugin = await h.start_plugin()
    request = await asyncio.wait_for(h.kubelet.requests.get(), 5)
    assert (request.version, request.endpoint, request.resource_name) == (
        "v1beta1",
        "nvidia-gpu.sock",
        "nvidia.com/gpu",
    )
    assert request.options.get_preferred_allocation_available
    assert plugin.endpoint.socket_path == h.dir / "nvidia-gpu.sock"

    async with h.channel() as ch:
        stub = api_pb2_grpc.DevicePluginStub(ch)
        options = await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        assert options.get_preferred_allocation_available and not options.pre_start_required
        stream = stub.ListAndWatch(api_pb2.Empty())
        first = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
        await stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=["GPU-aaa-0"]), timeout=5)
    assert [(d.ID, d.health) for d in first.devices] == [
        ("GPU-aaa-0", "Healthy"),
        ("GPU-aaa-1", "Healthy"),
        ("GPU-bbb-0", "Healthy"),
        ("GPU-bbb-1", "Healthy"),
    ]
    assert not first.devices[0].HasField("topology")  # enableNumaTopology is off

    register = await eventually(
        lambda: h.node()["metadata"].get("annotations", {}).get(wire.NODE_NVIDIA_REGISTER)
    )
    devices = decode_node_devices(register)
    assert [(d.id, d.index, d.count, d.devmem, d.devcore, d.type, d.numa, d.health) for d in devices] == [
        ("GPU-aaa", 0, 2, 15360, 100, "NVIDIA-Tesla T4", 0, True),
        ("GPU-bbb", 1, 2, 15360, 100, "NVIDIA-Tesla T4", 1, True),
    ]


async def test_kubelet_restart_makes_the_plugin_serve_and_register_again(h: Harness) -> None:
    plugin = await h.start_plugin()
    await asyncio.wait_for(h.kubelet.requests.get(), 5)
    starts = plugin.endpoint.server_starts
    await h.restart_kubelet()
    assert not plugin.endpoint.socket_path.exists()
    again = await asyncio.wait_for(h.kubelet.requests.get(), 5)
    assert again.endpoint == "nvidia-gpu.sock"
    await eventually(lambda: plugin.endpoint.registrations == 2)
    assert plugin.endpoint.server_starts == starts + 1
    async with h.channel() as ch:  # the new socket answers
        reply = await api_pb2_grpc.DevicePluginStub(ch).ListAndWatch(api_pb2.Empty()).read()
    assert len(reply.devices) == 4


async def test_plugin_started_before_the_kubelet_registers_when_it_appears(h: Harness) -> None:
    assert h.kubelet_server is not None
    await h.kubelet_server.stop(grace=0)
    plugin = await h.start_plugin()
    await asyncio.sleep(0.2)
    assert plugin.endpoint.registrations == 0
    await h.start_kubelet()
    await asyncio.wait_for(h.kubelet.requests.get(), 5)
    await asyncio.wait_for(plugin.endpoint.registered.wait(), 5)


async def test_health_event_resends_unhealthy_then_recovers(h: Harness) -> None:
    plugin = await h.start_plugin(recovery_seconds=0.5)
    assert h.backend is not None

    def registered_health() -> dict[str, bool]:
        value = h.node()["metadata"].get("annotations", {}).get(wire.NODE_NVIDIA_REGISTER, "[]")
        return {d.id: d.health for d in decode_node_devices(value)}

    async with h.channel() as ch:
        stream = api_pb2_grpc.DevicePluginStub(ch).ListAndWatch(api_pb2.Empty())
        await asyncio.wait_for(stream.read(), 5)
        h.backend.inject(GpuEvent(kind="xid", uuid="GPU-aaa", xid=43))  # in the ignore list: nothing happens
        h.backend.inject(GpuEvent(kind="xid", uuid="GPU-bbb", xid=79))
        sick = await asyncio.wait_for(stream.read(), 5)
        assert {d.ID: d.health for d in sick.devices} == {
            "GPU-aaa-0": "Healthy",
            "GPU-aaa-1": "Healthy",
            "GPU-bbb-0": "Unhealthy",
            "GPU-bbb-1": "Unhealthy",
        }
        await eventually(lambda: registered_health() == {"GPU-aaa": True, "GPU-bbb": False})
        recovered = await asyncio.wait_for(stream.read(), 5)  # after 0.5 s without another critical XID
        stream.cancel()
    assert {d.health for d in recovered.devices} == {"Healthy"}
    await eventually(lambda: registered_health() == {"GPU-aaa": True, "GPU-bbb": True})
    assert plugin.tracker.reason("GPU-bbb") is None


async def test_inventory_edit_marks_gpu_unhealthy(h: Harness) -> None:
    await h.start_plugin()
    async with h.channel() as ch:
        stream = api_pb2_grpc.DevicePluginStub(ch).ListAndWatch(api_pb2.Empty())
        await asyncio.wait_for(stream.read(), 5)
        inventory = h.tmp / "gpus.yaml"
        inventory.write_text(
            "gpus:\n"
            "- {type: Tesla T4, memoryMiB: 15360, uuid: GPU-aaa, healthy: false}\n"
            "- {type: Tesla T4, memoryMiB: 15360, uuid: GPU-bbb, numa: 1}\n"
        )
        reply = await asyncio.wait_for(stream.read(), 5)
        stream.cancel()
    assert [d.health for d in reply.devices] == ["Unhealthy", "Unhealthy", "Healthy", "Healthy"]


async def test_registration_patches_only_when_changed_and_publishes_capacity(h: Harness) -> None:
    plugin = await h.start_plugin(publish_extended_capacity=True, register_interval_seconds=3600)
    await eventually(lambda: plugin.registrar.node_patches == 1 and plugin.registrar.status_patches == 1)
    rv = h.node()["metadata"]["resourceVersion"]
    assert await plugin.registrar.sync_node() is False
    assert await plugin.registrar.sync_node() is False
    assert h.node()["metadata"]["resourceVersion"] == rv and plugin.registrar.node_patches == 1
    status = h.node()["status"]
    assert status["capacity"][wire.RESOURCE_GPUMEM] == "30720"
    assert status["allocatable"][wire.RESOURCE_GPUCORES] == "200"
    # Someone wipes the annotation: the next pass writes it back.
    h.core.patch_node(
        NODE, {"metadata": {"annotations": {wire.NODE_NVIDIA_REGISTER: None}}}, _content_type=MERGE
    )
    assert await plugin.registrar.sync_node() is True
    assert wire.NODE_NVIDIA_REGISTER in h.node()["metadata"]["annotations"]


# --- Allocate -----------------------------------------------------------------------------------------


async def test_allocate_fixture_two_containers_success_releases_lock(h: Harness) -> None:
    plugin = await h.start_plugin()
    h.create_pod(
        TWO,
        [{"name": "c0"}, {"name": "c1", "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]}],
    )
    h.set_lock()
    uid = h.pod()["metadata"]["uid"]

    async with h.channel() as ch:
        stub = api_pb2_grpc.DevicePluginStub(ch)
        available = ["GPU-aaa-0", "GPU-aaa-1", "GPU-bbb-0", "GPU-bbb-1"]
        pref = await stub.GetPreferredAllocation(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, allocation_size=1
                    )
                ]
            ),
            timeout=5,
        )
    assert list(pref.container_responses[0].deviceIDs) == ["GPU-aaa-0"]

    first = (await allocate(h, "GPU-aaa-0")).container_responses[0]
    assert first.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert first.envs["CUDA_DEVICE_SM_LIMIT"] == "50"
    assert first.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa"
    mounts = {m.container_path: m for m in first.mounts}
    assert "/etc/ld.so.preload" in mounts and mounts["/etc/ld.so.preload"].read_only
    cache_dir = Path(mounts["/usr/local/vgpu"].host_path)
    assert cache_dir == h.tmp / "hook" / "vgpu" / "containers" / f"{uid}_c0" and cache_dir.is_dir()
    annotations = h.pod()["metadata"]["annotations"]
    assert annotations[wire.VGPU_DEVICES_TO_ALLOCATE] == ";GPU-bbb,NVIDIA,4000,60:;;"
    assert annotations[wire.BIND_PHASE] == "allocating"
    assert annotations[wire.VGPU_DEVICES_ALLOCATED] == TWO
    assert wire.NODE_LOCK in h.node()["metadata"]["annotations"]  # one container still to go

    second = (await allocate(h, "GPU-bbb-0")).container_responses[0]
    assert second.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4000m"
    assert second.envs["CUDA_DEVICE_SM_LIMIT"] == "60"
    assert "/etc/ld.so.preload" not in {m.container_path for m in second.mounts}
    annotations = h.pod()["metadata"]["annotations"]
    assert annotations[wire.BIND_PHASE] == "success"
    assert annotations[wire.VGPU_DEVICES_TO_ALLOCATE] == ";;;;"  # one trailing slot per round, as HAMi
    assert wire.NODE_LOCK not in (h.node()["metadata"].get("annotations") or {})
    assert (h.tmp / "hook" / "vgpu" / "containers" / f"{uid}_c1").is_dir()
    assert plugin.libs is not None and plugin.libs.ld_so_preload.read_text() == "/usr/local/vgpu/libvgpu.so\n"


async def test_pod_found_without_lock_by_bind_annotations(h: Harness) -> None:
    await h.start_plugin()
    h.create_pod("GPU-bbb,NVIDIA,1000,10:;", [{"name": "main"}])
    reply = await allocate(h, "GPU-bbb-1")
    assert reply.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-bbb"
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "success"


async def test_count_mismatch_fails_the_pod_and_releases_the_lock(h: Harness) -> None:
    await h.start_plugin()
    h.create_pod(TWO, [{"name": "c0"}, {"name": "c1"}])
    h.set_lock()
    error = await allocate_error(h, "GPU-aaa-0", "GPU-aaa-1")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "device number not matched" in (error.details() or "")
    assert "bind-phase=failed" in (error.details() or "")
    annotations = h.pod()["metadata"]["annotations"]
    assert annotations[wire.BIND_PHASE] == "failed"
    assert annotations[wire.VGPU_DEVICES_TO_ALLOCATE] == TWO  # nothing half-written
    assert wire.NODE_LOCK not in (h.node()["metadata"].get("annotations") or {})


async def test_two_device_ids_for_a_container_assigned_one_gpu_is_refused(h: Harness) -> None:
    """The kubelet's device IDs are checked against the pod's assignment (issue 17, defect 5): two IDs for
    a container the scheduler gave one GPU fail the Allocate, naming pod, container and both counts, and fail
    the bind as every Allocate failure does."""
    await h.start_plugin()
    h.create_pod("GPU-bbb,NVIDIA,1000,10:;", [{"name": "trainer"}])
    h.set_lock()
    error = await allocate_error(h, "GPU-bbb-0", "GPU-bbb-1")
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod default/p1 container 'trainer' asks for 2 nvidia.com/gpu device(s)" in details
    assert "holds 1 GPU(s) (GPU-bbb)" in details
    assert "bind-phase=failed" in details
    annotations = h.pod()["metadata"]["annotations"]
    assert annotations[wire.BIND_PHASE] == "failed"
    assert annotations[wire.VGPU_DEVICES_TO_ALLOCATE] == "GPU-bbb,NVIDIA,1000,10:;"  # nothing handed out
    assert wire.NODE_LOCK not in (h.node()["metadata"].get("annotations") or {})
    assert not (h.tmp / "hook" / "vgpu" / "containers" / f"{h.pod()['metadata']['uid']}_trainer").exists()


@pytest.mark.parametrize(
    ("to_allocate", "needle"),
    [
        (None, "has no hami.io/vgpu-devices-to-allocate annotation"),
        ("GPU-aaa,NVIDIA,3000:;", "missing fields"),
        ("GPU-aaa,NVIDIA,3000,fifty:;", "malformed"),
        ("GPU-zzz,NVIDIA,3000,50:;", "not advertised by node node-a"),
    ],
)
async def test_bad_annotations_fail_clearly(h: Harness, to_allocate: str | None, needle: str) -> None:
    await h.start_plugin()
    h.create_pod(to_allocate, [{"name": "main"}])
    h.set_lock()
    error = await allocate_error(h, "GPU-aaa-0")
    assert needle in (error.details() or "")
    assert "pod default/p1" in (error.details() or "")
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "failed"
    assert wire.NODE_LOCK not in (h.node()["metadata"].get("annotations") or {})


async def test_failure_never_releases_another_pods_lock(h: Harness) -> None:
    await h.start_plugin()
    h.create_pod("GPU-aaa,NVIDIA,1,1:;", [{"name": "main"}])
    lock = h.set_lock(owner="someone-else")  # owner pod does not exist: lookup falls back to p1
    error = await allocate_error(h, "GPU-aaa-0", "GPU-bbb-0")
    assert "device number not matched" in (error.details() or "")
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "failed"
    assert h.node()["metadata"]["annotations"][wire.NODE_LOCK] == lock


async def test_no_pending_pod_is_not_found_and_changes_nothing(h: Harness) -> None:
    await h.start_plugin()
    error = await allocate_error(h, "GPU-aaa-0")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no binding pod found on node node-a"


async def test_allocations_are_serialized(h: Harness) -> None:
    await h.start_plugin()
    h.create_pod(TWO, [{"name": "c0"}, {"name": "c1"}])
    h.set_lock()
    replies = await asyncio.gather(allocate(h, "GPU-aaa-0"), allocate(h, "GPU-bbb-0"))
    limits = sorted(r.container_responses[0].envs["CUDA_DEVICE_MEMORY_LIMIT_0"] for r in replies)
    assert limits == ["3000m", "4000m"]  # each call consumed its own slot, none was lost or repeated
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "success"


async def test_stray_allocate_never_fails_a_pod_that_is_already_served(h: Harness) -> None:
    await h.start_plugin()
    h.create_pod("GPU-aaa,NVIDIA,1000,10:;", [{"name": "main"}])
    await allocate(h, "GPU-aaa-0")
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "success"
    # A second pod asks for nvidia.com/gpu without hami-scheduler: nothing to hand it, nobody is failed.
    error = await allocate_error(h, "GPU-bbb-0")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert h.pod()["metadata"]["annotations"][wire.BIND_PHASE] == "success"
