"""The monitor against both API servers (kube-local and the upstream kube-apiserver, where it runs as the
deploy's device-plugin ServiceAccount with that RBAC): caches paired with this node's pods through the
watch, `/metrics`, MonitorService, the feedback loop and stale-dir cleanup; then the console script end to
end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kubevgpu.monitor.v1 import monitor_service_pb2 as pb
from kubevgpu.monitor.v1 import monitor_service_pb2_grpc as pb_grpc
from services.common import shared_region as sr
from services.common import wire
from services.monitor.config import MonitorConfig
from services.monitor.runtime import MonitorRuntime
from sim.regions import MIB, ProcUse, make_region, write_cache
from tests.support import free_port
from tests.support.apiservers import ApiServer, kube_flags

NODE = "gpu-node-a"
GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
GONE_UID = "99999999-0000-4000-8000-000000000000"
BIN = Path(sys.executable).parent
# The deploy runs the monitor in the device-plugin DaemonSet, with its ServiceAccount.
MONITOR_SA = "kube-vgpu-device-plugin"


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gpu_pod(name: str, node: str, allocated: str, containers: tuple[str, ...] = ("main",)) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, namespace="default", annotations={wire.VGPU_DEVICES_ALLOCATED: allocated}
        ),
        spec=client.V1PodSpec(
            node_name=node, containers=[client.V1Container(name=c, image="cuda:12") for c in containers]
        ),
    )


Families = dict[str, list[Sample]]


def parse(text: str) -> Families:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def scrape(port: int) -> Families:
    """From a thread that does not run the monitor's event loop."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return parse(resp.read().decode())


async def ascrape(port: int) -> Families:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return parse(await resp.text())


def series(fams: Families, name: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["pod"], s.labels["container"], s.labels["device_uuid"]): s.value for s in fams.get(name, [])
    }


async def eventually_metrics(port: int, check: Callable[[Families], bool], what: str) -> Families:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        fams = await ascrape(port)
        if check(fams):
            return fams
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


async def test_monitor_pairs_caches_with_pods_from_the_api(api_server: ApiServer, tmp_path: Path) -> None:
    api = api_server.api_client()
    core = client.CoreV1Api(api)
    register = f'[{{"id":"{GPU_A}","index":0,"count":10,"devmem":16384,"devcore":100,"type":"NVIDIA-T4"}},'
    register += f'{{"id":"{GPU_B}","index":1,"count":10,"devmem":16384,"devcore":100,"type":"NVIDIA-T4"}}]'
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=NODE, annotations={wire.NODE_NVIDIA_REGISTER: register})
        )
    )
    trainer = core.create_namespaced_pod(
        "default",
        gpu_pod("trainer", NODE, f"{GPU_A},NVIDIA,4096,50:;{GPU_B},NVIDIA,1024,0:;", ("main", "aux")),
    )
    elsewhere = core.create_namespaced_pod(
        "default", gpu_pod("elsewhere", "gpu-node-b", f"{GPU_A},NVIDIA,1,1:;")
    )
    finished = core.create_namespaced_pod("default", gpu_pod("finished", NODE, f"{GPU_B},NVIDIA,512,0:;"))

    root = tmp_path / "vgpu" / "containers"
    cache = write_cache(
        root,
        trainer.metadata.uid,
        "main",
        make_region(
            [GPU_A],
            limits=[4096 * MIB],
            sm_limits=[50],
            procs=[ProcUse(10, context=[64 * MIB], buffer=[1024 * MIB], sm_util=[30])],
            recent_kernel=3,
            utilization_switch=1,
            priority=1,
        ),
    )
    write_cache(root, elsewhere.metadata.uid, "main", make_region([GPU_A]))
    stale = aged(write_cache(root, GONE_UID, "main", make_region([GPU_B])).parent, 3600)
    finished_dir = write_cache(root, finished.metadata.uid, "main", make_region([GPU_B])).parent
    foreign = root / "lost+found"
    foreign.mkdir()
    aged(foreign, 3600)

    sock_dir = tempfile.mkdtemp(dir="/tmp", prefix="kv-mon-")
    cfg = MonitorConfig(
        node_name=NODE,
        hook_path=str(tmp_path / "vgpu"),
        metrics_bind_address="127.0.0.1:0",
        grpc_bind=f"unix:{sock_dir}/monitor.sock",
        scan_interval_seconds=0.1,
        feedback_interval_seconds=0.1,
        stale_grace_seconds=60,
        host_gpus="none",
        kube=api_server.service_access(MONITOR_SA),
    )
    runtime = MonitorRuntime(cfg)
    await runtime.start()
    try:
        port = runtime.metrics_port
        assert port
        # Paired through the pod watch: the region's usage for trainer/main, the allocation for trainer/aux.
        # The host indices come from the node watch, which may deliver after the pod watch: wait for both.
        fams = await eventually_metrics(
            port,
            lambda f: (
                series(f, "hami_vgpu_memory_used_bytes").get(("trainer", "main", GPU_A)) == 1088 * MIB
                and all(s.labels["device_index"] for s in f.get("hami_vgpu_memory_limit_bytes", []))
            ),
            "trainer/main usage and the registered host indices",
        )
        limits = series(fams, "hami_vgpu_memory_limit_bytes")
        assert limits[("trainer", "main", GPU_A)] == 4096 * MIB
        assert limits[("trainer", "aux", GPU_B)] == 1024 * MIB  # no CUDA call there yet (HAMi#1814)
        assert not any(pod == "elsewhere" for pod, _, _ in limits)  # another node's pod
        index = {
            s.labels["device_uuid"]: s.labels["device_index"] for s in fams["hami_vgpu_memory_limit_bytes"]
        }
        assert index == {GPU_A: "0", GPU_B: "1"}  # from the node's registered inventory

        # The feedback loop: trainer is alone on its GPU, so its switch goes off and its activity decays.
        await eventually(lambda: sr.parse_region(cache.read_bytes()).utilization_switch == 0, "switch off")
        await eventually(lambda: sr.parse_region(cache.read_bytes()).recent_kernel == 0, "activity decays")

        # Stale cleanup: only the old dir of a pod that does not exist; nothing else.
        await eventually(lambda: not stale.exists(), "stale dir removed")
        assert foreign.exists() and finished_dir.exists() and cache.exists()

        # A pod that is deleted: its dir goes once it is older than the grace period.
        core.delete_namespaced_pod("finished", "default", grace_period_seconds=0)
        aged(finished_dir, 3600)
        await eventually(lambda: not finished_dir.exists(), "deleted pod's dir removed")
        assert cache.exists()

        # MonitorService on its unix socket.
        async with grpc.aio.insecure_channel(cfg.grpc_bind) as channel:
            reply = await pb_grpc.MonitorServiceStub(channel).ListContainerUsage(
                pb.ListContainerUsageRequest(pod_name="trainer")
            )
        assert {c.container_name for c in reply.containers} == {"main", "aux"}
        fams = await ascrape(port)
        assert sum(s.value for s in fams["kube_vgpu_monitor_region_errors"]) == 0
    finally:
        await runtime.stop()
        api.close()
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if str(root) in line]


async def test_region_values_beyond_the_registered_device_are_clamped_and_counted(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Issue 17, defect 5: a region claiming 2^62 bytes used is exported as the size of the GPU in the node's
    registered inventory (from the node watch), and counted once however often it is scraped."""
    api = api_server.api_client()
    core = client.CoreV1Api(api)
    register = f'[{{"id":"{GPU_A}","index":0,"count":10,"devmem":16384,"devcore":100,"type":"NVIDIA-T4"}}]'
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=NODE, annotations={wire.NODE_NVIDIA_REGISTER: register})
        )
    )
    liar = core.create_namespaced_pod("default", gpu_pod("liar", NODE, f"{GPU_A},NVIDIA,4096,50:;"))
    root = tmp_path / "vgpu" / "containers"
    region = make_region([GPU_A], limits=[4096 * MIB], procs=[ProcUse(10, buffer=[2**62], sm_util=[30])])
    write_cache(root, liar.metadata.uid, "main", region)
    sock_dir = tempfile.mkdtemp(dir="/tmp", prefix="kv-mon-")
    cfg = MonitorConfig(
        node_name=NODE,
        hook_path=str(tmp_path / "vgpu"),
        metrics_bind_address="127.0.0.1:0",
        grpc_bind=f"unix:{sock_dir}/monitor.sock",
        scan_interval_seconds=0.1,
        feedback_enabled=False,
        host_gpus="none",
        kube=api_server.service_access(MONITOR_SA),
    )
    runtime = MonitorRuntime(cfg)
    await runtime.start()
    try:
        port = runtime.metrics_port
        assert port
        # The node watch may deliver after the pod watch: until then the allocated limit is the bound.
        fams = await eventually_metrics(
            port,
            lambda f: series(f, "hami_vgpu_memory_used_bytes").get(("liar", "main", GPU_A)) == 16384 * MIB,
            "liar/main reported at the registered device size",
        )
        for _ in range(3):
            fams = await ascrape(port)
        assert series(fams, "hami_vgpu_memory_used_bytes")[("liar", "main", GPU_A)] == 16384 * MIB
        assert series(fams, "hami_vgpu_memory_limit_bytes")[("liar", "main", GPU_A)] == 4096 * MIB
        clamped = {
            s.labels["field"]: s.value
            for s in fams["hami_vgpu_region_values_clamped"]
            if (s.labels["node"], s.labels["pod"], s.labels["device_uuid"]) == (NODE, "liar", GPU_A)
        }
        assert clamped == {"used_bytes": 1, "buffer_bytes": 1}
    finally:
        await runtime.stop()
        api.close()


def test_console_script_serves_metrics_and_stops_on_sigterm(api_server: ApiServer, tmp_path: Path) -> None:
    api = api_server.api_client()
    pod = client.CoreV1Api(api).create_namespaced_pod(
        "default", gpu_pod("solo", NODE, f"{GPU_A},NVIDIA,2048,25:;")
    )
    api.close()
    write_cache(tmp_path / "containers", pod.metadata.uid, "main", make_region([GPU_A], limits=[2048 * MIB]))
    write_cache(tmp_path / "containers", pod.metadata.uid, "side", b"not a region at all" * 100)
    sock_dir = tempfile.mkdtemp(dir="/tmp", prefix="kv-mon-")
    port = free_port()
    env = {
        **os.environ,
        "NODE_NAME": NODE,
        "HOOK_PATH": str(tmp_path),
        "KUBE_VGPU_MONITOR_LOG__FORMAT": "json",
    }
    proc = subprocess.Popen(
        [
            str(BIN / "kube-vgpu-monitor"),
            "--metrics-bind-address",
            f"127.0.0.1:{port}",
            "--grpc-bind",
            f"unix:{sock_dir}/monitor.sock",
            "--scan-interval-seconds",
            "0.2",
            "--host-gpus",
            "none",
            *kube_flags(api_server.service_access(MONITOR_SA)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                limits = series(scrape(port), "hami_vgpu_memory_limit_bytes")
                if limits.get(("solo", "main", GPU_A)) == 2048 * MIB:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "monitor never reported solo/main"
            time.sleep(0.1)
        errors = {s.labels["reason"]: s.value for s in scrape(port)["kube_vgpu_monitor_region_errors"]}
        assert errors["bad_magic"] == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert '"event": "region_skipped"' in err and '"reason": "bad_magic"' in err
        assert '"event": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


pytestmark = pytest.mark.timeout(120)
