"""The simulated cluster of local mode: a YAML inventory turned into Node objects.

Pure functions: the file model in, plain Kubernetes JSON out. The nodes carry exactly what a real node
running our device plugin carries, so every other component reads them through the normal code paths.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.config import ConfigError, ConfigModel, read_config_file, validate_config
from services.common.model import DeviceInfo
from sim.gpus.backend import simulated_uuid


class _FileModel(ConfigModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SimulatedGpu(_FileModel):
    type: str = Field(..., min_length=1)
    memory_mib: int = Field(..., gt=0, alias="memoryMiB")
    numa: int = Field(0, ge=0)
    uuid: str | None = None
    healthy: bool = True
    cores: int = Field(100, gt=0, le=100 * 16)


class SimulatedNode(_FileModel):
    name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: list[SimulatedGpu] = Field(default_factory=list)
    cpu: str = "16"
    memory: str = "64Gi"


class LocalCluster(_FileModel):
    device_split_count: int = Field(10, ge=1, alias="deviceSplitCount")
    nodes: list[SimulatedNode] = Field(..., min_length=1)


def load_cluster(path: str | Path) -> LocalCluster:
    cluster = validate_config(
        LocalCluster, read_config_file(path), what=f"local cluster {path}", default_source=f"file {path}"
    )
    names = [n.name for n in cluster.nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"local cluster {path}: node names must be unique, repeated: {', '.join(duplicates)}"
        )
    return cluster


def node_devices(node: SimulatedNode, split_count: int) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=gpu.uuid or simulated_uuid(node.name, index),
            index=index,
            count=split_count,
            devmem=gpu.memory_mib,
            devcore=gpu.cores,
            type=gpu.type,
            numa=gpu.numa,
            mode="hami-core",
            health=gpu.healthy,
        )
        for index, gpu in enumerate(node.gpus)
    ]


def node_object(node: SimulatedNode, split_count: int) -> dict[str, Any]:
    """The Node as our device plugin leaves it: register annotation, `gpu=on` label, vGPU capacity."""
    devices = node_devices(node, split_count)
    annotations: dict[str, str] = {}
    capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110"}
    if devices:
        annotations[wire.NODE_NVIDIA_REGISTER] = encode_node_devices(devices)
        capacity[wire.RESOURCE_GPU] = str(sum(d.count for d in devices if d.health))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name, **node.labels},
            "annotations": annotations,
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            # What a kubelet reports and `kubectl get nodes -o wide` prints: every simulated node is this
            # machine, and its "kubelet" is our stand-in, which the version says rather than pose as one.
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node.name},
            ],
            "nodeInfo": _node_info(node.name),
        },
    }


def _node_info(name: str) -> dict[str, str]:
    uname = platform.uname()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine)
    return {
        "machineID": name,
        "systemUUID": name,
        "bootID": name,
        "kernelVersion": uname.release,
        "osImage": f"{uname.system} (kube-vgpu local mode)",
        "containerRuntimeVersion": "kube-vgpu-local://none",
        "kubeletVersion": "kube-vgpu-kubelet-standin",
        "kubeProxyVersion": "",
        "operatingSystem": uname.system.lower(),
        "architecture": arch,
    }
