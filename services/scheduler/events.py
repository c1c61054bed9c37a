"""Kubernetes events on pods (docs/hami-wire.md#events), posted by one background worker off every verb's
path; a failure is only logged. Repeats land on one Event object whose `count` grows, with client-go's spam
filter and aggregation of similar events (`event_correlation` decides; this module does the writes)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from services.common.kube import call_json, core_path
from services.common.kube_async import AsyncKube
from services.common.log import get_logger
from services.scheduler.event_correlation import Correlation, EventCorrelator, EventSource, InvolvedObject
from services.scheduler.filtering import EventText

__all__ = ["EventRecorder", "event_body"]

log = get_logger(__name__)

_WRITE_TIMEOUT = 30.0  # seconds one Event write may take on the event loop before the worker gives up


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    pod: Mapping[str, str], event: EventText, component: str, now: datetime, suffix: str
) -> dict[str, Any]:
    """A core/v1 Event about `pod` (keys namespace, name, uid) from `component`."""
    stamp = _rfc3339(now)
    namespace = pod.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod.get('name', 'pod')}.{suffix}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": pod.get("name", ""),
            "uid": pod.get("uid", ""),
        },
        "reason": event.reason,
        "message": event.message,
        "type": event.type,
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": component,
    }


class _Pending:
    """One queued event; repeats of it (same pod, type, reason, message) before it is posted raise `count`."""

    __slots__ = ("count", "event", "first", "last", "pod")

    def __init__(self, pod: Mapping[str, str], event: EventText, now: datetime) -> None:
        self.pod = pod
        self.event = event
        self.first = now
        self.last = now
        self.count = 1


class EventRecorder:
    """Posts events from one background worker thread, never on a verb's path.

    `record()` only appends to a bounded queue (O(1), no I/O, no JSON): an event identical to one still
    queued (same pod, type, reason, message) is coalesced into it (`count`, `lastTimestamp`), and when
    `max_pending` distinct events are waiting, new ones are dropped and counted in `dropped`. The worker
    waits `batch_delay` seconds after the first event of a batch, so a burst is posted in one go rather
    than interleaved with the verbs that caused it. `drain()` flushes what is queued (shutdown, tests).

    The worker asks the `EventCorrelator` for each queued event: the first occurrence creates an Event, a
    repeat patches that Event's `count` and `lastTimestamp` (a 404, the Event expired or was deleted,
    creates it again; a 409 on create patches the one already there), and what the spam filter refuses is
    counted in `throttled`.
    """

    def __init__(
        self,
        core: client.CoreV1Api | None,
        component: str,
        *,
        enabled: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_pending: int = 1000,
        batch_delay: float = 0.05,
        correlator: EventCorrelator | None = None,
        kube: AsyncKube | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._core = core
        # With both: the writes go through `kube` on `loop` (the process's event loop, `AsyncKube`), which
        # costs far less CPU than the official client's blocking call; the worker thread only waits.
        self._http = kube
        self._loop = loop
        self._component = component
        self._enabled = enabled and core is not None
        self._clock = clock
        self._max_pending = max(1, max_pending)
        self._batch_delay = max(0.0, batch_delay)
        self._pending: dict[tuple[str, str, str, str, str, str], _Pending] = {}
        self._cond = threading.Condition()
        self._posting = 0  # events taken by the worker and not yet posted
        self._flush = False
        self._thread: threading.Thread | None = None
        self._correlator = correlator or EventCorrelator()  # used by the worker thread only
        self.dropped = 0  # events dropped because the queue was full
        self.coalesced = 0  # events merged into an identical queued one
        self.posted = 0  # successful writes, creates and patches
        self.patched = 0  # writes that raised an existing Event's count
        self.throttled = 0  # writes the spam filter refused
        self.failed = 0

    def record(self, pod: Mapping[str, str], events: Iterable[EventText]) -> None:
        """Queue `events` about `pod`; returns at once (never blocks, never does I/O)."""
        if not self._enabled:
            return
        now = self._clock()
        with self._cond:
            waiting = bool(self._pending)  # the worker was woken for those already
            for event in events:
                key = (
                    pod.get("namespace") or "",
                    pod.get("name") or "",
                    pod.get("uid") or "",
                    event.type,
                    event.reason,
                    event.message,
                )
                pending = self._pending.get(key)
                if pending is not None:
                    pending.count += 1
                    pending.last = now
                    self.coalesced += 1
                elif len(self._pending) >= self._max_pending:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("events_dropped", dropped=self.dropped, queue=self._max_pending)
                else:
                    self._pending[key] = _Pending(pod, event, now)
            if self._pending:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
                    self._thread.start()
                if not waiting:
                    # Only the first event of a batch wakes the worker: waking it for every event would cut
                    # its batch delay short each time (one post per wake-up, and a thread switch per verb).
                    self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                if not self._flush and self._batch_delay:
                    self._cond.wait(self._batch_delay)  # let the burst complete; drain() cuts it short
                batch = list(self._pending.values())
                self._pending.clear()
                self._posting = len(batch)
            for item in batch:
                self._post(item)
                with self._cond:
                    self._posting -= 1
                    if not self._pending and not self._posting:
                        self._flush = False
                        self._cond.notify_all()

    def _post(self, item: _Pending) -> None:
        pod = item.pod
        involved = InvolvedObject(
            "Pod", pod.get("namespace") or "default", pod.get("name") or "", pod.get("uid") or ""
        )
        correlation = self._correlator.correlate(
            involved,
            EventSource(self._component),
            item.event.type,
            item.event.reason,
            item.event.message,
            item.last,
            item.count,
            item.first,
        )
        if correlation.skip:
            self.throttled += 1
            if self.throttled == 1 or self.throttled % 1000 == 0:
                log.warning("events_throttled", throttled=self.throttled)
            return
        event = EventText(item.event.type, item.event.reason, correlation.message)
        body = event_body(pod, event, self._component, correlation.first, secrets.token_hex(8))
        body["count"] = correlation.count
        body["lastTimestamp"] = _rfc3339(correlation.last)
        namespace = body["metadata"]["namespace"]
        try:
            name = self._write(namespace, body, correlation)
            self._correlator.observed(correlation, name)
            self.posted += 1
        except Exception as exc:  # events are best effort: never let one break a verb
            self.failed += 1
            log.warning(
                "event_post_failed",
                pod=f"{namespace}/{body['involvedObject']['name']}",
                reason=body["reason"],
                error=str(exc) or type(exc).__name__,
            )

    def _write(self, namespace: str, body: dict[str, Any], correlation: Correlation) -> str:
        """Create or patch the Event; returns the name of the Event that now holds the count."""
        patch = {"count": body["count"], "lastTimestamp": body["lastTimestamp"], "message": body["message"]}
        if correlation.existing_name is not None:
            try:
                self._patch(namespace, correlation.existing_name, patch)
                self.patched += 1
                return correlation.existing_name
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            # the Event expired (the API server's event TTL) or was deleted: create it afresh
        name: str = body["metadata"]["name"]
        try:
            self._send(namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self._patch(namespace, name, patch)
            self.patched += 1
        return name

    def _call(self, method: str, path: str, body: Any, content_type: str = "application/json") -> None:
        """One write from the worker thread: on the event loop when there is one, else blocking."""
        loop = self._loop
        if self._http is not None and loop is not None and loop.is_running() and not loop.is_closed():
            request = self._http.request(method, path, body=body, content_type=content_type)
            asyncio.run_coroutine_threadsafe(request, loop).result(timeout=_WRITE_TIMEOUT)
            return
        assert self._core is not None
        call_json(self._core.api_client, method, path, body=body, content_type=content_type)

    def _send(self, namespace: str, body: dict[str, Any]) -> None:
        """POST one Event (the answer is read whole, so its connection goes back to the pool)."""
        self._call("POST", core_path("events", namespace=namespace), body)

    def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch one Event's count, lastTimestamp and message."""
        self._call(
            "PATCH", core_path("events", name, namespace=namespace), patch, "application/merge-patch+json"
        )

    def _idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._pending or self._posting:
                self._flush = True
                self._cond.notify_all()
            while self._pending or self._posting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    async def drain(self, timeout: float = 5.0) -> None:
        """Post what is queued now, waiting up to `timeout` seconds."""
        with self._cond:
            busy = bool(self._pending or self._posting)
        if busy:
            await asyncio.to_thread(self._idle, timeout)
