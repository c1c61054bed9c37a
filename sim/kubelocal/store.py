"""kube-local's object store: objects, the global resourceVersion counter, event history, watchers.

The store is owned by one asyncio event loop and every method is synchronous, so each call is
atomic with respect to every other request: writes never interleave, a list and the watch
registration that follows it see one consistent state, and no update is lost. Other threads must
not call it directly; go through HTTP or ``KubeLocalThread.call``.

Objects handed out are the stored dicts themselves: treat them as read-only and ``copy.deepcopy``
before changing anything. Every write stores a new dict.

Every committed write bumps the counter by one and appends exactly one event to the bounded
history, so events with ``resourceVersion > N`` can be replayed for a watch resuming at ``N`` as
long as ``N`` is not older than the oldest retained event and not in a lost range (resourceVersions
handed out before a crash but never made durable, see :meth:`Store.restore`).

Lists answer in (namespace, name) order. Each resource keeps its keys in that order (``_ResourceIndex``)
and indexes every object by label (key, value) and by the few fields in ``INDEXED_FIELDS``, so a list
with an equality label selector (``hami.io/vgpu-node=<node>``), an equality field selector
(``spec.nodeName=<node>``) or a namespace costs O(matching objects), not a sort of every object. The
index only narrows the candidates: every candidate is still checked against the full filter.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime as dt
import itertools
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.selectors import FieldSelector, LabelSelector
from sim.kubelocal import errors
from sim.kubelocal.resources import (
    ALL_RESOURCES,
    BY_KEY,
    NAMESPACES,
    SYSTEM_NAMESPACES,
    Obj,
    ResourceType,
    default_status_on_create,
    field_value,
)

STATE_FORMAT_VERSION = 1

# Field selectors answered from an index (when the resource supports them); others scan.
INDEXED_FIELDS: tuple[str, ...] = ("spec.nodeName",)

Key = tuple[str, str]


def now_timestamp() -> str:
    """RFC 3339 UTC with second precision, as ``metav1.Time`` serialises."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def meta(obj: Obj) -> dict[str, Any]:
    md = obj.get("metadata")
    if not isinstance(md, dict):
        md = {}
        obj["metadata"] = md
    return md


def object_key(obj: Obj) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return str(md.get("namespace") or ""), str(md.get("name") or "")


def encode_line(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


@dataclass(eq=False, slots=True)
class WatchEvent:
    """One committed write. ``old`` is the previous state for MODIFIED (selectors need it)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: ResourceType
    obj: Obj
    old: Obj | None = None
    _lines: dict[str, bytes] = field(default_factory=dict)

    def line(self, event_type: str) -> bytes:
        """The newline-terminated watch line, serialised once per type however many watchers."""
        cached = self._lines.get(event_type)
        if cached is None:
            cached = encode_line({"type": event_type, "object": self.obj})
            self._lines[event_type] = cached
        return cached


@dataclass(frozen=True)
class WatchFilter:
    resource: ResourceType
    namespace: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, obj: Obj) -> bool:
        md = obj.get("metadata") or {}
        if self.namespace is not None and (md.get("namespace") or "") != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(md.get("labels")):
            return False
        return self.fields.empty or self.fields.matches(lambda f: field_value(obj, f))

    def classify(self, event: WatchEvent) -> str | None:
        """The event type this watcher sees, or None.

        As in the apiserver, an object that starts matching the selectors is ADDED for this
        watcher and one that stops matching is DELETED (carrying its new state).
        """
        if event.resource is not self.resource:
            return None
        now = self.matches(event.obj)
        if event.type != "MODIFIED" or event.old is None:
            return event.type if now else None
        before = self.matches(event.old)
        if now:
            return "MODIFIED" if before else "ADDED"
        return "DELETED" if before else None


class WatchClosed(Exception):
    """The watcher was closed: ``reason`` is "overflow" (too slow) or "shutdown"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watcher:
    """One watch stream's bounded queue of serialised events.

    Writers only append (never wait); a watcher whose queue would exceed ``limit`` is closed with
    reason "overflow" and dropped, its client then resumes from the last event it saw.
    """

    def __init__(self, flt: WatchFilter, limit: int, initial: Iterable[bytes]) -> None:
        self.filter = flt
        self.limit = limit
        self.closed: str | None = None
        self._initial: deque[bytes] = deque(initial)
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()

    def offer(self, event: WatchEvent) -> bool:
        """Queues ``event`` if it concerns this watcher; False once the watcher is closed."""
        if self.closed is not None:
            return False
        event_type = self.filter.classify(event)
        if event_type is None:
            return True
        if len(self._queue) >= self.limit:
            self.close("overflow")
            return False
        self._queue.append(event.line(event_type))
        self._wake.set()
        return True

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake.set()

    @property
    def initial_drained(self) -> bool:
        return not self._initial

    @property
    def idle(self) -> bool:
        return not self._initial and not self._queue

    async def get(self, timeout: float | None) -> bytes | None:
        """The next line; None after ``timeout`` seconds without one; WatchClosed once closed."""
        while True:
            if self._initial:
                return self._initial.popleft()
            if self.closed is not None:
                raise WatchClosed(self.closed)
            if self._queue:
                return self._queue.popleft()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None


class _ResourceIndex:
    """One resource's objects: by key, the keys in sorted order, and label/field equality indexes."""

    __slots__ = ("by_field", "by_label", "fields", "objects", "order")

    def __init__(self, rt: ResourceType) -> None:
        self.objects: dict[Key, Obj] = {}
        self.order: list[Key] = []  # sorted
        self.fields: tuple[str, ...] = tuple(f for f in INDEXED_FIELDS if f in rt.field_selectors)
        self.by_label: dict[tuple[str, str], set[Key]] = {}
        self.by_field: dict[tuple[str, str], set[Key]] = {}

    def _terms(self, obj: Obj) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        labels = (obj.get("metadata") or {}).get("labels")
        label_terms = (
            [(k, v) for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)]
            if isinstance(labels, dict)
            else []
        )
        return label_terms, [(f, field_value(obj, f)) for f in self.fields]

    def _index(self, key: Key, obj: Obj) -> None:
        label_terms, field_terms = self._terms(obj)
        for term in label_terms:
            self.by_label.setdefault(term, set()).add(key)
        for term in field_terms:
            self.by_field.setdefault(term, set()).add(key)

    def _unindex(self, key: Key, obj: Obj) -> None:
        label_terms, field_terms = self._terms(obj)
        for table, terms in ((self.by_label, label_terms), (self.by_field, field_terms)):
            for term in terms:
                keys = table.get(term)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del table[term]

    def put(self, key: Key, obj: Obj) -> None:
        old = self.objects.get(key)
        if old is None:
            bisect.insort(self.order, key)
        else:
            self._unindex(key, old)
        self.objects[key] = obj
        self._index(key, obj)

    def remove(self, key: Key) -> None:
        old = self.objects.pop(key)
        self._unindex(key, old)
        i = bisect.bisect_left(self.order, key)
        del self.order[i]

    def candidates(self, flt: WatchFilter) -> Iterable[Key]:
        """Keys, in order, that may match ``flt`` (a superset of the matches)."""
        best: set[Key] | None = None
        for req in flt.labels.requirements:
            if req.operator not in ("=", "in"):
                continue
            found = _union(self.by_label.get((req.key, v)) for v in req.values)
            if best is None or len(found) < len(best):
                best = found
        for freq in flt.fields.requirements:
            if freq.operator != "=" or freq.field not in self.fields:
                continue
            found = self.by_field.get((freq.field, freq.value)) or set()
            if best is None or len(found) < len(best):
                best = found
        if best is not None:
            return sorted(best)
        if flt.namespace is not None:
            start = bisect.bisect_left(self.order, (flt.namespace, ""))
            end = bisect.bisect_left(self.order, (flt.namespace + "\0", ""))
            return self.order[start:end]
        return self.order


def _union(sets: Iterable[set[Key] | None]) -> set[Key]:
    found: set[Key] = set()
    for keys in sets:
        if keys:
            found |= keys
    return found


class Store:
    def __init__(self, *, history_size: int = 10_000, watch_queue_size: int = 1_000) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.history_size = history_size
        self.watch_queue_size = watch_queue_size
        self._objects: dict[str, _ResourceIndex] = {rt.key: _ResourceIndex(rt) for rt in ALL_RESOURCES}
        self._rv = 0
        self._history: deque[WatchEvent] = deque(maxlen=history_size)
        self._history_start = 0  # events with rv > this are all in the history
        # (after, upto]: resourceVersions a crash lost; a watcher that saw one must re-list.
        self._lost: list[tuple[int, int]] = []
        #: Writes beyond this resourceVersion are refused (429) until persistence raises it, so no
        #: resourceVersion is ever handed out that a restart could hand out again (None: no limit).
        self.rv_ceiling: int | None = None
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[WatchEvent], None]] = []
        self._bootstrap()

    # --- reads -----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    @property
    def oldest_resumable(self) -> int:
        """The oldest resourceVersion a watch may resume from."""
        return self._history_start

    @property
    def lost_ranges(self) -> list[tuple[int, int]]:
        return list(self._lost)

    @property
    def history(self) -> list[WatchEvent]:
        return list(self._history)

    def all_objects(self) -> Iterable[tuple[ResourceType, Obj]]:
        for rt in ALL_RESOURCES:
            for obj in self._objects[rt.key].objects.values():
                yield rt, obj

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._objects[rt.key].objects.get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        return obj

    def try_get(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        return self._objects[rt.key].objects.get((namespace if rt.namespaced else "", name))

    def list_objects(self, flt: WatchFilter) -> tuple[list[Obj], str]:
        index = self._objects[flt.resource.key]
        objects = index.objects
        items = [obj for obj in map(objects.__getitem__, index.candidates(flt)) if flt.matches(obj)]
        return items, self.resource_version

    def namespace_exists(self, namespace: str) -> bool:
        return ("", namespace) in self._objects[NAMESPACES.key].objects

    # --- writes ----------------------------------------------------------------------------------

    def create(self, rt: ResourceType, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Stores a fully prepared new object (name, uid, timestamps set by the caller)."""
        namespace, name = object_key(obj)
        if rt.namespaced and not self.namespace_exists(namespace):
            raise errors.not_found("namespaces", namespace)
        key = (namespace if rt.namespaced else "", name)
        if key in self._objects[rt.key].objects:
            raise errors.already_exists(rt.plural, name, rt.group)
        if dry_run:
            return obj
        meta(obj)["resourceVersion"] = str(self._next_rv())
        self._objects[rt.key].put(key, obj)
        self._emit(WatchEvent(self._rv, "ADDED", rt, obj))
        return obj

    def update(self, rt: ResourceType, obj: Obj, *, expected_rv: str, dry_run: bool = False) -> Obj:
        """Replaces the object if its current resourceVersion is still ``expected_rv``.

        An object marked for deletion whose last finalizer is gone is deleted instead.
        """
        namespace, name = object_key(obj)
        current = self.get(rt, namespace, name)
        if meta(current).get("resourceVersion") != expected_rv:
            raise errors.stale(rt.plural, name, rt.group)
        md = meta(obj)
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            return self._remove(rt, current, obj, dry_run=dry_run)
        if dry_run:
            return obj
        md["resourceVersion"] = str(self._next_rv())
        self._objects[rt.key].put((namespace if rt.namespaced else "", name), obj)
        self._emit(WatchEvent(self._rv, "MODIFIED", rt, obj, current))
        return obj

    def delete(
        self, rt: ResourceType, namespace: str, name: str, *, expected_rv: str | None, dry_run: bool = False
    ) -> Obj:
        """Removes the object (checking ``expected_rv`` when given) and returns its final state."""
        current = self.get(rt, namespace, name)
        if expected_rv is not None and meta(current).get("resourceVersion") != expected_rv:
            raise errors.stale(rt.plural, name, rt.group)
        return self._remove(rt, current, copy.deepcopy(current), dry_run=dry_run)

    def _remove(self, rt: ResourceType, current: Obj, final: Obj, *, dry_run: bool) -> Obj:
        if dry_run:
            return final
        meta(final)["resourceVersion"] = str(self._next_rv())
        namespace, name = object_key(current)
        self._objects[rt.key].remove((namespace if rt.namespaced else "", name))
        self._emit(WatchEvent(self._rv, "DELETED", rt, final))
        return final

    def _next_rv(self) -> int:
        if self.rv_ceiling is not None and self._rv >= self.rv_ceiling:
            # Only reachable when the disk has fallen thousands of writes behind.
            raise errors.ApiError(429, "TooManyRequests", "storage is behind, retry the write")
        self._rv += 1
        return self._rv

    def namespaced_objects(self, namespace: str) -> list[tuple[ResourceType, Obj]]:
        return [
            (rt, obj)
            for rt in ALL_RESOURCES
            if rt.namespaced
            for obj in self.list_objects(WatchFilter(rt, namespace))[0]
        ]

    def _emit(self, event: WatchEvent) -> None:
        if len(self._history) == self._history.maxlen:
            self._history_start = self._history[0].rv
        self._history.append(event)
        for watcher in list(self._watchers):
            if not watcher.offer(event):
                self._watchers.discard(watcher)
        for listener in self._listeners:
            listener(event)

    # --- watch -----------------------------------------------------------------------------------

    def watch(self, flt: WatchFilter, since: int | None) -> Watcher:
        """Registers a watcher. ``since`` None: ADDED for every current object, then live events;
        otherwise every event after ``since`` from the history, then live events.

        Raises the 410 Expired error when ``since`` predates the retained history.
        """
        if since is None:
            items, _ = self.list_objects(flt)
            initial = [encode_line({"type": "ADDED", "object": obj}) for obj in items]
        else:
            if since < self._history_start or any(lo < since <= hi for lo, hi in self._lost):
                raise errors.expired(since, self._history_start)
            if since > self._rv:
                raise errors.ApiError(
                    504, "Timeout", f"Too large resource version: {since}, current: {self._rv}"
                )
            # Counted from the newest event: cheap for the usual resume near the head, and right
            # when the history skips a lost range.
            skip = len(self._history)
            for event in reversed(self._history):
                if event.rv <= since:
                    break
                skip -= 1
            initial = []
            for event in itertools.islice(self._history, skip, None):
                event_type = flt.classify(event)
                if event_type is not None:
                    initial.append(event.line(event_type))
        watcher = Watcher(flt, self.watch_queue_size, initial)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self, reason: str = "shutdown") -> None:
        for watcher in list(self._watchers):
            watcher.close(reason)
        self._watchers.clear()

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def add_listener(self, listener: Callable[[WatchEvent], None]) -> None:
        """``listener(event)`` runs after every committed write (persistence hooks in here)."""
        self._listeners.append(listener)

    # --- persistence -----------------------------------------------------------------------------

    def dump_state(self) -> bytes:
        state = {
            "kind": "KubeLocalState",
            "version": STATE_FORMAT_VERSION,
            "resourceVersion": self.resource_version,
            "objects": {key: list(idx.objects.values()) for key, idx in self._objects.items() if idx.objects},
        }
        return json.dumps(state, separators=(",", ":")).encode()

    def load_state(self, data: bytes) -> None:
        """Replaces the contents with a :meth:`dump_state` snapshot; ValueError if malformed.

        The event history starts empty: watches resuming from before the snapshot get 410.
        """
        state = json.loads(data)
        if not isinstance(state, dict) or state.get("kind") != "KubeLocalState":
            raise ValueError("not a kube-local state document")
        if state.get("version") != STATE_FORMAT_VERSION:
            raise ValueError(f"unsupported state format version {state.get('version')!r}")
        rv = int(state["resourceVersion"])
        objects: dict[str, _ResourceIndex] = {rt.key: _ResourceIndex(rt) for rt in ALL_RESOURCES}
        raw = state.get("objects")
        if not isinstance(raw, dict):
            raise ValueError("'objects' must be a map")
        for key, items in raw.items():
            rt = BY_KEY.get(key)
            if rt is None:
                raise ValueError(f"unknown resource {key!r}")
            if not isinstance(items, list):
                raise ValueError(f"objects of {key!r} must be a list")
            for obj in items:
                if not isinstance(obj, dict) or not object_key(obj)[1]:
                    raise ValueError(f"malformed {rt.kind} entry")
                namespace, name = object_key(obj)
                objects[key].put((namespace if rt.namespaced else "", name), obj)
                # Never hand out a resourceVersion twice, even from a hand-edited file.
                rv = max(rv, int(obj["metadata"].get("resourceVersion") or 0))
        self.close_watchers("reset")
        self._objects = objects
        self._rv = rv
        self._history.clear()
        self._history_start = rv
        self._lost = []
        self._bootstrap()

    def restore(
        self,
        objects: Iterable[tuple[ResourceType, Obj]],
        events: Iterable[WatchEvent],
        rv: int,
        lost: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Replaces the contents with persisted state: the objects, the retained event history (oldest
        first) and the counter. ``lost`` ranges ``(after, upto]`` answer 410 to a watch resuming in them."""
        indexes: dict[str, _ResourceIndex] = {rt.key: _ResourceIndex(rt) for rt in ALL_RESOURCES}
        for rt, obj in objects:
            namespace, name = object_key(obj)
            indexes[rt.key].put((namespace if rt.namespaced else "", name), obj)
        self.close_watchers("reset")
        self._objects = indexes
        self._history.clear()
        self._history.extend(events)
        self._rv = max(rv, self._history[-1].rv if self._history else 0)
        self._history_start = self._history[0].rv - 1 if self._history else self._rv
        self._lost = [(lo, hi) for lo, hi in lost if hi > self._history_start]
        self._bootstrap()

    def _bootstrap(self) -> None:
        for name in SYSTEM_NAMESPACES:
            if not self.namespace_exists(name):
                ns: Obj = {
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "uid": new_uid(), "creationTimestamp": now_timestamp()},
                    "spec": {},
                }
                default_status_on_create(NAMESPACES, ns)
                self.create(NAMESPACES, ns)
