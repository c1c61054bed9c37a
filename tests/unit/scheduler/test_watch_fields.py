"""The scheduler's watches keep only the fields its cache reads (decoders.pod_usage_fields and
node_state_fields): every decoder answers the same from the kept fields as from the whole object."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common.codecs import encode_node_devices
from services.common.model import DeviceInfo
from services.scheduler.decoders import (
    init_containers_done,
    node_state_fields,
    node_state_from_object,
    pod_finished,
    pod_usage_fields,
    pod_usage_from_object,
)

ALLOCATED = "GPU-a,NVIDIA,3000,30:;GPU-b,NVIDIA,1000,10:;"
NOISE = {"managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}], "generateName": "x-"}


def full_pod(**changes: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "42",
            "labels": {"hami.io/vgpu-node": "n1", "app": "x"},
            "annotations": {
                "hami.io/vgpu-node": "n1",
                "hami.io/vgpu-time": "1700000000",
                "hami.io/vgpu-devices-allocated": ALLOCATED,
                "hami.io/vgpu-devices-to-allocate": ALLOCATED,
                "hami.io/bind-phase": "success",
                "hami.io/vgpu-mig-allocations": '[{"gpuUUID":"GPU-a","placement":{"start":0,"size":2}}]',
                "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 2000 + "}",
            },
            **NOISE,
        },
        "spec": {
            "nodeName": "n1",
            "initContainers": [
                {"name": "init", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "image": "proxy", "restartPolicy": "Always"},
            ],
            "containers": [
                {"name": "main", "image": "cuda", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "initContainerStatuses": [
                {
                    "name": "init",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                    "ready": True,
                },
                {"name": "sidecar", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            ],
            "containerStatuses": [{"name": "main", "ready": True}],
        },
    }
    for path, value in changes.items():
        target = pod
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return pod


CASES = {
    "running with init and sidecar": full_pod(),
    "init still running": full_pod(
        status__initContainerStatuses=[{"name": "init", "state": {"running": {}}}, {"name": "sidecar"}]
    ),
    "init failed": full_pod(
        status__initContainerStatuses=[{"name": "init", "state": {"terminated": {"exitCode": 1}}}]
    ),
    "no init containers": full_pod(spec__initContainers=None, status__initContainerStatuses=None),
    "succeeded": full_pod(status__phase="Succeeded"),
    "terminating": full_pod(metadata__deletionTimestamp="2026-01-01T00:00:00Z"),
    "not bound yet": full_pod(metadata__annotations={"team": "a"}),
    "undecodable allocation": full_pod(
        metadata__annotations={"hami.io/vgpu-node": "n1", "hami.io/vgpu-devices-allocated": "garbage"}
    ),
    "odd shapes": full_pod(spec__initContainers=["not-a-container"], status__initContainerStatuses="odd"),
    "no status": full_pod(status=None),
}


@pytest.mark.parametrize("pod", CASES.values(), ids=CASES.keys())
def test_pod_decoders_answer_the_same_from_the_kept_fields(pod: dict[str, Any]) -> None:
    original = copy.deepcopy(pod)
    slim = pod_usage_fields(pod)
    assert pod == original  # the object is read, never changed
    assert pod_usage_from_object(slim) == pod_usage_from_object(pod)
    assert pod_finished(slim) == pod_finished(pod)
    assert init_containers_done(slim) == init_containers_done(pod)
    assert len(repr(slim)) < len(repr(pod)) / 2
    assert "managedFields" not in slim["metadata"] and "last-applied" not in repr(slim)


def full_node(**annotations: str) -> dict[str, Any]:
    devices = [DeviceInfo(id="GPU-a", index=0, count=10, devmem=16000, devcore=100, type="NVIDIA-T4")]
    return {
        "metadata": {
            "name": "n1",
            "uid": "nu",
            "resourceVersion": "7",
            "labels": {"gpu": "on"},
            "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devices), **annotations},
            **NOISE,
        },
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {
            "allocatable": {"nvidia.com/gpu": "10", "cpu": "8"},
            "capacity": {"nvidia.com/gpu": "10"},
            "images": [{"names": ["cuda:12"], "sizeBytes": 1}] * 50,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@pytest.mark.parametrize(
    "node",
    [
        full_node(),
        full_node(
            **{"hami.io/mutex.lock": "2026-01-01T00:00:00Z,ns,p", "hami.io/node-handshake": "Requesting_x"}
        ),
    ],
)
def test_node_state_is_the_same_from_the_kept_fields(node: dict[str, Any]) -> None:
    slim = node_state_fields(node)
    assert node_state_from_object(slim) == node_state_from_object(node)
    previous = node_state_from_object(node)
    assert node_state_from_object(slim, previous) == node_state_from_object(node, previous)
    assert "images" not in slim["status"] and "managedFields" not in slim["metadata"]
