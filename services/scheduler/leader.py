"""Who acts: only the leader binds and writes node handshakes (docs/hami-wire.md#leader-election).

As in HAMi the extender does not campaign itself: it watches kube-scheduler's Lease and is leader while the
holder identity starts with its own identity (the pod hostname) and the lease is still valid, which means:

- renewed within `leaseDurationSeconds` of when this process last saw it change (local monotonic time, as
  client-go's elector judges other candidates), so a kube-scheduler that stopped renewing loses the extender
  its leadership even if the extender's clock is off;
- `renewTime + leaseDurationSeconds > now` by the wall clock (when `renewTime` is readable): a Lease found
  on start-up that was last renewed long ago is not leadership. kube-scheduler writes that time from the same
  pod, hence the same clock, as the extender reads it.

Without `leader_elect` it is always the leader. Lease events arrive from a reflector thread; `is_leader()` may
be called from anywhere. `LeaderMonitor` runs on the event loop: it follows the transitions, keeps the label
`hami.io/scheduler-role: leader|follower` on the extender's own pod, and runs a registration pass whenever
leadership is gained. Losing leadership changes nothing for filter and prioritize (they keep answering from
the cache); binds are refused with an error by the binder.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from services.common import wire
from services.common.kube import call_json, core_path
from services.common.log import get_logger
from services.scheduler.offload import offload

__all__ = ["LeaderMonitor", "LeaderState", "lease_holder", "pod_role_labeller", "role_label_patch"]

log = get_logger(__name__)

_DEFAULT_LEASE_SECONDS = 15.0
_MERGE_PATCH = "application/merge-patch+json"


def _utc_now() -> datetime:
    return datetime.now(UTC)


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


def _parse_time(value: str) -> datetime | None:
    """A Lease MicroTime (`2024-05-01T10:00:00.000000Z`) as an aware datetime; None when unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class LeaderState:
    """`is_leader()` for the bind path and the handshake loop; fed by `on_lease_event`."""

    def __init__(
        self,
        *,
        enabled: bool,
        identity: str,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.enabled = enabled
        self.identity = identity
        self._monotonic = monotonic
        self._clock = clock
        self._lock = threading.Lock()
        self._holder = ""
        self._renew = ""
        self._renewed_at: datetime | None = None
        self._duration = _DEFAULT_LEASE_SECONDS
        self._observed = float("-inf")
        self._was_leader = not enabled
        self._listeners: list[Callable[[], None]] = []

    @property
    def holder(self) -> str:
        with self._lock:
            return self._holder

    def is_leader(self) -> bool:
        if not self.enabled:
            return True
        with self._lock:
            leader = (
                bool(self._holder)
                and self._holder.startswith(self.identity)
                and self._monotonic() - self._observed < self._duration
                and (
                    self._renewed_at is None
                    or self._renewed_at + timedelta(seconds=self._duration) > self._clock()
                )
            )
            changed = leader != self._was_leader
            self._was_leader = leader
            holder = self._holder
        if changed:
            log.info("leadership_changed", leader=leader, identity=self.identity, holder=holder)
        return leader

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` after every Lease event (from the reflector thread; it must not block)."""
        self._listeners.append(callback)

    def on_lease_event(self, event_type: str, lease: dict[str, Any]) -> None:
        with self._lock:
            if event_type == "DELETED":
                self._holder, self._renew, self._renewed_at = "", "", None
                self._observed = float("-inf")
            else:
                holder, duration, renew = lease_holder(lease)
                if (holder, renew) != (self._holder, self._renew):
                    self._observed = self._monotonic()
                self._holder, self._duration, self._renew = holder, duration, renew
                self._renewed_at = _parse_time(renew)
        for callback in list(self._listeners):
            callback()


def role_label_patch(leader: bool) -> dict[str, Any]:
    """The merge patch that sets `hami.io/scheduler-role` on the extender's pod."""
    role = wire.SCHEDULER_ROLE_LEADER if leader else wire.SCHEDULER_ROLE_FOLLOWER
    return {"metadata": {"labels": {wire.SCHEDULER_ROLE_LABEL: role}}}


def pod_role_labeller(core: client.CoreV1Api, namespace: str, name: str) -> Callable[[bool], Awaitable[bool]]:
    """An async `label(leader) -> ok` that patches the role label onto pod `namespace/name`."""

    async def label(leader: bool) -> bool:
        try:
            await offload(
                call_json,
                core.api_client,
                "PATCH",
                core_path("pods", name, namespace=namespace),
                body=role_label_patch(leader),
                content_type=_MERGE_PATCH,
            )
        except Exception as exc:  # retried on the next check
            log.warning("scheduler_role_label_failed", pod=f"{namespace}/{name}", error=str(exc))
            return False
        log.info("scheduler_role_labelled", pod=f"{namespace}/{name}", leader=leader)
        return True

    return label


class LeaderMonitor:
    """Follows leadership on the event loop: labels the pod with its role (retrying until the patch is
    accepted) and starts `on_gain()` each time leadership is gained (the start counts when leader).

    It checks every `interval` seconds (a Lease expires without any event) and at once after a Lease event.
    """

    def __init__(
        self,
        state: LeaderState,
        *,
        on_gain: Callable[[], Awaitable[None]],
        label: Callable[[bool], Awaitable[bool]] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._state = state
        self._on_gain = on_gain
        self._label = label
        self._interval = interval
        self._wake: asyncio.Event | None = None
        self._gain_task: asyncio.Task[None] | None = None
        self.leader: bool | None = None  # as last seen by the monitor
        self.labelled: bool | None = None  # the role the pod label carries (None: not written yet)
        self.gains = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()

        def poke() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)

        self._state.add_listener(poke)
        try:
            while True:
                wake.clear()
                await self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self._interval)
        finally:
            if self._gain_task is not None:
                self._gain_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._gain_task

    async def check(self) -> None:
        leader = self._state.is_leader()
        if leader != self.leader:
            self.leader = leader
            if leader:
                self.gains += 1
                if self._gain_task is not None and not self._gain_task.done():
                    self._gain_task.cancel()
                self._gain_task = asyncio.get_running_loop().create_task(self._gained())
        if self._label is not None and self.labelled != leader and await self._label(leader):
            self.labelled = leader

    async def _gained(self) -> None:
        try:
            await self._on_gain()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("leadership_gain_pass_failed")
