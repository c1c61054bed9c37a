"""kube-local's collection reads: ``GET`` of a collection as a list, and with ``?watch=true`` as a
stream of watch events.

A watch resumes after ``resourceVersion`` (a version older than the store's history answers 200 with
one ``ERROR`` event, which clients raise as 410 Gone), replays the current objects first with
``sendInitialEvents=true``, sends BOOKMARKs while idle when ``allowWatchBookmarks`` is set, and ends
at ``timeoutSeconds`` (or :attr:`WatchOptions.default_timeout`) or when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.errors import ApiError
from sim.kubelocal.pb.negotiation import watch_encoding
from sim.kubelocal.resources import Obj, ResourceType
from sim.kubelocal.store import Store, WatchClosed, encode_line
from sim.kubelocal.tables import list_table, table_options, table_watch_encoding
from sim.kubelocal.wire import Target, collection_filter, json_response

log = structlog.get_logger("kube-local")

_DISCONNECT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class WatchOptions:
    """How long a watch without ``timeoutSeconds`` lasts, and how often an idle one gets a BOOKMARK."""

    default_timeout: float = 1800.0
    bookmark_interval: float = 60.0


def bookmark_line(rt: ResourceType, rv: str, *, initial_end: bool = False) -> bytes:
    """A BOOKMARK event at ``rv``; ``initial_end`` marks the end of ``sendInitialEvents``."""
    md: Obj = {"resourceVersion": rv, "creationTimestamp": None}
    if initial_end:
        md["annotations"] = {"k8s.io/initial-events-end": "true"}
    return encode_line(
        {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}}
    )


class ListWatch:
    """List and watch handlers over ``store``."""

    def __init__(self, store: Store, watch_options: WatchOptions) -> None:
        self.store = store
        self.watch_options = watch_options

    def list_collection(self, request: web.Request, t: Target) -> web.Response:
        items, rv = self.store.list_objects(collection_filter(request, t))
        table = table_options(request, t.rt)  # kubectl get's Accept (tables.py)
        if table is not None:
            return json_response(list_table(t.rt, items, rv, table))
        return json_response(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def watch_collection(self, request: web.Request, t: Target) -> web.StreamResponse:
        flt = collection_filter(request, t)
        query = request.query
        raw_rv = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents", "").lower() == "true"
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        since: int | None = None
        if raw_rv not in ("", "0") and not send_initial:
            try:
                since = int(raw_rv)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {raw_rv!r}") from exc
        timeout = self.watch_options.default_timeout
        if "timeoutSeconds" in query:
            try:
                requested = int(query["timeoutSeconds"])
            except ValueError as exc:
                raise errors.bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']!r}") from exc
            if requested > 0:
                timeout = float(requested)

        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache, private"})
        # Tables for kubectl get -w (tables.py), else JSON lines or protobuf frames (pb/negotiation.py).
        encoding = table_watch_encoding(request, t.rt) or watch_encoding(request)
        response.headers["Content-Type"] = encoding.content_type
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(flt, since)
        except ApiError as exc:
            # The apiserver answers 200 and streams one ERROR event (the client raises 410 from it).
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write(encoding.frame(encode_line({"type": "ERROR", "object": exc.status()})))
                await response.write_eof()
            return response
        start_rv = self.store.resource_version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.watch_options.bookmark_interval
        initial_end_pending = send_initial and bookmarks
        try:
            await response.prepare(request)
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if initial_end_pending and watcher.initial_drained:
                    await response.write(encoding.frame(bookmark_line(t.rt, start_rv, initial_end=True)))
                    initial_end_pending = False
                wait = min(deadline - now, _DISCONNECT_POLL_SECONDS)
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                line = await watcher.get(wait)
                if line is not None:
                    await response.write(encoding.frame(line))
                    continue
                if request.transport is None or request.transport.is_closing():
                    break
                if bookmarks and watcher.idle and loop.time() >= next_bookmark:
                    await response.write(encoding.frame(bookmark_line(t.rt, self.store.resource_version)))
                    next_bookmark = loop.time() + self.watch_options.bookmark_interval
        except WatchClosed as closed:
            if closed.reason == "overflow":
                log.warning("closing slow watcher", path=request.path, queue_limit=watcher.limit)
        except ConnectionError:
            return response
        finally:
            self.store.unwatch(watcher)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
