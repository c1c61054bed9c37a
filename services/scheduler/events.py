"""Kubernetes events on pods (docs/hami-wire.md#events), posted by one background worker off every verb's
path (a task on the event loop in the scheduler, a thread without one); a failure is only logged. Repeats
land on one Event object whose `count` grows, with client-go's spam filter and aggregation of similar events
(`event_correlation` decides; this module does the writes)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
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

_MERGE_PATCH = "application/merge-patch+json"
_WRITE_TIMEOUT = 30.0  # seconds one Event write may take on the event loop before the worker gives up


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
    """Posts events from one background worker, never on a verb's path.

    `record()` only appends to a bounded queue (O(1), no I/O, no JSON) and may be called from any thread:
    an event identical to one still queued (same pod, type, reason, message) is coalesced into it (`count`,
    `lastTimestamp`), and when `max_pending` distinct events are waiting, new ones are dropped and counted
    in `dropped`. The worker waits `batch_delay` seconds after the first event of a batch, so a burst is
    posted in one go rather than interleaved with the verbs that caused it, then posts the batch one event
    after the other. `drain()` flushes what is queued (shutdown, tests).

    With `kube` and `loop` (the scheduler) the worker is a task on `loop` that writes through `kube`
    (`AsyncKube`); it starts with a batch and ends when the queue is empty. Without them it is a thread
    making blocking calls through `core`. A thread that handed each write to the loop and waited for it
    would pay two thread switches and a wake-up of the loop per event, on both threads.

    The worker asks the `EventCorrelator` for each queued event: the first occurrence creates an Event, a
    repeat patches that Event's `count` and `lastTimestamp` (a 404, the Event expired or was deleted,
    creates it again; a 409 on create patches the one already there), and what the spam filter refuses is
    counted in `throttled`. The events are posted in order, each write awaited before the next: the
    correlator must know the name of an Event created before it decides on the next repeat.
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
        on_loop = kube is not None and loop is not None
        self._http = kube if on_loop else None  # set: the worker is a task on `_loop`
        self._loop = loop if on_loop else None
        self._component = component
        self._enabled = enabled and (core is not None or on_loop)
        self._clock = clock
        self._max_pending = max(1, max_pending)
        self._batch_delay = max(0.0, batch_delay)
        self._pending: dict[tuple[str, str, str, str, str, str], _Pending] = {}
        # Guards the queue and the counters the worker and drain() share; record() may run on any thread.
        self._cond = threading.Condition()
        self._posting = 0  # events taken by the worker and not yet posted
        self._flush = False
        self._thread: threading.Thread | None = None
        self._scheduled = False  # loop worker: started (or its start is on the way), and not finished
        self._task: asyncio.Task[None] | None = None  # the loop worker; touched on the loop's thread only
        self._pause: asyncio.Future[None] | None = None  # its batch delay, which drain() cuts short
        self._idle_waiters: list[asyncio.Future[None]] = []  # drain() calls on the loop
        self._correlator = correlator or EventCorrelator()  # used by the worker only
        self.dropped = 0  # events dropped because the queue was full (or left unposted by drain()'s timeout)
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
            if not self._pending:
                return
            start = self._claim_worker()
            if self._loop is None:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
                    self._thread.start()
                if not waiting:
                    # Only the first event of a batch wakes the worker: waking it for every event would cut
                    # its batch delay short each time (one post per wake-up, and a thread switch per verb).
                    self._cond.notify_all()
        if start:
            self._start_task()

    def _claim_worker(self) -> bool:
        """Under the lock: whether the caller must start a loop worker task. One runs (or its start is on the
        way) while anything is queued; `_scheduled`, set here and cleared by the task as it ends, both under
        the lock, makes sure exactly one is started."""
        start = self._loop is not None and bool(self._pending) and not self._scheduled
        self._scheduled = self._scheduled or start
        return start

    def _start_task(self) -> None:
        """Start the loop worker: at once on the loop's thread (the verbs' case), else through the loop."""
        assert self._loop is not None
        try:
            if _running_loop() is self._loop:
                self._spawn()
            else:
                self._loop.call_soon_threadsafe(self._spawn)
        except RuntimeError:  # the loop is closed: nothing posts any more, the events stay queued
            with self._cond:
                self._scheduled = False

    def _spawn(self) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._work(), name="event-recorder")

    async def _work(self) -> None:
        """The loop worker: batch after batch until the queue is empty."""
        loop = self._loop
        assert loop is not None
        try:
            while True:
                with self._cond:
                    if not self._pending:  # ends in this step: a record() after it starts another
                        self._scheduled = self._flush = False
                        self._cond.notify_all()  # a drain() from another loop waits in _idle()
                        break
                    flush = self._flush
                if not flush and self._batch_delay:
                    self._pause = pause = loop.create_future()
                    timer = loop.call_later(self._batch_delay, _wake, pause)
                    try:
                        await pause  # let the burst complete; drain() cuts it short
                    finally:
                        timer.cancel()
                        self._pause = None
                with self._cond:
                    batch = list(self._pending.values())
                    self._pending.clear()
                    self._posting = len(batch)
                for item in batch:
                    await self._post(item)
                    with self._cond:
                        self._posting -= 1
        except asyncio.CancelledError:  # drain() ran out of time: what this batch had left is lost
            with self._cond:
                self.dropped += self._posting
                self._posting = 0
                self._scheduled = self._flush = False
                self._cond.notify_all()
            raise
        finally:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                _wake(waiter)

    def _run(self) -> None:
        """The worker thread (no event loop): waits for batches for ever."""
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
                _run_to_end(self._post(item))
                with self._cond:
                    self._posting -= 1
                    if not self._pending and not self._posting:
                        self._flush = False
                        self._cond.notify_all()

    async def _post(self, item: _Pending) -> None:
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
            name = await self._write(namespace, body, correlation)
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

    async def _write(self, namespace: str, body: dict[str, Any], correlation: Correlation) -> str:
        """Create or patch the Event; returns the name of the Event that now holds the count."""
        patch = {"count": body["count"], "lastTimestamp": body["lastTimestamp"], "message": body["message"]}
        if correlation.existing_name is not None:
            try:
                await self._update(namespace, correlation.existing_name, patch)
                self.patched += 1
                return correlation.existing_name
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            # the Event expired (the API server's event TTL) or was deleted: create it afresh
        name: str = body["metadata"]["name"]
        try:
            await self._create(namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            await self._update(namespace, name, patch)
            self.patched += 1
        return name

    # The two writes: awaited on the loop through `AsyncKube`, else the blocking `_send` and `_patch` (which
    # never suspend, so the thread drives `_post` without an event loop, see `_run_to_end`).

    async def _create(self, namespace: str, body: dict[str, Any]) -> None:
        if self._http is None:
            self._send(namespace, body)
            return
        # `core_path(...)` right after the method: tests/deploy/test_deploy_rbac.py reads verbs there.
        await self._http.request(
            "POST", core_path("events", namespace=namespace), body=body, timeout=_WRITE_TIMEOUT
        )

    async def _update(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if self._http is None:
            self._patch(namespace, name, patch)
            return
        await self._http.request(
            "PATCH",
            core_path("events", name, namespace=namespace),
            body=patch,
            content_type=_MERGE_PATCH,
            timeout=_WRITE_TIMEOUT,
        )

    def _send(self, namespace: str, body: dict[str, Any]) -> None:
        """POST one Event, blocking (the answer is read whole, so its connection goes back to the pool)."""
        assert self._core is not None
        call_json(self._core.api_client, "POST", core_path("events", namespace=namespace), body=body)

    def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch one Event's count, lastTimestamp and message, blocking."""
        assert self._core is not None
        call_json(
            self._core.api_client,
            "PATCH",
            core_path("events", name, namespace=namespace),
            body=patch,
            content_type=_MERGE_PATCH,
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
        """Post what is queued now, waiting up to `timeout` seconds.

        On the recorder's own loop, a worker task still posting when the time is up is cancelled (what it
        had not posted is counted in `dropped`; what is still queued waits for the next `record()`): at
        shutdown the API client closes next, and no task may be left writing through it."""
        with self._cond:
            busy = bool(self._pending or self._posting)
            if busy:
                self._flush = True
            start = self._claim_worker()  # events left queued by an earlier drain()'s timeout have none
        if start:
            self._start_task()
        if not busy:
            return
        here = _running_loop()
        if here is None or here is not self._loop:  # the thread worker, or a drain() on another loop
            await asyncio.to_thread(self._idle, timeout)
            return
        waiter = here.create_future()
        self._idle_waiters.append(waiter)
        if self._pause is not None:
            _wake(self._pause)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            task = self._task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.warning("events_drain_timeout", timeout=timeout, dropped=self.dropped)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _run_to_end(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (all its awaits end in plain calls) to its end, without a loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("an event write suspended on the worker thread")
