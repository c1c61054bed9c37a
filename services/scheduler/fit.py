"""Fitting a pod onto a node and ranking the nodes that fit (docs/hami-wire.md#fit): pure functions, no I/O.

The entry point is `fit_pod`, HAMi's per-node `scoreNode`: it never touches its inputs and returns a `NodeFit`
with the node score, the per-container allocation (slot i = container i) or HAMi's reason string. Below it sit
`fit_container` (HAMi `fitInDevices`: score, sort, then fit one container) and `fit_devices` (the NVIDIA
`Fit`: the 16 per-card checks over an already ordered card list). The pod comes in as a `PodContext`
(`services.scheduler.decoders`); the namespace quota it is checked against is `services.scheduler.quota`.

kube-vgpu decisions that differ from HAMi v2.10, each a documented choice:

- Slot i is container i, init containers first (v2.9 semantics, docs/hami-wire.md#slot-per-container): a
  container without a GPU request always gets an empty slot.
- Native sidecars (init containers with `restartPolicy: Always`) keep their slot but are long-running: they
  are fitted cumulatively with the app containers, every later init container is fitted next to the sidecars
  started before it, and the pod's usage counts them with the app containers
  (docs/weaknesses.md#init-and-sidecar-accounting).
- The request terms of the GPU score apply when the card type contains the request type
  (docs/hami-wire.md#score-request-terms).
- An invalid `hami.io/device-scoring-weights` raises `PodAnnotationError` (a pod error, not a node failure).
- `priority_scores` maps node scores to 0..10 for a prioritize verb
  (docs/weaknesses.md#filter-picks-one-node); `choose_best` keeps HAMi's single-node choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from services.common import wire
from services.common.codecs import WireFormatError, format_reasons, parse_cordon, parse_device_scoring_weights
from services.common.model import (
    MEM_PERCENTAGE_UNSET,
    ContainerDevice,
    ContainerDeviceRequest,
    DeviceScoringWeights,
    DeviceUsage,
    MigPlacement,
    MigProfile,
    PodSingleDevice,
)
from services.scheduler.decoders import PodContext
from services.scheduler.policy import PodFilters, SchedulingPolicy
from services.scheduler.quota import QuotaFits, QuotaView, container_quota_check
from services.scheduler.score import (
    PairScores,
    ScoredDevice,
    best_combination,
    device_combinations,
    device_score,
    node_score,
    pair_score,
    parse_pair_scores,
    request_matches_device,
    sort_devices,
    worst_connected,
)

__all__ = [
    "ContainerFit",
    "MigAssignment",
    "MigSlice",
    "NodeFit",
    "NodeSnapshot",
    "PairScores",
    "PodAnnotationError",
    "PodFilters",
    "SchedulingPolicy",
    "ScoredDevice",
    "choose_best",
    "device_combinations",
    "device_score",
    "fit_container",
    "fit_devices",
    "fit_pod",
    "node_score",
    "pair_score",
    "parse_pair_scores",
    "priority_scores",
    "scoring_weights",
    "sort_devices",
]

MAX_PRIORITY: Final = 10  # kube-scheduler's MaxExtenderPriority
_FULL_CORES: Final = 100
_NO_PAIR_SCORES: Final[Mapping[str, Mapping[str, int]]] = {}
_NO_MIG: Final[Mapping[str, Sequence[MigPlacement]]] = {}


class PodAnnotationError(ValueError):
    """A pod annotation the scheduler cannot work with (today: `hami.io/device-scoring-weights`).

    It concerns the pod, not any node, so the extender answers the whole filter request with an error.
    """

    def __init__(self, annotation: str, message: str) -> None:
        super().__init__(f"pod annotation {annotation}: {message}")
        self.annotation = annotation


def scoring_weights(annotations: Mapping[str, str]) -> DeviceScoringWeights:
    """The pod's GPU-score weights (default 1/1/1); raises `PodAnnotationError` when the value is invalid."""
    value = annotations.get(wire.DEVICE_SCORING_WEIGHTS)
    if value is None:
        return DeviceScoringWeights()
    try:
        return parse_device_scoring_weights(value)
    except WireFormatError as err:
        raise PodAnnotationError(wire.DEVICE_SCORING_WEIGHTS, str(err)) from None


# --- The node -----------------------------------------------------------------------------------------------


@dataclass
class NodeSnapshot:
    """A node's cards with their current usage, plus the node annotations fitting reads
    (`hami.io/device-cordon` and the `hami.io/node-nvidia-score` pair scores). `mig_placements` lists, per
    GPU UUID, the MIG slices already in use (from the pods' `hami.io/vgpu-mig-allocations`)."""

    name: str
    devices: list[DeviceUsage]
    annotations: Mapping[str, str] = field(default_factory=dict)
    mig_placements: Mapping[str, Sequence[MigPlacement]] = field(default_factory=dict)

    @property
    def cordoned(self) -> frozenset[str]:
        return parse_cordon(self.annotations.get(wire.DEVICE_CORDON))

    @property
    def pair_scores(self) -> dict[str, dict[str, int]]:
        """Pair scores; a missing or malformed annotation means none (topology is only a preference)."""
        return parse_pair_scores(self.annotations.get(wire.NODE_NVIDIA_SCORE))


# --- Results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigSlice:
    """The dynamic-MIG profile and placement chosen for one container device."""

    profile: str
    placement: MigPlacement


@dataclass(frozen=True, slots=True)
class MigAssignment:
    """One entry of `hami.io/vgpu-mig-allocations` (docs/hami-wire.md#mig-allocations), without the runtime
    fields."""

    container_index: int
    device_index: int
    gpu_uuid: str
    profile: str
    placement: MigPlacement


@dataclass(frozen=True, slots=True)
class ContainerFit:
    """The outcome of fitting one container: the cards chosen, or why not. `reasons` counts the per-card
    failures over `candidates` cards; `reason` is the text HAMi reports (counted entries, or a plain string
    such as `NodeInsufficientDevice`). `mig` runs parallel to `devices` (None for a non-MIG card)."""

    fits: bool
    devices: tuple[ContainerDevice, ...] = ()
    reason: str = ""
    reasons: Mapping[str, int] = field(default_factory=dict)
    candidates: int = 0
    mig: tuple[MigSlice | None, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeFit:
    """Whether the pod fits the node. `score` is HAMi's node score (usage before this pod); `devices` has one
    entry per container slot (empty slots kept) when the pod fits, else it is empty and `reason` says why."""

    node: str
    fits: bool
    reason: str = ""
    score: float = 0.0
    devices: PodSingleDevice = field(default_factory=list)
    mig: tuple[MigAssignment, ...] = ()


# --- The NVIDIA Fit (docs/hami-wire.md#fit, steps 1-16) -----------------------------------------------------


def _memory_request(request: ContainerDeviceRequest, device: DeviceUsage) -> int:
    if request.memreq > 0:
        return request.memreq
    if request.mem_percentage_req != MEM_PERCENTAGE_UNSET:
        return device.totalmem * request.mem_percentage_req // 100
    return 0


def _overlaps(a: MigPlacement, b: MigPlacement) -> bool:
    return a.start < b.start + b.size and b.start < a.start + a.size


def _choose_mig_slice(
    profiles: Sequence[MigProfile], memreq: int, occupied: Sequence[MigPlacement]
) -> tuple[MigProfile, MigPlacement] | None:
    """The smallest profile with enough memory (then the fewest slices) that still has a free placement.
    `1g.*`/`3g.*` profiles fill from the highest start, the others from the lowest."""
    for profile in sorted(
        (p for p in profiles if p.memory_mb >= memreq), key=lambda p: (p.memory_mb, p.slice_count)
    ):
        from_top = profile.name.startswith(("1g.", "3g."))
        for placement in sorted(profile.placements, key=lambda p: p.start, reverse=from_top):
            if not any(_overlaps(placement, used) for used in occupied):
                return profile, placement
    return None


@dataclass(slots=True)
class _Pick:
    device: DeviceUsage
    granted: ContainerDevice
    mig: MigSlice | None


def _with_pending(device: DeviceUsage, picks: Sequence[_Pick]) -> DeviceUsage:
    """The card's usage plus what this Fit already took from it (only MIG cards are visited twice)."""
    mine = [p.granted for p in picks if p.device is device]
    if not mine:
        return device
    return replace(
        device,
        used=device.used + len(mine),
        usedmem=device.usedmem + sum(g.usedmem for g in mine),
        usedcores=device.usedcores + sum(g.usedcores for g in mine),
    )


def fit_devices(
    request: ContainerDeviceRequest,
    devices: Sequence[DeviceUsage],
    *,
    gpu_policy: str = wire.POLICY_SPREAD,
    filters: PodFilters | None = None,
    cordoned: frozenset[str] = frozenset(),
    pair_scores: PairScores = _NO_PAIR_SCORES,
    mig_placements: Mapping[str, Sequence[MigPlacement]] = _NO_MIG,
    quota_fits: QuotaFits | None = None,
) -> ContainerFit:
    """HAMi's NVIDIA `Fit` for one container request over `devices` in policy order, walked from the last
    card to the first; the first failing check of a card counts that reason and skips the card.

    Nothing is mutated: the chosen cards come back as `ContainerDevice`s (type `NVIDIA`, the memory and
    cores to book). `quota_fits` receives this container's hypothetical cards (those picked so far plus the
    candidate) and says whether the namespace quota still holds.
    """
    pod_filters = filters if filters is not None else PodFilters()
    policy = SchedulingPolicy(gpu_policy=gpu_policy)
    mutex, topology = policy.mutex, policy.topology_aware
    reasons: Counter[wire.Reason] = Counter()
    picks: list[_Pick] = []
    remaining = request.nums
    previous_numa: int | None = None

    def share_check(original: DeviceUsage) -> wire.Reason | _Pick:
        """Checks 5-16 against the card's usage, including what this Fit already took from it."""
        device = _with_pending(original, picks)
        if not pod_filters.uuid_allowed(device.id):
            return wire.Reason.CARD_UUID_MISMATCH
        if device.count <= device.used:
            return wire.Reason.CARD_TIME_SLICING_EXHAUSTED
        if mutex and device.used > 0:
            return wire.Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT
        cores = min(request.coresreq, _FULL_CORES)
        memreq = _memory_request(request, device)
        granted = ContainerDevice(uuid=device.id, type=wire.NVIDIA, usedmem=memreq, usedcores=cores)
        if quota_fits is not None and not quota_fits([*(p.granted for p in picks), granted]):
            return wire.Reason.RESOURCE_QUOTA_NOT_FIT
        if device.totalmem - device.usedmem < memreq:
            return wire.Reason.CARD_INSUFFICIENT_MEMORY
        if device.totalcore - device.usedcores < cores:
            return wire.Reason.CARD_INSUFFICIENT_CORE
        if device.totalcore == _FULL_CORES and cores == _FULL_CORES and device.used > 0:
            return wire.Reason.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT
        if device.totalcore != 0 and device.usedcores == device.totalcore and cores == 0:
            return wire.Reason.CARD_COMPUTE_UNITS_EXHAUSTED
        existing = mig_placements.get(device.id, ())
        if device.mode == wire.MODE_MIG:
            occupied = [*existing, *(p.mig.placement for p in picks if p.mig and p.device.id == device.id)]
            chosen = _choose_mig_slice(device.mig_profiles, memreq, occupied)
            if chosen is None:
                return wire.Reason.CARD_MIG_TOPOLOGY_INFEASIBLE
            profile, placement = chosen
            granted = replace(granted, usedmem=profile.memory_mb, usedcores=profile.core)
            # The slice books the profile's memory and cores, which may exceed the request: the quota must
            # hold for what is actually booked.
            if quota_fits is not None and not quota_fits([*(p.granted for p in picks), granted]):
                return wire.Reason.RESOURCE_QUOTA_NOT_FIT
            return _Pick(original, granted, MigSlice(profile.name, placement))
        if existing:
            # kube-vgpu's custom rule for shared (non-MIG) cards: a GPU still carrying MIG instances cannot
            # also host hami-core shares.
            return wire.Reason.CARD_NOT_FOUND_CUSTOM_FILTER_RULE
        return _Pick(original, granted, None)

    def success(chosen: Sequence[_Pick]) -> ContainerFit:
        return ContainerFit(
            fits=True,
            devices=tuple(p.granted for p in chosen),
            reasons={str(k): v for k, v in reasons.items()},
            candidates=len(devices),
            mig=tuple(p.mig for p in chosen),
        )

    for original in reversed(devices):
        # Checks 1-3: health, cordon, type/mode filters.
        if not original.health:
            reasons[wire.Reason.CARD_NOT_HEALTH] += 1
            continue
        if original.id in cordoned:
            reasons[wire.Reason.CARD_CORDONED] += 1
            continue
        if request.type != wire.NVIDIA or not pod_filters.type_allowed(original.type, original.mode):
            reasons[wire.Reason.CARD_TYPE_MISMATCH] += 1
            continue
        # Check 4: with numa-bind, a card on another NUMA node restarts the collection there.
        if pod_filters.numa_bind and original.numa != previous_numa:
            if picks:
                reasons[wire.Reason.NUMA_NOT_FIT] += len(picks)
            picks.clear()
            remaining = request.nums
            previous_numa = original.numa
        first_visit = True
        while True:
            outcome = share_check(original)
            if isinstance(outcome, wire.Reason):
                if first_visit:
                    reasons[outcome] += 1
                break
            picks.append(outcome)
            if not topology:
                remaining -= 1
                if remaining == 0:
                    return success(picks)
            # A MIG card can host several slices of the same container: offer it again.
            if topology or original.mode != wire.MODE_MIG:
                break
            first_visit = False

    if topology and len(picks) >= request.nums:
        if len(picks) == request.nums:
            return success(picks)
        by_device = {id(p.device): p for p in picks}
        candidates = [p.device for p in picks]
        if request.nums == 1:
            chosen: Sequence[DeviceUsage] = [worst_connected(candidates, pair_scores)]
        else:
            chosen = best_combination(candidates, request.nums, pair_scores)
        return success([by_device[id(d)] for d in chosen])

    if picks:
        reasons[wire.Reason.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] = len(picks)
    counts = {str(k): v for k, v in reasons.items()}
    return ContainerFit(
        fits=False,
        reason=format_reasons(counts, len(devices)),
        reasons=counts,
        candidates=len(devices),
    )


# --- One container on a node (HAMi fitInDevices) ------------------------------------------------------------


def fit_container(
    request: ContainerDeviceRequest,
    devices: list[DeviceUsage],
    *,
    gpu_policy: str = wire.POLICY_SPREAD,
    filters: PodFilters | None = None,
    weights: DeviceScoringWeights | None = None,
    cordoned: frozenset[str] = frozenset(),
    pair_scores: PairScores = _NO_PAIR_SCORES,
    mig_placements: dict[str, list[MigPlacement]] | None = None,
    quota_fits: QuotaFits | None = None,
) -> ContainerFit:
    """Score the cards for this container, sort them by the GPU policy, fit, and on success book the chosen
    cards into `devices` (`Used+1`, `Usedmem`, `Usedcores`) and their MIG slices into `mig_placements`.

    Only cards whose type contains the request type take part. More cards requested than the node has of
    that type fails with the plain reason `NodeInsufficientDevice` (unless the cards are MIG cards, which can
    host several slices); a request type with no implementation fails with `Device type not found`.
    """
    pod_filters = filters if filters is not None else PodFilters()
    candidates = [d for d in devices if request_matches_device(request.type, d.type)]
    if request.nums > len(candidates) and not any(d.mode == wire.MODE_MIG for d in candidates):
        return ContainerFit(fits=False, reason=wire.Reason.NODE_INSUFFICIENT_DEVICE.value)
    if request.type != wire.NVIDIA:
        return ContainerFit(fits=False, reason=wire.DEVICE_TYPE_NOT_FOUND)
    card_weights = weights if weights is not None else DeviceScoringWeights()
    scored = [ScoredDevice(d, device_score(d, [request], card_weights)) for d in candidates]
    ordered = sort_devices(scored, gpu_policy, pod_filters.numa_bind)
    result = fit_devices(
        request,
        [s.device for s in ordered],
        gpu_policy=gpu_policy,
        filters=pod_filters,
        cordoned=cordoned,
        pair_scores=pair_scores,
        mig_placements=mig_placements if mig_placements is not None else _NO_MIG,
        quota_fits=quota_fits,
    )
    if result.fits:
        by_id = {d.id: d for d in candidates}
        for granted, mig in zip(result.devices, result.mig, strict=True):
            device = by_id[granted.uuid]
            device.used += 1
            device.usedmem += granted.usedmem
            device.usedcores += granted.usedcores
            if mig is not None and mig_placements is not None:
                mig_placements.setdefault(granted.uuid, []).append(mig.placement)
    return result


# --- A pod on a node (HAMi scoreNode) -----------------------------------------------------------------------


@dataclass(slots=True)
class _Usage:
    """A working copy of a node's usage: cards and MIG slices in use."""

    devices: list[DeviceUsage]
    mig: dict[str, list[MigPlacement]]

    @classmethod
    def of(cls, devices: Iterable[DeviceUsage], mig: Mapping[str, Sequence[MigPlacement]]) -> _Usage:
        return cls([d.copy() for d in devices], {k: list(v) for k, v in mig.items()})

    def copy(self) -> _Usage:
        return _Usage.of(self.devices, self.mig)


def fit_pod(
    pod: PodContext, node: NodeSnapshot, policy: SchedulingPolicy, quota: QuotaView | None = None
) -> NodeFit:
    """Fit every container of the pod on the node (docs/hami-wire.md#fit), without touching `node`.

    The pod's `hami.io/*-scheduler-policy` annotations override `policy` (resolving twice is harmless).
    Long-running containers (sidecars, then app containers, in slot order) are fitted cumulatively; each
    init container is fitted alone against a copy holding the sidecars started before it. The node score is
    the node's usage before this pod. Raises `PodAnnotationError` for invalid scoring weights.
    """
    weights = scoring_weights(pod.annotations)
    policy = policy.resolve(pod.annotations)
    filters = PodFilters.from_annotations(pod.annotations)
    cordoned = node.cordoned
    pair_scores = node.pair_scores if policy.topology_aware else _NO_PAIR_SCORES
    long_running = _Usage.of(node.devices, node.mig_placements)
    score = node_score(long_running.devices)
    allocation: PodSingleDevice = [[] for _ in pod.requests]
    mig: list[MigAssignment] = []

    for slot, request in enumerate(pod.requests):
        if request is None:
            continue  # an empty slot keeps slot i = container i
        work = long_running.copy() if pod.is_init(slot) else long_running
        result = fit_container(
            request,
            work.devices,
            gpu_policy=policy.gpu_policy,
            filters=filters,
            weights=weights,
            cordoned=cordoned,
            pair_scores=pair_scores,
            mig_placements=work.mig,
            quota_fits=container_quota_check(quota, pod, allocation, slot),
        )
        if not result.fits:
            return NodeFit(node=node.name, fits=False, reason=result.reason, score=score)
        allocation[slot] = list(result.devices)
        mig.extend(
            MigAssignment(slot, index, granted.uuid, chosen.profile, chosen.placement)
            for index, (granted, chosen) in enumerate(zip(result.devices, result.mig, strict=True))
            if chosen is not None
        )
    return NodeFit(node=node.name, fits=True, score=score, devices=allocation, mig=tuple(mig))


# --- Ranking nodes (docs/hami-wire.md#node-score, docs/weaknesses.md#filter-picks-one-node) -----------------


def _spread(node_policy: str) -> bool:
    return node_policy.strip() == wire.POLICY_SPREAD


def priority_scores(fits: Sequence[NodeFit], node_policy: str) -> dict[str, int]:
    """Node name -> 0..10 for kube-scheduler's prioritize verb. Node scores are scaled across the fitting
    nodes: binpack gives the busiest node 10 and the emptiest 0, spread the reverse; when every fitting node
    scores the same they all get 10 (no preference). Nodes that do not fit get 0."""
    scores = [f.score for f in fits if f.fits]
    if not scores:
        return dict.fromkeys([f.node for f in fits], 0)
    low, high = min(scores), max(scores)
    result: dict[str, int] = {}
    if high == low:
        for f in fits:
            result[f.node] = MAX_PRIORITY if f.fits else 0
        return result
    span = high - low
    # low <= score <= high, so share / span * MAX_PRIORITY + 0.5 lies in [0.5, MAX_PRIORITY + 0.5]: `int`
    # rounds it down exactly as floor does for non-negative values, and it needs no clamping.
    if _spread(node_policy):
        for f in fits:
            result[f.node] = int((high - f.score) / span * MAX_PRIORITY + 0.5) if f.fits else 0
    else:
        for f in fits:
            result[f.node] = int((f.score - low) / span * MAX_PRIORITY + 0.5) if f.fits else 0
    return result


def choose_best(fits: Sequence[NodeFit], node_policy: str) -> NodeFit | None:
    """HAMi's single choice among the fitting nodes: the highest node score under binpack (the busiest node),
    the lowest under spread; the first such node in `fits` on ties. None when nothing fits."""
    fitting = [f for f in fits if f.fits]
    if not fitting:
        return None
    if _spread(node_policy):
        return min(fitting, key=lambda f: f.score)
    return max(fitting, key=lambda f: f.score)
