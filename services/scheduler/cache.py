"""The scheduler's in-memory view of GPU nodes, GPU pods and quotas (docs/hami-wire.md#caches), fed by watch
events.

`UsageCache` holds plain data and does no I/O: reflector threads call `on_node_event` / `on_pod_event` /
`on_quota_event`, the extender (event loop thread) and the gRPC SchedulerService read `snapshot`,
`quota_view`, `pods`, `nodes`. One lock guards it, so readers always see a consistent state. The objects are
decoded by `services.scheduler.decoders` (nodes, pods) and `services.scheduler.quota` (ResourceQuotas).

Rules (HAMi's, with its phantom-usage bugs fixed, docs/weaknesses.md#phantom-usage and
docs/weaknesses.md#wedged-nodes):

- A pod counts once it carries `hami.io/vgpu-node` and a decodable `hami.io/vgpu-devices-allocated`, keyed by
  its UID. Succeeded/Failed pods and deleted pods free their usage at once (HAMi#2923); a terminating pod
  (deletionTimestamp set) keeps it until it is gone, including when it is first seen after a restart
  (HAMi PR #2812). State is recomputed from the object on every event, so a restart (LIST replay) ends in
  exactly the same state as the live watch did.
- Once every run-to-completion init container has terminated with exit code 0, the pod's init-only usage is
  released: usage becomes that of its long-running containers (docs/hami-wire.md#caches; native sidecars stay
  counted).
- Binds under way are *reservations*: they count on their node from the re-fit until the pod's own
  annotations are seen (or the bind is rolled back). A reservation overrides whatever an older version of the
  pod said, so a pod is never counted twice.
- A node is schedulable under the rules of `services.scheduler.health`; an undecodable register annotation is
  logged with the node name and the node is skipped.

Snapshots are built once per node state and shared (`CachedSnapshot`, read-only for every caller): any change
that touches a node (the node itself, a pod or a reservation placed on it) drops its snapshot, and the next
read builds it again. A filter over 1000 nodes therefore costs a dictionary lookup per unchanged node, and
`services.scheduler.filtering.evaluate` keeps each node's fit results for identical pods on the snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from services.common import wire
from services.common.log import get_logger
from services.scheduler.decoders import (
    NodeState,
    PodUsage,
    metadata_of,
    node_state_from_object,
    pod_finished,
    pod_usage_from_object,
)
from services.scheduler.fit import NodeSnapshot
from services.scheduler.health import NodeHealth, needs_handshake
from services.scheduler.quota import QuotaBook, QuotaLimit, QuotaView, build_quota_view
from services.scheduler.snapshots import (
    CachedSnapshot,
    ChangeJournal,
    Reservation,
    build_snapshot,
    effective_usages,
    same_placement,
    same_version,
    trimmed_allocation,
    usages_of,
    usages_on,
    with_reservation,
)

__all__ = ["UsageCache"]

log = get_logger(__name__)

Obj = dict[str, Any]

_DELETED: Final = "DELETED"


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- The cache ----------------------------------------------------------------------------------------------


class UsageCache:
    """Nodes, GPU pods, quotas and in-flight reservations; thread-safe, no I/O. See the module docstring."""

    def __init__(
        self,
        *,
        memory_resource: str = wire.RESOURCE_GPUMEM,
        core_resource: str = wire.RESOURCE_GPUCORES,
        memory_factor: int = 1,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self._pods: dict[str, PodUsage] = {}  # uid -> usage
        self._by_node: dict[str, set[str]] = {}  # node -> uids of the pods in _pods placed there
        self._pod_uids: dict[str, str] = {}  # ns/name -> uid, for pods holding usage
        self._reservations: dict[str, Reservation] = {}  # uid -> reservation
        self._quotas = QuotaBook(memory_resource, core_resource)
        self._memory_resource = memory_resource
        self._core_resource = core_resource
        self._memory_factor = max(memory_factor, 1)
        self._clock = clock
        self.generation = 0  # bumped on every change (cheap "did anything change" for pollers)
        # node -> its shared snapshot while the node is unchanged, and whether the node is schedulable
        # whatever the time (then a read needs no health check)
        self._snapshots: dict[str, tuple[CachedSnapshot, bool]] = {}
        self._versions: dict[str, int] = {}  # node -> generation of its last change
        self._journal = ChangeJournal()  # every touch, for `changed_since`
        self._pod_versions: dict[str, str] = {}  # uid -> resourceVersion of the pod copy `_pods` holds
        self._locked: set[str] = set()  # nodes whose watched state carries the node lock annotation
        self._volatile: set[str] = set()  # nodes whose schedulability depends on the time (a handshake)

    def _touch(self, node: str) -> None:
        """The node's usage or inventory changed (call with the lock held): its snapshot is stale."""
        self._versions[node] = self.generation
        self._snapshots.pop(node, None)
        self._journal.record(self.generation, node)

    def _touch_uid(self, uid: str) -> None:
        """Stale snapshots wherever pod `uid` counts (its watched copy and its reservation)."""
        usage = self._pods.get(uid)
        if usage is not None:
            self._touch(usage.node)
        reservation = self._reservations.get(uid)
        if reservation is not None:
            self._touch(reservation.node)

    # --- events ---------------------------------------------------------------------------------------------

    def on_node_event(self, event_type: str, node: Obj) -> None:
        name = metadata_of(node).get("name")
        if not isinstance(name, str) or not name:
            return
        with self._lock:
            previous = self._nodes.get(name)
            state = None if event_type == _DELETED else node_state_from_object(node, previous)
            if state is None or wire.NODE_LOCK not in state.annotations:
                self._locked.discard(name)
            else:
                self._locked.add(name)
            if state is not None and previous is not None and state.schedules_like(previous):
                # A lock taken or released: snapshots, memoised verdicts and outcomes all stay valid.
                self._nodes[name] = state
                return
            self.generation += 1
            self._touch(name)
            if state is None or state.steady_health is not None:
                self._volatile.discard(name)
            else:
                self._volatile.add(name)
            if state is None:
                self._nodes.pop(name, None)
                return
            if state.decode_error is not None:
                log.warning("node_register_undecodable", node=name, error=state.decode_error)
            self._nodes[name] = state

    def on_pod_event(self, event_type: str, pod: Obj) -> None:
        metadata = metadata_of(pod)
        uid = metadata.get("uid")
        if not isinstance(uid, str) or not uid:
            return
        key = f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"
        usage: PodUsage | None = None
        if event_type != _DELETED:
            usage, problem = pod_usage_from_object(pod)
            if problem is not None:
                log.warning("pod_devices_undecodable", pod=key, error=problem)
        with self._lock:
            self.generation += 1
            before = self._effect_of(uid)
            if usage is None:
                self._forget(uid)
                if self._pod_uids.get(key) == uid:
                    del self._pod_uids[key]
                if event_type == _DELETED or pod_finished(pod):
                    self._reservations.pop(uid, None)
            else:
                self._forget(uid)
                self._pods[uid] = usage
                self._by_node.setdefault(usage.node, set()).add(uid)
                self._pod_uids[key] = uid
                version = metadata.get("resourceVersion")
                if isinstance(version, str) and version:
                    self._pod_versions[uid] = version
                reservation = self._reservations.get(uid)
                if reservation is not None and same_placement(reservation, usage):
                    # The pod's own annotations now say what the reservation said: it has done its job.
                    del self._reservations[uid]
            after = self._effect_of(uid)
            if before != after:
                # Only an event that changes what the pod adds to a node's cards makes that node's snapshot
                # (and every verdict on it) stale: the watch events of a bind (annotations written, then
                # the Binding, then Allocate's bind-phase) repeat what its reservation already counted.
                for effect in (before, after):
                    if effect is not None:
                        self._touch(effect[0])

    def _effect_of(self, uid: str) -> tuple[str, Hashable] | None:
        """What pod `uid` adds to its node's snapshot (call with the lock held), node first; None when it
        counts nowhere. Two states with equal effects build identical snapshots."""
        reservation = self._reservations.get(uid)
        usage = reservation.as_usage() if reservation is not None else self._pods.get(uid)
        if usage is None:
            return None
        allocation = tuple(tuple(slot) for slot in trimmed_allocation(usage.effective_allocation()))
        return usage.node, (allocation, usage.init_count, usage.sidecar_slots, usage.mig)

    def _forget(self, uid: str) -> None:
        """Drop the watched copy of pod `uid` (call with the lock held; the caller touches what changed)."""
        self._pod_versions.pop(uid, None)
        old = self._pods.pop(uid, None)
        if old is not None:
            on_node = self._by_node.get(old.node)
            if on_node is not None:
                on_node.discard(uid)
                if not on_node:
                    del self._by_node[old.node]

    def on_quota_event(self, event_type: str, quota: Obj) -> None:
        with self._lock:
            self.generation += 1
            self._quotas.apply(event_type, quota)

    # --- reservations ---------------------------------------------------------------------------------------

    def reserve(self, reservation: Reservation) -> None:
        with self._lock:
            self.generation += 1
            # A pod that counted nowhere adds its usage to the node: the node's next snapshot is the current
            # one plus this pod (usage is additive), derived here instead of rebuilt from every pod there.
            entry = None
            if self._effect_of(reservation.uid) is None and not reservation.mig:
                entry = self._snapshots.get(reservation.node)
            self._touch_uid(reservation.uid)
            self._reservations[reservation.uid] = reservation
            self._touch(reservation.node)
            if entry is not None:
                previous, steady = entry
                self._snapshots[reservation.node] = (with_reservation(previous, reservation), steady)

    def commit_reservation(self, uid: str) -> None:
        """The bind succeeded: keep counting until the pod's annotations arrive through the watch."""
        with self._lock:
            reservation = self._reservations.get(uid)
            if reservation is not None:
                current = self._pods.get(uid)
                if current is not None and same_placement(reservation, current):
                    self.generation += 1
                    before = self._effect_of(uid)
                    del self._reservations[uid]
                    if self._effect_of(uid) != before:
                        self._touch(reservation.node)
                        self._touch(current.node)
                else:
                    self._reservations[uid] = replace(reservation, committed=True, created=time.monotonic())

    def drop_reservation(self, uid: str) -> Reservation | None:
        with self._lock:
            self.generation += 1
            self._touch_uid(uid)
            return self._reservations.pop(uid, None)

    def sweep_reservations(self, max_age: float, now: float | None = None) -> list[Reservation]:
        """Drop committed reservations older than `max_age` seconds whose pod never showed up (a pod deleted
        before the watch saw its annotations); returns what was dropped."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            stale = [
                r
                for r in self._reservations.values()
                if r.committed and moment - r.created > max_age and r.uid not in self._pods
            ]
            if stale:
                self.generation += 1
            for reservation in stale:
                self._touch(reservation.node)
                del self._reservations[reservation.uid]
            return stale

    def reservations(self) -> list[Reservation]:
        with self._lock:
            return list(self._reservations.values())

    def busy_nodes(self) -> set[str]:
        """Nodes where a bind is under way as far as the cache knows: a reservation not yet bound, or the node
        lock held (until the device plugin's Allocate releases it). A bind there would queue on the lock."""
        with self._lock:
            busy = set(self._locked)
            busy.update(r.node for r in self._reservations.values() if not r.committed)
        return busy

    def changed_since(self, generation: int) -> tuple[int, set[str] | None]:
        """(the current generation, the nodes touched after `generation`); None for the nodes when the journal
        no longer reaches back that far (treat every node as changed)."""
        with self._lock:
            return self.generation, self._journal.changed_since(generation)

    def volatile_nodes(self) -> frozenset[str]:
        """Nodes whose schedulability depends on the time (a handshake awaiting the kubelet): a result about
        them holds only at the moment it is computed."""
        with self._lock:
            return frozenset(self._volatile)

    # --- reads ----------------------------------------------------------------------------------------------

    def node_names(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def node_state(self, name: str) -> NodeState | None:
        with self._lock:
            return self._nodes.get(name)

    def node_lock_view(self, name: str) -> tuple[str | None, str] | None:
        """The node's lock annotation and resourceVersion as the watch last showed them (None: unknown)."""
        with self._lock:
            state = self._nodes.get(name)
        if state is None or not state.resource_version:
            return None
        return state.annotations.get(wire.NODE_LOCK), state.resource_version

    def node_locks(self) -> list[tuple[str, str, str]]:
        """(node, lock annotation, resourceVersion) of every cached node that carries a lock."""
        with self._lock:
            states = list(self._nodes.values())
        found = []
        for state in states:
            value = state.annotations.get(wire.NODE_LOCK)
            if value and state.resource_version:
                found.append((state.name, value, state.resource_version))
        return sorted(found)

    def handshake_due(self) -> list[str]:
        """Nodes (with a register annotation) whose handshake the leader should (re)write."""
        with self._lock:
            states = list(self._nodes.values())
        return sorted(
            s.name
            for s in states
            if s.register is not None and needs_handshake(s.handshake, register_changed=s.refresh_handshake)
        )

    def nodes(self) -> list[NodeState]:
        with self._lock:
            return [self._nodes[n] for n in sorted(self._nodes)]

    def pod_uid(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._pod_uids.get(f"{namespace}/{name}")

    def pods(self, *, include_reservations: bool = True) -> list[PodUsage]:
        """Every pod holding GPU usage (a reservation stands for its pod), sorted by namespace/name."""
        with self._lock:
            usages = (
                effective_usages(self._pods, self._reservations) if include_reservations else dict(self._pods)
            )
        return sorted(usages.values(), key=lambda u: (u.namespace, u.name, u.uid))

    def health(self, name: str) -> NodeHealth | None:
        """None when the node is unknown (not registered, or filtered out by the node label selector)."""
        with self._lock:
            state = self._nodes.get(name)
        return state.health(self._clock()) if state is not None else None

    def snapshot(
        self,
        name: str,
        *,
        exclude_uid: str | None = None,
        fresh_pods: Iterable[Obj] | None = None,
        include_unhealthy: bool = False,
    ) -> NodeSnapshot | None:
        """The node's cards with every counted pod's usage applied, or None when the node is not schedulable
        (unknown, no GPUs, undecodable, unhealthy; `include_unhealthy` keeps the last two for reporting).

        `exclude_uid` leaves one pod out (the pod being fitted: a re-filter must not count it twice);
        `fresh_pods` are pod objects just read from the API that take precedence over the watch's copies
        (the bind-time re-fit under the node lock).
        """
        override: dict[str, PodUsage] | None = None
        if fresh_pods is not None:
            fresh = list(fresh_pods)
            with self._lock:
                # A fresh copy at the resourceVersion the watch already applied says nothing new: only the
                # others override (and with none left, the shared snapshot and its verdicts serve).
                versions = self._pod_versions
                fresh = [pod for pod in fresh if not same_version(versions, pod)]
            override = usages_of(fresh) if fresh else None
        with self._lock:
            # The shared snapshot serves every read that would build the same thing: no fresh pods, and the
            # excluded pod (if any) does not count on this node. First the hot path of a filter over many
            # unchanged, steadily healthy nodes, for a pod that counts nowhere yet.
            entry = self._snapshots.get(name) if override is None else None
            if (
                entry is not None
                and (entry[1] or include_unhealthy)
                and (
                    not exclude_uid
                    or (exclude_uid not in self._pods and exclude_uid not in self._reservations)
                )
            ):
                return entry[0]
            state = self._nodes.get(name)
            if state is None:
                return None
            steady = state.steady_health
            if not include_unhealthy and not (steady or state.health(self._clock())).schedulable:
                return None
            shared = override is None and not (exclude_uid and self._counts_on(name, exclude_uid))
            if shared and entry is not None:
                return entry[0]
            version = self._versions.get(name)
            usages = usages_on(name, self._pods, self._by_node, self._reservations, exclude_uid, override)
        snapshot = build_snapshot(state, usages)
        if shared:
            with self._lock:
                if self._versions.get(name) == version and self._nodes.get(name) is state:
                    self._snapshots[name] = (snapshot, steady is not None and steady.schedulable)
        return snapshot

    def snapshots(
        self, names: Iterable[str], *, exclude_uid: str | None = None
    ) -> tuple[dict[str, NodeSnapshot | None], int | None]:
        """`snapshot(name, exclude_uid=...)` for every name, with one lock round for the shared snapshots of
        unchanged, steadily healthy nodes (the whole of a filter over an idle cluster).

        The second value is the cache generation the answer is exact for, or None when it may not be reused
        at a later read of that same generation (a node's health depends on the clock, the excluded pod
        counts somewhere, or the cache changed while missing snapshots were built)."""
        found: dict[str, NodeSnapshot | None] = {}
        misses: list[str] = []
        with self._lock:
            generation: int | None = self.generation
            plain = not exclude_uid or (
                exclude_uid not in self._pods and exclude_uid not in self._reservations
            )
            if plain:
                shared = self._snapshots
                for name in names:
                    entry = shared.get(name)
                    if entry is not None and entry[1]:
                        found[name] = entry[0]
                    else:
                        misses.append(name)
            else:
                generation = None
                misses = list(names)
            for name in misses:
                state = self._nodes.get(name)
                if state is not None and state.steady_health is None:
                    generation = None  # its health depends on the time
        for name in misses:
            if name not in found:
                found[name] = self.snapshot(name, exclude_uid=exclude_uid)
        if misses and generation is not None:
            with self._lock:
                if self.generation != generation:
                    generation = None
        return found, generation

    def warm(self) -> int:
        """Build the shared snapshot of every node that has none (after the initial LIST, so the first filter
        does not build 1000 of them cold); returns how many were built."""
        with self._lock:
            names = [name for name in self._nodes if name not in self._snapshots]
        for name in names:
            self.snapshot(name)
        return len(names)

    def holds(self, uid: str) -> bool:
        """Whether pod `uid` counts anywhere (a watched pod holding usage, or a reservation)."""
        with self._lock:
            return uid in self._pods or uid in self._reservations

    def _counts_on(self, node: str, uid: str) -> bool:
        """Whether pod `uid` counts on `node` (call with the lock held)."""
        reservation = self._reservations.get(uid)
        if reservation is not None:
            return reservation.node == node
        return uid in self._by_node.get(node, ())

    def snapshot_from_object(self, node: Obj, *, exclude_uid: str | None = None) -> NodeSnapshot | None:
        """A snapshot whose inventory comes from a Node object sent by the caller (the non-cache-capable
        filter, e.g. an autoscaler's template node) and whose usage is the pods the cache places there."""
        state = node_state_from_object(node)
        if not state.name or not state.health(self._clock()).schedulable:
            return None
        with self._lock:
            usages = usages_on(state.name, self._pods, self._by_node, self._reservations, exclude_uid)
        return build_snapshot(state, usages)

    def quota_limits(self) -> list[QuotaLimit]:
        with self._lock:
            return self._quotas.limits()

    def quota_view(self, *, exclude_uid: str | None = None) -> QuotaView:
        """Namespace quotas (the strictest limit per key when several ResourceQuotas set it) with the usage
        of every counted pod, reservations included."""
        with self._lock:
            limits = self._quotas.limits()
            namespaces = {limit.namespace for limit in limits}
            usages = (
                [
                    u
                    for u in effective_usages(self._pods, self._reservations, exclude_uid).values()
                    if u.namespace in namespaces
                ]
                if namespaces
                else []
            )
        return build_quota_view(
            limits,
            usages,
            memory_factor=self._memory_factor,
            memory_resource=self._memory_resource,
            core_resource=self._core_resource,
        )
