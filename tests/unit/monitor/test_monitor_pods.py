"""Pods of the node: slot order -> container devices, sidecars, node inventory."""

from __future__ import annotations

from typing import Any

from services.common import wire
from services.monitor.pods import PodIndex, pod_info

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


def pod(
    uid: str = "uid-1",
    *,
    allocated: str | None = None,
    inits: list[dict[str, Any]] | None = None,
    apps: list[str] = ("main",),  # type: ignore[assignment]
    phase: str = "Running",
) -> dict[str, Any]:
    annotations = {} if allocated is None else {wire.VGPU_DEVICES_ALLOCATED: allocated}
    return {
        "metadata": {"uid": uid, "namespace": "team", "name": "job", "annotations": annotations},
        "spec": {"initContainers": inits or [], "containers": [{"name": n} for n in apps]},
        "status": {"phase": phase},
    }


def test_slots_follow_init_then_app_order() -> None:
    value = f"{GPU_A},NVIDIA,1000,10:;;{GPU_B},NVIDIA,2000,20:{GPU_A},NVIDIA,500,0:;"
    info = pod_info(pod(allocated=value, inits=[{"name": "setup"}], apps=["empty", "train"]))
    assert info is not None
    setup, empty, train = info.containers
    assert (setup.name, setup.init, setup.reported) == ("setup", True, False)
    assert setup.devices[0].usedmem == 1000
    assert empty.devices == ()
    assert [(d.uuid, d.usedmem, d.usedcores) for d in train.devices] == [(GPU_B, 2000, 20), (GPU_A, 500, 0)]


def test_native_sidecars_are_reported() -> None:
    info = pod_info(pod(inits=[{"name": "proxy", "restartPolicy": "Always"}]))
    assert info is not None
    assert info.containers[0].sidecar and info.containers[0].reported


def test_undecodable_allocation_keeps_the_pod_without_devices() -> None:
    info = pod_info(pod(allocated=f"{GPU_A},NVIDIA,lots,0:;"))
    assert info is not None
    assert info.allocation_error and "lots" in info.allocation_error
    assert info.containers[0].devices == ()


def test_terminal_phases() -> None:
    assert pod_info(pod(phase="Succeeded")).terminal  # type: ignore[union-attr]
    assert not pod_info(pod(phase="Pending")).terminal  # type: ignore[union-attr]


def test_index_follows_events_and_node_inventory() -> None:
    index = PodIndex("gpu-node-a")
    index.on_pod_event("ADDED", pod("u1"))
    index.on_pod_event("ADDED", pod("u2"))
    index.on_pod_event("DELETED", pod("u1"))
    assert "u2" in index and "u1" not in index
    register = f'[{{"id":"{GPU_B}","index":1,"count":10,"devmem":16000,"devcore":100,"type":"NVIDIA-T4"}}]'
    node = {"metadata": {"name": "gpu-node-a", "annotations": {wire.NODE_NVIDIA_REGISTER: register}}}
    index.on_node_event("ADDED", node)
    index.on_node_event("ADDED", {"metadata": {"name": "other", "annotations": {}}})
    assert index.registered()[GPU_B].index == 1
    assert index.registered()[GPU_B].type == "NVIDIA-T4"
    index.on_node_event("DELETED", node)
    assert index.registered() == {}
