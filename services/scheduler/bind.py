"""The bind verb (docs/hami-wire.md#bind, docs/weaknesses.md#filter-picks-one-node): the reservation moves
from Filter to Bind.

For a GPU pod on node N, with a per-node asyncio lock held (binds of this process onto one node queue up):

1. take the node lock `hami.io/mutex.lock` (when an app container requests a GPU, as HAMi does), waiting while
   another live pod holds it, up to `bind_lock_wait_seconds` from the start of the request;
2. re-fit the pod on N against current usage: the pods the API server says are bound to N (read fresh, under
   the node lock, so another scheduler's bind that just finished is seen even when the watch lags; copies the
   watch already applied cost nothing more; no read at all when the pod watch has already applied every change
   up to our lock write, which proves it holds all such binds), the watch cache and the reservations of binds
   under way; the pod itself is left out (a re-bind after a failure must not count it twice);
3. reserve the allocation in the cache, then merge-patch the pod: annotations `hami.io/vgpu-node`,
   `hami.io/vgpu-time`, `hami.io/vgpu-devices-to-allocate`, `hami.io/vgpu-devices-allocated`
   (+ `hami.io/vgpu-mig-allocations` for MIG), `hami.io/bind-phase: allocating`, `hami.io/bind-time`, and the
   label `hami.io/vgpu-node`;
4. POST the Binding.

On success the node lock stays held for the device plugin's Allocate, which releases it. Any failure rolls
everything back: the annotations and label are restored to what they were, the reservation is dropped and the
lock released (only if this pod holds it). Only the leader binds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common import wire
from services.common.codecs import WireFormatError
from services.common.kube import core_path
from services.common.kube_async import AsyncKube
from services.common.log import get_logger
from services.common.resources import NvidiaRequestConfig
from services.scheduler.bind_writes import (
    BindError,
    RecentPods,
    already_bound,
    bind_annotations,
    revert_patch,
    str_map,
)
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import PodContext, pod_context
from services.scheduler.events import EventRecorder
from services.scheduler.extender_api import BindArgs
from services.scheduler.filtering import NORMAL, WARNING, EventText, fit_on
from services.scheduler.fit import PodAnnotationError, SchedulingPolicy
from services.scheduler.nodelock import MERGE_PATCH, LockError, NodeLocks
from services.scheduler.snapshots import Reservation

__all__ = ["Binder"]

log = get_logger(__name__)

# How long a bind under the node lock waits for the pod watch to pass its lock write before reading the
# node's pods itself: a burst's other binds move the watch on within milliseconds.
_CATCH_UP_POLLS: Final = 5
_CATCH_UP_STEP_SECONDS: Final = 0.002
_std_log = logging.getLogger(__name__)  # the stdlib logger behind `log`, for cheap level checks


def _api_error(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or f"{exc.status} {exc.reason}")


class _StalePod(Exception):
    """The pod changed since the copy the bind started from (the patch's resourceVersion precondition)."""


@dataclass
class _Progress:
    lock_attempted: bool = False
    lock_taken: bool = False
    reserved: bool = False
    written: dict[str, str] | None = None
    before_annotations: dict[str, str] | None = None
    before_labels: dict[str, str] | None = None


class Binder:
    """Runs binds; `shutdown()` refuses new ones, ends those under way and releases their locks."""

    def __init__(
        self,
        core: client.CoreV1Api,
        cache: UsageCache,
        locks: NodeLocks,
        events: EventRecorder,
        *,
        policy: SchedulingPolicy,
        request_config: NvidiaRequestConfig,
        lock_wait_seconds: float,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        kube: AsyncKube | None = None,
        pods_applied: Callable[[], str] | None = None,
        metadata_in_binding: bool = False,
    ) -> None:
        # `metadata_in_binding`: the allocation annotations and the node label travel in the Binding (one
        # write; needs an API server that copies a Binding's labels, Kubernetes >= 1.35), else a pod patch
        # first, then the Binding (HAMi's two writes).
        self._metadata_in_binding = metadata_in_binding
        # `pods_applied`: the resourceVersion through which the pod watch feeding `cache` has applied every
        # change (`Reflector.applied_resource_version`); None: always read the node's pods fresh at bind time.
        self._pods_applied = pods_applied
        # The bind's API calls run on the event loop (`AsyncKube`), configured like the official client.
        self._http = kube if kube is not None else AsyncKube(core.api_client.configuration)
        self._own_http = kube is None
        self._cache = cache
        self._locks = locks
        self._events = events
        self._policy = policy
        self._request_config = request_config
        self._lock_wait = lock_wait_seconds
        self._is_leader = is_leader
        self._clock = clock
        self.recent_pods = RecentPods()
        self._guards: dict[str, asyncio.Lock] = {}
        self._held: dict[str, tuple[str, str]] = {}  # node -> pod holding its lock during a bind under way
        self._inflight: set[asyncio.Task[Any]] = set()
        self._closing = False
        # node -> binds of this process under way there (from the request's arrival, lock wait included):
        # prioritize ranks such nodes last so the next pods of a burst do not queue behind them.
        self.pending: dict[str, int] = {}

    # --- API calls (on the event loop, through `AsyncKube`) -------------------------------------------------

    async def _read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._http.request("GET", core_path("pods", name, namespace=namespace))
        return data

    async def _pods_on_node(self, node: str) -> list[dict[str, Any]]:
        # Bound to the node (`spec.nodeName`, which the API server's watch cache indexes: a label selector
        # would make it scan every pod of the cluster on each bind). A bind that got as far as the annotations
        # but not the Binding still holds the node lock, so under our lock every pod placed on the node by a
        # bind that ended is bound there; one left by a bind that died long ago is in the watch cache.
        query = [("fieldSelector", f"spec.nodeName={node}")]
        pods = await self._http.request("GET", core_path("pods"), query=query)
        items: list[dict[str, Any]] = pods.get("items") or []
        return items

    async def _watch_has_seen(self, version: str) -> bool:
        """Whether the pod watch has applied every pod change up to resourceVersion `version` (our node lock
        write's), waiting a few milliseconds for it while other binds keep pod events coming.

        Then the cache holds every pod a bind placed on the node before our lock: such a bind wrote its
        annotations while it held the lock, so before our write, and a watch delivers changes in
        resourceVersion order. A LIST of the node's pods now would show nothing more, so it is skipped."""
        if self._pods_applied is None or not version.isdigit():
            return False
        target = int(version)
        for attempt in range(_CATCH_UP_POLLS + 1):
            applied = self._pods_applied()
            if applied.isdigit() and int(applied) >= target:
                return True
            if attempt == _CATCH_UP_POLLS or len(self._inflight) <= 1:
                return False  # no other bind under way: the next pod event may be far off
            await asyncio.sleep(_CATCH_UP_STEP_SECONDS)
        return False

    async def _bound_node(self, namespace: str, name: str) -> str | None:
        """The node the pod is bound to now (None when unbound or unreadable)."""
        try:
            spec = (await self._read_pod(namespace, name)).get("spec") or {}
        except Exception:
            return None
        node = spec.get("nodeName")
        return node if isinstance(node, str) and node else None

    async def _patch_pod(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        path = core_path("pods", name, namespace=namespace)
        await self._http.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def _post_binding(
        self,
        namespace: str,
        name: str,
        uid: str,
        node: str,
        *,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        resource_version: str = "",
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            metadata["uid"] = uid  # a precondition: the pod this bind is for, not a namesake
        if resource_version:
            metadata["resourceVersion"] = resource_version  # a precondition: the pod as this bind saw it
        if annotations:
            metadata["annotations"] = dict(annotations)
        if labels:
            metadata["labels"] = dict(labels)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        await self._http.request(
            "POST", core_path("pods", name, namespace=namespace, subresource="binding"), body=body
        )

    # --- the verb -------------------------------------------------------------------------------------------

    async def bind(self, args: BindArgs) -> str:
        """Bind the pod; returns "" on success or the error text for `ExtenderBindingResult.Error`."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        pending = self.pending
        pending[args.node] = pending.get(args.node, 0) + 1
        try:
            return await self._bind(args)
        finally:
            if task is not None:
                self._inflight.discard(task)
            left = pending.get(args.node, 1) - 1
            if left > 0:
                pending[args.node] = left
            else:
                pending.pop(args.node, None)

    async def _bind(self, args: BindArgs) -> str:
        pod_ref = {"namespace": args.pod_namespace, "name": args.pod_name, "uid": args.pod_uid}
        started = time.monotonic()
        log_ctx = log.bind(pod=f"{args.pod_namespace}/{args.pod_name}", node=args.node)
        if self._closing:
            return "scheduler is shutting down"
        if not self._is_leader():
            return "this scheduler replica is not the leader; only the leader binds"
        ctx: PodContext | None = None
        try:
            recent = self.recent_pods.take_with_context(args.pod_namespace, args.pod_name, args.pod_uid)
            if recent is not None:
                pod, ctx = recent
            else:
                pod = await self._read_pod(args.pod_namespace, args.pod_name)
        except ApiException as exc:
            error = f"failed to get pod {args.pod_namespace}/{args.pod_name}: {_api_error(exc)}"
            self._events.record(pod_ref, [EventText(WARNING, "BindingFailed", error)])
            log_ctx.warning("bind_failed", error=error)
            return error
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return f"failed to get pod {args.pod_namespace}/{args.pod_name}: {exc}"
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if args.pod_uid and uid != args.pod_uid:
            error = f"pod {args.pod_namespace}/{args.pod_name} has uid {uid}, not {args.pod_uid}"
            log_ctx.warning("bind_failed", error=error)
            return error
        pod_ref["uid"] = uid
        if ctx is None:
            ctx = pod_context(pod, self._request_config)
        done = already_bound(pod, args.node, gpu=ctx.has_gpu_request)
        if done is not None:
            error = done
        elif not ctx.has_gpu_request:
            error = await self._post_only(args, uid)
        else:
            guard = self._guards.setdefault(args.node, asyncio.Lock())
            remaining = self._lock_wait - (time.monotonic() - started)
            try:
                # `asyncio.timeout` arms a timer only; `wait_for` would start a task per bind.
                async with asyncio.timeout(max(remaining, 0.001)):
                    await guard.acquire()
            except TimeoutError:
                error = (
                    f"timed out after {self._lock_wait:g}s waiting for node {args.node} to be unlocked: "
                    "node lock contention"
                )
            else:
                try:
                    error = await self._bind_gpu_pod(args, pod, uid, started, log_ctx, ctx)
                finally:
                    guard.release()
        if error:
            self._events.record(pod_ref, [EventText(WARNING, "BindingFailed", error)])
            log_ctx.warning("bind_failed", error=error)
        else:
            self._events.record(
                pod_ref,
                [
                    EventText(
                        NORMAL,
                        "BindingSucceed",
                        f"Successfully binding node [{args.node}] to {args.pod_namespace}/{args.pod_name}",
                    )
                ],
            )
            if _std_log.isEnabledFor(logging.DEBUG):
                # Debug level: the pod's BindingSucceed event and the bind metrics record every bind, and
                # a rendered line per pod cost a tenth of the extender's CPU per pod (failures: warnings).
                log_ctx.debug("bound", seconds=round(time.monotonic() - started, 3))
        return error

    async def _post_only(self, args: BindArgs, uid: str) -> str:
        try:
            await self._post_binding(args.pod_namespace, args.pod_name, uid, args.node)
        except ApiException as exc:
            return f"failed to bind pod {args.pod_namespace}/{args.pod_name}: {_api_error(exc)}"
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return f"failed to bind pod {args.pod_namespace}/{args.pod_name}: {exc}"
        return ""

    async def _bind_gpu_pod(
        self, args: BindArgs, pod: Mapping[str, Any], uid: str, started: float, log_ctx: Any, ctx: PodContext
    ) -> str:
        """Bind from `pod` (the filtered copy or a GET); when the pod moved on since that copy (a duplicate
        request for it may have bound it meanwhile), once more from a fresh read."""
        try:
            return await self._bind_gpu_pod_from(args, pod, uid, started, log_ctx, fresh=False, ctx=ctx)
        except _StalePod:
            log_ctx.debug("bind_pod_changed_rereading")
        ns, name = args.pod_namespace, args.pod_name
        try:
            current = await self._read_pod(ns, name)
        except Exception as exc:
            return _describe(exc, ns, name, args.node)
        if str((current.get("metadata") or {}).get("uid") or "") != uid:
            return f"pod {ns}/{name} was replaced while waiting to bind"
        try:
            return await self._bind_gpu_pod_from(args, current, uid, started, log_ctx, fresh=True)
        except _StalePod:
            return f"pod {ns}/{name} kept changing while binding; try again"

    async def _bind_gpu_pod_from(
        self,
        args: BindArgs,
        pod: Mapping[str, Any],
        uid: str,
        started: float,
        log_ctx: Any,
        *,
        fresh: bool,
        ctx: PodContext | None = None,
    ) -> str:
        """One bind attempt from `pod`. Unless the copy was just read (`fresh`), signs that an earlier bind
        of this pod got further than the copy shows (the cache counts the pod; its node lock is already the
        pod's) raise `_StalePod` before anything of that bind's is touched: its reservation and the lock it
        left for the device plugin must survive this attempt's rollback."""
        ns, name, node = args.pod_namespace, args.pod_name, args.node
        progress = _Progress()
        if not fresh and self._cache.holds(uid):
            raise _StalePod()
        try:
            done = already_bound(pod, node, gpu=True)
            if done is not None:
                return done
            if ctx is None:  # `ctx` is the context of `pod` when the caller already decoded it
                ctx = pod_context(pod, self._request_config)
            lock_version = ""
            if ctx.app_requests_gpu:
                self._held[node] = (ns, name)
                progress.lock_attempted = True
                wrote = await self._locks.acquire(
                    node, ns, name, wait_seconds=self._lock_wait, started=started
                )
                written = self._locks.written_versions.pop(node, "")
                if not wrote and not fresh:
                    progress.lock_attempted = False  # an earlier bind's lock: not this attempt's to release
                    raise _StalePod()
                progress.lock_taken = True
                lock_version = written if wrote else ""
            # The pods on the node as of now: the watch's when it has already applied every pod change up to
            # our lock write (docs/hami-wire.md#node-lock), else a fresh read.
            on_node = None if await self._watch_has_seen(lock_version) else await self._pods_on_node(node)
            snapshot = self._cache.snapshot(node, exclude_uid=uid, fresh_pods=on_node)
            if snapshot is None:
                health = self._cache.health(node)
                why = health.reason if health is not None else "node unregistered"
                raise BindError(f"node {node} cannot take GPU pods: {why}")
            try:
                # The filter's verdict for this pod shape on this very node state, when the node is unchanged.
                fit = fit_on(ctx, snapshot, self._policy, self._cache.quota_view(exclude_uid=uid))
            except PodAnnotationError as exc:
                raise BindError(str(exc)) from None
            if not fit.fits:
                raise BindError(f"pod {ns}/{name} does not fit node {node} any more: {fit.reason}")
            self._cache.reserve(
                Reservation(
                    uid=uid,
                    namespace=ns,
                    name=name,
                    node=node,
                    allocation=fit.devices,
                    init_count=ctx.init_count,
                    sidecar_slots=ctx.sidecar_slots,
                    mig=tuple((a.gpu_uuid, a.placement) for a in fit.mig),
                )
            )
            progress.reserved = True
            try:
                annotations = bind_annotations(node, fit, self._clock())
            except WireFormatError as exc:
                raise BindError(f"cannot encode the allocation of {ns}/{name}: {exc}") from None
            metadata = pod.get("metadata") or {}
            version = str(metadata.get("resourceVersion") or "")
            labels = {wire.VGPU_NODE: node}
            if self._metadata_in_binding:
                await self._bind_with_metadata(args, uid, annotations, labels, version, log_ctx, fresh=fresh)
            else:
                progress.before_annotations = str_map(metadata.get("annotations"))
                progress.before_labels = str_map(metadata.get("labels"))
                progress.written = annotations
                patch_meta: dict[str, Any] = {"annotations": annotations, "labels": labels}
                if version:
                    # The precondition: the patch applies only to the pod as this bind saw it.
                    patch_meta["resourceVersion"] = version
                try:
                    await self._patch_pod(ns, name, {"metadata": patch_meta})
                except ApiException as exc:
                    if exc.status == 409:
                        progress.written = None  # refused as a whole: nothing to revert
                        raise _StalePod() from None
                    raise
                await self._bind_checked(args, uid, log_ctx)
            self._cache.commit_reservation(uid)
            if _std_log.isEnabledFor(logging.DEBUG):
                log_ctx.debug("allocation_written", devices=annotations[wire.VGPU_DEVICES_ALLOCATED])
            return ""
        except BaseException as exc:
            error = _describe(exc, ns, name, node)
            if isinstance(exc, LockError):
                progress.lock_attempted = False  # the lock was never ours: nothing to release
            await asyncio.shield(self._rollback(ns, name, uid, node, progress, log_ctx))
            if not isinstance(exc, Exception) or isinstance(exc, _StalePod):
                raise
            return error
        finally:
            if self._held.get(node) == (ns, name):
                del self._held[node]

    async def _bind_checked(
        self, args: BindArgs, uid: str, log_ctx: Any, *, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """POST the Binding (with `metadata`: annotations, labels, resourceVersion). A failure where the pod
        is on this node anyway (a timed-out POST that did land) counts as done: rolling back a bound pod's
        allocation would strand it."""
        ns, name, node = args.pod_namespace, args.pod_name, args.node
        try:
            await self._post_binding(ns, name, uid, node, **(metadata or {}))
        except Exception:
            if await self._bound_node(ns, name) != node:
                raise
            log_ctx.info("binding_found_done_after_error")

    async def _bind_with_metadata(
        self,
        args: BindArgs,
        uid: str,
        annotations: Mapping[str, str],
        labels: Mapping[str, str],
        version: str,
        log_ctx: Any,
        *,
        fresh: bool,
    ) -> None:
        """One write for allocation and node: the API server merges a Binding's annotations (and, from
        Kubernetes 1.35 with PodTopologyLabelsAdmission, its labels) into the pod, under the uid and
        resourceVersion preconditions (docs/hami-wire.md#bind). A conflict on the copy the bind started from
        sends it back to a fresh read, as the patch's precondition does; nothing needs reverting after a
        failure, the pod was not touched."""
        try:
            await self._bind_checked(
                args,
                uid,
                log_ctx,
                metadata={"annotations": annotations, "labels": labels, "resource_version": version},
            )
        except ApiException as exc:
            if exc.status == 409 and not fresh:
                raise _StalePod() from None
            raise

    async def _rollback(
        self, ns: str, name: str, uid: str, node: str, progress: _Progress, log_ctx: Any
    ) -> None:
        if progress.written is not None:
            body = revert_patch(
                progress.before_annotations or {}, progress.before_labels or {}, progress.written
            )
            try:
                await self._patch_pod(ns, name, body)
            except Exception as exc:  # the pod may be gone; nothing else to undo there
                log_ctx.warning("bind_rollback_patch_failed", error=str(exc))
        if progress.reserved:
            self._cache.drop_reservation(uid)
        if progress.lock_taken or progress.lock_attempted:
            # Owner-checked: after a failed attempt this only removes a lock the attempt did write.
            await self._locks.release(node, ns, name)

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def held_locks(self) -> dict[str, tuple[str, str]]:
        """Node locks taken by binds still under way (node -> pod namespace, name)."""
        return dict(self._held)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Refuse new binds and give those under way `timeout` seconds; cancel the rest (each rolls back:
        annotations restored, reservation dropped, its node lock released), then release any node lock a
        bind still holds, so no lock outlives the process (HAMi#2330)."""
        self._closing = True
        pending = set(self._inflight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10.0)
        for node, (ns, name) in list(self._held.items()):
            released = await self._locks.release(node, ns, name)
            log.info("node_lock_released_on_shutdown", node=node, pod=f"{ns}/{name}", released=released)
        self._held.clear()
        if self._own_http:
            await self._http.close()


def _describe(exc: BaseException, namespace: str, name: str, node: str) -> str:
    if isinstance(exc, BindError | LockError):
        return str(exc)
    if isinstance(exc, ApiException):
        return f"failed to bind pod {namespace}/{name} to node {node}: {_api_error(exc)}"
    if isinstance(exc, asyncio.CancelledError):
        return "bind cancelled"
    return f"failed to bind pod {namespace}/{name} to node {node}: {type(exc).__name__}: {exc}"
