"""A pod's use of GPUs (docs/hami-wire.md#node-usage): pure arithmetic over an allocation (slot i = container
i, init containers first), no I/O.

`collapse_allocation` reduces an allocation to one use per GPU, the way HAMi's `CollapseInitContainerUsage`
does (sidecar-aware); `apply_allocation` adds that use to a node's cards. The usage cache, the namespace quota
and the bind-time re-fit all count a pod with these two, so they agree with each other and with the fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.common.model import CollapsedDevice, ContainerDevice, DeviceUsage

__all__ = ["apply_allocation", "apply_collapsed", "collapse_allocation"]


@dataclass(slots=True)
class _Use:
    mem: int = 0
    cores: int = 0
    tasks: int = 0

    def add(self, other: _Use) -> None:
        self.mem += other.mem
        self.cores += other.cores
        self.tasks += other.tasks


def collapse_allocation(
    allocation: Sequence[Sequence[ContainerDevice]],
    init_count: int,
    sidecar_slots: frozenset[int] = frozenset(),
) -> list[CollapsedDevice]:
    """A pod's effective use of each GPU, sorted by (UUID, type) (HAMi `CollapseInitContainerUsage`, extended
    for sidecars): the larger of the busiest init phase (one init container plus the sidecars started before
    it) and the long-running sum (sidecars and app containers). `slots` is the task count of that peak, at
    least 1. Without sidecars this is exactly `services.common.codecs.collapse_pod_devices`.
    """
    keys: dict[tuple[str, str], None] = {}
    running: dict[tuple[str, str], _Use] = {}  # sidecars started so far, then everything long-running
    init_peak: dict[tuple[str, str], _Use] = {}
    for slot, cards in enumerate(allocation):
        here: dict[tuple[str, str], _Use] = {}
        for card in cards:
            key = (card.uuid, card.type)
            keys[key] = None
            here.setdefault(key, _Use()).add(_Use(card.usedmem, card.usedcores, 1))
        if slot < init_count and slot not in sidecar_slots:
            for key, use in here.items():
                before = running.get(key, _Use())
                peak = init_peak.setdefault(key, _Use())
                peak.mem = max(peak.mem, use.mem + before.mem)
                peak.cores = max(peak.cores, use.cores + before.cores)
                peak.tasks = max(peak.tasks, 1 + before.tasks)
        else:
            for key, use in here.items():
                running.setdefault(key, _Use()).add(use)
    collapsed = []
    for uuid, device_type in sorted(keys):
        peak = init_peak.get((uuid, device_type), _Use())
        steady = running.get((uuid, device_type), _Use())
        collapsed.append(
            CollapsedDevice(
                uuid=uuid,
                type=device_type,
                usedmem=max(peak.mem, steady.mem),
                usedcores=max(peak.cores, steady.cores),
                slots=max(peak.tasks, steady.tasks, 1),
            )
        )
    return collapsed


def apply_allocation(
    devices: list[DeviceUsage],
    allocation: Sequence[Sequence[ContainerDevice]],
    init_count: int,
    sidecar_slots: frozenset[int] = frozenset(),
) -> list[str]:
    """Add a pod's collapsed usage to a node's cards in place: `Used += max(slots, 1)`, `Usedmem += mem`,
    `Usedcores += cores` per GPU. Returns the UUIDs the node does not have (ignored), in UUID order."""
    return apply_collapsed(devices, collapse_allocation(allocation, init_count, sidecar_slots))


def apply_collapsed(devices: list[DeviceUsage], collapsed: Iterable[CollapsedDevice]) -> list[str]:
    """`apply_allocation` for a use already collapsed (`collapse_allocation`)."""
    by_id = {d.id: d for d in devices}
    unknown: list[str] = []
    for use in collapsed:
        device = by_id.get(use.uuid)
        if device is None:
            unknown.append(use.uuid)
            continue
        device.used += max(use.slots, 1)
        device.usedmem += use.usedmem
        device.usedcores += use.usedcores
    return unknown
