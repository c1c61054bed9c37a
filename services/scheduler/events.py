"""Kubernetes events on pods (spec §3.11), posted off the event loop; a failure is only logged."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from services.common.kube import raw_json
from services.common.log import get_logger
from services.scheduler.filtering import EventText
from services.scheduler.offload import offload

__all__ = ["EventRecorder", "event_body"]

log = get_logger(__name__)


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


class EventRecorder:
    """Posts events in the background; `drain()` waits for the ones still in flight (shutdown, tests)."""

    def __init__(
        self,
        core: client.CoreV1Api | None,
        component: str,
        *,
        enabled: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._core = core
        self._component = component
        self._enabled = enabled and core is not None
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, pod: Mapping[str, str], events: Iterable[EventText]) -> None:
        """Queue `events` about `pod`; returns at once."""
        if not self._enabled:
            return
        for event in events:
            body = event_body(pod, event, self._component, self._clock(), secrets.token_hex(8))
            task = asyncio.get_running_loop().create_task(self._post(body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, body: dict[str, Any]) -> None:
        core = self._core
        assert core is not None
        namespace = body["metadata"]["namespace"]
        payload: Any = body
        try:
            await offload(raw_json, core.create_namespaced_event, namespace, payload)
        except Exception as exc:  # events are best effort: never let one break a verb
            log.warning(
                "event_post_failed",
                pod=f"{namespace}/{body['involvedObject']['name']}",
                reason=body["reason"],
                error=str(exc),
            )

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
