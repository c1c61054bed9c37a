"""The kube-scheduler extender over HTTP(S) (docs/hami-wire.md#extender-routes).

Routes: POST /filter, /prioritize, /bind; GET /healthz, /readyz.

- filter has no side effects (docs/weaknesses.md#filter-picks-one-node): it answers every fitting node
  (`filter_mode: all`, so kube-scheduler's own scoring and soft constraints still apply) or only HAMi's single
  best node (`filter_mode: hami`), with a reason in `FailedNodes` for every other candidate. Pods without a
  GPU request pass through unchanged. A caller that sends full Node objects (not nodeCacheCapable) gets Node
  objects back.
- prioritize ranks the candidates 0-10 by the node policy (binpack: busiest first, spread: emptiest first).
  Called for the pod just filtered (kube-scheduler's cycle, within 1 s) with nodes that passed, it scores from
  that filter's outcome instead of fitting every node again when the cache changed in between. Candidates
  where a bind is under way (a bind request here, a reservation not yet bound, a held node lock, or the node
  just ranked alone at the top for another pod whose bind has not arrived) rank last, so the pods of a burst
  spread over equally good nodes instead of queueing on one node's lock.
- filter fits incrementally (`services.scheduler.verdicts`): per pod shape, only nodes whose usage changed
  since the previous cycle are fitted again.
- bind (leader only) re-fits, reserves and binds; see `services.scheduler.bind`.

Every failure is answered in the verb's own shape (`Error`) with HTTP 200, as HAMi does, and logged; bodies
above 1 MiB and malformed JSON included. The handlers never let an exception escape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

import orjson

from services.common.http_server import Handler, HttpRequest, HttpResponse
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
from services.scheduler.fit import (
    NodeSnapshot,
    PodAnnotationError,
    SchedulingPolicy,
)
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.ranking import LikelyPicks, priority_template, rank_aligned
from services.scheduler.verdicts import VerdictTables

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
# How long a pod's top-ranked node counts as its likely pick (busy for the next pods) while its bind has not
# arrived; kube-scheduler's binding cycle reaches the extender within milliseconds of the scheduling cycle.
_PICK_SECONDS: Final = 2.0
_PICKS_LIMIT: Final = 1024


# What prioritize ranks, aligned with the names it was asked about: each candidate's node score, whether it
# fits (None: all do), whether the policy is spread, and where (dict, key prefix) what depends only on these
# candidates (plain scores, answer template, name index) may be kept for a later call ("" prefix: nowhere).
_Ranking = tuple[list[float], list[bool] | None, bool, dict[str, Any], str]


def _json(data: Any, status: int = 200) -> HttpResponse:
    """A JSON answer, taking a body already encoded as JSON (text or UTF-8 bytes) as it is, and encoding
    anything else with orjson (several times cheaper than `json` on a filter answer)."""
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = orjson.dumps(data)
    return HttpResponse(status, data)


def _text(text: str, status: int = 200) -> HttpResponse:
    return HttpResponse(status, text.encode(), content_type="text/plain; charset=utf-8")


def _pod_ref(ctx: PodContext) -> dict[str, str]:
    return {"namespace": ctx.namespace, "name": ctx.name, "uid": ctx.uid}


class Extender:
    """The extender verbs over a cache, a binder and an event recorder; `routes()` are its HTTP routes
    (served by `services.common.http_server.HttpServer`: three requests per pod, where a web framework's own
    per-request work would cost as much as the verbs)."""

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
        self._verdicts = VerdictTables(cache)
        self._picks = LikelyPicks(_PICK_SECONDS, _PICKS_LIMIT)
        self._last_context: tuple[tuple[str, str], PodContext] | None = None  # ((uid, rv), its context)

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/filter"): self.filter,
            ("POST", "/prioritize"): self.prioritize,
            ("POST", "/bind"): self.bind,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
        }

    # --- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _body(request: HttpRequest) -> bytes:
        """The request body; raises `ExtenderRequestError` when it was over 1 MiB (the server read and dropped
        it, so the connection stays usable and the caller gets the verb's own error shape)."""
        if request.body is None:
            raise ExtenderRequestError(f"request body larger than {MAX_BODY_BYTES} bytes")
        return request.body

    async def _wait_ready(self) -> bool:
        """HAMi blocks a filter until the caches are synced; we wait a bounded time."""
        deadline = time.monotonic() + self._sync_wait
        while not self._ready():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def _pod_context(self, pod: dict[str, Any]) -> PodContext:
        """`pod_context` of the pod, decoded once per pod version (filter and prioritize of one scheduling
        cycle send the same pod)."""
        metadata = pod.get("metadata")
        key = None
        if isinstance(metadata, dict):
            uid, version = metadata.get("uid"), metadata.get("resourceVersion")
            if isinstance(uid, str) and uid and isinstance(version, str) and version:
                key = (uid, version)
        if key is not None and self._last_context is not None and self._last_context[0] == key:
            return self._last_context[1]
        ctx = pod_context(pod, self._request_config)
        if key is not None:
            self._last_context = (key, ctx)
        return ctx

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
        held = bool(exclude) and self._cache.holds(exclude or "")
        key = (shape, tuple(names)) if shape is not None else None
        generation = self._cache.generation
        if key is not None and self._outcomes_generation == generation and not held:
            outcome = self._outcomes.get(key)
            if outcome is not None:
                return outcome
        if shape is None or held:
            # Not memoisable (a namespace with a GPU quota), or the pod counts somewhere (a re-filter must
            # leave its own usage out): every candidate fitted against snapshots taken for this pod.
            snapshots, _ = self._cache.snapshots(names, exclude_uid=exclude)
            return evaluate(ctx, names, snapshots, self._policy, quota)
        outcome = self._verdicts.evaluate(shape, ctx, names, self._policy, quota)
        if key is not None and self._cache.generation == generation and not self._cache.volatile_nodes():
            if generation != self._outcomes_generation or len(self._outcomes) >= _OUTCOMES_LIMIT:
                self._outcomes.clear()
                self._outcomes_generation = generation
            self._outcomes[key] = outcome
        return outcome

    def _cycle_fits(self, ctx: PodContext, args: ExtenderArgs) -> _Ranking | None:
        """The verdicts of the nodes `args` names from the outcome of this pod's filter just before (the same
        scheduling cycle), when every one of them passed that filter; None when prioritize must evaluate."""
        last = self._last_filter
        if last is None or args.nodes is not None or not ctx.uid:
            return None
        uid, shape, outcome, when = last
        if uid != ctx.uid or time.monotonic() - when > _PRIORITIZE_REUSE_SECONDS:
            return None
        names = args.candidate_names
        spread = outcome.policy.spread_nodes
        ranking: _Ranking
        derived = outcome.derived
        if names == derived.get("fitting_names"):
            # The usual cycle: kube-scheduler asks about exactly the nodes the filter passed.
            values = derived.get("fitting_values")
            if values is None:
                values = derived["fitting_values"] = [f.score for f in outcome.fitting]
            ranking = (values, None, spread, derived, "fitting")
        else:
            fitting = {f.node: f for f in outcome.fitting}
            verdicts = [fitting.get(name) for name in names]
            if not verdicts or any(v is None for v in verdicts):
                return None
            ranking = ([v.score for v in verdicts if v is not None], None, spread, {}, "")
        try:
            if evaluation_key(ctx, self._policy, self._cache.quota_view(exclude_uid=ctx.uid)) != shape:
                return None
        except PodAnnotationError:
            return None
        return ranking

    @staticmethod
    def _evaluated_ranking(outcome: FilterOutcome, names: list[str], *, memoise: bool) -> _Ranking:
        """What prioritize ranks from an evaluation of exactly `names` (its verdicts are in candidate order,
        repeats of a name left out). Kept on the outcome (reused only for the same names) when `memoise`."""
        verdicts = outcome.verdicts
        if len(verdicts) != len(names):  # a repeated candidate: each occurrence takes its name's verdict
            by_name = {v.node: v for v in verdicts}
            verdicts = tuple(by_name[name] for name in names)
        derived = outcome.derived if memoise else {}
        values = derived.get("all_values")
        fits = derived.get("all_fits")
        if values is None or fits is None:
            values = [v.score for v in verdicts]
            fits = [v.fits for v in verdicts]
            if memoise:
                derived["all_values"], derived["all_fits"] = values, fits
        return (values, fits, outcome.policy.spread_nodes, derived, "all" if memoise else "")

    def _busy_nodes(self, uid: str) -> set[str]:
        """Nodes where a bind is under way or about to start: a bind request of this process (lock wait
        included), a reservation not yet bound, the node lock held, or the node this extender ranked alone at
        the top for another pod within `_PICK_SECONDS` whose bind has not arrived yet (kube-scheduler runs the
        next scheduling cycle while the previous pod's binding cycle is still on its way here)."""
        busy = self._cache.busy_nodes()
        if self._binder is not None:
            busy.update(self._binder.pending)
        if len(self._picks):
            busy.update(self._picks.others(uid, time.monotonic()))
        return busy

    def _rank(self, uid: str, ranking: _Ranking, names: list[str]) -> str:
        """The prioritize answer body: the node policy's 0..10 over the candidates, except that candidates
        with a bind under way (`_busy_nodes`) rank last (0) and the policy's range spans the others, so
        consecutive pods of a burst spread over equally good nodes instead of queueing on one node's lock;
        the policy's order alone when every fitting candidate is busy or none is. Remembers this pod's unique
        top node as its likely pick until its bind arrives."""
        values, fits, spread, memo, prefix = ranking
        index: dict[str, int] | None = memo.get(prefix + "_index") if prefix else None
        if index is None:
            index = dict(zip(names, range(len(names)), strict=True))
            if prefix:
                memo[prefix + "_index"] = index
        busy = [index[node] for node in self._busy_nodes(uid) if node in index]
        kept: list[int] | None = memo.get(prefix + "_plain") if prefix else None
        ranked, plain = rank_aligned(values, fits, busy, spread=spread, plain=kept)
        template: str | None = memo.get(prefix + "_template") if prefix else None
        if template is None:
            template = priority_template(names)
        if prefix:
            if plain is not None:
                memo[prefix + "_plain"] = plain
            memo[prefix + "_template"] = template
        if uid:
            if ranked.leader is not None:
                self._picks.remember(uid, names[ranked.leader], time.monotonic())
            else:
                self._picks.drop(uid)
        return template % tuple(ranked.scores)

    # --- verbs ----------------------------------------------------------------------------------------------

    async def filter(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        try:
            result = await self._filter(request)
        except Exception as exc:  # never crash on one request
            log.exception("filter_failed")
            result = filter_result(error=f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.filter_seconds.observe(time.perf_counter() - started)
        return _json(result)

    async def _filter(self, request: HttpRequest) -> dict[str, Any] | str | bytes:
        try:
            args = decode_extender_args(self._body(request))
        except ExtenderRequestError as exc:
            log.warning("filter_bad_request", error=str(exc), remote=request.remote)
            return filter_result(error=str(exc))
        ctx = self._pod_context(args.pod)
        if not ctx.has_gpu_request:
            # Not ours: every candidate passes, exactly as sent.
            if args.nodes is not None:
                return filter_result(nodes=args.nodes)
            return filter_result(node_names=args.node_names)
        if not await self._wait_ready():
            return filter_result(error=self._not_ready_error)
        if self._binder is not None:
            self._binder.recent_pods.remember(args.pod, ctx)
        try:
            outcome = self._evaluate(ctx, args)
        except PodAnnotationError as exc:
            self._events.record(_pod_ref(ctx), [EventText(WARNING, "FilteringFailed", str(exc))])
            log.warning("filter_pod_error", pod=f"{ctx.namespace}/{ctx.name}", error=str(exc))
            return filter_result(error=str(exc))
        if args.nodes is None and ctx.uid and self._evaluated_shape is not None:
            self._last_filter = (ctx.uid, self._evaluated_shape, outcome, time.monotonic())
        chosen: list[str]
        if self._filter_mode == "hami":
            chosen = [outcome.best.node] if outcome.best is not None else []
        else:
            known: list[str] | None = outcome.derived.get("fitting_names")
            chosen = known if known is not None else outcome.fitting_names
            outcome.derived["fitting_names"] = chosen
        events = outcome.derived.get("events")
        if events is None:
            events = outcome.derived["events"] = (
                [success_event(outcome)] if outcome.fitting else failure_events(outcome)
            )
        self._events.record(_pod_ref(ctx), events)
        best = outcome.best.node if outcome.best is not None else None
        if _std_log.isEnabledFor(logging.DEBUG):
            # Debug level: the pod's FilteringSucceed/FilteringFailed event says the same, and a log line per
            # scheduling cycle costs as much as the rest of a filter that the verdict tables answer.
            pod = f"{ctx.namespace}/{ctx.name}"
            log.debug("filtered", pod=pod, fit=len(chosen), failed=len(outcome.failed), best=best)
            log.debug("filtered_nodes", pod=pod, fit=chosen, failed=sorted(outcome.failed))
        if args.nodes is not None:
            by_name = {node_name(n): n for n in args.nodes}
            return filter_result(nodes=[by_name[n] for n in chosen], failed=outcome.failed)
        answer = outcome.derived.get("filter")
        if answer is None:
            answer = outcome.derived["filter"] = orjson.dumps(
                filter_result(node_names=chosen or None, failed=outcome.failed)
            )
        return answer

    async def prioritize(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        try:
            try:
                args = decode_extender_args(self._body(request))
            except ExtenderRequestError as exc:
                log.warning("prioritize_bad_request", error=str(exc), remote=request.remote)
                return _json({"Error": str(exc)}, 400)
            ctx = self._pod_context(args.pod)
            names = args.candidate_names
            if not ctx.has_gpu_request or not await self._wait_ready():
                return _json(priority_list({}, names))
            ranking = self._cycle_fits(ctx, args)
            if ranking is None:
                try:
                    outcome = self._evaluate(ctx, args)
                except PodAnnotationError as exc:
                    return _json({"Error": str(exc)}, 400)
                ranking = self._evaluated_ranking(outcome, names, memoise=args.nodes is None)
            return _json(self._rank(ctx.uid, ranking, names))
        except Exception as exc:
            log.exception("prioritize_failed")
            return _json({"Error": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        finally:
            self._metrics.prioritize_seconds.observe(time.perf_counter() - started)

    async def bind(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        error = ""
        try:
            try:
                args = decode_bind_args(self._body(request))
            except ExtenderRequestError as exc:
                log.warning("bind_bad_request", error=str(exc), remote=request.remote)
                error = str(exc)
            else:
                if self._binder is None:
                    error = self._not_ready_error
                else:
                    self._picks.drop(args.pod_uid)  # the binder's own bookkeeping takes over
                    error = await self._binder.bind(args)
        except Exception as exc:
            log.exception("bind_crashed")
            error = f"internal error: {type(exc).__name__}: {exc}"
        self._metrics.bind_seconds.labels("error" if error else "success").observe(
            time.perf_counter() - started
        )
        return _json(bind_result(error))

    async def healthz(self, _: HttpRequest) -> HttpResponse:
        return _text("ok")

    async def readyz(self, _: HttpRequest) -> HttpResponse:
        if self._ready():
            return _text("ok")
        return _text("caches not synced", 503)
