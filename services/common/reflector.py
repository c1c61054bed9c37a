"""A list+watch cache of one kind of Kubernetes object, kept as plain JSON dicts.

``Reflector`` runs in its own daemon thread against any list method of the official client
(``CoreV1Api.list_pod_for_all_namespaces``, ``list_node``, ``list_resource_quota_for_all_namespaces``,
``CoordinationV1Api.list_namespaced_lease`` with ``list_kwargs={"namespace": ...}``...):

1. LIST (paged) to get every object and the collection's resourceVersion;
2. WATCH from that resourceVersion, applying ADDED / MODIFIED / DELETED to the store; BOOKMARKs only move the
   resourceVersion forward;
3. when the server ends the watch (``timeoutSeconds``) the watch is re-opened from the last resourceVersion
   seen; on a connection error it is re-opened the same way after an exponential backoff; when the server
   answers 410 Gone (the resourceVersion fell out of its history) everything is LISTed again;
4. every ``resync_period`` seconds the reflector LISTs again anyway and reconciles (repairs any drift).

Responses are read raw (``_preload_content=False``) and decoded with ``orjson`` (several times faster than
``json`` on watch events): decoding into the client's model classes is far slower and not needed by callers
that read a few fields.

Callbacks: ``on_event(type, obj)`` is called **in the reflector's thread**, after the store has been updated,
with ``type`` one of ``"ADDED"``, ``"MODIFIED"``, ``"DELETED"`` (for DELETED, ``obj`` is the last state
seen). A (re)LIST is reconciled against the store and reported the same way: objects that appeared are
ADDED, whose resourceVersion changed are MODIFIED, and that vanished are DELETED; unchanged objects are not
reported. Callbacks must be quick and must not block (they hold up the watch); an exception raised by a
callback is logged and swallowed. Objects handed out (by callbacks or ``get``/``objects``) are shared with the
store: treat them as read-only.

Usage::

    pods = Reflector(core.list_pod_for_all_namespaces, name="pods", label_selector="hami.io/vgpu-node")
    pods.start()
    pods.wait_synced(10)
    pods.get("default/gpu-pod"); pods.objects()
    pods.stop()
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import urllib3
from kubernetes.client.exceptions import ApiException

from services.common.log import get_logger

__all__ = [
    "EventHandler",
    "ListFunc",
    "Reflector",
    "ReflectorStats",
    "object_key",
]

Obj = dict[str, Any]
ListFunc = Callable[..., Any]
EventHandler = Callable[[str, Obj], None]

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
_OBJECT_EVENTS: Final = frozenset({ADDED, MODIFIED, DELETED})

_GONE: Final = 410


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for a namespaced object, ``name`` for a cluster-scoped one (client-go's key)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    name = name if isinstance(name, str) else ""
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def _resource_version(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        rv = metadata.get("resourceVersion")
        if isinstance(rv, str):
            return rv
    return ""


class _Gone(Exception):
    """The server no longer has the history to resume from our resourceVersion: LIST again."""


class _Relist(Exception):
    """Something other than a connection problem went wrong: LIST again after a backoff."""


class _Stopped(Exception):
    """stop() was called."""


@dataclass
class ReflectorStats:
    """Counters for logs, metrics and tests."""

    lists: int = 0  # completed LISTs (initial, after 410, resync, after errors)
    watches: int = 0  # WATCH requests opened
    events: int = 0  # watch events applied (bookmarks excluded)
    gone: int = 0  # 410 answers (each leads to a LIST)
    errors: int = 0  # connection and other errors (each followed by a backoff)


class Reflector:
    """List+watch cache of one resource, fed by a daemon thread; see the module docstring."""

    def __init__(
        self,
        list_func: ListFunc,
        *,
        name: str,
        list_kwargs: Mapping[str, Any] | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_event: EventHandler | None = None,
        transform: Callable[[Obj], Obj] | None = None,
        resync_period: float | None = 3600.0,
        watch_timeout: float = 300.0,
        page_size: int | None = 500,
        request_timeout: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        """``list_func`` is a list method of the official client; ``list_kwargs`` its fixed arguments
        (e.g. ``{"namespace": "kube-system"}``). ``resync_period`` (seconds, None or 0 = never) is how often
        everything is LISTed again; ``watch_timeout`` is the server-side watch timeout, randomised within
        [t, 2t) so many reflectors do not re-watch in step; ``page_size`` is the LIST page size (None = one
        page); ``request_timeout`` bounds a LIST and the connection set-up of a WATCH; ``transform`` maps each
        object before it is stored and handed to the callbacks (keep only the fields the caller reads)."""
        if watch_timeout <= 0:
            raise ValueError("watch_timeout must be positive")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.name = name
        self._list_func = list_func
        self._list_kwargs = dict(list_kwargs or {})
        if label_selector:
            self._list_kwargs["label_selector"] = label_selector
        if field_selector:
            self._list_kwargs["field_selector"] = field_selector
        self._handlers: list[EventHandler] = [on_event] if on_event is not None else []
        # Applied to every listed or watched object before it is stored or handed out (client-go's
        # SetTransform): a caller that reads a few fields keeps only those in memory.
        self._transform = transform
        self._resync_period = resync_period if resync_period and resync_period > 0 else None
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

        self._lock = threading.Lock()
        self._items: dict[str, Obj] = {}
        self._resource_version = ""
        # The resourceVersion through which the handlers have returned from every change (set after the
        # dispatch, in this reflector's thread; a str assignment, atomic for readers in other threads).
        self._applied = ""
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._active: Any = None  # the urllib3 response being read, so stop() can shut its socket
        self._thread: threading.Thread | None = None
        self.stats = ReflectorStats()
        self._log = get_logger("reflector").bind(reflector=name)

    # --- public API ------------------------------------------------------------------------------

    def add_handler(self, handler: EventHandler) -> None:
        """Another ``on_event`` callback; add handlers before ``start()``."""
        if self._thread is not None:
            raise RuntimeError(f"reflector {self.name}: add handlers before start()")
        self._handlers.append(handler)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"reflector {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the watch (its socket is shut down, so this does not wait for the server) and joins."""
        with self._lock:
            self._stopping.set()
            active = self._active
        if active is not None:
            _shutdown_response(active)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                self._log.warning("reflector_stop_timeout", timeout=timeout)

    def has_synced(self) -> bool:
        """True once the first LIST is in the store and its events were handled (and forever after)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until synced; False after ``timeout`` seconds or once the reflector is stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._synced.is_set():
            if self._stopping.is_set():
                return False
            step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if step <= 0:
                return False
            self._synced.wait(step)
        return True

    @property
    def resource_version(self) -> str:
        """The resourceVersion the next watch resumes from."""
        with self._lock:
            return self._resource_version

    @property
    def applied_resource_version(self) -> str:
        """The resourceVersion through which the handlers have seen every change of the watched objects (""
        before the first LIST): whatever the handlers built reflects every write to those objects at or below
        it, as the API server delivers a watch's events in resourceVersion order."""
        return self._applied

    def get(self, key: str) -> Obj | None:
        """The object stored under ``namespace/name`` (``name`` for cluster-scoped kinds)."""
        with self._lock:
            return self._items.get(key)

    def objects(self) -> list[Obj]:
        """A snapshot of every stored object."""
        with self._lock:
            return list(self._items.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        self._log.debug("reflector_started", selectors=self._selectors())
        failures = 0
        need_list = True
        next_resync: float | None = None
        while not self._stopping.is_set():
            error: str | None = None
            try:
                if need_list:
                    self._list_and_replace()
                    need_list = False
                    failures = 0
                    next_resync = time.monotonic() + self._resync_period if self._resync_period else None
                self._watch_until_done(next_resync)
                failures = 0
                if next_resync is not None and time.monotonic() >= next_resync:
                    self._log.debug("reflector_resync")
                    need_list = True
            except _Stopped:
                break
            except _Gone:
                self.stats.gone += 1
                self._log.info("reflector_relist", why="resource version expired (410 Gone)")
                need_list = True
            except _Relist as exc:
                need_list = True
                error = str(exc)
            except ApiException as exc:
                need_list = True
                if exc.status == _GONE:
                    self.stats.gone += 1
                    self._log.info("reflector_relist", why="resource version expired (HTTP 410)")
                else:
                    error = f"API error {exc.status} {exc.reason}"
            except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
                # Connection refused/reset, read timeout, truncated chunk...: resume the watch from the last
                # resourceVersion (or retry the LIST that failed) after a backoff.
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # never let the thread die: a cache that stops updating is worse
                need_list = True
                error = f"{type(exc).__name__}: {exc}"
                if not self._stopping.is_set():
                    self._log.exception("reflector_unexpected_error")
            if error is not None and not self._stopping.is_set():
                self.stats.errors += 1
                failures += 1
                self._backoff(failures, error)
        self._log.debug("reflector_stopped")

    def _selectors(self) -> dict[str, Any]:
        return {k: v for k, v in self._list_kwargs.items() if k in ("label_selector", "field_selector")}

    def _backoff(self, failures: int, why: str) -> None:
        """Waits before the next attempt (returns early when stop() is called)."""
        base = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 30))
        delay = base * (0.5 + random.random() / 2)
        level = self._log.warning if failures in (1, 5) or failures % 20 == 0 else self._log.debug
        level("reflector_retry", error=why, failures=failures, retry_in_s=round(delay, 3))
        self._stopping.wait(delay)

    # --- LIST --------------------------------------------------------------------------------------

    def _list_and_replace(self) -> None:
        items: list[Obj] = []
        rv = ""
        continue_token: str | None = None
        while True:
            kwargs = dict(self._list_kwargs)
            if self._page_size:
                kwargs["limit"] = self._page_size
            if continue_token:
                kwargs["_continue"] = continue_token
            try:
                page = self._read_json(
                    self._list_func(_preload_content=False, _request_timeout=self._request_timeout, **kwargs)
                )
            except ApiException as exc:
                if exc.status == _GONE and continue_token:
                    # The continue token expired mid-way: start the whole LIST again.
                    items, continue_token = [], None
                    continue
                raise
            if self._stopping.is_set():
                raise _Stopped
            if not isinstance(page, dict) or not isinstance(page.get("items", []), list):
                raise _Relist("LIST answered something that is not a list object")
            page_items = [item for item in page.get("items") or [] if isinstance(item, dict)]
            items.extend(map(self._transform, page_items) if self._transform is not None else page_items)
            metadata = page.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            rv = str(metadata.get("resourceVersion") or rv)
            continue_token = metadata.get("continue") or None
            if not continue_token:
                break
        events = self._replace(items, rv)
        self.stats.lists += 1
        self._log.debug("reflector_listed", items=len(items), resource_version=rv, changes=len(events))
        for event_type, obj in events:
            self._dispatch(event_type, obj)
        if rv:
            self._applied = rv
        if not self._synced.is_set():
            # Synced means the handlers have seen every listed object too: caches built from events are whole.
            self._synced.set()
            self._log.info("reflector_synced", items=len(items), resource_version=rv)

    def _replace(self, items: list[Obj], rv: str) -> list[tuple[str, Obj]]:
        fresh = {object_key(item): item for item in items}
        events: list[tuple[str, Obj]] = []
        with self._lock:
            old = self._items
            for key, obj in fresh.items():
                previous = old.get(key)
                if previous is None:
                    events.append((ADDED, obj))
                elif _resource_version(previous) != _resource_version(obj) or not _resource_version(obj):
                    events.append((MODIFIED, obj))
            events.extend((DELETED, obj) for key, obj in old.items() if key not in fresh)
            self._items = fresh
            self._resource_version = rv
        return events

    # --- WATCH -------------------------------------------------------------------------------------

    def _watch_until_done(self, next_resync: float | None) -> None:
        """One WATCH request, applied until the server ends it; raises on errors."""
        timeout = self._watch_timeout * (1 + random.random())
        if next_resync is not None:
            timeout = min(timeout, max(1.0, next_resync - time.monotonic()))
        timeout_seconds = max(1, int(timeout))
        with self._lock:
            rv = self._resource_version
        response = self._list_func(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            # The read timeout is only a safety net: the server ends the watch after timeout_seconds.
            _request_timeout=(self._request_timeout, timeout_seconds + 60),
            **self._list_kwargs,
        )
        with self._lock:
            if self._stopping.is_set():
                _finish(response, reusable=False)
                raise _Stopped
            self._active = response
        self.stats.watches += 1
        completed = False
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    raise _Stopped
                self._apply_line(line)
            completed = True
        finally:
            with self._lock:
                self._active = None
            _finish(response, reusable=completed and not self._stopping.is_set())
        if self._stopping.is_set():
            raise _Stopped

    def _apply_line(self, line: bytes) -> None:
        try:
            event = orjson.loads(line)
        except ValueError as exc:
            raise _Relist(f"undecodable watch event: {exc}") from None
        if not isinstance(event, dict):
            raise _Relist("watch event is not a JSON object")
        event_type = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise _Relist(f"watch event {event_type!r} has no object")
        if event_type == "BOOKMARK":
            rv = _resource_version(obj)
            if rv:
                with self._lock:
                    self._resource_version = rv
                self._applied = rv  # every event before the bookmark has been dispatched
            return
        if event_type == "ERROR":
            code = obj.get("code")
            message = obj.get("message", "")
            if code == _GONE:
                raise _Gone
            raise _Relist(f"watch error {code}: {message}")
        if event_type not in _OBJECT_EVENTS:
            raise _Relist(f"unknown watch event type {event_type!r}")
        if self._transform is not None:
            obj = self._transform(obj)
        key = object_key(obj)
        rv = _resource_version(obj)
        with self._lock:
            if event_type == DELETED:
                self._items.pop(key, None)
            else:
                self._items[key] = obj
            if rv:
                self._resource_version = rv
        self.stats.events += 1
        self._dispatch(str(event_type), obj)
        if rv:
            self._applied = rv

    def _dispatch(self, event_type: str, obj: Obj) -> None:
        for handler in self._handlers:
            try:
                handler(event_type, obj)
            except Exception:
                self._log.exception("reflector_handler_failed", event_type=event_type, key=object_key(obj))

    @staticmethod
    def _read_json(response: Any) -> Any:
        complete = False
        try:
            data = response.data
            complete = True
        finally:
            _finish(response, reusable=complete)
        try:
            return orjson.loads(data)
        except ValueError as exc:
            raise _Relist(f"LIST answer is not JSON: {exc}") from None


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events from a streaming response, as they arrive."""
    buffer = b""
    chunks: Iterator[bytes]
    if getattr(response, "chunked", False):
        chunks = response.stream(amt=None, decode_content=True)
    else:
        chunks = iter(lambda: bytes(response.read1(65536)), b"")
    for chunk in chunks:
        if not chunk:
            continue
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _shutdown_response(response: Any) -> None:
    """Unblock a thread reading ``response`` by shutting down the socket under it (urllib3 >= 2.3)."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
            return
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _finish(response: Any, *, reusable: bool) -> None:
    """Hand the connection back to the pool; one left mid-response is closed first (never reused)."""
    try:
        if not reusable:
            _shutdown_response(response)
            response.close()
        response.release_conn()
    except Exception:  # a connection that cannot even be closed is simply dropped
        pass
