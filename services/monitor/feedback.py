"""The priority feedback loop (docs/hami-wire.md#monitor-feedback,
docs/libvgpu-contract.md#priority-and-switch) as a pure function.

Input: each container's `recent_kernel`, `priority`, `utilization_switch` and GPU UUIDs as read from its
region. Output: the new values of the two fields the monitor is allowed to write, only where they change.

1. A container with `recent_kernel > 0` has it decremented; if still > 0 it counts as *active* at its
   priority on each of its GPUs (`active[uuid][priority] += 1`, priority >= 0).
2. *Blocking*: some GPU of the container has an active task at a smaller priority number (0 = highest).
   Blocking and `recent_kernel >= 0` -> -1 (its launches then sleep); not blocking and `recent_kernel < 0`
   -> 0. *Switch*: blocking, or more than one active task at its own priority on one of its GPUs ->
   `utilization_switch = 1`, else 0 (a container alone on its GPUs runs unthrottled: HAMi's default policy).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeedbackInput:
    key: Hashable
    uuids: tuple[str, ...]
    priority: int
    recent_kernel: int
    utilization_switch: int


@dataclass(frozen=True, slots=True)
class FeedbackWrite:
    """New field values; None = leave the field as it is."""

    key: Hashable
    recent_kernel: int | None = None
    utilization_switch: int | None = None


def feedback_pass(containers: Sequence[FeedbackInput]) -> list[FeedbackWrite]:
    recent: dict[Hashable, int] = {}
    active: defaultdict[str, defaultdict[int, int]] = defaultdict(lambda: defaultdict(int))
    for c in containers:
        value = c.recent_kernel
        if value > 0:
            value -= 1
            if value > 0 and c.priority >= 0:
                for uuid in c.uuids:
                    active[uuid][c.priority] += 1
        recent[c.key] = value

    writes: list[FeedbackWrite] = []
    for c in containers:
        value = recent[c.key]
        blocking = False
        crowded = False
        for uuid in c.uuids:
            by_priority = active.get(uuid)
            if not by_priority:
                continue
            if any(count > 0 and p < c.priority for p, count in by_priority.items()):
                blocking = True
            if by_priority.get(c.priority, 0) > 1:
                crowded = True
        if blocking and value >= 0:
            value = -1
        elif not blocking and value < 0:
            value = 0
        switch = 1 if blocking or crowded else 0
        write = FeedbackWrite(
            key=c.key,
            recent_kernel=value if value != c.recent_kernel else None,
            utilization_switch=switch if switch != c.utilization_switch else None,
        )
        if write.recent_kernel is not None or write.utilization_switch is not None:
            writes.append(write)
    return writes
