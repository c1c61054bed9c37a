"""A kube-scheduler stand-in for local mode and tests: a real KubeSchedulerConfiguration, real extender calls.

``kube-vgpu-local kube-scheduler --server URL --config FILE`` reads a ``kubescheduler.config.k8s.io/v1``
``KubeSchedulerConfiguration`` (``profiles[].schedulerName`` and ``extenders[]``, the stanza HAMi's chart
writes) and schedules, like kube-scheduler, every pod whose ``spec.schedulerName`` names a profile and that
has no ``spec.nodeName``:

1. **Filter.** Candidate nodes are Ready, not ``spec.unschedulable``, without an untolerated NoSchedule /
   NoExecute taint, matching the pod's ``nodeSelector`` and required node affinity, and with enough
   allocatable for the pod's requests (cpu, memory, pods and any other resource, minus what bound pods
   request) - except resources an extender's ``managedResources`` entry marks ``ignoredByScheduler``.
2. **Extenders.** An extender is asked only about pods requesting one of its ``managedResources`` (all pods
   when it lists none). ``POST <urlPrefix>/<filterVerb>`` with ``{"Pod", "Nodes": null, "NodeNames"}`` when
   ``nodeCacheCapable`` (else full ``Nodes``, ``"NodeNames": null``); its ``FailedNodes`` reasons go into
   the FailedScheduling message. With two or more nodes left, ``<prioritizeVerb>`` scores (0-10) count
   ``score x weight x 10`` on top of our own least-allocated score (0-100, kube-scheduler's scale); ties go
   to the first node name. A filter error fails the attempt unless the extender is ``ignorable``; a
   prioritize error is ignored, as in kube-scheduler.
3. **Bind.** ``<bindVerb>`` with ``{"PodName", "PodNamespace", "PodUID", "Node"}`` on the extender that has
   one, else a ``pods/binding`` created here. Success records Event ``Scheduled`` (Normal, "Successfully
   assigned ns/name to node"); any failure records ``FailedScheduling`` (Warning; repeated identical events
   are counted on one Event like client-go's recorder), sets the pod's ``PodScheduled=False`` condition and
   retries after a backoff (``podInitialBackoffSeconds`` doubling up to ``podMaxBackoffSeconds``); a node
   change or a pod leaving a node retries waiting pods sooner.

Not modelled: preemption (``preemptVerb`` is accepted and never called), pod (anti-)affinity, topology
spread, host ports, volumes, leader election, scoring plugins other than least-allocated.

The configuration model is in ``kube_scheduler_config.py``, the pure filter and score in
``kube_scheduler_fit.py``, the extender client in ``kube_scheduler_extender.py`` and what an attempt writes
back (binding, PodScheduled condition, Events) in ``kube_scheduler_outcomes.py``; this module holds the
scheduling loop (queue, backoff, assumed pods) and the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import ConfigError, KubeAccess
from services.common.entrypoint import wait_for_shutdown
from services.common.kube import KUBE_ERRORS, new_api_client
from services.common.log import get_logger
from services.common.reflector import Reflector, object_key
from sim.local.kube_scheduler_config import KubeSchedulerConfiguration, load_scheduler_config
from sim.local.kube_scheduler_extender import Extender, ExtenderError
from sim.local.kube_scheduler_fit import (
    NodeUsage,
    combine_scores,
    filter_nodes,
    fit_error_message,
    least_allocated_score,
    name_of,
    needs_scheduling,
    node_usage,
    object_meta,
    object_spec,
    occupies_node,
    pod_requests,
    select_host,
)
from sim.local.kube_scheduler_outcomes import OutcomeWriter, api_error_text

Obj = dict[str, Any]

# An API server that is down or restarting: the attempt is retried with the pod's backoff, as
# kube-scheduler requeues a pod whose binding or status write failed; the loop itself never dies.
log = get_logger("kube-scheduler")

#: How long a pod bound by us is counted on its node before the watch shows it there.
ASSUME_TTL = 30.0


# --- the scheduler -----------------------------------------------------------------------------------------


class KubeSchedulerStandIn:
    """The scheduling loop over list+watch caches of pods and nodes; see the module docstring.

    ``await KubeSchedulerStandIn(config, api).run(stop)`` schedules until ``stop`` is set.
    """

    def __init__(
        self,
        config: KubeSchedulerConfiguration,
        api: client.ApiClient,
        *,
        instance: str | None = None,
        sync_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.core = client.CoreV1Api(api)
        self.instance = instance or socket.gethostname()
        self.sync_timeout = sync_timeout
        self.outcomes = OutcomeWriter(self.core, self.instance)
        self.names = config.scheduler_names
        self.extenders: list[Extender] = []
        self.ignored: frozenset[str] = frozenset(
            r.name for e in config.extenders for r in e.managed_resources if r.ignored_by_scheduler
        )
        self._pods: Reflector | None = None
        self._nodes: Reflector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: dict[str, None] = {}
        self._backoff: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._last_attempt: dict[str, float] = {}
        self._assumed: dict[str, tuple[Obj, float]] = {}
        self._in_flight: str | None = None
        self._wake = asyncio.Event()
        #: Scheduling attempts made, for tests and logs.
        self.attempts = 0

    # --- cache events (reflector threads -> loop) ------------------------------------------------------

    def _threadsafe(self, handler: Callable[[str, Obj], None]) -> Callable[[str, Obj], None]:
        def forward(event: str, obj: Obj) -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(handler, event, obj)

        return forward

    def _on_pod(self, event: str, pod: Obj) -> None:
        key = object_key(pod)
        if event == "DELETED" or not needs_scheduling(pod, self.names):
            self._forget(key)
            if event == "DELETED":
                self.outcomes.forget_pod(str(object_meta(pod).get("uid") or ""))
            # A pod leaving its node frees room for the pods that wait.
            if object_spec(pod).get("nodeName") and (
                event == "DELETED" or self._phase(pod) in ("Succeeded", "Failed")
            ):
                self._cluster_changed()
            return
        if key not in self._backoff and key != self._in_flight and key not in self._assumed:
            self._active[key] = None
            self._wake.set()

    def _on_node(self, event: str, node: Obj) -> None:
        self._cluster_changed()

    @staticmethod
    def _phase(pod: Mapping[str, Any]) -> str:
        status = pod.get("status")
        return str(status.get("phase") or "") if isinstance(status, Mapping) else ""

    def _forget(self, key: str) -> None:
        self._active.pop(key, None)
        self._backoff.pop(key, None)
        self._attempts.pop(key, None)
        self._last_attempt.pop(key, None)
        self._assumed.pop(key, None)

    def _cluster_changed(self) -> None:
        """Something that may make waiting pods fit: retry them once their initial backoff has passed."""
        initial = float(self.config.pod_initial_backoff_seconds)
        for key, due in list(self._backoff.items()):
            self._backoff[key] = min(due, self._last_attempt.get(key, 0.0) + initial)
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        session = aiohttp.ClientSession()
        self.extenders = [Extender(e, session) for e in self.config.extenders]
        self._nodes = Reflector(self.core.list_node, name="nodes", on_event=self._threadsafe(self._on_node))
        self._pods = Reflector(
            self.core.list_pod_for_all_namespaces, name="pods", on_event=self._threadsafe(self._on_pod)
        )
        log.info(
            "kube_scheduler_starting",
            profiles=sorted(self.names),
            extenders=[e.name for e in self.extenders],
        )
        self._nodes.start()
        self._pods.start()
        worker = asyncio.create_task(self._work())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done():
                worker.result()  # surfaces a crash
        finally:
            for task in (worker, stopper):
                task.cancel()
            await asyncio.gather(worker, stopper, return_exceptions=True)
            await asyncio.gather(
                asyncio.to_thread(self._nodes.stop),
                asyncio.to_thread(self._pods.stop),
                return_exceptions=True,
            )
            await session.close()
            log.info("kube_scheduler_stopped")

    async def _work(self) -> None:
        assert self._pods is not None and self._nodes is not None
        deadline = time.monotonic() + self.sync_timeout
        for reflector in (self._nodes, self._pods):
            # Polled rather than waited for in a thread, so a stop during start-up does not linger.
            while not reflector.has_synced() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not reflector.has_synced():
                log.warning(
                    "kube_scheduler_cache_not_synced", cache=reflector.name, timeout=self.sync_timeout
                )
        log.info("kube_scheduler_synced", nodes=len(self._nodes), pods=len(self._pods))
        while True:
            now = time.monotonic()
            self._expire_assumed(now)
            for key, due in list(self._backoff.items()):
                if due <= now:
                    del self._backoff[key]
                    self._active[key] = None
            if self._active:
                key = next(iter(self._active))
                del self._active[key]
                self._in_flight = key
                try:
                    await self.schedule_one(key)
                except KUBE_ERRORS as exc:
                    self._retry_later(key, exc)
                finally:
                    self._in_flight = None
                continue
            deadlines = list(self._backoff.values()) + [t + ASSUME_TTL for _, t in self._assumed.values()]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _expire_assumed(self, now: float) -> None:
        for key, (_, since) in list(self._assumed.items()):
            if now - since > ASSUME_TTL:
                del self._assumed[key]
                pod = self._pods.get(key) if self._pods is not None else None
                if pod is not None and needs_scheduling(pod, self.names):
                    self._active[key] = None

    def _usage(self) -> dict[str, NodeUsage]:
        assert self._pods is not None
        pods = self._pods.objects()
        seen = {object_key(p) for p in pods if occupies_node(p)}
        assumed = [pod for key, (pod, _) in self._assumed.items() if key not in seen]
        return node_usage([*pods, *assumed])

    async def schedule_one(self, key: str) -> None:
        """One scheduling attempt for the pod cached under ``key``."""
        assert self._pods is not None and self._nodes is not None
        pod = self._pods.get(key)
        if pod is None or not needs_scheduling(pod, self.names) or key in self._assumed:
            return
        self.attempts += 1
        self._last_attempt[key] = time.monotonic()
        nodes = self._nodes.objects()
        result = filter_nodes(pod, nodes, self._usage(), self.ignored)
        feasible, reasons = result.feasible, dict(result.reasons)
        interested = [e for e in self.extenders if e.interested(pod)]
        for extender in interested:
            if not feasible or not extender.config.filter_verb:
                continue
            try:
                passed, failed, unresolvable = await extender.filter(pod, feasible)
            except ExtenderError as exc:
                if extender.config.ignorable:
                    log.warning("extender_filter_ignored", extender=extender.name, pod=key, error=str(exc))
                    continue
                await self._failed(pod, str(exc), "SchedulerError")
                return
            for node, message in {**failed, **unresolvable}.items():
                reasons[node] = [message]
            keep = set(passed)
            feasible = [n for n in feasible if name_of(n) in keep]
        if not feasible:
            await self._failed(pod, fit_error_message(len(nodes), reasons), "Unschedulable")
            return
        host = name_of(feasible[0]) if len(feasible) == 1 else await self._score(pod, feasible, interested)
        binder = next((e for e in interested if e.config.bind_verb), None)
        try:
            if binder is not None:
                await binder.bind(pod, host)
            else:
                await self.outcomes.bind(pod, host)
        except ExtenderError as exc:
            await self._failed(pod, f"binding rejected: {exc}", "SchedulerError")
            return
        except ApiException as exc:
            await self._failed(pod, f"binding rejected: {api_error_text(exc)}", "SchedulerError")
            return
        assumed = json.loads(json.dumps(pod))
        assumed.setdefault("spec", {})["nodeName"] = host
        self._assumed[key] = (assumed, time.monotonic())
        self._attempts.pop(key, None)
        md = object_meta(pod)
        log.info("pod_scheduled", pod=key, node=host, feasible=len(feasible), nodes=len(nodes))
        await self.outcomes.record(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {md.get('namespace')}/{md.get('name')} to {host}",
            "Binding",
        )

    async def _score(self, pod: Obj, feasible: Sequence[Obj], interested: Sequence[Extender]) -> str:
        usage = self._usage()
        requests = pod_requests(pod)
        own = {
            name_of(n): least_allocated_score(requests, n, usage.get(name_of(n), NodeUsage()))
            for n in feasible
        }
        extender_scores: list[tuple[Mapping[str, int], int]] = []
        for extender in interested:
            if not extender.config.prioritize_verb:
                continue
            try:
                scores = await extender.prioritize(pod, feasible)
            except ExtenderError as exc:  # kube-scheduler ignores prioritize errors
                log.warning("extender_prioritize_ignored", extender=extender.name, error=str(exc))
                continue
            extender_scores.append((scores, extender.config.weight))
        totals = combine_scores([name_of(n) for n in feasible], own, extender_scores)
        log.debug("scores", pod=object_key(pod), totals=totals)
        return select_host(totals)

    def _back_off(self, key: str) -> float:
        """Park `key` for its next backoff (initial doubling up to the maximum); the delay in seconds."""
        attempts = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempts
        delay = min(
            float(self.config.pod_max_backoff_seconds),
            self.config.pod_initial_backoff_seconds * 2.0 ** (attempts - 1),
        )
        self._backoff[key] = time.monotonic() + delay
        return delay

    def _retry_later(self, key: str, exc: BaseException) -> None:
        """The API server could not be reached mid-attempt: nothing to record there, try again later."""
        delay = self._back_off(key)
        log.warning(
            "schedule_attempt_failed", pod=key, error=str(exc) or type(exc).__name__, retry_in_s=delay
        )

    async def _failed(self, pod: Obj, message: str, reason: str) -> None:
        key = object_key(pod)
        delay = self._back_off(key)
        log.info("pod_unschedulable", pod=key, reason=reason, message=message, retry_in_s=delay)
        await self.outcomes.record(pod, "Warning", "FailedScheduling", message, "Scheduling")
        await self.outcomes.set_unschedulable(pod, reason, message)


# --- process ----------------------------------------------------------------------------------------------


async def serve(config: KubeSchedulerConfiguration, server: str) -> None:
    """Runs the stand-in against ``server`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()

    async def on_signal() -> None:
        await wait_for_shutdown()
        log.info("kube_scheduler_signal", action="stopping")
        stop.set()

    waiter = asyncio.create_task(on_signal())
    try:
        with new_api_client(KubeAccess(server=server)) as api:
            await KubeSchedulerStandIn(config, api).run(stop)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


def run_cli(server: str, config_path: str) -> int:
    """``kube-vgpu-local kube-scheduler``: 0 after a clean stop, 2 on a bad configuration."""
    try:
        config = load_scheduler_config(config_path)
    except ConfigError as exc:
        print(f"kube-vgpu-local kube-scheduler: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, server))
    return 0
