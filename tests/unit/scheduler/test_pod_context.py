"""Building a PodContext from a Kubernetes pod (docs/hami-wire.md#filter step 1,
docs/weaknesses.md#init-and-sidecar-accounting)."""

from __future__ import annotations

from typing import Any

from services.common.model import ContainerDeviceRequest
from services.common.resources import NvidiaRequestConfig
from services.scheduler.decoders import PodContext, pod_context


def container(name: str, limits: dict[str, str] | None = None, restart: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox"}
    if limits is not None:
        c["resources"] = {"limits": limits}
    if restart is not None:
        c["restartPolicy"] = restart
    return c


GPU_1000 = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000", "nvidia.com/gpucores": "30"}


def full_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "ml",
            "name": "trainer",
            "uid": "0f5c",
            "annotations": {"nvidia.com/use-gputype": "A100", "weird": 5},
        },
        "spec": {
            "initContainers": [
                container("setup"),
                container("proxy", {"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "10"}, "Always"),
                container("warmup", GPU_1000, "OnFailure"),
            ],
            "containers": [container("main", GPU_1000), container("log")],
        },
    }


def test_metadata_and_annotations() -> None:
    ctx = pod_context(full_pod(), NvidiaRequestConfig())
    assert (ctx.namespace, ctx.name, ctx.uid) == ("ml", "trainer", "0f5c")
    assert ctx.annotations == {"nvidia.com/use-gputype": "A100"}, "non-string values are dropped"


def test_slots_are_init_containers_then_app_containers() -> None:
    ctx = pod_context(full_pod(), NvidiaRequestConfig())
    assert ctx.init_count == 3
    assert len(ctx.requests) == 5
    assert ctx.requests[0] is None
    assert ctx.requests[1] == ContainerDeviceRequest(1, "NVIDIA", 0, 10, 0)
    assert ctx.requests[2] == ContainerDeviceRequest(1, "NVIDIA", 1000, 101, 30)
    assert ctx.requests[3] == ctx.requests[2]
    assert ctx.requests[4] is None


def test_native_sidecars_are_long_running() -> None:
    ctx = pod_context(full_pod(), NvidiaRequestConfig())
    assert ctx.sidecar_slots == frozenset({1})
    assert [ctx.is_init(i) for i in range(5)] == [True, False, True, False, False]


def test_gpu_request_flags() -> None:
    ctx = pod_context(full_pod(), NvidiaRequestConfig())
    assert ctx.has_gpu_request and ctx.app_requests_gpu
    only_init = PodContext("ns", "p", "u", {}, (ContainerDeviceRequest(1, "NVIDIA", 0, 100, 0), None), 1)
    assert only_init.has_gpu_request and not only_init.app_requests_gpu
    sidecar = PodContext("ns", "p", "u", {}, only_init.requests, 1, frozenset({0}))
    assert sidecar.app_requests_gpu, "a sidecar's GPU is held for the pod's lifetime"
    none = pod_context({"spec": {"containers": [container("x")]}})
    assert not none.has_gpu_request


def test_config_changes_resource_names_and_factor() -> None:
    cfg = NvidiaRequestConfig(resource_count_name="example.com/vgpu", memory_factor=2)
    pod = {"spec": {"containers": [container("a", {"example.com/vgpu": "2", "nvidia.com/gpumem": "100"})]}}
    assert pod_context(pod, cfg).requests == (ContainerDeviceRequest(2, "NVIDIA", 200, 101, 0),)


def test_missing_and_malformed_fields_read_as_empty() -> None:
    ctx = pod_context({})
    assert (ctx.namespace, ctx.name, ctx.uid, ctx.annotations) == ("", "", "", {})
    assert ctx.requests == () and ctx.init_count == 0 and ctx.sidecar_slots == frozenset()
    odd = pod_context(
        {"metadata": {"annotations": None}, "spec": {"initContainers": "x", "containers": None}}
    )
    assert odd.requests == () and odd.init_count == 0
