"""Who acts: only the leader binds and writes node handshakes (spec §3.10).

As in HAMi the extender does not campaign itself: it watches kube-scheduler's Lease and is leader while the
holder identity starts with its own identity (the pod hostname) and the lease was renewed within
`leaseDurationSeconds` of when this process last saw it change (local monotonic time, so clock skew between
nodes does not matter). Without `leader_elect` it is always the leader. Lease events arrive from a reflector
thread; `is_leader()` may be called from anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from services.common.log import get_logger

__all__ = ["LeaderState", "lease_holder"]

log = get_logger(__name__)

_DEFAULT_LEASE_SECONDS = 15.0


def lease_holder(lease: Mapping[str, Any]) -> tuple[str, float, str]:
    """(holderIdentity, leaseDurationSeconds, renewTime) of a coordination/v1 Lease object."""
    spec = lease.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    holder = spec.get("holderIdentity")
    duration = spec.get("leaseDurationSeconds")
    renew = spec.get("renewTime") or spec.get("acquireTime") or ""
    return (
        holder if isinstance(holder, str) else "",
        float(duration) if isinstance(duration, int | float) and duration > 0 else _DEFAULT_LEASE_SECONDS,
        str(renew),
    )


class LeaderState:
    """`is_leader()` for the bind path and the handshake loop; fed by `on_lease_event`."""

    def __init__(
        self, *, enabled: bool, identity: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = enabled
        self.identity = identity
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._holder = ""
        self._renew = ""
        self._duration = _DEFAULT_LEASE_SECONDS
        self._observed = float("-inf")
        self._was_leader = not enabled

    def is_leader(self) -> bool:
        if not self.enabled:
            return True
        with self._lock:
            leader = (
                bool(self._holder)
                and self._holder.startswith(self.identity)
                and self._monotonic() - self._observed < self._duration
            )
            changed = leader != self._was_leader
            self._was_leader = leader
        if changed:
            log.info("leadership_changed", leader=leader, identity=self.identity, holder=self._holder)
        return leader

    def on_lease_event(self, event_type: str, lease: dict[str, Any]) -> None:
        with self._lock:
            if event_type == "DELETED":
                self._holder, self._renew, self._observed = "", "", float("-inf")
                return
            holder, duration, renew = lease_holder(lease)
            if (holder, renew) != (self._holder, self._renew):
                self._observed = self._monotonic()
            self._holder, self._duration, self._renew = holder, duration, renew
