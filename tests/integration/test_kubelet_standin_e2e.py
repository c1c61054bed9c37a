"""Local mode end to end on both API servers (kube-local and the upstream kube-apiserver): the device plugin
as its own process (kube-vgpu-sim-device-plugin: the product plugin on simulated GPUs) and the kubelet
stand-in. On the real server the plugin runs as the deploy's ServiceAccount and the stand-in as its node
(`system:node:<node>`), so the Node authorizer and NodeRestriction confine it as they confine a kubelet.

The test plays the scheduler: it annotates a pod the way hami-scheduler does at Filter, takes the node lock,
sets bind-phase and binds the pod. The kubelet stand-in then admits it through the real plugin process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common import wire
from services.common.codecs import decode_node_devices
from services.common.kube import new_api_client
from sim.local.cluster import simulated_uuid
from sim.local.kubelet import ALLOCATIONS_ANNOTATION, REJECTED_REASON, KubeletStandIn, container_requests
from sim.local.node_heartbeat import NODE_LEASE_NAMESPACE
from tests.support.apiservers import ApiServer, kube_flags

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE = "gpu-node-a"
GPU0, GPU1 = simulated_uuid(NODE, 0), simulated_uuid(NODE, 1)
MERGE = "application/merge-patch+json"
# The deploy runs the device plugin with this ServiceAccount.
DEVICE_PLUGIN_SA = "kube-vgpu-device-plugin"


def node_kube_args(api_server: ApiServer, node: str) -> list[str]:
    """The stand-in's command-line flags for `ApiServer.node_access`."""
    if api_server.real is None:
        return ["--server", api_server.url]
    return ["--kubeconfig", str(api_server.real.node_kubeconfig(node))]


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


class Env:
    def __init__(self, api_server: ApiServer, plugin_dir: Path, tmp: Path) -> None:
        self.server_kind = api_server.kind
        self.plugin_access = api_server.service_access(DEVICE_PLUGIN_SA)
        self.dir = plugin_dir
        self.tmp = tmp
        self.api = api_server.api_client()  # the test's set-up and assertions, as admin
        self.core: Any = client.CoreV1Api(self.api)
        self.node_api = new_api_client(api_server.node_access(NODE))
        self.kubelet = KubeletStandIn(plugin_dir, NODE, self.node_api, admission_timeout=10)
        self.plugin: subprocess.Popen[str] | None = None

    def start_plugin(self) -> None:
        env = {**os.environ, "NODE_NAME": NODE, "KUBE_VGPU_DEVICE_PLUGIN_LOG__FORMAT": "json"}
        self.plugin = subprocess.Popen(
            [
                str(BIN / "kube-vgpu-sim-device-plugin"),
                "--simulated-inventory",
                str(REPO / "deploy/local/cluster.yaml"),
                "--plugin-dir",
                str(self.dir),
                "--host-hook-path",
                str(self.tmp / "hook"),
                "--vgpulock-dir",
                str(self.tmp / "vgpulock"),
                "--grpc-bind",
                f"unix:{self.dir}/health.sock",
                "--kubelet-watch-interval-seconds",
                "0.1",
                *kube_flags(self.plugin_access),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def stop_plugin(self) -> str:
        if self.plugin is None:
            return ""
        if self.plugin.poll() is None:
            self.plugin.send_signal(signal.SIGTERM)
        try:
            _, err = self.plugin.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.plugin.kill()
            _, err = self.plugin.communicate()
        return err

    def node(self) -> dict[str, Any]:
        return json.loads(self.core.read_node(NODE, _preload_content=False).data)

    def pod(self, name: str) -> dict[str, Any]:
        return json.loads(self.core.read_namespaced_pod(name, "default", _preload_content=False).data)

    def schedule(self, name: str, to_allocate: str, spec: dict[str, Any]) -> None:
        """What hami-scheduler does for a pod: Filter annotations, node lock, bind-phase, binding."""
        now = int(time.time())
        annotations = {
            wire.VGPU_NODE: NODE,
            wire.VGPU_TIME: str(now),
            wire.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
            wire.VGPU_DEVICES_ALLOCATED: to_allocate,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"schedulerName": "hami-scheduler", **spec},
        }
        self.core.create_namespaced_pod("default", body)
        lock = f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')},default,{name}"
        self.core.patch_node(NODE, {"metadata": {"annotations": {wire.NODE_LOCK: lock}}}, _content_type=MERGE)
        self.core.patch_namespaced_pod(
            name,
            "default",
            {"metadata": {"annotations": {wire.BIND_PHASE: "allocating", wire.BIND_TIME: str(now)}}},
            _content_type=MERGE,
        )
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        }
        self.core.create_namespaced_pod_binding(name, "default", binding, _preload_content=False)


@pytest.fixture
async def env(api_server: ApiServer, tmp_path: Path) -> AsyncIterator[Env]:
    plugin_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="kvkl-"))
    e = Env(api_server, plugin_dir, tmp_path)
    e.core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"gpu": "on"}},
            "status": {},
        }
    )
    await e.kubelet.start()
    e.start_plugin()
    try:
        await eventually(
            lambda: (p := e.kubelet.plugins.get(wire.RESOURCE_GPU)) is not None and len(p.devices) == 20,
            what="plugin registered with 20 replicas",
        )
        yield e
    finally:
        err = e.stop_plugin()
        await e.kubelet.stop()
        e.node_api.close()
        e.api.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        assert e.plugin is None or e.plugin.returncode == 0, err[-3000:]


GPU_LIMIT = {"limits": {wire.RESOURCE_GPU: "1"}}


async def test_scheduled_pod_runs_with_its_devices(env: Env) -> None:
    # Init container with a GPU, an app container without, an app container with one: slot i = container i.
    env.schedule(
        "train",
        f"{GPU0},NVIDIA,1000,10:;;{GPU1},NVIDIA,2000,20:;",
        {
            "initContainers": [{"name": "warmup", "image": "cuda:12", "resources": GPU_LIMIT}],
            "containers": [
                {"name": "sidecar", "image": "busybox"},
                {"name": "main", "image": "cuda:12", "resources": GPU_LIMIT},
            ],
        },
    )
    pod = await eventually(
        lambda: (p := env.pod("train"))["status"].get("phase") == "Running" and p, what="pod Running"
    )
    annotations = pod["metadata"]["annotations"]
    assert annotations[wire.BIND_PHASE] == "success"
    assert wire.NODE_LOCK not in (env.node()["metadata"].get("annotations") or {})

    on_disk = json.loads((env.dir / "allocations" / "default_train.json").read_text())
    if env.server_kind == "real":
        # NodeRestriction lets a node write only its pods' status, never their annotations (a kubelet
        # writes none): the record file is the only copy there.
        assert ALLOCATIONS_ANNOTATION not in annotations
        recorded = on_disk
    else:
        recorded = json.loads(annotations[ALLOCATIONS_ANNOTATION])
        assert recorded == on_disk
    by_name = {c["name"]: c for c in recorded["containers"]}
    assert set(by_name) == {"warmup", "main"}  # the sidecar asked for no GPU
    assert by_name["warmup"]["init"] and not by_name["main"]["init"]
    assert by_name["warmup"]["envs"]["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
    assert by_name["warmup"]["envs"]["NVIDIA_VISIBLE_DEVICES"] == GPU0
    assert by_name["main"]["envs"]["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    assert by_name["main"]["envs"]["CUDA_DEVICE_SM_LIMIT"] == "20"
    # GetPreferredAllocation steered the kubelet to a replica of the GPU the scheduler chose.
    assert [d.rsplit("-", 1)[0] for d in by_name["main"]["deviceIDs"]] == [GPU1]
    uid = pod["metadata"]["uid"]
    mounts = {m["containerPath"]: m for m in by_name["main"]["mounts"]}
    assert mounts["/usr/local/vgpu"]["hostPath"] == str(env.tmp / "hook/vgpu/containers" / f"{uid}_main")
    assert Path(mounts["/usr/local/vgpu"]["hostPath"]).is_dir()

    statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
    assert "running" in statuses["main"]["state"] and statuses["main"]["ready"]
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert {c["type"] for c in pod["status"]["conditions"] if c["status"] == "True"} >= {
        "Ready",
        "Initialized",
    }

    node = env.node()
    assert node["status"]["allocatable"][wire.RESOURCE_GPU] == "20"
    register = decode_node_devices(node["metadata"]["annotations"][wire.NODE_NVIDIA_REGISTER])
    assert [d.id for d in register] == [GPU0, GPU1]


async def test_bad_allocation_rejects_the_pod_like_the_kubelet(env: Env) -> None:
    env.schedule(
        "broken",
        f"{GPU0},NVIDIA,1000:;",  # three fields: HAMi's "missing fields" error
        {"containers": [{"name": "main", "image": "cuda:12", "resources": GPU_LIMIT}]},
    )
    pod = await eventually(
        lambda: (p := env.pod("broken"))["status"].get("phase") == "Failed" and p, what="pod Failed"
    )
    assert pod["status"]["reason"] == REJECTED_REASON
    assert "missing fields" in pod["status"]["message"]
    assert pod["metadata"]["annotations"][wire.BIND_PHASE] == "failed"
    assert wire.NODE_LOCK not in (env.node()["metadata"].get("annotations") or {})
    events = json.loads(
        env.core.list_namespaced_event(
            "default", field_selector="involvedObject.name=broken", _preload_content=False
        ).data
    )["items"]
    assert [(e["reason"], e["type"]) for e in events] == [(REJECTED_REASON, "Warning")]
    assert "Allocate failed due to rpc error: code = INVALID_ARGUMENT" in events[0]["message"]
    assert not (env.dir / "allocations" / "default_broken.json").exists()


class DeadOnceStub:
    """The plugin's stub, but the first Allocate finds the connection gone, as when the plugin was killed
    after the kubelet last heard from it: the stream's end is then handled (not synced) and the plugin comes
    back a moment later."""

    def __init__(self, kubelet: KubeletStandIn, plugin: Any) -> None:
        self.kubelet, self.plugin, self.real = kubelet, plugin, plugin.stub
        self.allocates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def _come_back(self) -> None:
        await asyncio.sleep(0.3)
        self.plugin.synced.set()
        await self.kubelet._notify()

    async def Allocate(self, request: Any, timeout: float | None = None) -> Any:
        self.allocates += 1
        if self.allocates == 1:
            self.plugin.synced.clear()
            self.task = asyncio.create_task(self._come_back())
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection refused",
            )
        return await self.real.Allocate(request, timeout=timeout)


async def test_a_plugin_killed_under_an_admission_is_waited_for_not_failed(env: Env) -> None:
    plugin = env.kubelet.plugins[wire.RESOURCE_GPU]
    stub = DeadOnceStub(env.kubelet, plugin)
    plugin.stub = stub
    env.schedule(
        "during-restart",
        f"{GPU1},NVIDIA,500,5:;",
        {"containers": [{"name": "c", "image": "x", "resources": GPU_LIMIT}]},
    )
    pod = await eventually(
        lambda: (p := env.pod("during-restart"))["status"].get("phase") in ("Running", "Failed") and p
    )
    assert pod["status"]["phase"] == "Running", pod["status"]
    assert stub.allocates == 2  # refused on the dead connection, then allocated once the plugin was back


async def test_kubelet_restart_makes_the_plugin_register_again(env: Env) -> None:
    before = len(env.kubelet.registrations)
    await env.kubelet.restart()
    await eventually(lambda: len(env.kubelet.registrations) == before + 1, what="re-registration")
    await eventually(
        lambda: (p := env.kubelet.plugins.get(wire.RESOURCE_GPU)) is not None and len(p.devices) == 20,
        what="devices listed again",
    )
    env.schedule(
        "after",
        f"{GPU1},NVIDIA,500,5:;",
        {"containers": [{"name": "c", "image": "x", "resources": GPU_LIMIT}]},
    )
    pod = await eventually(lambda: (p := env.pod("after"))["status"].get("phase") == "Running" and p)
    assert pod["metadata"]["annotations"][wire.BIND_PHASE] == "success"


def test_container_requests_reads_limits_then_requests() -> None:
    assert container_requests({"resources": {"limits": {"nvidia.com/gpu": "2"}}}, ["nvidia.com/gpu"]) == [
        ("nvidia.com/gpu", 2)
    ]
    assert container_requests({"resources": {"requests": {"nvidia.com/gpu": 1}}}, ["nvidia.com/gpu"]) == [
        ("nvidia.com/gpu", 1)
    ]
    assert container_requests({"resources": {"limits": {"nvidia.com/gpu": "0"}}}, ["nvidia.com/gpu"]) == []
    assert container_requests({}, ["nvidia.com/gpu"]) == []


def test_standin_command_line_restarts_on_sighup_and_stops_on_sigterm(
    api_server: ApiServer, tmp_path: Path
) -> None:
    plugin_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="kvkc-"))
    sock = plugin_dir / "kubelet.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.local.kubelet",
            "--dir",
            str(plugin_dir),
            "--node-name",
            NODE,
            *node_kube_args(api_server, NODE),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.05)
        plugin_sock = plugin_dir / "nvidia-gpu.sock"
        plugin_sock.touch()  # a plugin's socket: only a restart removes it
        proc.send_signal(signal.SIGHUP)
        # Restart = every socket deleted, then kubelet.sock served again. (Inode and ctime cannot tell the
        # new socket from the old one: both are reused within a clock tick.)
        deadline = time.monotonic() + 20
        while plugin_sock.exists() or not sock.exists():
            assert proc.poll() is None, (
                f"the stand-in died on SIGHUP: {proc.stderr.read() if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "kubelet.sock was not re-created"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "kubelet_restarted" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        # The stand-in's node Lease carries no owner reference to its Node, so deleting the Node (the
        # real server's reset) leaves it behind: remove it here.
        with api_server.api_client() as api, contextlib.suppress(ApiException):
            client.CoordinationV1Api(api).delete_namespaced_lease(NODE, NODE_LEASE_NAMESPACE)
    missing = subprocess.run(
        [sys.executable, "-m", "sim.local.kubelet", "--node-name", NODE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2 and "--dir" in missing.stderr
