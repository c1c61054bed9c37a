"""The simulated cluster file becomes Nodes that look exactly like device-plugin-registered ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import wire
from services.common.codecs import decode_node_devices
from services.common.config import ConfigError
from services.common.inventory import format_table, inventory_rows
from sim.local.cluster import load_cluster, node_object, simulated_uuid

REPO = Path(__file__).resolve().parents[3]


def test_shipped_cluster_file_loads() -> None:
    cluster = load_cluster(REPO / "deploy/local/cluster.yaml")
    assert cluster.device_split_count == 10
    assert [n.name for n in cluster.nodes] == ["gpu-node-a", "gpu-node-b", "gpu-node-c", "cpu-node"]
    assert sum(len(n.gpus) for n in cluster.nodes) == 7


def test_node_object_carries_register_annotation_and_capacity() -> None:
    cluster = load_cluster(REPO / "deploy/local/cluster.yaml")
    node = node_object(cluster.nodes[1], cluster.device_split_count)
    annotation = node["metadata"]["annotations"][wire.NODE_NVIDIA_REGISTER]
    devices = decode_node_devices(annotation)
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert [d.numa for d in devices] == [0, 0, 1, 1]
    assert {d.devmem for d in devices} == {81920}
    assert {d.count for d in devices} == {10}
    assert devices[2].id == simulated_uuid("gpu-node-b", 2)
    assert node["status"]["allocatable"][wire.RESOURCE_GPU] == "40"
    assert node["metadata"]["labels"]["gpu"] == "on"
    # What `kubectl get nodes -o wide` prints: an address, and a version that says this is the stand-in.
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "kube-vgpu-kubelet-standin"
    # HAMi's Go encoder omits zero values: index 0 and numa 0 never appear for the first card.
    assert '"index":0' not in annotation and '"numa":0' not in annotation


def test_cpu_node_has_no_gpu_resource() -> None:
    cluster = load_cluster(REPO / "deploy/local/cluster.yaml")
    node = node_object(cluster.nodes[3], cluster.device_split_count)
    assert wire.NODE_NVIDIA_REGISTER not in node["metadata"]["annotations"]
    assert wire.RESOURCE_GPU not in node["status"]["capacity"]


def test_simulated_uuids_are_stable_and_distinct() -> None:
    assert simulated_uuid("n", 0) == simulated_uuid("n", 0)
    assert simulated_uuid("n", 0) != simulated_uuid("n", 1)
    assert simulated_uuid("n", 0).startswith("GPU-")


def test_unhealthy_gpu_is_not_counted_in_capacity(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "deviceSplitCount: 4\nnodes:\n- name: n1\n  gpus:\n"
        "  - {type: NVIDIA-T4, memoryMiB: 100}\n  - {type: NVIDIA-T4, memoryMiB: 100, healthy: false}\n"
    )
    cluster = load_cluster(path)
    node = node_object(cluster.nodes[0], cluster.device_split_count)
    assert node["status"]["capacity"][wire.RESOURCE_GPU] == "4"
    assert [
        d.health for d in decode_node_devices(node["metadata"]["annotations"][wire.NODE_NVIDIA_REGISTER])
    ] == [
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nodes: []\n", "nodes"),
        ("nodes:\n- name: Bad_Name\n", "nodes.0.name"),
        ("nodes:\n- name: n1\n  gpus:\n  - {type: T4, memoryMiB: 0}\n", "nodes.0.gpus.0.memoryMiB"),
        ("nodes:\n- name: n1\n  gpu: []\n", "nodes.0.gpu: unknown key"),
        ("nodes:\n- name: n1\n- name: n1\n", "repeated: n1"),
    ],
)
def test_bad_cluster_files_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    assert needle in str(info.value)


def test_inventory_rows_survive_a_broken_annotation() -> None:
    good = node_object(load_cluster(REPO / "deploy/local/cluster.yaml").nodes[2], 10)
    broken = {"metadata": {"name": "zz-broken", "annotations": {wire.NODE_NVIDIA_REGISTER: "[{not json"}}}
    rows = inventory_rows([broken, good])
    assert rows[0]["node"] == "gpu-node-c" and rows[0]["type"] == "NVIDIA-H100-80GB-HBM3"
    assert rows[1]["node"] == "zz-broken" and "undecodable" in rows[1]["health"]
    table = format_table(rows, ["node", "gpu", "health"])
    assert table.splitlines()[0].split() == ["NODE", "GPU", "HEALTH"]
    assert len(table.splitlines()) == 3
