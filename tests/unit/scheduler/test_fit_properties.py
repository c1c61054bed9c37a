"""Invariants of fitting over generated nodes and pods (hypothesis)."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import wire
from services.common.codecs import collapse_pod_devices
from services.common.model import (
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceUsage,
    MigPlacement,
    MigProfile,
)
from services.scheduler.allocation import apply_allocation, collapse_allocation
from services.scheduler.decoders import PodContext
from services.scheduler.fit import (
    NodeFit,
    NodeSnapshot,
    SchedulingPolicy,
    choose_best,
    fit_pod,
    priority_scores,
)
from services.scheduler.quota import NamespaceQuota, QuotaEntry, QuotaView

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GPU_POLICIES = [
    "binpack",
    "spread",
    "mutex",
    "topology-aware",
    "numa",
    "binpack,numa",
    "spread,mutex",
    "topology-aware,binpack",
]


def bounded(draw: st.DrawFn, total: int) -> int:
    """Usage up to `total`, mostly well below it so that many generated pods fit."""
    return draw(st.integers(0, total // 3) | st.integers(0, total))


@st.composite
def cards(draw: st.DrawFn) -> list[DeviceUsage]:
    n = draw(st.integers(1, 6))
    result = []
    for i in range(n):
        count = draw(st.integers(1, 10))
        totalmem = draw(st.sampled_from([0, 8000, 16000, 24000]))
        totalcore = draw(st.sampled_from([0, 100, 100, 100, 200]))
        result.append(
            DeviceUsage(
                id=f"GPU-{i}",
                index=i,
                count=count,
                used=bounded(draw, count),
                totalmem=totalmem,
                usedmem=bounded(draw, totalmem),
                totalcore=totalcore,
                usedcores=bounded(draw, totalcore),
                type=draw(st.sampled_from(["NVIDIA", "NVIDIA-Tesla T4", "NVIDIA-A100"])),
                numa=draw(st.integers(0, 1)),
                health=draw(st.integers(0, 9)) > 0,
            )
        )
    return result


requests = st.builds(
    ContainerDeviceRequest,
    nums=st.sampled_from([1, 1, 1, 2, 3]),
    type=st.just("NVIDIA"),
    memreq=st.integers(0, 6000),
    mem_percentage_req=st.sampled_from([101, 101, 0, 10, 50, 100]),
    coresreq=st.integers(0, 50) | st.sampled_from([0, 100, 120]),
)


@st.composite
def pods(draw: st.DrawFn) -> PodContext:
    maybe_request = st.integers(0, 3).flatmap(lambda k: st.none() if k == 0 else requests)
    slots = tuple(draw(st.lists(maybe_request, min_size=1, max_size=4)))
    init_count = draw(st.integers(0, len(slots)))
    sidecars = frozenset(draw(st.sets(st.integers(0, max(init_count - 1, 0)))) if init_count else set())
    annotations: dict[str, str] = {}
    if draw(st.booleans()):
        annotations[wire.NUMA_BIND] = "true"
    if draw(st.integers(0, 3)) == 0:
        annotations[wire.USE_GPU_TYPE] = draw(st.sampled_from(["T4", "A100", "nvidia"]))
    if draw(st.booleans()):
        annotations[wire.DEVICE_SCORING_WEIGHTS] = draw(
            st.sampled_from(["slot=1,core=1,memory=3", "slot=0,core=2,memory=0"])
        )
    return PodContext("team", "p", "u", annotations, slots, init_count, sidecars)


@st.composite
def nodes(draw: st.DrawFn) -> NodeSnapshot:
    devices = draw(cards())
    annotations: dict[str, str] = {}
    if devices and draw(st.integers(0, 3)) == 0:
        annotations[wire.DEVICE_CORDON] = ",".join(d.id for d in devices if draw(st.booleans()))
    if draw(st.booleans()):
        annotations[wire.NODE_NVIDIA_SCORE] = draw(
            st.sampled_from(['[{"uuid":"GPU-0","score":{"GPU-1":100,"GPU-2":50}}]', "garbage"])
        )
    return NodeSnapshot("node", devices, annotations)


policies = st.builds(
    SchedulingPolicy,
    node_policy=st.sampled_from(["binpack", "spread"]),
    gpu_policy=st.sampled_from(GPU_POLICIES),
)


@SETTINGS
@given(pod=pods(), node=nodes(), policy=policies)
def test_a_fitting_allocation_stays_within_every_card(
    pod: PodContext, node: NodeSnapshot, policy: SchedulingPolicy
) -> None:
    before = copy.deepcopy(node)
    fit = fit_pod(pod, node, policy)
    assert node == before, "fit_pod must not mutate its input"
    assert fit.node == "node"
    if not fit.fits:
        assert fit.reason
        assert fit.devices == []
        return
    assert fit.reason == ""
    assert len(fit.devices) == len(pod.requests)
    cordoned = node.cordoned
    by_id = {d.id: d for d in node.devices}
    for request, slot in zip(pod.requests, fit.devices, strict=True):
        if request is None:
            assert slot == []
            continue
        assert len(slot) == request.nums
        assert len({d.uuid for d in slot}) == request.nums, "a shared card is used once per container"
        for granted in slot:
            assert granted.type == wire.NVIDIA
            card = by_id[granted.uuid]
            assert card.health and card.id not in cordoned
    devices = copy.deepcopy(node.devices)
    assert apply_allocation(devices, fit.devices, pod.init_count, pod.sidecar_slots) == []
    for d in devices:
        assert d.used <= d.count, d
        assert d.usedmem <= d.totalmem, d
        assert d.usedcores <= d.totalcore, d


@SETTINGS
@given(
    pod=pods(), node=nodes(), used=st.integers(0, 3000), limit=st.integers(0, 8000), cores=st.integers(0, 300)
)
def test_a_fitting_allocation_respects_the_quota(
    pod: PodContext, node: NodeSnapshot, used: int, limit: int, cores: int
) -> None:
    quota = QuotaView(
        {
            "team": NamespaceQuota(
                {
                    "limits.nvidia.com/gpumem": QuotaEntry(used, limit, True),
                    "limits.nvidia.com/gpucores": QuotaEntry(0, cores, True),
                }
            )
        }
    )
    fit = fit_pod(pod, node, SchedulingPolicy(), quota)
    if not (fit.fits and pod.has_gpu_request):
        return
    assert quota.fits_allocation("team", fit.devices, pod.init_count, pod.sidecar_slots)
    collapsed = collapse_allocation(fit.devices, pod.init_count, pod.sidecar_slots)
    assert used + sum(c.usedmem for c in collapsed) <= limit
    assert sum(c.usedcores for c in collapsed) <= cores


slot_lists = st.lists(
    st.lists(
        st.builds(
            ContainerDevice,
            uuid=st.sampled_from(["GPU-a", "GPU-b", "GPU-c"]),
            type=st.just("NVIDIA"),
            usedmem=st.integers(0, 5000),
            usedcores=st.integers(0, 100),
        ),
        max_size=3,
        unique_by=lambda d: d.uuid,
    ),
    max_size=5,
)


@SETTINGS
@given(slots=slot_lists, init_count=st.integers(0, 5))
def test_collapse_without_sidecars_is_the_common_collapse(
    slots: list[list[ContainerDevice]], init_count: int
) -> None:
    assert collapse_allocation(slots, init_count) == collapse_pod_devices(slots, init_count)


@SETTINGS
@given(slots=slot_lists, init_count=st.integers(0, 5), data=st.data())
def test_sidecars_never_count_less_than_init(
    slots: list[list[ContainerDevice]], init_count: int, data: st.DataObject
) -> None:
    sidecars = frozenset(data.draw(st.sets(st.integers(0, max(init_count - 1, 0)))) if init_count else set())
    plain = {c.uuid: c for c in collapse_allocation(slots, init_count)}
    with_sidecars = {c.uuid: c for c in collapse_allocation(slots, init_count, sidecars)}
    assert plain.keys() == with_sidecars.keys()
    # Moving sidecars out of the init bucket can only add usage: they now overlap everything after them.
    for uuid, c in with_sidecars.items():
        assert c.usedmem >= plain[uuid].usedmem
        assert c.usedcores >= plain[uuid].usedcores
        assert c.slots >= plain[uuid].slots >= 1


@SETTINGS
@given(
    scores=st.lists(st.tuples(st.floats(0, 30), st.booleans()), max_size=6),
    policy=st.sampled_from(["binpack", "spread"]),
)
def test_priority_scores_range_and_best(scores: list[tuple[float, bool]], policy: str) -> None:
    fits = [NodeFit(f"n{i}", ok, "" if ok else "x", score) for i, (score, ok) in enumerate(scores)]
    prio = priority_scores(fits, policy)
    assert set(prio) == {f.node for f in fits}
    assert all(0 <= v <= 10 for v in prio.values())
    assert all(prio[f.node] == 0 for f in fits if not f.fits)
    best = choose_best(fits, policy)
    if best is None:
        assert not any(f.fits for f in fits)
    else:
        assert prio[best.node] == 10


PROFILES = (
    MigProfile("1g.10gb", 9856, 14, 1, tuple(MigPlacement(s, 1) for s in range(7))),
    MigProfile("2g.20gb", 19968, 28, 2, (MigPlacement(0, 2), MigPlacement(2, 2), MigPlacement(4, 2))),
    MigProfile("3g.40gb", 40192, 42, 4, (MigPlacement(0, 4), MigPlacement(4, 4))),
)


@SETTINGS
@given(
    occupied=st.lists(st.sampled_from([p for prof in PROFILES for p in prof.placements]), max_size=2),
    mems=st.lists(
        st.tuples(st.integers(1, 2), st.sampled_from([5000, 15000, 30000])), min_size=1, max_size=4
    ),
)
def test_mig_slices_never_overlap(occupied: list[MigPlacement], mems: list[tuple[int, int]]) -> None:
    # Keep the pre-existing slices themselves disjoint.
    existing: list[MigPlacement] = []
    for p in occupied:
        if all(p.start + p.size <= q.start or q.start + q.size <= p.start for q in existing):
            existing.append(p)
    gpu = DeviceUsage(
        id="GPU-0",
        count=7,
        totalmem=81920,
        totalcore=100,
        type="NVIDIA",
        mode=wire.MODE_MIG,
        mig_profiles=PROFILES,
    )
    node = NodeSnapshot("n", [gpu], mig_placements={"GPU-0": existing})
    pod = PodContext(
        "ns", "p", "u", {}, tuple(ContainerDeviceRequest(n, "NVIDIA", m, 101, 0) for n, m in mems)
    )
    fit = fit_pod(pod, node, SchedulingPolicy())
    if not fit.fits:
        return
    slices = [*existing, *(m.placement for m in fit.mig)]
    for i, a in enumerate(slices):
        for b in slices[i + 1 :]:
            assert a.start + a.size <= b.start or b.start + b.size <= a.start, (a, b)
    assert len(fit.mig) == sum(n for n, _ in mems)
    booked = {(p.memory_mb, p.core) for p in PROFILES}
    assert all((g.usedmem, g.usedcores) in booked for slot in fit.devices for g in slot)
