"""Allocate and GetPreferredAllocation as pure functions: the docs/hami-wire.md#allocate-cases fixtures and
the edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common import wire
from services.common.device_config import NvidiaConfig
from services.common.model import ContainerDevice
from services.device_plugin.allocate import (
    DEVICE_NUMBER_NOT_MATCHED,
    AllocationError,
    container_for_slot,
    device_count_mismatch,
    plan_allocation,
    plan_preferred,
    preferred_for_container,
)
from services.device_plugin.config import NodeOverride, PluginSettings, effective_settings
from services.device_plugin.devices import physical_id
from services.device_plugin.hostfs import HostLayout, LibFiles

LAYOUT = HostLayout(hook_path="/usr/local", host_hook_dir="/host/usr/local", vgpulock_dir="/tmp/vgpulock")
LIBS = LibFiles(
    libvgpu=Path("/host/usr/local/vgpu/libvgpu.so.abc"),
    ld_so_preload=Path("/host/usr/local/vgpu/ld.so.preload.def"),
)
UID = "4f0c6d2e-1b7a-4c1e-9d3f-0a1b2c3d4e5f"


def settings(**nvidia: Any) -> PluginSettings:
    return effective_settings("node-a", NvidiaConfig(**nvidia), None)


def pod(
    to_allocate: str | None,
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    uid: str = UID,
) -> dict[str, Any]:
    annotations = {} if to_allocate is None else {wire.VGPU_DEVICES_TO_ALLOCATE: to_allocate}
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    return {
        "metadata": {"name": "p1", "namespace": "default", "uid": uid, "annotations": annotations},
        "spec": spec,
    }


def plan(
    p: dict[str, Any], requests: list[list[str]], s: PluginSettings | None = None, gpus: str = "aaa bbb"
):
    return plan_allocation(
        p,
        requests,
        settings=s or settings(),
        layout=LAYOUT,
        libs=LIBS,
        node_gpus=frozenset(f"GPU-{g}" for g in gpus.split()),
        new_cache_name=lambda: "cache-id",
    )


TWO = "GPU-aaa,NVIDIA,3000,50:;GPU-bbb,NVIDIA,4000,60:;"
TWO_CONTAINERS = [{"name": "c0"}, {"name": "c1"}]


def test_fixture_two_containers_in_kubelet_order() -> None:
    p = pod(TWO, TWO_CONTAINERS)
    first = plan(p, [["GPU-aaa-0"]])
    (c0,) = first.plans
    assert c0.container == "c0" and c0.slot == 0
    assert c0.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert c0.envs["CUDA_DEVICE_SM_LIMIT"] == "50"
    assert c0.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa"
    assert first.remaining == ";GPU-bbb,NVIDIA,4000,60:;;"  # HAMi's re-encoding, byte for byte
    assert not first.done

    p["metadata"]["annotations"][wire.VGPU_DEVICES_TO_ALLOCATE] = first.remaining
    second = plan(p, [["GPU-bbb-0"]])
    (c1,) = second.plans
    assert c1.container == "c1" and c1.slot == 1
    assert c1.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4000m"
    assert c1.envs["CUDA_DEVICE_SM_LIMIT"] == "60"
    assert second.done


def test_env_and_mounts_of_a_container() -> None:
    s = effective_settings(
        "node-a",
        NvidiaConfig(deviceMemoryScaling=2.0, disableCoreLimit=True, libCudaLogLevel=3),
        None,
    )
    result = plan(pod("GPU-aaa,NVIDIA,1000,30:GPU-bbb,NVIDIA,2000,30:;", [{"name": "main"}]), [["a", "b"]], s)
    envs = result.plans[0].envs
    assert envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
    assert envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "2000m"
    assert envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/usr/local/vgpu/cache-id.cache"
    assert envs["CUDA_OVERSUBSCRIBE"] == "true"
    assert envs["LIBCUDA_LOG_LEVEL"] == "3"
    assert envs["GPU_CORE_UTILIZATION_POLICY"] == "disable"
    mounts = {m.container_path: (m.host_path, m.read_only) for m in result.plans[0].mounts}
    assert mounts == {
        "/usr/local/vgpu/libvgpu.so": ("/host/usr/local/vgpu/libvgpu.so.abc", True),
        "/usr/local/vgpu": (f"/host/usr/local/vgpu/containers/{UID}_main", False),
        "/tmp/vgpulock": ("/tmp/vgpulock", False),
        "/etc/ld.so.preload": ("/host/usr/local/vgpu/ld.so.preload.def", True),
    }


def test_defaults_set_no_oversubscribe_and_no_core_policy() -> None:
    envs = plan(pod("GPU-aaa,NVIDIA,1000,0:;", [{"name": "main"}]), [["x"]]).plans[0].envs
    assert "CUDA_OVERSUBSCRIBE" not in envs
    assert "GPU_CORE_UTILIZATION_POLICY" not in envs
    assert envs["LIBCUDA_LOG_LEVEL"] == "1"


def test_same_gpu_twice_is_listed_once_in_visible_devices() -> None:
    envs = (
        plan(pod("GPU-aaa,NVIDIA,1000,0:GPU-aaa,NVIDIA,1000,0:;", [{"name": "m"}]), [["x", "y"]])
        .plans[0]
        .envs
    )
    assert envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa"


@pytest.mark.parametrize(
    ("value", "preloaded"), [("true", False), ("1", False), ("false", True), ("yes", True)]
)
def test_cuda_disable_control_drops_ld_so_preload(value: str, preloaded: bool) -> None:
    container = {"name": "main", "env": [{"name": "CUDA_DISABLE_CONTROL", "value": value}]}
    result = plan(pod("GPU-aaa,NVIDIA,1000,0:;", [container]), [["x"]])
    paths = [m.container_path for m in result.plans[0].mounts]
    assert ("/etc/ld.so.preload" in paths) is preloaded
    assert "/usr/local/vgpu/libvgpu.so" in paths  # the library is still mounted, just not preloaded


def test_count_mismatch_is_device_number_not_matched() -> None:
    with pytest.raises(AllocationError) as err:
        plan(pod(TWO, TWO_CONTAINERS), [["GPU-aaa-0", "GPU-aaa-1"]])
    assert err.value.message.startswith(DEVICE_NUMBER_NOT_MATCHED)
    assert "slot 0 holds 1 GPU(s)" in err.value.message


A = ContainerDevice("GPU-aaa", "NVIDIA", 3000, 50)
B = ContainerDevice("GPU-bbb", "NVIDIA", 4000, 60)


@pytest.mark.parametrize(
    ("assigned", "device_ids", "needles"),
    [
        ((A,), ["GPU-aaa-0"], None),
        ((A, B), ["GPU-aaa-0", "GPU-bbb-1"], None),
        ((A, B), ["GPU-bbb-1", "GPU-aaa-0"], None),  # the kubelet's order need not be the annotation's
        ((A,), ["GPU-aaa-0", "GPU-aaa-1"], ("asks for 2 nvidia.com/gpu device(s)", "slot 3 holds 1 GPU(s)")),
        ((A, B), ["GPU-aaa-0"], ("asks for 1 nvidia.com/gpu device(s) (GPU-aaa-0)", "holds 2 GPU(s)")),
        ((A,), [], ("asks for 0 nvidia.com/gpu device(s) (none)", "holds 1 GPU(s) (GPU-aaa)")),
        ((), ["GPU-aaa-0"], ("asks for 1", "holds 0 GPU(s) (none)")),
    ],
)
def test_device_count_mismatch_table(
    assigned: tuple[ContainerDevice, ...], device_ids: list[str], needles: tuple[str, ...] | None
) -> None:
    message = device_count_mismatch("ml/trainer", "main", 3, assigned, device_ids, "nvidia.com/gpu")
    if needles is None:
        assert message is None
        return
    assert message is not None and message.startswith(DEVICE_NUMBER_NOT_MATCHED)
    assert "pod ml/trainer container 'main'" in message
    assert wire.VGPU_DEVICES_TO_ALLOCATE in message
    for needle in needles:
        assert needle in message


def test_count_mismatch_names_the_container_not_only_the_slot() -> None:
    p = pod(";GPU-aaa,NVIDIA,1000,10:;", [{"name": "app"}], init=[{"name": "setup"}])
    with pytest.raises(AllocationError) as err:
        plan(p, [["GPU-aaa-0", "GPU-aaa-1"]])
    assert err.value.code == "invalid"
    assert "pod default/p1 container 'app' asks for 2 nvidia.com/gpu device(s)" in err.value.message
    assert "slot 1 holds 1 GPU(s) (GPU-aaa)" in err.value.message


def test_init_containers_come_first_and_empty_slots_are_skipped() -> None:
    p = pod(
        ";GPU-aaa,NVIDIA,1000,10:;GPU-bbb,NVIDIA,2000,20:;",
        [{"name": "app"}],
        init=[{"name": "setup"}, {"name": "warmup"}],
    )
    result = plan(p, [["x"], ["y"]])
    assert [(c.slot, c.container, c.init) for c in result.plans] == [(1, "warmup", True), (2, "app", False)]
    assert result.done
    assert container_for_slot(p, 0)[0]["name"] == "setup"


@pytest.mark.parametrize(
    ("annotation", "needle"),
    [
        (None, "has no hami.io/vgpu-devices-to-allocate annotation"),
        ("GPU-aaa,NVIDIA,3000:;", "missing fields"),
        ("GPU-aaa,NVIDIA,lots,50:;", "is malformed"),
        (";;", "already allocated"),
        ("GPU-zzz,NVIDIA,1,1:;", "not advertised by node node-a"),
        (";;GPU-aaa,NVIDIA,1,1:;", "slot 2"),
    ],
)
def test_bad_annotations_raise_a_clear_error(annotation: str | None, needle: str) -> None:
    with pytest.raises(AllocationError) as err:
        plan(pod(annotation, TWO_CONTAINERS), [["x"]])
    assert needle in err.value.message
    assert err.value.code == "invalid"


@pytest.mark.parametrize(
    ("uid", "container"),
    [("../../etc", "main"), ("a/b", "main"), (UID, "../x"), (UID, "Main"), ("", "main"), (UID, "a" * 64)],
)
def test_unsafe_uid_or_container_name_never_becomes_a_path(uid: str, container: str) -> None:
    with pytest.raises(AllocationError) as err:
        plan(pod("GPU-aaa,NVIDIA,1,1:;", [{"name": container}], uid=uid), [["x"]])
    assert "pod default/p1" in err.value.message


def test_multiple_container_requests_in_one_call_consume_in_order() -> None:
    result = plan(pod(TWO, TWO_CONTAINERS), [["a"], ["b"]])
    assert [c.container for c in result.plans] == ["c0", "c1"]
    assert result.remaining == ";;;"
    assert result.done


# --- preferred allocation ---------------------------------------------------------------------------

EIGHT = [f"GPU-03f69c50-207a-2038-9b45-23cac89cb6{n}d" for n in range(60, 68)]


def test_preferred_fixture_must_include_plus_first_replica_of_the_others() -> None:
    annotation = "".join(f"{u},NVIDIA,1000,0:" for u in EIGHT) + ";"
    available = [f"{u}-{r}" for u in EIGHT for r in range(3)]
    must = [f"{EIGHT[7]}-1"]
    (answer,) = plan_preferred(pod(annotation, [{"name": "m"}]), [(available, must, 8)], {})
    assert sorted(answer) == sorted([f"{u}-0" for u in EIGHT[:7]] + [f"{EIGHT[7]}-1"])


# Short test UUIDs do not have the six dashes of real ones: name their replicas through the plugin's map.
REPLICAS = {f"GPU-{g}-{n}": f"GPU-{g}" for g in ("aaa", "bbb") for n in range(3)}


def test_preferred_skips_taken_replicas_and_gives_up_when_a_gpu_has_none() -> None:
    devices = plan_preferred(pod(TWO, TWO_CONTAINERS), [(["GPU-aaa-1", "GPU-bbb-0"], [], 1)], REPLICAS)
    assert devices == [["GPU-aaa-1"]]
    assert plan_preferred(pod(TWO, TWO_CONTAINERS), [(["GPU-bbb-0"], [], 1)], REPLICAS) == [[]]


def test_preferred_request_i_maps_to_the_ith_open_slot() -> None:
    p = pod(";GPU-bbb,NVIDIA,4000,60:;", TWO_CONTAINERS)
    assert plan_preferred(p, [(["GPU-aaa-0", "GPU-bbb-2"], [], 1)], REPLICAS) == [["GPU-bbb-2"]]


def test_preferred_uses_the_replica_map_before_the_dash_rule() -> None:
    replica_map = {"odd-id": "GPU-aaa"}
    from services.common.model import ContainerDevice

    chosen = preferred_for_container(
        [ContainerDevice("GPU-aaa", "NVIDIA", 1, 1)], ["odd-id"], [], 1, replica_map
    )
    assert chosen == ["odd-id"]


@pytest.mark.parametrize(
    ("device_id", "physical"),
    [
        ("GPU-03f69c50-207a-2038-9b45-23cac89cb67d-3", "GPU-03f69c50-207a-2038-9b45-23cac89cb67d"),
        ("GPU-03f69c50-207a-2038-9b45-23cac89cb67d", "GPU-03f69c50-207a-2038-9b45-23cac89cb67d"),
        ("GPU-abc::2", "GPU-abc"),
        ("MIG-xyz", "MIG-xyz"),
    ],
)
def test_physical_id(device_id: str, physical: str) -> None:
    assert physical_id(device_id) == physical


def test_node_override_merges_non_zero_fields() -> None:
    override = NodeOverride(
        name="node-a",
        devicesplitcount=4,
        devicememoryscaling=1.5,
        libcudaloglevel="4",
        enablenumatopology=True,
    )
    s = effective_settings("node-a", NvidiaConfig(deviceSplitCount=10, deviceCoreScaling=2.0), override)
    assert (s.split_count, s.memory_scaling, s.core_scaling) == (4, 1.5, 2.0)
    assert s.lib_cuda_log_level == "4" and s.enable_numa_topology
    assert s.oversubscribed
