"""Namespace GPU quota (docs/hami-wire.md#quota): ResourceQuota accounting and the quota check of a fit.
Pure, no I/O.

A ResourceQuota's tracked hard limits (`limits.<memory resource>`, `limits.<core resource>`) become
`QuotaLimit`s; `build_quota_view` sets them against the usage of the pods counted in their namespaces (the
strictest limit per key when several ResourceQuotas set it), and `container_quota_check` is what the fit asks
whether one more card still keeps the pod's namespace within its quota.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common import wire
from services.common.model import ContainerDevice
from services.common.resources import quantity_as_int64
from services.scheduler.allocation import collapse_allocation
from services.scheduler.decoders import PodContext, PodUsage, metadata_of

__all__ = [
    "NamespaceQuota",
    "QuotaBook",
    "QuotaEntry",
    "QuotaFits",
    "QuotaLimit",
    "QuotaView",
    "build_quota_view",
    "container_quota_check",
    "tracked_limits",
]

# Whether the pod may also take these cards (its hypothetical allocation for the container being fitted).
QuotaFits = Callable[[Sequence[ContainerDevice]], bool]


# --- ResourceQuota limits -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaLimit:
    """One tracked hard limit of a ResourceQuota (`limits.nvidia.com/gpumem` = 2000)."""

    namespace: str
    quota: str
    key: str
    limit: int


def tracked_limits(quota: Mapping[str, Any], memory_resource: str, core_resource: str) -> list[QuotaLimit]:
    """The hard limits of a ResourceQuota object the scheduler tracks: `limits.<memory_resource>` and
    `limits.<core_resource>`, when set to a valid quantity."""
    metadata = metadata_of(quota)
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name") or "")
    spec = quota.get("spec")
    hard = spec.get("hard") if isinstance(spec, Mapping) else None
    if not isinstance(hard, Mapping):
        return []
    limits = []
    for key in (f"limits.{memory_resource}", f"limits.{core_resource}"):
        raw = hard.get(key)
        value = quantity_as_int64(raw) if isinstance(raw, str | int) else None
        if value is not None:
            limits.append(QuotaLimit(namespace, name, key, value))
    return limits


class QuotaBook:
    """The tracked limits of every ResourceQuota seen (by namespace/name), fed by its watch events. Not
    thread-safe: the scheduler's cache calls it under its own lock."""

    def __init__(self, memory_resource: str, core_resource: str) -> None:
        self._memory_resource = memory_resource
        self._core_resource = core_resource
        self._limits: dict[str, list[QuotaLimit]] = {}

    def apply(self, event_type: str, quota: Mapping[str, Any]) -> None:
        """A watch event (`ADDED`, `MODIFIED`, `DELETED`) of one ResourceQuota."""
        metadata = metadata_of(quota)
        key = f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"
        limits = (
            tracked_limits(quota, self._memory_resource, self._core_resource)
            if event_type != "DELETED"
            else []
        )
        if limits:
            self._limits[key] = limits
        else:
            self._limits.pop(key, None)

    def limits(self) -> list[QuotaLimit]:
        return [limit for limits in self._limits.values() for limit in limits]


# --- The view a fit checks against --------------------------------------------------------------------------


@dataclass
class QuotaEntry:
    """One tracked ResourceQuota key: `used` (memory in MiB x memoryFactor), the hard `limit` in the user's
    units, and whether a limit is set at all (an explicit 0 is a limit that blocks any use)."""

    used: int = 0
    limit: int = 0
    limit_set: bool = False


@dataclass
class NamespaceQuota:
    """A namespace's tracked quota keys (`limits.nvidia.com/gpumem`, `limits.nvidia.com/gpucores`)."""

    resources: dict[str, QuotaEntry] = field(default_factory=dict)


@dataclass
class QuotaView:
    """Namespace -> tracked quota, with the resource names and memory factor needed to compare usage."""

    namespaces: dict[str, NamespaceQuota] = field(default_factory=dict)
    memory_factor: int = 1
    memory_resource: str = wire.RESOURCE_GPUMEM
    core_resource: str = wire.RESOURCE_GPUCORES

    @property
    def memory_key(self) -> str:
        return f"limits.{self.memory_resource}"

    @property
    def core_key(self) -> str:
        return f"limits.{self.core_resource}"

    def fits(self, namespace: str, memory: int, cores: int) -> bool:
        """Whether a pod whose collapsed usage is `memory` MiB (memoryFactor scale) and `cores` percent fits
        the namespace's quota: `Used + memory <= Limit x memoryFactor` and `Used + cores <= Limit` for every
        key with a limit set."""
        quota = self.namespaces.get(namespace)
        if quota is None:
            return True
        mem = quota.resources.get(self.memory_key)
        if mem is not None and mem.limit_set and mem.used + memory > mem.limit * max(self.memory_factor, 1):
            return False
        core = quota.resources.get(self.core_key)
        return not (core is not None and core.limit_set and core.used + cores > core.limit)

    def fits_allocation(
        self,
        namespace: str,
        allocation: Sequence[Sequence[ContainerDevice]],
        init_count: int,
        sidecar_slots: frozenset[int] = frozenset(),
    ) -> bool:
        """`fits` for a whole allocation, collapsed first (init peak versus long-running sum, per GPU)."""
        collapsed = collapse_allocation(allocation, init_count, sidecar_slots)
        return self.fits(namespace, sum(d.usedmem for d in collapsed), sum(d.usedcores for d in collapsed))


def build_quota_view(
    limits: Iterable[QuotaLimit],
    usages: Iterable[PodUsage],
    *,
    memory_factor: int,
    memory_resource: str,
    core_resource: str,
) -> QuotaView:
    """Namespace quotas (the strictest limit per key when several ResourceQuotas set it) with the collapsed
    usage of the given pods added; pods in a namespace without a tracked limit are ignored."""
    view = QuotaView(
        memory_factor=memory_factor, memory_resource=memory_resource, core_resource=core_resource
    )
    for limit in limits:
        quota = view.namespaces.setdefault(limit.namespace, NamespaceQuota())
        entry = quota.resources.get(limit.key)
        if entry is None or limit.limit < entry.limit:
            quota.resources[limit.key] = QuotaEntry(used=0, limit=limit.limit, limit_set=True)
    for usage in usages:
        namespace_quota = view.namespaces.get(usage.namespace)
        if namespace_quota is None:
            continue
        collapsed = usage.collapsed()
        for key, amount in (
            (view.memory_key, sum(d.usedmem for d in collapsed)),
            (view.core_key, sum(d.usedcores for d in collapsed)),
        ):
            entry = namespace_quota.resources.get(key)
            if entry is not None:
                entry.used += amount
    return view


# --- The quota check of a fit -------------------------------------------------------------------------------


def container_quota_check(
    quota: QuotaView | None, pod: PodContext, allocation: Sequence[Sequence[ContainerDevice]], slot: int
) -> QuotaFits | None:
    """The quota check for fitting container `slot` of the pod (None without quotas): whether the pod's
    allocation, with the cards offered for this container in that slot, still fits its namespace's quota.
    `allocation` is the pod's allocation as the fit fills it, read at each check."""
    if quota is None:
        return None

    def fits(cards: Sequence[ContainerDevice]) -> bool:
        hypothetical = [*allocation[:slot], list(cards), *allocation[slot + 1 :]]
        return quota.fits_allocation(pod.namespace, hypothetical, pod.init_count, pod.sidecar_slots)

    return fits
