"""kube-local's server: the aiohttp app, an asyncio-hosted :class:`KubeLocal` and a thread-hosted
:class:`KubeLocalThread` / :func:`run_kube_local` for synchronous code and tests.

    async:  server = KubeLocal(); url = await server.start(); ...; await server.stop()
    sync:   with run_kube_local() as url: ...   # or KubeLocalThread().start() ... .close()

Point the official client at ``url`` (``Configuration().host = url``); no auth, plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain
from sim.kubelocal.errors import ApiError
from sim.kubelocal.list_watch import WatchOptions
from sim.kubelocal.pb.negotiation import protobuf_middleware
from sim.kubelocal.persistence import Persistence
from sim.kubelocal.routes import ApiRouter
from sim.kubelocal.store import Store
from sim.kubelocal.wire import status_response

T = TypeVar("T")

log = structlog.get_logger("kube-local")

STORE_KEY = web.AppKey("kubelocal.store", Store)
ADMISSION_KEY = web.AppKey("kubelocal.admission", AdmissionChain)

#: Request bodies up to this size are accepted (the apiserver's limit is about 3 MiB).
MAX_BODY_BYTES = 3 * 1024 * 1024

_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
}


@web.middleware
async def _errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a ``Status`` body; the server logs it and keeps serving."""
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(
            exc.status,
            _REASONS.get(exc.status, "InternalError" if exc.status >= 500 else "BadRequest"),
            exc.reason,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("request failed", method=request.method, path=request.path, status=500)
        return status_response(errors.internal(f"{type(exc).__name__}: {exc}"))
    bound = log.bind(method=request.method, path=request.path, status=error.code, reason=error.reason)
    if error.code >= 500:
        bound.error("request failed", message=error.message)
    elif error.code in (404, 409, 410):
        bound.debug("request rejected", message=error.message)
    else:
        bound.warning("request rejected", message=error.message)
    return status_response(error)


def _durable_middleware(store: Store, persistence: Persistence) -> Middleware:
    """Holds every answer until the resourceVersion it may reflect is on disk: a write is acknowledged,
    and a read shows a version, only once a crash can no longer lose it."""

    @web.middleware
    async def durable(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        await persistence.wait_durable(int(store.resource_version))
        return response

    return durable


def create_app(
    store: Store,
    *,
    admission: AdmissionChain | None = None,
    watch_timeout: float = 1800.0,
    bookmark_interval: float = 60.0,
    persistence: Persistence | None = None,
    instance_token: str | None = None,
) -> web.Application:
    """The kube-local API as an aiohttp application over ``store``.

    ``watch_timeout`` bounds a watch without ``timeoutSeconds``; ``bookmark_interval`` is how
    often an idle watch with ``allowWatchBookmarks`` gets a BOOKMARK; with ``persistence`` every answer
    waits until what it reflects is durable; with ``instance_token`` every /healthz, /readyz and /livez
    answer carries it in the ``X-Kube-Local-Instance`` header.
    """
    # protobuf_middleware outside the errors one: a Status error goes out as protobuf too.
    middlewares: list[Middleware] = [protobuf_middleware, _errors_middleware]
    if persistence is not None:
        middlewares.insert(0, _durable_middleware(store, persistence))  # outermost: errors are answers too
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    chain = admission if admission is not None else AdmissionChain()
    app[STORE_KEY] = store
    app[ADMISSION_KEY] = chain
    router = ApiRouter(store, chain, WatchOptions(watch_timeout, bookmark_interval), instance_token)
    app.router.add_route("*", "/{path:.*}", router.dispatch)
    return app


class KubeLocal:
    """kube-local on the running event loop.

    ``state_dir`` turns on persistence (``<state_dir>/state.db``, loaded at start; a write is answered
    once it is on disk, see :mod:`sim.kubelocal.persistence`); ``history_size`` bounds the watch event
    history (older resumes get 410); ``watch_queue_size`` bounds each watcher's
    backlog before it is closed as too slow; ``instance_token`` is echoed on every health answer
    (see :func:`create_app`).
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        history_size: int = 10_000,
        watch_queue_size: int = 1_000,
        admission: AdmissionChain | None = None,
        watch_timeout: float = 1800.0,
        bookmark_interval: float = 60.0,
        instance_token: str | None = None,
    ) -> None:
        self.store = (
            store
            if store is not None
            else Store(history_size=history_size, watch_queue_size=watch_queue_size)
        )
        self.admission = admission if admission is not None else AdmissionChain()
        self._persistence = Persistence(self.store, state_dir) if state_dir is not None else None
        self._watch_timeout = watch_timeout
        self._bookmark_interval = bookmark_interval
        self._instance_token = instance_token
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Loads state (if any), binds ``host:port`` (0 picks a free port) and returns the URL."""
        if self._runner is not None:
            raise RuntimeError("kube-local is already started")
        if self._persistence is not None:
            self._persistence.load()
            self._persistence.attach(asyncio.get_running_loop())
        app = create_app(
            self.store,
            admission=self.admission,
            watch_timeout=self._watch_timeout,
            bookmark_interval=self._bookmark_interval,
            persistence=self._persistence,
            instance_token=self._instance_token,
        )
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            if self._persistence is not None:
                await self._persistence.close()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{bound_port}"
        return self.url

    @property
    def state_notes(self) -> list[tuple[str, dict[str, Any]]]:
        """What loading ``state_dir`` found worth logging (an unclean stop, a migration)."""
        return list(self._persistence.notes) if self._persistence is not None else []

    async def stop(self) -> None:
        """Ends every watch, stops serving and closes the state file cleanly."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.store.close_watchers("shutdown")
        await runner.cleanup()
        if self._persistence is not None:
            await self._persistence.close()


class KubeLocalThread:
    """kube-local on its own event loop in a daemon thread, for synchronous callers.

    ``KubeLocalThread(state_dir=...).start()`` returns the URL (also ``.url``); ``.close()`` stops
    it and closes the state file. Keyword arguments are those of :class:`KubeLocal`.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._host = host
        self._port = port
        self._options = options
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: KubeLocal | None = None
        self.url: str = ""

    def start(self, timeout: float = 30.0) -> str:
        if self._thread is not None:
            raise RuntimeError("kube-local thread already started")
        self._thread = threading.Thread(target=self._run, name="kube-local", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("kube-local did not start in time")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = KubeLocal(**self._options)
        try:
            self.url = await server.start(self._host, self._port)
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self.server = server
        self._ready.set()
        await self._stop.wait()
        await server.stop()

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Runs ``fn()`` on the server's loop (e.g. to read or seed ``server.store`` directly)."""
        if self._loop is None:
            raise RuntimeError("kube-local thread is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stop.set)
        deadline = time.monotonic() + timeout
        thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> KubeLocalThread:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def run_kube_local(state_dir: str | os.PathLike[str] | None = None, **options: Any) -> Iterator[str]:
    """``with run_kube_local() as url:`` - kube-local in a background thread for the block."""
    server = KubeLocalThread(state_dir=state_dir, **options)
    url = server.start()
    try:
        yield url
    finally:
        server.close()
