"""The kube-scheduler extender over HTTP(S) (docs/hami-wire.md#extender-routes).

Routes: POST /filter, /prioritize, /bind; GET /healthz, /readyz.

- filter has no side effects (docs/weaknesses.md#filter-picks-one-node): it answers every fitting node
  (`filter_mode: all`, so kube-scheduler's own scoring and soft constraints still apply) or only HAMi's single
  best node (`filter_mode: hami`), with a reason in `FailedNodes` for every other candidate. Pods without a
  GPU request pass through unchanged. A caller that sends full Node objects (not nodeCacheCapable) gets Node
  objects back.
- prioritize ranks the candidates 0-10 by the node policy (binpack: busiest first, spread: emptiest first).
  Called for the pod just filtered (kube-scheduler's cycle, within 1 s) with nodes that passed, it scores from
  that filter's outcome instead of fitting every node again when the cache changed in between.
- bind (leader only) re-fits, reserves and binds; see `services.scheduler.bind`.

Every failure is answered in the verb's own shape (`Error`) with HTTP 200, as HAMi does, and logged; bodies
above 1 MiB and malformed JSON included. The handlers never let an exception escape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

from aiohttp import web

from services.common.log import get_logger
from services.common.resources import NvidiaRequestConfig
from services.scheduler.bind import Binder
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import PodContext, pod_context
from services.scheduler.events import EventRecorder
from services.scheduler.extender_api import (
    ExtenderArgs,
    ExtenderRequestError,
    bind_result,
    decode_bind_args,
    decode_extender_args,
    encode_priority_list,
    filter_result,
    node_name,
    priority_list,
)
from services.scheduler.filtering import (
    WARNING,
    EventText,
    FilterOutcome,
    evaluate,
    evaluation_key,
    failure_events,
    success_event,
)
from services.scheduler.fit import NodeSnapshot, PodAnnotationError, SchedulingPolicy, priority_scores
from services.scheduler.metrics import SchedulerMetrics

__all__ = ["MAX_BODY_BYTES", "Extender"]

log = get_logger(__name__)
_std_log = logging.getLogger(__name__)  # the stdlib logger behind `log`, for cheap level checks

# HAMi reads request bodies through a 1 MiB limit (cmd/scheduler/main.go).
MAX_BODY_BYTES: Final = 1 << 20
# Outcomes kept for reuse within one cache generation (distinct pod shapes x candidate lists).
_OUTCOMES_LIMIT: Final = 32
# How long the prioritize call of a scheduling cycle may reuse its filter's outcome after the cache changed
# (binds and watch events land between the two calls under load; re-walking every node for scores that
# are advisory, the bind re-fits anyway, would double the cycle's cost).
_PRIORITIZE_REUSE_SECONDS: Final = 1.0


def _json(data: Any) -> web.Response:
    """`web.json_response` for a body already encoded as JSON text."""
    return web.Response(
        text=data if isinstance(data, str) else json.dumps(data), content_type="application/json"
    )


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
        # Outcomes of `_evaluate` valid at cache generation `_outcomes_generation`: the prioritize call after
        # a filter, and the next pods of the same shape while nothing changed, reuse the whole outcome (and
        # the answer bodies kept on it) instead of walking every node again.
        self._outcomes: dict[Hashable, FilterOutcome] = {}
        self._outcomes_generation = -1
        # The last filter's outcome: (pod uid, evaluation key, outcome, when), for its prioritize call.
        self._last_filter: tuple[str, Hashable, FilterOutcome, float] | None = None
        self._evaluated_shape: Hashable | None = None  # the evaluation key `_evaluate` last used

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

    def _evaluate(self, ctx: PodContext, args: ExtenderArgs) -> FilterOutcome:
        self._evaluated_shape = None
        exclude = ctx.uid or None
        quota = self._cache.quota_view(exclude_uid=exclude)
        names = args.candidate_names
        if args.nodes is not None:
            objects: dict[str, NodeSnapshot | None] = {
                node_name(n): self._cache.snapshot_from_object(n, exclude_uid=exclude) for n in args.nodes
            }
            return evaluate(ctx, names, objects, self._policy, quota)
        shape = evaluation_key(ctx, self._policy, quota)
        self._evaluated_shape = shape
        key = (shape, tuple(names)) if shape is not None else None
        if key is not None and self._outcomes_generation == self._cache.generation:
            outcome = self._outcomes.get(key)
            if outcome is not None and not (exclude and self._cache.holds(exclude)):
                return outcome
        snapshots, generation = self._cache.snapshots(names, exclude_uid=exclude)
        outcome = evaluate(ctx, names, snapshots, self._policy, quota)
        if key is not None and generation is not None:
            if generation != self._outcomes_generation or len(self._outcomes) >= _OUTCOMES_LIMIT:
                self._outcomes.clear()
                self._outcomes_generation = generation
            self._outcomes[key] = outcome
        return outcome

    def _filter_scores(self, ctx: PodContext, args: ExtenderArgs) -> dict[str, int] | None:
        """The scores of the nodes `args` names from the outcome of this pod's filter just before (the same
        scheduling cycle), when every one of them passed that filter; None when prioritize must evaluate."""
        last = self._last_filter
        if last is None or args.nodes is not None or not ctx.uid:
            return None
        uid, shape, outcome, when = last
        if uid != ctx.uid or time.monotonic() - when > _PRIORITIZE_REUSE_SECONDS:
            return None
        if self._outcomes_generation == self._cache.generation:
            return None  # nothing changed: `_evaluate` answers from the outcome cache, reply body included
        names = args.candidate_names
        fitting = {f.node: f for f in outcome.fitting}
        verdicts = [fitting.get(name) for name in names]
        if not verdicts or any(v is None for v in verdicts):
            return None
        try:
            if evaluation_key(ctx, self._policy, self._cache.quota_view(exclude_uid=ctx.uid)) != shape:
                return None
        except PodAnnotationError:
            return None
        return priority_scores([v for v in verdicts if v is not None], outcome.policy.node_policy)

    # --- verbs ----------------------------------------------------------------------------------------------

    async def filter(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            result = await self._filter(request)
        except Exception as exc:  # never crash on one request
            log.exception("filter_failed")
            result = filter_result(error=f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.filter_seconds.observe(time.perf_counter() - started)
        return _json(result)

    async def _filter(self, request: web.Request) -> dict[str, Any] | str:
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
        if self._binder is not None:
            self._binder.recent_pods.remember(args.pod)
        try:
            outcome = self._evaluate(ctx, args)
        except PodAnnotationError as exc:
            self._events.record(_pod_ref(ctx), [EventText(WARNING, "FilteringFailed", str(exc))])
            log_ctx.warning("filter_pod_error", error=str(exc))
            return filter_result(error=str(exc))
        if args.nodes is None and ctx.uid and self._evaluated_shape is not None:
            self._last_filter = (ctx.uid, self._evaluated_shape, outcome, time.monotonic())
        if self._filter_mode == "hami":
            chosen = [outcome.best.node] if outcome.best is not None else []
        else:
            chosen = outcome.fitting_names
        events = outcome.derived.get("events")
        if events is None:
            events = outcome.derived["events"] = (
                [success_event(outcome)] if outcome.fitting else failure_events(outcome)
            )
        self._events.record(_pod_ref(ctx), events)
        best = outcome.best.node if outcome.best is not None else None
        log_ctx.info("filtered", fit=len(chosen), failed=len(outcome.failed), best=best)
        if _std_log.isEnabledFor(logging.DEBUG):  # names only at debug level: 1000 of them per filter
            log_ctx.debug("filtered_nodes", fit=chosen, failed=sorted(outcome.failed))
        if args.nodes is not None:
            by_name = {node_name(n): n for n in args.nodes}
            return filter_result(nodes=[by_name[n] for n in chosen], failed=outcome.failed)
        answer = outcome.derived.get("filter")
        if answer is None:
            answer = outcome.derived["filter"] = json.dumps(
                filter_result(node_names=chosen or None, failed=outcome.failed)
            )
        return answer

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
            reused = self._filter_scores(ctx, args)
            if reused is not None:
                return _json(encode_priority_list(reused, names))
            try:
                outcome = self._evaluate(ctx, args)
            except PodAnnotationError as exc:
                return web.json_response({"Error": str(exc)}, status=400)
            answer = outcome.derived.get("prioritize")
            if answer is None:
                answer = encode_priority_list(outcome.priorities(), names)
                if args.nodes is None:  # the outcome (and so this answer) is reused only for the same names
                    outcome.derived["prioritize"] = answer
            return _json(answer)
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
