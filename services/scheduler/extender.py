"""The kube-scheduler extender over HTTP(S) (spec §3.1).

Routes: POST /filter, /prioritize, /bind; GET /healthz, /readyz.

- filter has no side effects (known weakness 1): it answers every fitting node (`filter_mode: all`, so
  kube-scheduler's own scoring and soft constraints still apply) or only HAMi's single best node
  (`filter_mode: hami`), with a reason in `FailedNodes` for every other candidate. Pods without a GPU request
  pass through unchanged. A caller that sends full Node objects (not nodeCacheCapable) gets Node objects back.
- prioritize ranks the candidates 0-10 by the node policy (binpack: busiest first, spread: emptiest first).
- bind (leader only) re-fits, reserves and binds; see `services.scheduler.bind`.

Every failure is answered in the verb's own shape (`Error`) with HTTP 200, as HAMi does, and logged; bodies
above 1 MiB and malformed JSON included. The handlers never let an exception escape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from services.common.log import get_logger
from services.common.resources import NvidiaRequestConfig
from services.scheduler.bind import Binder
from services.scheduler.cache import UsageCache
from services.scheduler.events import EventRecorder
from services.scheduler.extender_api import (
    ExtenderArgs,
    ExtenderRequestError,
    bind_result,
    decode_bind_args,
    decode_extender_args,
    filter_result,
    node_name,
    priority_list,
)
from services.scheduler.filtering import (
    WARNING,
    EventText,
    FilterOutcome,
    evaluate,
    failure_events,
    success_event,
)
from services.scheduler.fit import NodeSnapshot, PodAnnotationError, PodContext, SchedulingPolicy, pod_context
from services.scheduler.metrics import SchedulerMetrics

__all__ = ["MAX_BODY_BYTES", "Extender"]

log = get_logger(__name__)

# HAMi reads request bodies through a 1 MiB limit (cmd/scheduler/main.go).
MAX_BODY_BYTES: Final = 1 << 20


def _pod_ref(ctx: PodContext) -> dict[str, str]:
    return {"namespace": ctx.namespace, "name": ctx.name, "uid": ctx.uid}


class Extender:
    """The extender verbs over a cache, a binder and an event recorder; `app()` builds the aiohttp app."""

    def __init__(
        self,
        cache: UsageCache,
        binder: Binder | None,
        events: EventRecorder,
        metrics: SchedulerMetrics,
        *,
        policy: SchedulingPolicy,
        request_config: NvidiaRequestConfig,
        filter_mode: str = "all",
        ready: Callable[[], bool] = lambda: True,
        not_ready_error: str = "scheduler caches are not synced yet",
        sync_wait_seconds: float = 10.0,
    ) -> None:
        self._cache = cache
        self._binder = binder
        self._events = events
        self._metrics = metrics
        self._policy = policy
        self._request_config = request_config
        self._filter_mode = filter_mode
        self._ready = ready
        self._not_ready_error = not_ready_error
        self._sync_wait = sync_wait_seconds

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/filter", self.filter)
        app.router.add_post("/prioritize", self.prioritize)
        app.router.add_post("/bind", self.bind)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    # --- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> bytes:
        """The request body; raises `ExtenderRequestError` when it is over 1 MiB or cannot be read."""
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ExtenderRequestError(f"request body larger than {MAX_BODY_BYTES} bytes") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise ExtenderRequestError(f"cannot read the request body: {exc}") from None

    async def _wait_ready(self) -> bool:
        """HAMi blocks a filter until the caches are synced; we wait a bounded time."""
        deadline = time.monotonic() + self._sync_wait
        while not self._ready():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def _snapshots(self, ctx: PodContext, args: ExtenderArgs) -> dict[str, NodeSnapshot | None]:
        exclude = ctx.uid or None
        if args.nodes is not None:
            return {
                node_name(n): self._cache.snapshot_from_object(n, exclude_uid=exclude) for n in args.nodes
            }
        return {n: self._cache.snapshot(n, exclude_uid=exclude) for n in args.candidate_names}

    def _evaluate(self, ctx: PodContext, args: ExtenderArgs) -> FilterOutcome:
        return evaluate(
            ctx,
            args.candidate_names,
            self._snapshots(ctx, args),
            self._policy,
            self._cache.quota_view(exclude_uid=ctx.uid or None),
        )

    # --- verbs ----------------------------------------------------------------------------------------------

    async def filter(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            result = await self._filter(request)
        except Exception as exc:  # never crash on one request
            log.exception("filter_failed")
            result = filter_result(error=f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.filter_seconds.observe(time.perf_counter() - started)
        return web.json_response(result)

    async def _filter(self, request: web.Request) -> dict[str, Any]:
        try:
            args = decode_extender_args(await self._body(request))
        except ExtenderRequestError as exc:
            log.warning("filter_bad_request", error=str(exc), remote=request.remote)
            return filter_result(error=str(exc))
        ctx = pod_context(args.pod, self._request_config)
        log_ctx = log.bind(pod=f"{ctx.namespace}/{ctx.name}")
        if not ctx.has_gpu_request:
            # Not ours: every candidate passes, exactly as sent.
            if args.nodes is not None:
                return filter_result(nodes=args.nodes)
            return filter_result(node_names=args.node_names)
        if not await self._wait_ready():
            return filter_result(error=self._not_ready_error)
        try:
            outcome = self._evaluate(ctx, args)
        except PodAnnotationError as exc:
            self._events.record(_pod_ref(ctx), [EventText(WARNING, "FilteringFailed", str(exc))])
            log_ctx.warning("filter_pod_error", error=str(exc))
            return filter_result(error=str(exc))
        if self._filter_mode == "hami":
            chosen = [outcome.best.node] if outcome.best is not None else []
        else:
            chosen = outcome.fitting_names
        failed = dict(outcome.failed)
        if outcome.fitting:
            self._events.record(_pod_ref(ctx), [success_event(outcome)])
        else:
            self._events.record(_pod_ref(ctx), failure_events(outcome))
        log_ctx.info(
            "filtered",
            fit=chosen,
            failed=len(failed),
            best=outcome.best.node if outcome.best is not None else None,
        )
        if args.nodes is not None:
            by_name = {node_name(n): n for n in args.nodes}
            return filter_result(nodes=[by_name[n] for n in chosen], failed=failed)
        return filter_result(node_names=chosen or None, failed=failed)

    async def prioritize(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            try:
                args = decode_extender_args(await self._body(request))
            except ExtenderRequestError as exc:
                log.warning("prioritize_bad_request", error=str(exc), remote=request.remote)
                return web.json_response({"Error": str(exc)}, status=400)
            ctx = pod_context(args.pod, self._request_config)
            names = args.candidate_names
            if not ctx.has_gpu_request or not await self._wait_ready():
                return web.json_response(priority_list({}, names))
            try:
                outcome = self._evaluate(ctx, args)
            except PodAnnotationError as exc:
                return web.json_response({"Error": str(exc)}, status=400)
            return web.json_response(priority_list(outcome.priorities(), names))
        except Exception as exc:
            log.exception("prioritize_failed")
            return web.json_response({"Error": f"internal error: {type(exc).__name__}: {exc}"}, status=500)
        finally:
            self._metrics.prioritize_seconds.observe(time.perf_counter() - started)

    async def bind(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        error = ""
        try:
            try:
                args = decode_bind_args(await self._body(request))
            except ExtenderRequestError as exc:
                log.warning("bind_bad_request", error=str(exc), remote=request.remote)
                error = str(exc)
            else:
                if self._binder is None:
                    error = self._not_ready_error
                else:
                    error = await self._binder.bind(args)
        except Exception as exc:
            log.exception("bind_crashed")
            error = f"internal error: {type(exc).__name__}: {exc}"
        self._metrics.bind_seconds.labels("error" if error else "success").observe(
            time.perf_counter() - started
        )
        return web.json_response(bind_result(error))

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced")
