"""GPU (device) scores, card ordering, topology pair scores and the node score
(docs/hami-wire.md#gpu-score-and-sort, docs/hami-wire.md#node-score).

Pure functions over plain data. The device score is computed in float32 like HAMi's, so that cards HAMi
considers tied are tied here too and fall through to the same tie-breakers.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from services.common import wire
from services.common.model import (
    MEM_PERCENTAGE_UNSET,
    ContainerDeviceRequest,
    DeviceScoringWeights,
    DeviceUsage,
)
from services.scheduler.policy import GPU_SORT_KEYS, gpu_policy_tokens, is_chain_policy

__all__ = [
    "PairScores",
    "ScoredDevice",
    "best_combination",
    "device_combinations",
    "device_score",
    "node_score",
    "pair_score",
    "parse_pair_scores",
    "request_matches_device",
    "sort_devices",
    "worst_connected",
]

_DEFAULT_WEIGHTS: Final = DeviceScoringWeights()
_F32: Final = struct.Struct("f")

# GPU UUID -> peer GPU UUID -> link score, from the node annotation `hami.io/node-nvidia-score`.
PairScores = Mapping[str, Mapping[str, int]]


def _f32(value: float) -> float:
    """`value` rounded to the nearest float32 (IEEE single precision), as a Python float."""
    result: float = _F32.unpack(_F32.pack(value))[0]
    return result


def request_matches_device(request_type: str, device_type: str) -> bool:
    """Whether a request of `request_type` (`NVIDIA`) can use a card registered as `device_type`
    (`NVIDIA-Tesla T4`): the card type contains the request type, case-insensitively.

    kube-vgpu uses this for the request terms of the GPU score as well
    (docs/hami-wire.md#score-request-terms); HAMi compares the two exactly there, so its request terms never
    apply to real cards.
    """
    return request_type.lower() in device_type.lower()


def device_score(
    device: DeviceUsage,
    requests: Iterable[ContainerDeviceRequest],
    weights: DeviceScoringWeights = _DEFAULT_WEIGHTS,
) -> float:
    """How full the card would be with this container's requests (docs/hami-wire.md#gpu-score-and-sort),
    higher = busier.

    `10 x (Wslot*(r+Used)/Count + Wcore*(c+Usedcores)/Totalcore + Wmem*(m+Usedmem)/Totalmem)`, where r, c
    and m add one slot, the cores and the memory of every request entry matching the card's type. A card
    with a zero Count, Totalcore or Totalmem scores 0.
    """
    if device.count == 0 or device.totalcore == 0 or device.totalmem == 0:
        return 0.0
    slots = cores = memory = 0
    for request in requests:
        if not request_matches_device(request.type, device.type):
            continue
        slots += 1  # one per request entry, whatever its Nums
        cores += request.coresreq
        if request.mem_percentage_req not in (0, MEM_PERCENTAGE_UNSET):
            memory += device.totalmem * request.mem_percentage_req // 100
        else:
            memory += request.memreq

    return _fullness(
        weights.slot,
        weights.core,
        weights.memory,
        slots + device.used,
        device.count,
        cores + device.usedcores,
        device.totalcore,
        memory + device.usedmem,
        device.totalmem,
    )


@lru_cache(maxsize=1 << 16)
def _fullness(
    slot_weight: int,
    core_weight: int,
    memory_weight: int,
    slots: int,
    count: int,
    cores: int,
    totalcore: int,
    memory: int,
    totalmem: int,
) -> float:
    """`device_score`'s float32 arithmetic, kept per distinct input: a node re-fitted after one of its cards
    changed scores the other cards again with the same numbers, and the float32 rounding steps cost far more
    than a cache lookup."""

    def term(weight: int, amount: int, total: int) -> float:
        return _f32(_f32(_f32(weight) * _f32(amount)) / _f32(total))

    total = _f32(
        _f32(term(slot_weight, slots, count) + term(core_weight, cores, totalcore))
        + term(memory_weight, memory, totalmem)
    )
    return _f32(10 * total)


@dataclass(frozen=True, slots=True)
class ScoredDevice:
    """A card and its GPU score for the container being placed."""

    device: DeviceUsage
    score: float


def sort_devices(
    scored: Sequence[ScoredDevice], gpu_policy: str, numa_bind: bool = False
) -> list[ScoredDevice]:
    """Cards in GPU-policy order (docs/hami-wire.md#gpu-score-and-sort). Fit consumes the list from its END,
    so the card the policy prefers comes last.

    - `binpack`: score ascending, ties NUMA ascending (busiest card tried first).
    - `mutex`: Used descending, ties NUMA ascending (idle cards tried first).
    - anything else (`spread`, `topology-aware`, unknown, empty): score descending, ties NUMA ascending.
    - with `numa_bind` a single policy keeps NUMA groups contiguous: binpack sorts NUMA descending then score
      ascending; every other policy NUMA ascending then score descending.
    - a comma chain (or bare `numa`) sorts by its `binpack`/`spread`/`numa` words in written order (first
      use of each counts; an empty chain means `spread`), `numa_bind` moves `numa` to the front, and the card
      Index ascending breaks the remaining ties.

    The sort is stable, so cards that tie on every key keep their input order.
    """
    items = list(scored)
    if is_chain_policy(gpu_policy):
        keys = list(dict.fromkeys(t for t in gpu_policy_tokens(gpu_policy) if t in GPU_SORT_KEYS))
        if not keys:
            keys = [wire.POLICY_SPREAD]
        if numa_bind:
            keys = [wire.POLICY_NUMA, *(k for k in keys if k != wire.POLICY_NUMA)]
        items.sort(key=lambda s: s.device.index)
        # Stable sorts applied from the least to the most significant key.
        for key in reversed(keys):
            if key == wire.POLICY_NUMA:
                items.sort(key=lambda s: s.device.numa)
            else:
                items.sort(key=lambda s: s.score, reverse=key == wire.POLICY_SPREAD)
        return items

    policy = gpu_policy.strip()
    if policy == wire.POLICY_MUTEX and not numa_bind:
        return sorted(items, key=lambda s: (-s.device.used, s.device.numa))
    if policy == wire.POLICY_BINPACK:
        if numa_bind:
            return sorted(items, key=lambda s: (-s.device.numa, s.score))
        return sorted(items, key=lambda s: (s.score, s.device.numa))
    if numa_bind:
        return sorted(items, key=lambda s: (s.device.numa, -s.score))
    return sorted(items, key=lambda s: (-s.score, s.device.numa))


def node_score(devices: Iterable[DeviceUsage]) -> float:
    """HAMi's node score over the node's usage before the pod is placed (docs/hami-wire.md#node-score):
    `10 x (sum Used/sum Count + sum Usedcores/sum Totalcore + sum Usedmem/sum Totalmem)`, 0 when any total
    is 0. NVIDIA adds no vendor term."""
    used = count = usedcores = totalcore = usedmem = totalmem = 0
    for device in devices:
        used += device.used
        count += device.count
        usedcores += device.usedcores
        totalcore += device.totalcore
        usedmem += device.usedmem
        totalmem += device.totalmem
    if count == 0 or totalcore == 0 or totalmem == 0:
        return 0.0
    return 10 * (used / count + usedcores / totalcore + usedmem / totalmem)


# --- Topology (docs/hami-wire.md#topology-mode) -------------------------------------------------------------


def parse_pair_scores(value: str | None) -> dict[str, dict[str, int]]:
    """Pair scores from `hami.io/node-nvidia-score` (`[{"uuid":"GPU-a","score":{"GPU-b":100}}]`).

    The annotation only steers a preference, so it is read leniently: a missing or malformed value means no
    scores, and entries or scores of the wrong shape are skipped. Booleans are not scores.
    """
    if not value:
        return {}
    try:
        document = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(document, list):
        return {}
    scores: dict[str, dict[str, int]] = {}
    for entry in document:
        if not isinstance(entry, dict):
            continue
        uuid, peers = entry.get("uuid"), entry.get("score")
        if not isinstance(uuid, str) or not isinstance(peers, dict):
            continue
        row = scores.setdefault(uuid, {})
        for peer, score in peers.items():
            if isinstance(score, int) and not isinstance(score, bool):
                row[peer] = score
    return scores


def pair_score(scores: PairScores, a: str, b: str) -> int:
    """The link score between two cards: a's entry for b, else b's entry for a, else 0."""
    forward = scores.get(a, {}).get(b)
    if forward is not None:
        return forward
    return scores.get(b, {}).get(a, 0)


def device_combinations(items: Sequence[DeviceUsage], k: int) -> list[tuple[DeviceUsage, ...]]:
    """All k-card subsets in index order (C(n, k) of them), the candidates of a topology pick."""
    return list(itertools.combinations(items, k))


def worst_connected(candidates: Sequence[DeviceUsage], scores: PairScores) -> DeviceUsage:
    """The card with the lowest sum of pair scores to the other candidates (the first one on ties): a single
    card request keeps the well-connected cards free for multi-card requests."""
    return min(
        candidates,
        key=lambda d: sum(pair_score(scores, d.id, o.id) for o in candidates if o is not d),
    )


def best_combination(
    candidates: Sequence[DeviceUsage], k: int, scores: PairScores
) -> tuple[DeviceUsage, ...]:
    """The k-card subset with the highest sum of pairwise scores (the first in index order on ties)."""
    best: tuple[DeviceUsage, ...] = ()
    best_total = -1
    for combo in itertools.combinations(candidates, k):
        total = sum(pair_score(scores, a.id, b.id) for a, b in itertools.combinations(combo, 2))
        if not best or total > best_total:
            best, best_total = combo, total
    return best
