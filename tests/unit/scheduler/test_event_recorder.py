"""The event recorder: posting off the verbs' path, coalescing, dropping when full, drain."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client

from services.common.kube_async import AsyncKube
from services.scheduler.events import EventRecorder
from services.scheduler.filtering import NORMAL, WARNING, EventText

POD = {"namespace": "default", "name": "p", "uid": "u-1"}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeCore:
    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.posted: list[tuple[str, dict[str, Any]]] = []
        self.gate = gate
        self.fail = fail
        self.threads: set[str] = set()

    def post(self, namespace: str, body: Any) -> None:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise OSError("connection refused")
        self.posted.append((namespace, body))


class _Recorder(EventRecorder):
    """The recorder with its one API call answered by `FakeCore` (the posting itself runs against
    kube-local in the scheduler's integration tests)."""

    def __init__(self, core: FakeCore, component: str, **kwargs: Any) -> None:
        super().__init__(core, component, **kwargs)  # type: ignore[arg-type]
        self.fake = core

    def _send(self, namespace: str, body: dict[str, Any]) -> None:
        self.fake.post(namespace, body)


def _recorder(core: FakeCore, **kwargs: Any) -> EventRecorder:
    return _Recorder(core, "vgpu-scheduler", clock=lambda: NOW, batch_delay=0.0, **kwargs)


async def test_events_are_posted_by_the_worker_thread() -> None:
    core = FakeCore()
    recorder = _recorder(core)
    recorder.record(POD, [EventText(NORMAL, "FilteringSucceed", "ok")])
    await recorder.drain()
    assert len(core.posted) == 1
    namespace, body = core.posted[0]
    assert namespace == "default"
    assert body["reason"] == "FilteringSucceed" and body["involvedObject"]["uid"] == "u-1"
    assert body["count"] == 1 and body["firstTimestamp"] == "2026-01-02T03:04:05Z"
    assert core.threads == {"event-recorder"}
    assert recorder.posted == 1


async def test_identical_events_are_coalesced_and_overflow_is_dropped() -> None:
    gate = threading.Event()
    core = FakeCore(gate)
    recorder = _Recorder(core, "s", clock=lambda: NOW, batch_delay=1.0, max_pending=2)
    event = EventText(WARNING, "FilteringFailed", "no node")
    recorder.record(POD, [event, event, event])
    recorder.record({**POD, "name": "q", "uid": "u-2"}, [event])
    recorder.record({**POD, "name": "r", "uid": "u-3"}, [event])  # third distinct event: queue full
    assert recorder.coalesced == 2 and recorder.dropped == 1
    gate.set()
    await recorder.drain()
    counts = {body["involvedObject"]["name"]: body["count"] for _, body in core.posted}
    assert counts == {"p": 3, "q": 1}


async def test_a_failed_post_is_counted_and_drain_returns() -> None:
    core = FakeCore(fail=True)
    recorder = _recorder(core)
    recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert recorder.failed == 1 and core.posted == []


async def test_disabled_recorder_posts_nothing() -> None:
    core = FakeCore()
    recorder = _Recorder(core, "s", enabled=False)
    recorder.record(POD, [EventText(NORMAL, "x", "y")])
    await recorder.drain()
    assert core.posted == []


class PatchingCore(FakeCore):
    """FakeCore that also takes patches, answering with `ApiException(status)` from `errors` first."""

    def __init__(self, create_errors: list[int] | None = None, patch_errors: list[int] | None = None) -> None:
        super().__init__()
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.create_errors = create_errors or []
        self.patch_errors = patch_errors or []

    def post(self, namespace: str, body: Any) -> None:
        if self.create_errors:
            raise client.ApiException(status=self.create_errors.pop(0))
        super().post(namespace, body)

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if self.patch_errors:
            raise client.ApiException(status=self.patch_errors.pop(0))
        self.patches.append((namespace, name, patch))


class _PatchingRecorder(_Recorder):
    def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.fake.patch(namespace, name, patch)  # type: ignore[attr-defined]


def _patching(core: PatchingCore, clock: Any = lambda: NOW) -> _PatchingRecorder:
    return _PatchingRecorder(core, "vgpu-scheduler", clock=clock, batch_delay=0.0)


async def test_a_repeated_event_patches_the_one_event_count() -> None:
    core = PatchingCore()
    recorder = _patching(core)
    event = EventText(WARNING, "FilteringFailed", "no node")
    for _ in range(3):
        recorder.record(POD, [event])
        await recorder.drain()
    assert len(core.posted) == 1
    name = core.posted[0][1]["metadata"]["name"]
    assert [(n, p["count"]) for _, n, p in core.patches] == [(name, 2), (name, 3)]
    assert core.patches[-1][2]["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert recorder.posted == 3 and recorder.patched == 2


async def test_a_patch_answered_404_creates_the_event_again() -> None:
    core = PatchingCore(patch_errors=[404])
    recorder = _patching(core)
    event = EventText(WARNING, "FilteringFailed", "no node")
    for _ in range(3):
        recorder.record(POD, [event])
        await recorder.drain()
    assert [body["count"] for _, body in core.posted] == [1, 2]
    second = core.posted[1][1]["metadata"]["name"]
    assert [(n, p["count"]) for _, n, p in core.patches] == [(second, 3)]
    assert recorder.failed == 0


async def test_a_create_answered_409_patches_the_existing_event() -> None:
    core = PatchingCore(create_errors=[409])
    recorder = _patching(core)
    recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert core.posted == [] and len(core.patches) == 1
    assert core.patches[0][2]["count"] == 1 and recorder.patched == 1 and recorder.failed == 0


async def test_other_api_errors_are_counted_as_failures() -> None:
    core = PatchingCore(create_errors=[500])
    recorder = _patching(core)
    recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert recorder.failed == 1 and core.posted == [] and core.patches == []


async def test_the_spam_filter_throttles_one_pods_flood() -> None:
    core = PatchingCore()
    recorder = _patching(core)
    for i in range(30):
        recorder.record(POD, [EventText(WARNING, "FilteringFailed", f"reason {i % 2}")])
        await recorder.drain()
    assert recorder.throttled == 5 and recorder.posted == 25
    assert sorted(body["message"] for _, body in core.posted) == ["reason 0", "reason 1"]


# --- the scheduler's path: a worker task on the event loop, writing through AsyncKube --------------------


class FakeEventsServer:
    """The API server's Events endpoints over HTTP: creates keyed by name (409 when taken), merge-patches
    (404 when missing), and the answers to force next (`create_errors`, `patch_errors`, `fail_all`)."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []  # (method, Event name)
        self.create_errors: list[int] = []
        self.patch_errors: list[int] = []
        self.fail_all = False
        self.hold: asyncio.Event | None = None  # set: every write waits for it
        app = web.Application()
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create)
        app.router.add_patch("/api/v1/namespaces/{ns}/events/{name}", self._patch)
        self.server = TestServer(app)

    async def _answer(self, forced: list[int]) -> web.Response | None:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_all:
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        if forced:
            return web.json_response({"kind": "Status"}, status=forced.pop(0))
        return None

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        self.calls.append(("POST", name))
        forced = await self._answer(self.create_errors)
        if forced is not None:
            if forced.status == 409:  # another writer made it first: the Event is there
                self.events[name] = body
            return forced
        if name in self.events:
            return web.json_response({"kind": "Status", "reason": "AlreadyExists"}, status=409)
        self.events[name] = body
        return web.json_response(body, status=201)

    async def _patch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(("PATCH", name))
        assert request.content_type == "application/merge-patch+json"
        patch = await request.json()
        forced = await self._answer(self.patch_errors)
        if forced is not None:
            return forced
        if name not in self.events:
            return web.json_response({"kind": "Status", "reason": "NotFound"}, status=404)
        self.events[name].update(patch)
        return web.json_response(self.events[name])


@pytest.fixture
async def api() -> AsyncIterator[FakeEventsServer]:
    fake = FakeEventsServer()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        if fake.hold is not None:
            fake.hold.set()
        await fake.server.close()


@pytest.fixture
async def kube(api: FakeEventsServer) -> AsyncIterator[AsyncKube]:
    http = AsyncKube(client.Configuration(host=str(api.server.make_url("")).rstrip("/")))
    try:
        yield http
    finally:
        await http.close()


def _on_loop(kube: AsyncKube, **kwargs: Any) -> EventRecorder:
    kwargs.setdefault("batch_delay", 0.0)
    return EventRecorder(
        None, "vgpu-scheduler", clock=lambda: NOW, kube=kube, loop=asyncio.get_running_loop(), **kwargs
    )


def _worker_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "event-recorder"]


def _new_recorder_threads(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in set(threading.enumerate()) - before if t.name == "event-recorder"]


async def test_on_the_loop_events_are_posted_by_a_task_and_no_thread(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    threads = set(threading.enumerate())
    recorder = _on_loop(kube)
    recorder.record(
        POD, [EventText(NORMAL, "FilteringSucceed", "ok"), EventText(NORMAL, "BindingSucceed", "b")]
    )
    assert len(_worker_tasks()) == 1
    await recorder.drain()
    assert [body["reason"] for body in api.events.values()] == ["FilteringSucceed", "BindingSucceed"]
    body = next(iter(api.events.values()))
    assert body["involvedObject"]["uid"] == "u-1" and body["count"] == 1
    assert body["firstTimestamp"] == "2026-01-02T03:04:05Z"
    assert recorder.posted == 2 and recorder.failed == 0
    assert _new_recorder_threads(threads) == []
    assert _worker_tasks() == []  # the worker ends with its queue; the next record() starts another
    recorder.record({**POD, "name": "q", "uid": "u-2"}, [EventText(NORMAL, "FilteringSucceed", "ok")])
    await recorder.drain()
    assert recorder.posted == 3 and _worker_tasks() == []


async def test_on_the_loop_identical_events_are_coalesced_and_drain_cuts_the_delay_short(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    recorder = _on_loop(kube, batch_delay=30.0, max_pending=2)
    event = EventText(WARNING, "FilteringFailed", "no node")
    recorder.record(POD, [event, event, event])
    recorder.record({**POD, "name": "q", "uid": "u-2"}, [event])
    recorder.record({**POD, "name": "r", "uid": "u-3"}, [event])  # third distinct event: queue full
    assert recorder.coalesced == 2 and recorder.dropped == 1
    await asyncio.sleep(0.05)
    assert api.calls == []  # the worker waits out the batch delay
    started = time.monotonic()
    await recorder.drain()
    assert time.monotonic() - started < 5.0
    counts = {body["involvedObject"]["name"]: body["count"] for body in api.events.values()}
    assert counts == {"p": 3, "q": 1}


async def test_on_the_loop_a_repeat_patches_the_existing_event(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    recorder = _on_loop(kube)
    event = EventText(WARNING, "FilteringFailed", "no node")
    for _ in range(2):
        recorder.record(POD, [event])
        await recorder.drain()
    (name,) = api.events
    assert api.calls == [("POST", name), ("PATCH", name)]
    assert api.events[name]["count"] == 2
    assert recorder.posted == 2 and recorder.patched == 1


async def test_on_the_loop_a_patch_answered_404_creates_the_event_again(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    recorder = _on_loop(kube)
    event = EventText(WARNING, "FilteringFailed", "no node")
    recorder.record(POD, [event])
    await recorder.drain()
    (first,) = api.events
    api.events.clear()  # expired (the event TTL)
    recorder.record(POD, [event])
    await recorder.drain()
    (second,) = api.events
    assert api.calls == [("POST", first), ("PATCH", first), ("POST", second)]
    assert api.events[second]["count"] == 2
    assert recorder.posted == 2 and recorder.patched == 0 and recorder.failed == 0


async def test_on_the_loop_a_create_answered_409_patches_the_existing_event(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    api.create_errors = [409]
    recorder = _on_loop(kube)
    recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    (name,) = api.events
    assert api.calls == [("POST", name), ("PATCH", name)]
    assert recorder.posted == 1 and recorder.patched == 1 and recorder.failed == 0


async def test_on_the_loop_record_from_another_thread_starts_the_worker(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    threads = set(threading.enumerate())
    recorder = _on_loop(kube)
    await asyncio.to_thread(recorder.record, POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    for _ in range(200):  # no drain(): the worker was started through the loop's thread-safe call
        if recorder.posted:
            break
        await asyncio.sleep(0.01)
    assert recorder.posted == 1 and len(api.events) == 1
    await asyncio.to_thread(
        recorder.record, {**POD, "uid": "u-2"}, [EventText(NORMAL, "BindingSucceed", "ok")]
    )
    await recorder.drain()
    assert recorder.posted == 2 and _worker_tasks() == []
    assert _new_recorder_threads(threads) == []


async def test_on_the_loop_failures_are_counted_and_the_recorder_keeps_working(
    api: FakeEventsServer, kube: AsyncKube
) -> None:
    api.fail_all = True
    recorder = _on_loop(kube)
    recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert recorder.failed == 1 and recorder.posted == 0 and api.events == {}
    api.fail_all = False
    recorder.record({**POD, "uid": "u-2"}, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert recorder.failed == 1 and recorder.posted == 1 and len(api.events) == 1


async def test_on_the_loop_an_unreachable_server_is_a_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    http = AsyncKube(client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        recorder = _on_loop(http)
        recorder.record(POD, [EventText(NORMAL, "BindingSucceed", "ok")])
        await recorder.drain()
        assert recorder.failed == 1 and recorder.posted == 0 and _worker_tasks() == []
    finally:
        await http.close()


async def test_on_the_loop_drain_timeout_stops_the_worker(api: FakeEventsServer, kube: AsyncKube) -> None:
    api.hold = asyncio.Event()  # the API server does not answer
    recorder = _on_loop(kube)
    recorder.record(
        POD, [EventText(NORMAL, "FilteringSucceed", "ok"), EventText(NORMAL, "BindingSucceed", "b")]
    )
    started = time.monotonic()
    await recorder.drain(timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert _worker_tasks() == []  # nothing left writing through a client that shutdown closes next
    assert recorder.dropped == 2 and recorder.posted == 0
    api.hold.set()
    recorder.record({**POD, "uid": "u-2"}, [EventText(NORMAL, "BindingSucceed", "ok")])
    await recorder.drain()
    assert recorder.posted == 1
