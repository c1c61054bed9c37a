"""NVIDIA request derivation from container resources (docs/hami-wire.md#request-parsing,
docs/hami-wire.md#request-cases)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from services.common import wire
from services.common.model import MEM_PERCENTAGE_UNSET, ContainerDeviceRequest
from services.common.resources import (
    NvidiaRequestConfig,
    QuantityValue,
    generate_container_request,
    pod_container_requests,
)

GPU, MEM, PCT, CORES = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
)
DEFAULTS = NvidiaRequestConfig()  # 7.1: defaults mem 0, cores 0, factor 1


def req(nums: int, memreq: int, pct: int, cores: int) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(
        nums=nums, type="NVIDIA", memreq=memreq, mem_percentage_req=pct, coresreq=cores
    )


def limits(**values: QuantityValue) -> dict[str, dict[str, QuantityValue]]:
    names = {"gpu": GPU, "mem": MEM, "pct": PCT, "cores": CORES}
    return {"limits": {names[k]: v for k, v in values.items()}}


# Spec 7.1, row by row (`TestGenerateResourceRequests*`).
@pytest.mark.parametrize(
    ("resources", "cfg", "expected"),
    [
        pytest.param(limits(gpu="1"), DEFAULTS, req(1, 0, 100, 0), id="gpu=1"),
        pytest.param(limits(gpu="2", mem="4096"), DEFAULTS, req(2, 4096, 101, 0), id="gpu=2,gpumem=4096"),
        pytest.param(limits(gpu="1", pct="50"), DEFAULTS, req(1, 0, 50, 0), id="gpu=1,pct=50"),
        pytest.param(limits(gpu="1", pct="150"), DEFAULTS, req(1, 0, 100, 0), id="pct=150-clamped"),
        pytest.param(limits(gpu="1", pct="101"), DEFAULTS, req(1, 0, 100, 0), id="pct=101-clamped-not-unset"),
        pytest.param(
            limits(gpu="1", pct=str(2**32 + 50)), DEFAULTS, req(1, 0, 100, 0), id="pct>int32-no-wrap"
        ),
        pytest.param(limits(gpu="1", pct="0"), DEFAULTS, req(1, 0, 100, 0), id="pct=0-limits"),
        pytest.param(limits(gpu="1", pct="-1"), DEFAULTS, req(1, 0, 100, 0), id="pct-negative-limits"),
        pytest.param({"requests": {GPU: "1", PCT: "0"}}, DEFAULTS, req(1, 0, 100, 0), id="pct=0-requests"),
        pytest.param(
            {"limits": {GPU: "1"}, "requests": {PCT: "-5"}},
            DEFAULTS,
            req(1, 0, 100, 0),
            id="pct-negative-requests",
        ),
        pytest.param(
            limits(gpu="1", pct="0", mem="2000"), DEFAULTS, req(1, 2000, 101, 0), id="pct=0,gpumem=2000"
        ),
        pytest.param(limits(gpu="1", cores="50"), DEFAULTS, req(1, 0, 100, 50), id="gpu=1,gpucores=50"),
        pytest.param({"requests": {GPU: "1"}}, DEFAULTS, req(1, 0, 100, 0), id="gpu-only-in-requests"),
        pytest.param(limits(gpu="1", mem="16Gi"), DEFAULTS, None, id="gpumem=16Gi-drops-request"),
        pytest.param(limits(gpu="1", mem="16.0Gi"), DEFAULTS, None, id="gpumem=16.0Gi-drops-request"),
        pytest.param(
            limits(gpu="1", mem="1024"),
            NvidiaRequestConfig(memory_factor=2),
            req(1, 2048, 101, 0),
            id="factor2-1024",
        ),
        pytest.param(
            limits(gpu="1", mem="1Gi"), NvidiaRequestConfig(memory_factor=2), None, id="factor2-1Gi"
        ),
        pytest.param(
            limits(gpu="1"),
            NvidiaRequestConfig(default_memory=512),
            req(1, 512, 101, 0),
            id="defaultMemory512",
        ),
        pytest.param(
            limits(gpu="1", pct="0"),
            NvidiaRequestConfig(default_memory=512),
            req(1, 512, 101, 0),
            id="defaultMemory512-pct=0",
        ),
        pytest.param(
            limits(gpu="1", mem="0"),
            NvidiaRequestConfig(default_memory=512),
            req(1, 512, 101, 0),
            id="defaultMemory512-gpumem=0",
        ),
    ],
)
def test_spec_fixture_rows(
    resources: Mapping[str, object], cfg: NvidiaRequestConfig, expected: ContainerDeviceRequest | None
) -> None:
    assert generate_container_request(resources, cfg) == expected


# The rules of docs/hami-wire.md#request-parsing around the fixture rows: boundaries, precedence, and what "no
# request" means.
@pytest.mark.parametrize(
    ("resources", "cfg", "expected"),
    [
        pytest.param({}, DEFAULTS, None, id="no-resources"),
        pytest.param(limits(mem="1024", cores="50"), DEFAULTS, None, id="no-gpu-count-no-request"),
        pytest.param(limits(gpu="0"), DEFAULTS, None, id="zero-gpus"),
        pytest.param(limits(gpu="-1"), DEFAULTS, None, id="negative-gpus"),
        pytest.param(limits(gpu="1.5"), DEFAULTS, None, id="fractional-gpus"),
        pytest.param(limits(gpu="500m"), DEFAULTS, None, id="milli-gpus"),
        pytest.param(limits(gpu=str(2**31)), DEFAULTS, None, id="gpus-beyond-int32"),
        pytest.param(limits(gpu=str(2**31 - 1)), DEFAULTS, req(2**31 - 1, 0, 100, 0), id="gpus-int32-max"),
        pytest.param(limits(gpu="bogus"), DEFAULTS, None, id="malformed-gpu-quantity"),
        pytest.param(limits(gpu=1, mem=4096), DEFAULTS, req(1, 4096, 101, 0), id="yaml-integers"),
        pytest.param(
            {"limits": {GPU: "2"}, "requests": {GPU: "1"}},
            DEFAULTS,
            req(2, 0, 100, 0),
            id="limits-before-requests",
        ),
        pytest.param(
            {"limits": {GPU: "1", MEM: "3000"}, "requests": {MEM: "16Gi"}},
            DEFAULTS,
            req(1, 3000, 101, 0),
            id="gpumem-limit-shadows-request",
        ),
        pytest.param(
            {"limits": {GPU: "1"}, "requests": {MEM: "3000", CORES: "30"}},
            DEFAULTS,
            req(1, 3000, 101, 30),
            id="gpumem-and-cores-from-requests",
        ),
        pytest.param(limits(gpu="1", mem="-1"), DEFAULTS, None, id="negative-gpumem-drops"),
        pytest.param(limits(gpu="1", mem="1.5"), DEFAULTS, None, id="fractional-gpumem-drops"),
        pytest.param(limits(gpu="1", mem="bogus"), DEFAULTS, None, id="malformed-gpumem-drops"),
        pytest.param(
            limits(gpu="1", mem=str(2**31 - 1)), DEFAULTS, req(1, 2**31 - 1, 101, 0), id="gpumem-int32-max"
        ),
        pytest.param(limits(gpu="1", mem=str(2**31)), DEFAULTS, None, id="gpumem-beyond-int32"),
        pytest.param(
            limits(gpu="1", mem="1073741823"),
            NvidiaRequestConfig(memory_factor=2),
            req(1, 2147483646, 101, 0),
            id="factor2-largest-allowed",
        ),
        pytest.param(
            limits(gpu="1", mem="1073741824"),
            NvidiaRequestConfig(memory_factor=2),
            None,
            id="factor2-one-too-many",
        ),
        pytest.param(limits(gpu="1", mem="2k"), DEFAULTS, req(1, 2000, 101, 0), id="gpumem-whole-quantity"),
        pytest.param(limits(gpu="1", pct="100"), DEFAULTS, req(1, 0, 100, 0), id="pct=100"),
        pytest.param(limits(gpu="1", pct="1"), DEFAULTS, req(1, 0, 1, 0), id="pct=1"),
        pytest.param(limits(gpu="1", pct="50.5"), DEFAULTS, req(1, 0, 100, 0), id="fractional-pct-is-unset"),
        pytest.param(
            limits(gpu="1", mem="1000", pct="50"),
            DEFAULTS,
            req(1, 1000, 50, 0),
            id="gpumem-and-pct-both-kept",
        ),
        pytest.param(
            limits(gpu="1", cores="120"), DEFAULTS, req(1, 0, 100, 120), id="cores>100-kept-fit-clamps"
        ),
        pytest.param(limits(gpu="1", cores="0"), DEFAULTS, req(1, 0, 100, 0), id="cores=0"),
        pytest.param(limits(gpu="1", cores="-1"), DEFAULTS, None, id="negative-cores-drop"),
        pytest.param(
            limits(gpu="1", cores="50.5"),
            NvidiaRequestConfig(default_cores=30),
            req(1, 0, 100, 30),
            id="fractional-cores-use-default",
        ),
        pytest.param(
            limits(gpu="1"), NvidiaRequestConfig(default_cores=30), req(1, 0, 100, 30), id="defaultCores"
        ),
        pytest.param(
            limits(gpu="1", cores="70"),
            NvidiaRequestConfig(default_cores=30),
            req(1, 0, 100, 70),
            id="explicit-cores-beat-default",
        ),
        pytest.param(
            limits(gpu="1", mem="100"),
            NvidiaRequestConfig(default_memory=512),
            req(1, 100, 101, 0),
            id="explicit-gpumem-beats-defaultMemory",
        ),
        pytest.param(
            limits(gpu="1", pct="40"),
            NvidiaRequestConfig(default_memory=512),
            req(1, 0, 40, 0),
            id="pct-beats-defaultMemory",
        ),
        pytest.param(
            limits(gpu="1", mem="100"),
            NvidiaRequestConfig(memory_factor=0),
            req(1, 100, 101, 0),
            id="factor-0-as-1",
        ),
        pytest.param({"limits": None, "requests": {GPU: "1"}}, DEFAULTS, req(1, 0, 100, 0), id="null-limits"),
    ],
)
def test_request_rules(
    resources: Mapping[str, object], cfg: NvidiaRequestConfig, expected: ContainerDeviceRequest | None
) -> None:
    assert generate_container_request(resources, cfg) == expected


def test_custom_resource_names() -> None:
    cfg = NvidiaRequestConfig(
        resource_count_name="hami.io/gpu",
        resource_memory_name="hami.io/gpumem",
        resource_memory_percentage_name="hami.io/gpumem-percentage",
        resource_core_name="hami.io/gpucores",
    )
    resources = {"limits": {"hami.io/gpu": "1", "hami.io/gpumem": "3000", "hami.io/gpucores": "30", GPU: "4"}}
    assert generate_container_request(resources, cfg) == req(1, 3000, 101, 30)
    assert generate_container_request({"limits": {GPU: "1"}}, cfg) is None


def test_chart_defaults() -> None:
    assert NvidiaRequestConfig() == NvidiaRequestConfig(
        resource_count_name=wire.RESOURCE_GPU,
        resource_memory_name=wire.RESOURCE_GPUMEM,
        resource_memory_percentage_name=wire.RESOURCE_GPUMEM_PERCENTAGE,
        resource_core_name=wire.RESOURCE_GPUCORES,
        resource_priority_name=wire.RESOURCE_PRIORITY,
        default_memory=0,
        default_cores=0,
        default_gpu_num=1,
        memory_factor=1,
    )
    assert (GPU, MEM, PCT, CORES) == (
        wire.RESOURCE_GPU,
        wire.RESOURCE_GPUMEM,
        wire.RESOURCE_GPUMEM_PERCENTAGE,
        wire.RESOURCE_GPUCORES,
    )
    assert MEM_PERCENTAGE_UNSET == 101


def test_pod_container_requests_index_init_containers_first() -> None:
    pod_spec = {
        "initContainers": [
            {"name": "init-cpu"},
            {"name": "init-gpu", "resources": limits(gpu="1", mem="500")},
        ],
        "containers": [
            {"name": "app-gpu", "resources": limits(gpu="2", cores="30")},
            {"name": "app-cpu", "resources": {"limits": {"cpu": "1"}}},
        ],
    }
    assert pod_container_requests(pod_spec) == [None, req(1, 500, 101, 0), req(2, 0, 100, 30), None]


@pytest.mark.parametrize(
    ("pod_spec", "expected"),
    [
        pytest.param({}, [], id="no-containers"),
        pytest.param({"containers": None, "initContainers": None}, [], id="null-lists"),
        pytest.param({"containers": [{"name": "a", "resources": None}]}, [None], id="null-resources"),
        pytest.param(
            {"containers": [{"resources": {"limits": {GPU: "1"}}}]}, [req(1, 0, 100, 0)], id="app-only"
        ),
    ],
)
def test_pod_container_requests_shapes(
    pod_spec: Mapping[str, object], expected: list[ContainerDeviceRequest | None]
) -> None:
    assert pod_container_requests(pod_spec) == expected


def test_pod_container_requests_uses_the_config() -> None:
    pod_spec = {"containers": [{"resources": limits(gpu="1", mem="1024")}]}
    assert pod_container_requests(pod_spec, NvidiaRequestConfig(memory_factor=2)) == [req(1, 2048, 101, 0)]
