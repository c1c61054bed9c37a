"""The GPU score (docs/hami-wire.md#gpu-score-and-sort, docs/hami-wire.md#score-cases)."""

from __future__ import annotations

import pytest

from services.common import wire
from services.common.model import ContainerDeviceRequest, DeviceScoringWeights, DeviceUsage
from services.scheduler.decoders import PodContext
from services.scheduler.fit import (
    NodeSnapshot,
    PodAnnotationError,
    SchedulingPolicy,
    device_score,
    fit_container,
    fit_pod,
    scoring_weights,
)
from services.scheduler.score import request_matches_device


def card(
    count: int, totalcore: int, totalmem: int, used: int, usedcores: int, usedmem: int, type: str = "NVIDIA"
) -> DeviceUsage:
    return DeviceUsage(
        id="GPU-0",
        count=count,
        totalcore=totalcore,
        totalmem=totalmem,
        used=used,
        usedcores=usedcores,
        usedmem=usedmem,
        type=type,
    )


def request(
    nums: int = 1, memreq: int = 0, pct: int = 101, cores: int = 0, type: str = "NVIDIA"
) -> ContainerDeviceRequest:
    return ContainerDeviceRequest(nums=nums, type=type, memreq=memreq, mem_percentage_req=pct, coresreq=cores)


@pytest.mark.parametrize(
    ("device", "requests", "expected"),
    [
        pytest.param(card(0, 4, 8192, 2, 1, 2048), [request(cores=1)], 0.0, id="zero-count"),
        pytest.param(card(10, 0, 8192, 2, 1, 2048), [request(cores=1)], 0.0, id="zero-cores"),
        pytest.param(card(10, 4, 0, 2, 1, 2048), [request(cores=1)], 0.0, id="zero-memory"),
        pytest.param(card(10, 4, 8192, 2, 1, 2048), [], 7.0, id="usage-only"),
        pytest.param(
            card(10, 4, 8192, 2, 1, 2048),
            [request(nums=4, memreq=1024, cores=1), request(memreq=4096, cores=3, type="OTHER")],
            11.75,
            id="one-entry-counts-once-other-type-ignored",
        ),
        pytest.param(card(10, 10, 10000, 0, 0, 0), [request(pct=50, cores=2)], 8.0, id="percentage"),
        pytest.param(
            card(10, 10, 10000, 0, 0, 0),
            [request(pct=10, cores=1), request(pct=20, cores=2)],
            8.0,
            id="two-entries",
        ),
        pytest.param(
            card(10, 10, 10000, 0, 0, 0), [request(memreq=3000, pct=0)], 4.0, id="pct-0-uses-memreq"
        ),
    ],
)
def test_compute_score(device: DeviceUsage, requests: list[ContainerDeviceRequest], expected: float) -> None:
    assert device_score(device, requests) == pytest.approx(expected, abs=1e-5)


def test_request_terms_apply_when_the_card_type_contains_the_request_type() -> None:
    # kube-vgpu decision (docs/hami-wire.md#score-request-terms): a real card type such as "NVIDIA-Tesla T4"
    # takes the request terms.
    t4 = card(10, 4, 8192, 2, 1, 2048, type="NVIDIA-Tesla T4")
    assert device_score(t4, [request(nums=4, memreq=1024, cores=1)]) == pytest.approx(11.75)
    assert device_score(t4, [request(memreq=1024, cores=1, type="nvidia")]) == pytest.approx(11.75)
    assert device_score(t4, [request(memreq=1024, cores=1, type="AMD")]) == pytest.approx(7.0)
    assert request_matches_device("NVIDIA", "nvidia-a100")
    assert not request_matches_device("NVIDIA", "Ascend910")


def test_score_is_float32() -> None:
    # 1/3 in float32 is 0.3333333432674408; a float64 computation would give 3.333333333333333 overall.
    value = device_score(card(3, 100, 100, 1, 0, 0), [])
    assert value == pytest.approx(10 / 3, rel=1e-6)
    assert value != 10 / 3


# --- Weights (TestComputeScoreWithResourceWeights) ----------------------------------------------------------


def pair() -> tuple[DeviceUsage, DeviceUsage]:
    a = DeviceUsage(
        id="gpu-a", count=10, totalcore=100, totalmem=100, used=1, usedcores=90, usedmem=10, type="NVIDIA"
    )
    b = DeviceUsage(
        id="gpu-b", count=10, totalcore=100, totalmem=100, used=7, usedcores=10, usedmem=20, type="NVIDIA"
    )
    return a, b


WEIGHT_CASES = [
    pytest.param(None, (16, 15), "gpu-a", "gpu-b", id="default"),
    pytest.param("slot=1,core=1,memory=3", (26, 27), "gpu-b", "gpu-a", id="memory-3"),
    pytest.param("slot=1,core=3,memory=1", (34, 17), "gpu-a", "gpu-b", id="core-3"),
]


@pytest.mark.parametrize(("annotation", "scores", "binpack", "spread"), WEIGHT_CASES)
def test_weights(annotation: str | None, scores: tuple[int, int], binpack: str, spread: str) -> None:
    annotations = {} if annotation is None else {wire.DEVICE_SCORING_WEIGHTS: annotation}
    weights = scoring_weights(annotations)
    a, b = pair()
    req = request(pct=40)
    assert device_score(a, [req], weights) == pytest.approx(scores[0], abs=1e-4)
    assert device_score(b, [req], weights) == pytest.approx(scores[1], abs=1e-4)
    for policy, expected in (("binpack", binpack), ("spread", spread)):
        result = fit_container(req, list(pair()), gpu_policy=policy, weights=weights)
        assert [d.uuid for d in result.devices] == [expected], policy


def test_weights_reach_fit_pod_through_the_annotation() -> None:
    pod = PodContext(
        "ns",
        "p",
        "u",
        {wire.DEVICE_SCORING_WEIGHTS: "slot=1,core=1,memory=3", wire.GPU_SCHEDULER_POLICY: "binpack"},
        (request(pct=40),),
    )
    fit = fit_pod(pod, NodeSnapshot("n", list(pair())), SchedulingPolicy())
    assert [d.uuid for d in fit.devices[0]] == ["gpu-b"]


def test_default_weights_without_the_annotation() -> None:
    assert scoring_weights({}) == DeviceScoringWeights(1, 1, 1)


@pytest.mark.parametrize("value", ["slot=1,core=1", "slot=-1,core=1,memory=1", "slot=0,core=0,memory=0", ""])
def test_invalid_weights_are_a_pod_error(value: str) -> None:
    annotations = {wire.DEVICE_SCORING_WEIGHTS: value}
    with pytest.raises(PodAnnotationError, match=r"hami\.io/device-scoring-weights") as info:
        scoring_weights(annotations)
    assert info.value.annotation == wire.DEVICE_SCORING_WEIGHTS
    pod = PodContext("ns", "p", "u", annotations, (request(),))
    with pytest.raises(PodAnnotationError):
        fit_pod(pod, NodeSnapshot("n", list(pair())), SchedulingPolicy())
