"""The event recorder: posting off the verbs' path, coalescing, dropping when full, drain."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

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
