"""GPU health from driver events: which XIDs count, and when a card is trusted again.

HAMi marks every replica of a GPU unhealthy on a critical XID that is not in its ignore list and never
recovers it (docs/hami-wire.md#device-plugin-registration). kube-vgpu keeps the ignore list (configurable) and
adds a quiet period: a GPU made unhealthy by events is healthy again after `recovery_seconds` without another
critical event (0 keeps HAMi's "until restart"). A GPU the backend reports as not present stays unhealthy
regardless.

Pure bookkeeping with an injectable clock; the plugin feeds it events from the backend's health thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.common.log import get_logger
from services.device_plugin.gpu import GpuEvent

log = get_logger("device_plugin.health")


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """What one event did: the GPUs it marked (empty when ignored) and why."""

    marked: frozenset[str]
    reason: str


class HealthTracker:
    def __init__(
        self,
        *,
        enabled: bool = True,
        ignored_xids: Iterable[int] = (),
        recovery_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.ignored_xids = frozenset(ignored_xids)
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._last_bad: dict[str, float] = {}
        self._reasons: dict[str, str] = {}

    def record(self, event: GpuEvent, known: Iterable[str]) -> HealthVerdict:
        """Apply one backend event; `known` are the UUIDs of this node's GPUs (for events naming all)."""
        if event.kind == "changed":
            return HealthVerdict(frozenset(), "inventory changed")
        if not self.enabled:
            return HealthVerdict(frozenset(), "health checks disabled")
        if event.kind == "xid" and event.xid is not None and event.xid in self.ignored_xids:
            log.info("xid_ignored", device_uuid=event.uuid, xid=event.xid)
            return HealthVerdict(frozenset(), f"XID {event.xid} is in the ignore list")
        known_set = frozenset(known)
        if event.uuid is None:
            targets = known_set
        elif event.uuid in known_set:
            targets = frozenset({event.uuid})
        else:
            log.warning("health_event_for_unknown_gpu", device_uuid=event.uuid, kind=event.kind)
            return HealthVerdict(frozenset(), f"GPU {event.uuid} is not on this node")
        reason = f"XID {event.xid}" if event.kind == "xid" else (event.detail or event.kind)
        now = self._clock()
        for uuid in targets:
            self._last_bad[uuid] = now
            self._reasons[uuid] = reason
        log.warning("gpu_unhealthy", devices=sorted(targets), reason=reason, kind=event.kind)
        return HealthVerdict(targets, reason)

    def is_healthy(self, uuid: str, present: bool = True) -> bool:
        if not present:
            return False
        last = self._last_bad.get(uuid)
        if last is None:
            return True
        if self.recovery_seconds > 0 and self._clock() - last >= self.recovery_seconds:
            del self._last_bad[uuid]
            log.info("gpu_recovered", device_uuid=uuid, after_s=self.recovery_seconds)
            return True
        return False

    def reason(self, uuid: str) -> str | None:
        """Why the GPU was last marked unhealthy (None if it never was)."""
        return self._reasons.get(uuid) if uuid in self._last_bad else None

    def seconds_to_next_recovery(self) -> float | None:
        """How long until the next GPU may recover (None when nothing is waiting to)."""
        if self.recovery_seconds <= 0 or not self._last_bad:
            return None
        earliest = min(self._last_bad.values()) + self.recovery_seconds
        return max(0.0, earliest - self._clock())
