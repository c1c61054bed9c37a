"""What the kube-scheduler stand-in writes through the API after an attempt: the pod's binding, the
``PodScheduled=False`` condition of a pod that does not fit, and the ``Scheduled`` / ``FailedScheduling``
Events, counted on one Event when they repeat, as client-go's recorder does.

The scheduling loop (``kube_scheduler.py``) decides; :class:`OutcomeWriter` tells the cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.log import get_logger
from services.common.reflector import object_key
from sim.local.kube_scheduler_config import DEFAULT_SCHEDULER
from sim.local.kube_scheduler_fit import list_or_empty, object_meta, object_spec

Obj = dict[str, Any]

log = get_logger("kube-scheduler")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read(response: Any) -> Any:
    try:
        data = response.data
    finally:
        response.release_conn()
    return json.loads(data) if data else None


def api_error_text(exc: ApiException) -> str:
    """The API server's ``Status`` message of a failed call, else its HTTP status and reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}"


@dataclass
class _Recorded:
    name: str
    message: str
    reason: str
    count: int


class OutcomeWriter:
    """Writes scheduling outcomes through ``core``; remembers the Events it created, to count repeats."""

    def __init__(self, core: client.CoreV1Api, instance: str) -> None:
        self.core = core
        self.instance = instance
        self._events: dict[tuple[str, str], _Recorded] = {}

    def forget_pod(self, uid: str) -> None:
        """Drops what was recorded for a deleted pod."""
        for recorded in [k for k in self._events if k[0] == uid]:
            del self._events[recorded]

    async def bind(self, pod: Obj, host: str) -> None:
        """Creates the pod's ``pods/binding`` to ``host`` (when no extender binds)."""
        md = object_meta(pod)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": host},
        }
        await asyncio.to_thread(
            lambda: _read(
                self.core.create_namespaced_pod_binding(
                    str(md.get("name")), str(md.get("namespace")), body, _preload_content=False
                )
            )
        )

    async def set_unschedulable(self, pod: Obj, reason: str, message: str) -> None:
        """Sets ``PodScheduled=False`` with ``reason`` and ``message``, unless the pod already says so."""
        status = pod.get("status")
        conditions = [
            c
            for c in list_or_empty(status.get("conditions") if isinstance(status, Mapping) else None)
            if isinstance(c, Mapping)
        ]
        current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if current is not None and (current.get("status"), current.get("reason"), current.get("message")) == (
            "False",
            reason,
            message,
        ):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": _now(),
        }
        body = {
            "status": {"conditions": [*(c for c in conditions if c.get("type") != "PodScheduled"), condition]}
        }
        md = object_meta(pod)
        try:
            await asyncio.to_thread(
                lambda: _read(
                    self.core.patch_namespaced_pod_status(
                        str(md.get("name")),
                        str(md.get("namespace")),
                        body,
                        _content_type="application/merge-patch+json",
                        _preload_content=False,
                    )
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod_condition_update_failed", pod=object_key(pod), error=api_error_text(exc))

    async def record(self, pod: Obj, event_type: str, reason: str, message: str, action: str) -> None:
        """Creates an Event on the pod; the same reason and message again bumps its count instead."""
        md = object_meta(pod)
        namespace, name, uid = str(md.get("namespace")), str(md.get("name")), str(md.get("uid") or "")
        component = str(object_spec(pod).get("schedulerName") or DEFAULT_SCHEDULER)
        now = _now()
        previous = self._events.get((uid, reason))
        if previous is not None and previous.message == message:
            previous.count += 1
            patch = {"count": previous.count, "lastTimestamp": now}
            try:
                await asyncio.to_thread(
                    lambda: _read(
                        self.core.patch_namespaced_event(
                            previous.name,
                            namespace,
                            patch,
                            _content_type="application/merge-patch+json",
                            _preload_content=False,
                        )
                    )
                )
                return
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("event_update_failed", pod=f"{namespace}/{name}", error=api_error_text(exc))
                    return
        event_name = f"{name}.{time.time_ns():x}"
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": name,
                "uid": uid,
                "resourceVersion": str(md.get("resourceVersion") or ""),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "action": action,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": f"{component}-{self.instance}",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await asyncio.to_thread(
                lambda: _read(self.core.create_namespaced_event(namespace, body, _preload_content=False))
            )
        except ApiException as exc:
            log.warning("event_create_failed", pod=f"{namespace}/{name}", error=api_error_text(exc))
            return
        self._events[(uid, reason)] = _Recorded(event_name, message, reason, 1)
