"""The pieces of the scheduler's cache (`services.scheduler.cache`) that are plain data and pure functions:
reservations (binds under way), node snapshots and how they are built from a node's cards and the pods
counted there (docs/hami-wire.md#node-usage), and the change journal that tells a reader holding results of
an earlier cache generation which nodes changed since. No lock, no I/O: the cache calls these under its own
lock.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.common import wire
from services.common.log import get_logger
from services.common.model import DeviceUsage, MigPlacement, PodSingleDevice
from services.scheduler.allocation import apply_allocation, apply_collapsed
from services.scheduler.decoders import NodeState, PodUsage, metadata_of, pod_usage_from_object
from services.scheduler.fit import NodeFit, NodeSnapshot

__all__ = [
    "CachedSnapshot",
    "ChangeJournal",
    "Reservation",
    "build_snapshot",
    "effective_usages",
    "same_placement",
    "same_version",
    "trimmed_allocation",
    "usages_of",
    "usages_on",
    "with_reservation",
]

log = get_logger(__name__)

Obj = dict[str, Any]

_JOURNAL_LIMIT: Final = 50_000


# --- Reservations -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """A bind under way (or just done, until the pod's annotations are seen): its usage counts on `node`."""

    uid: str
    namespace: str
    name: str
    node: str
    allocation: PodSingleDevice
    init_count: int = 0
    sidecar_slots: frozenset[int] = frozenset()
    mig: tuple[tuple[str, MigPlacement], ...] = ()
    committed: bool = False
    created: float = field(default_factory=time.monotonic)

    def as_usage(self) -> PodUsage:
        return PodUsage(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            node=self.node,
            allocation=self.allocation,
            init_count=self.init_count,
            sidecar_slots=self.sidecar_slots,
            bind_phase=wire.BindPhase.ALLOCATING.value,
            mig=self.mig,
        )


# --- Snapshots ----------------------------------------------------------------------------------------------


def same_version(versions: Mapping[str, str], pod: Obj) -> bool:
    """Whether `versions` (uid -> resourceVersion of the copies the cache counts) holds exactly this copy."""
    metadata = metadata_of(pod)
    version = metadata.get("resourceVersion")
    uid = metadata.get("uid")
    return bool(version) and isinstance(uid, str) and versions.get(uid) == version


def trimmed_allocation(allocation: PodSingleDevice) -> PodSingleDevice:
    """Without trailing empty slots (decoding keeps one after the final `;`)."""
    end = len(allocation)
    while end and not allocation[end - 1]:
        end -= 1
    return [list(slot) for slot in allocation[:end]]


def same_placement(reservation: Reservation, usage: PodUsage) -> bool:
    """Whether the pod's own annotations say what the reservation said (same node, same devices)."""
    if reservation.node != usage.node:
        return False
    return trimmed_allocation(reservation.allocation) == trimmed_allocation(usage.allocation)


@dataclass(eq=False)
class CachedSnapshot(NodeSnapshot):
    """A snapshot as the cache builds it; possibly shared between readers, so never to be modified.
    `fits` is where `filtering.evaluate` keeps the outcome of fitting a given pod shape on it."""

    fits: dict[Hashable, NodeFit] = field(default_factory=dict, repr=False)


def build_snapshot(state: NodeState, usages: Sequence[PodUsage]) -> CachedSnapshot:
    """A node's cards with the given pods' usage added (docs/hami-wire.md#node-usage); unknown GPU UUIDs are
    logged, skipped."""
    devices = [DeviceUsage.from_device(d) for d in state.devices]
    mig: dict[str, list[MigPlacement]] = {}
    for usage in sorted(usages, key=lambda u: u.uid):
        unknown = apply_collapsed(devices, usage.collapsed_usage)
        if unknown:
            log.debug("pod_devices_unknown_on_node", pod=usage.key, node=state.name, uuids=unknown)
        for uuid, placement in usage.mig:
            mig.setdefault(uuid, []).append(placement)
    return CachedSnapshot(
        name=state.name, devices=devices, annotations=dict(state.annotations), mig_placements=mig
    )


def with_reservation(previous: CachedSnapshot, reservation: Reservation) -> CachedSnapshot:
    """`previous` plus the reserved pod's usage (usage is additive): the node's next snapshot after a reserve
    for a pod that counted nowhere, derived instead of rebuilt from every pod on the node. Not for MIG
    reservations (their placements are not in the cards)."""
    devices = [device.copy() for device in previous.devices]
    apply_allocation(devices, reservation.allocation, reservation.init_count, reservation.sidecar_slots)
    return CachedSnapshot(
        name=previous.name,
        devices=devices,
        annotations=previous.annotations,
        mig_placements=previous.mig_placements,
    )


# --- What counts where --------------------------------------------------------------------------------------


def usages_of(pods: Iterable[Obj]) -> dict[str, PodUsage]:
    """The usage of each pod object that holds some, by UID."""
    found: dict[str, PodUsage] = {}
    for pod in pods:
        usage, _ = pod_usage_from_object(pod)
        if usage is not None:
            found[usage.uid] = usage
    return found


def effective_usages(
    pods: Mapping[str, PodUsage], reservations: Mapping[str, Reservation], exclude_uid: str | None = None
) -> dict[str, PodUsage]:
    """Every pod's usage by UID, a reservation standing for its pod, without `exclude_uid`."""
    usages = dict(pods)
    for uid, reservation in reservations.items():
        usages[uid] = reservation.as_usage()
    if exclude_uid:
        usages.pop(exclude_uid, None)
    return usages


def usages_on(
    node: str,
    pods: Mapping[str, PodUsage],
    node_uids: Mapping[str, set[str]],
    reservations: Mapping[str, Reservation],
    exclude_uid: str | None = None,
    override: Mapping[str, PodUsage] | None = None,
) -> list[PodUsage]:
    """What counts on one node: the watched pods placed there (`node_uids`: node -> their UIDs), overridden
    by fresh copies, then by reservations; a pod whose newer state places it elsewhere drops out."""
    found = {uid: pods[uid] for uid in node_uids.get(node, ())}
    for uid, usage in (override or {}).items():
        if usage.node == node:
            found[uid] = usage
        else:
            found.pop(uid, None)
    for uid, reservation in reservations.items():
        if reservation.node == node:
            found[uid] = reservation.as_usage()
        else:
            found.pop(uid, None)
    if exclude_uid:
        found.pop(exclude_uid, None)
    return list(found.values())


# --- The change journal -------------------------------------------------------------------------------------


class ChangeJournal:
    """(generation, node) of every change in order, so a reader holding results computed at generation g
    re-checks only the nodes changed since (`changed_since`). Trimmed from the front past `limit` entries.
    Not thread-safe: the cache calls it under its lock."""

    def __init__(self, limit: int = _JOURNAL_LIMIT) -> None:
        self._limit = max(limit, 2)
        self._generations: list[int] = []
        self._nodes: list[str] = []
        self._floor = 0  # changes at or below this generation are no longer in the journal

    def record(self, generation: int, node: str) -> None:
        self._generations.append(generation)
        self._nodes.append(node)
        if len(self._nodes) > self._limit:
            cut = self._limit // 2
            self._floor = self._generations[cut - 1]
            del self._generations[:cut]
            del self._nodes[:cut]

    def changed_since(self, generation: int) -> set[str] | None:
        """The nodes changed after `generation`; None when the journal no longer reaches back that far."""
        if generation < self._floor:
            return None
        start = bisect.bisect_right(self._generations, generation)
        return set(self._nodes[start:])
