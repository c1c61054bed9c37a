"""The node lock `hami.io/mutex.lock` (docs/hami-wire.md#node-lock): pure decisions plus the API calls that
apply them.

The value is `<RFC3339 UTC>,<namespace>,<pod name>` (legacy: the bare time). The lock is taken with a merge
patch carrying the node's `metadata.resourceVersion`, so two schedulers that read the same free node cannot
both win: the second patch is answered 409 and re-reads. A lock is taken over when it is older than the TTL,
when its value cannot be parsed (HAMi would wedge the node until an operator edits it), or when its owner pod
no longer needs it: gone, terminating, finished, or already through Allocate (`hami.io/bind-phase`
success/failed, the lock leak of HAMi#2214). A lock held by another live pod is waited for, polling with
backoff until the bind's deadline, instead of failing at once (HAMi#1367, #1655): the device plugin releases
it in Allocate.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common import wire
from services.common.codecs import WireFormatError, encode_node_lock, parse_node_lock
from services.common.kube import KUBE_ERRORS, core_path
from services.common.kube_async import AsyncKube
from services.common.log import get_logger
from services.common.model import NodeLock

__all__ = [
    "LockError",
    "LockInspection",
    "LockVerdict",
    "NodeLocks",
    "expired_lock_age",
    "inspect_lock",
    "lock_value",
    "owned_by",
    "owner_release_reason",
]

log = get_logger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
# Retries of a lock write that failed for another reason than contention (HAMi: 5 steps, 100 ms, x2, jitter).
_WRITE_RETRIES: Final = 5
_WRITE_BACKOFF: Final = 0.1


def utc_now() -> datetime:
    return datetime.now(UTC)


class LockVerdict(enum.Enum):
    FREE = "free"  # no lock: take it
    MINE = "mine"  # already held by this pod
    EXPIRED = "expired"  # older than the TTL: take it over
    MALFORMED = "malformed"  # unparsable value: take it over
    HELD = "held"  # held by another pod (or a legacy ownerless lock) within the TTL


@dataclass(frozen=True, slots=True)
class LockInspection:
    verdict: LockVerdict
    lock: NodeLock | None = None
    detail: str = ""

    @property
    def takeable(self) -> bool:
        return self.verdict in (LockVerdict.FREE, LockVerdict.EXPIRED, LockVerdict.MALFORMED)


def lock_value(namespace: str, name: str, now: datetime) -> str:
    """The value this pod writes: `<RFC3339>,<ns>,<name>` (HAMi's format, whole seconds, UTC)."""
    return encode_node_lock(NodeLock(now, namespace, name))


def owned_by(value: str | None, namespace: str, name: str) -> bool:
    """HAMi's ownership test for release: the value ends with `,<ns>,<name>`."""
    return value is not None and value.endswith(f",{namespace},{name}")


def inspect_lock(
    value: str | None, namespace: str, name: str, now: datetime, ttl: timedelta
) -> LockInspection:
    """What the lock annotation `value` means for pod `namespace/name` at `now`."""
    if value is None or value == "":
        return LockInspection(LockVerdict.FREE)
    try:
        lock = parse_node_lock(value)
    except WireFormatError as exc:
        return LockInspection(LockVerdict.MALFORMED, detail=str(exc))
    if lock.held_by(namespace, name):
        return LockInspection(LockVerdict.MINE, lock)
    if lock.is_expired(now, ttl):
        age = (now - lock.acquired_at).total_seconds()
        return LockInspection(
            LockVerdict.EXPIRED, lock, f"lock is {age:.0f}s old (ttl {ttl.total_seconds():g}s)"
        )
    owner = "a legacy ownerless lock" if lock.is_legacy else f"pod {lock.namespace}/{lock.name}"
    return LockInspection(LockVerdict.HELD, lock, f"held by {owner}")


def expired_lock_age(value: str | None, now: datetime, ttl: timedelta) -> float | None:
    """The age in seconds of lock `value` when it is past the TTL (whoever holds it), else None.

    Such a lock is dead: any bind would take it over. The leader clears it so that it does not sit on the node
    until the next bind there (its owner may have been rescheduled elsewhere after a scheduler crash)."""
    if not value:
        return None
    try:
        lock = parse_node_lock(value)
    except WireFormatError:
        return None  # an acquire takes it over, naming why; a sweep leaves what it cannot read alone
    return (now - lock.acquired_at).total_seconds() if lock.is_expired(now, ttl) else None


_FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed"})
_ALLOCATED_PHASES: Final = frozenset({wire.BindPhase.SUCCESS.value, wire.BindPhase.FAILED.value})


def owner_release_reason(owner: Mapping[str, Any] | None) -> str | None:
    """Why the lock owner no longer needs the lock (its lock is dangling), or None while it still may."""
    if owner is None:
        return "owner pod no longer exists"
    metadata = _mapping(owner.get("metadata"))
    status = _mapping(owner.get("status"))
    annotations = _mapping(metadata.get("annotations"))
    if metadata.get("deletionTimestamp"):
        return "owner pod is terminating"
    if status.get("phase") in _FINISHED_PHASES:
        return f"owner pod has finished ({status.get('phase')})"
    phase = annotations.get(wire.BIND_PHASE)
    if phase in _ALLOCATED_PHASES:
        return f"owner pod already went through Allocate (bind-phase {phase})"
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class LockError(RuntimeError):
    """The node lock could not be taken; the message is the bind error kube-scheduler sees."""


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _resource_version(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    rv = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return rv if isinstance(rv, str) else ""


_TRANSIENT = KUBE_ERRORS


class NodeLocks:
    """Takes and releases `hami.io/mutex.lock` through the API; every call runs off the event loop."""

    def __init__(
        self,
        core: client.CoreV1Api,
        *,
        ttl_seconds: float,
        clock: Callable[[], datetime] = utc_now,
        poll_initial: float = 0.02,
        poll_max: float = 0.25,
        node_view: Callable[[str], tuple[str | None, str] | None] | None = None,
        kube: AsyncKube | None = None,
    ) -> None:
        # The calls run on the event loop (`AsyncKube`), configured like the official client `core`.
        self._http = kube if kube is not None else AsyncKube(core.api_client.configuration)
        self._own_http = kube is None
        # The watch cache's (lock value, resourceVersion) of a node: the first attempt of an acquire decides
        # from it and writes with its resourceVersion, saving a GET per bind; a stale view only costs the
        # 409 that sends the next attempt to the API.
        self._node_view = node_view
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._poll_initial = poll_initial
        # node -> the resourceVersion of the lock this process last wrote there (the write's place in the API
        # server's order of changes; the binder pops it right after `acquire`)
        self.written_versions: dict[str, str] = {}
        self._poll_max = poll_max

    # --- raw API calls (on the event loop) ---------------------------------------------------------------

    async def _read_node(self, node: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._http.request("GET", core_path("nodes", node))
        return data

    async def _read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._http.request(
                "GET", core_path("pods", name, namespace=namespace)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return data

    async def _write(self, node: str, value: str | None, resource_version: str) -> str:
        """The conditional write; returns the node's resourceVersion after it ("": none in the answer)."""
        body = {"metadata": {"annotations": {wire.NODE_LOCK: value}, "resourceVersion": resource_version}}
        answer = await self._http.request(
            "PATCH", core_path("nodes", node), body=body, content_type=MERGE_PATCH
        )
        return _resource_version(answer) if isinstance(answer, dict) else ""

    async def close(self) -> None:
        """Close the HTTP session this instance made for itself (none when the caller handed one in)."""
        if self._own_http:
            await self._http.close()

    # --- protocol -------------------------------------------------------------------------------------------

    async def acquire(
        self, node: str, namespace: str, name: str, *, wait_seconds: float, started: float | None = None
    ) -> bool:
        """Take the lock for pod `namespace/name`, waiting while another live pod holds it until
        `wait_seconds` after `started` (a `time.monotonic()` value; default now). True when this call wrote
        the lock, False when the pod already held it (an earlier bind of the same pod). Raises `LockError`
        (contention timeout, node missing, API failing)."""
        deadline = (time.monotonic() if started is None else started) + wait_seconds
        delay = self._poll_initial
        failures = 0
        view = self._node_view(node) if self._node_view is not None else None
        while True:
            try:
                from_view = view is not None
                if view is not None:
                    value, resource_version = view
                    view = None
                else:
                    obj = await self._read_node(node)
                    value, resource_version = _annotations(obj).get(wire.NODE_LOCK), _resource_version(obj)
                state = inspect_lock(
                    value if isinstance(value, str) else None, namespace, name, self._clock(), self._ttl
                )
                if from_view and not state.takeable:
                    continue  # only a write proves the view current: read before waiting on it or trusting it
                if state.verdict is LockVerdict.MINE:
                    return False
                take = state.takeable
                why = state.detail
                if not take and state.lock is not None and not state.lock.is_legacy:
                    assert state.lock.namespace is not None and state.lock.name is not None
                    owner = await self._read_pod(state.lock.namespace, state.lock.name)
                    reason = owner_release_reason(owner)
                    if reason is not None:
                        take, why = True, f"{state.detail}; {reason}"
                if take:
                    if state.verdict is not LockVerdict.FREE:
                        log.info("node_lock_takeover", node=node, previous=value, why=why)
                    try:
                        self.written_versions[node] = await self._write(
                            node, lock_value(namespace, name, self._clock()), resource_version
                        )
                        return True
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        # Someone changed the node between our read and write: read again at once.
                        continue
            except ApiException as exc:
                if exc.status == 404:
                    raise LockError(f"failed to get node {node}: not found") from None
                failures += 1
                if failures >= _WRITE_RETRIES:
                    raise LockError(
                        f"failed to lock node {node}: API error {exc.status} {exc.reason}"
                    ) from None
                await asyncio.sleep(_WRITE_BACKOFF * 2 ** (failures - 1) * (0.5 + random.random() / 2))
                continue
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                failures += 1
                if failures >= _WRITE_RETRIES:
                    raise LockError(f"failed to lock node {node}: {exc}") from None
                await asyncio.sleep(_WRITE_BACKOFF * 2 ** (failures - 1) * (0.5 + random.random() / 2))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if wait_seconds <= 0:
                    raise LockError(
                        f"node {node} has been locked within {self._ttl.total_seconds():g}s "
                        f"({why}): node lock contention"
                    )
                raise LockError(
                    f"timed out after {wait_seconds:g}s waiting for node {node} to be unlocked "
                    f"({why}): node lock contention"
                )
            await asyncio.sleep(min(delay * (0.5 + random.random()), remaining))
            delay = min(delay * 2, self._poll_max)

    async def clear_expired(self, node: str, value: str, resource_version: str) -> bool:
        """Remove lock `value` from `node` if it is past the TTL and still the node's lock at
        `resource_version` (a conditional write: a 409 means someone changed the node, so it is left alone).
        True when removed."""
        age = expired_lock_age(value, self._clock(), self._ttl)
        if age is None:
            return False
        try:
            await self._write(node, None, resource_version)
        except ApiException as exc:
            if exc.status not in (404, 409):
                error = f"{exc.status} {exc.reason}"
                log.warning("node_lock_clear_failed", node=node, lock=value, error=error)
            return False
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("node_lock_clear_failed", node=node, lock=value, error=str(exc))
            return False
        log.info("node_lock_expired_cleared", node=node, lock=value, age_s=round(age))
        return True

    async def release(self, node: str, namespace: str, name: str) -> bool:
        """Remove the lock if pod `namespace/name` holds it (never someone else's); True when removed."""
        for attempt in range(_WRITE_RETRIES):
            try:
                obj = await self._read_node(node)
                value = _annotations(obj).get(wire.NODE_LOCK)
                if not owned_by(value if isinstance(value, str) else None, namespace, name):
                    return False
                await self._write(node, None, _resource_version(obj))
                log.debug("node_lock_released", node=node, pod=f"{namespace}/{name}")
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409 and attempt == _WRITE_RETRIES - 1:
                    log.warning("node_lock_release_failed", node=node, error=f"{exc.status} {exc.reason}")
                    return False
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt == _WRITE_RETRIES - 1:
                    log.warning("node_lock_release_failed", node=node, error=str(exc))
                    return False
            await asyncio.sleep(_WRITE_BACKOFF * 2**attempt * (0.5 + random.random() / 2))
        return False
