"""The running scheduler: caches fed by watch threads, the extender, metrics and gRPC servers, the
registration/handshake loop, and an orderly stop.

`run` is the process (`cli.main` hands it the parsed config): it loads the device config, starts a
`SchedulerRuntime` serving the SchedulerService (`scheduler_services`) and stops it on SIGTERM. The
integration tests start `SchedulerRuntime` in-process (ports 0 pick free ports). The SchedulerService
(`services.scheduler.servicer`) reads `runtime.cache` (a `UsageCache`: nodes, pods, quotas, reservations,
snapshots) and calls `services.scheduler.filtering.evaluate` for ExplainPod/Simulate; `grpc_services()` is
where it is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from kubernetes import client
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from services.common import wire
from services.common.config import ConfigError, split_host_port
from services.common.device_config import DeviceConfig, load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, wait_for_shutdown
from services.common.grpc_server import GrpcServerHandle, ServiceRegistration, build_server
from services.common.http_server import HttpServer
from services.common.kube import (
    KubeAccessError,
    call_json,
    core_path,
    describe_access,
    new_api_client,
    raw_json,
)
from services.common.kube_async import AsyncKube
from services.common.log import get_logger
from services.common.reflector import Reflector
from services.scheduler.bind import Binder
from services.scheduler.bind_writes import binding_copies_labels
from services.scheduler.cache import UsageCache
from services.scheduler.config import SchedulerConfig
from services.scheduler.decoders import node_state_fields, pod_usage_fields
from services.scheduler.events import EventRecorder
from services.scheduler.extender import MAX_BODY_BYTES, Extender
from services.scheduler.health import handshake_value
from services.scheduler.leader import LeaderMonitor, LeaderState, pod_role_labeller
from services.scheduler.metrics import SchedulerMetrics, metrics_app
from services.scheduler.nodelock import MERGE_PATCH, NodeLocks
from services.scheduler.offload import API_THREADS, offload
from services.scheduler.policy import SchedulingPolicy
from services.scheduler.servicer import SchedulerServicer

__all__ = ["SchedulerRuntime", "run", "scheduler_services"]

log = get_logger("kube-vgpu-scheduler")

# Committed reservations whose pod the watch never showed are dropped after this long.
_RESERVATION_MAX_AGE: Final = 120.0
# Garbage collector thresholds once the caches are listed (and the listed objects frozen): young collections
# less often, so a verb is rarely the one that pays for one.
_GC_THRESHOLDS: Final = (20_000, 50, 100)
# Connections of the event loop's HTTP pools: binds and node locks (a burst has dozens of binds in flight,
# a few calls each), and events (best effort; a burst's excess waits in the recorder's queue).
_BIND_CONNECTIONS: Final = 64
_EVENT_CONNECTIONS: Final = 8
_gc_tuned = False


def _api_client(cfg: SchedulerConfig) -> client.ApiClient:
    api = new_api_client(cfg.kube)
    # One connection per API thread, so a burst of binds does not churn connections.
    api.configuration.connection_pool_maxsize = API_THREADS
    api.rest_client = rest.RESTClientObject(api.configuration)
    return api


class SchedulerRuntime:
    """Everything the scheduler process runs; `await start()`, then `await stop()`."""

    def __init__(
        self,
        cfg: SchedulerConfig,
        device_config: DeviceConfig | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tls_poll_seconds: float = 10.0,
        grpc_services: Callable[[SchedulerRuntime], Sequence[ServiceRegistration]] | None = None,
    ) -> None:
        self.cfg = cfg
        self._grpc_factory = grpc_services
        self.device_config = device_config or DeviceConfig()
        nvidia = self.device_config.nvidia
        self.request_config = nvidia.request_config()
        self.policy = SchedulingPolicy(cfg.node_scheduler_policy, cfg.gpu_scheduler_policy)
        self.cache = UsageCache(
            memory_resource=nvidia.resource_memory_name,
            core_resource=nvidia.resource_core_name,
            memory_factor=nvidia.memory_factor,
            clock=clock,
        )
        self.leader = LeaderState(enabled=cfg.leader_elect, identity=cfg.identity)
        self.metrics = SchedulerMetrics(self.cache)
        self._clock = clock
        self.api: client.ApiClient | None = None
        self._watch_api: client.ApiClient | None = None
        self.core: client.CoreV1Api | None = None
        # The binds' and node locks' API calls, on the event loop (same server, TLS and credentials as `api`).
        self.kube_http: AsyncKube | None = None
        self._events_http: AsyncKube | None = None
        self.reflectors: list[Reflector] = []
        self.events = EventRecorder(None, cfg.scheduler_name, enabled=False)
        self.locks: NodeLocks | None = None
        self.binder: Binder | None = None
        self.extender: Extender | None = None
        self.grpc: GrpcServerHandle | None = None
        self._runners: list[web.AppRunner] = []
        self._extender_server: HttpServer | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._leader_task: asyncio.Task[None] | None = None
        self.leader_monitor: LeaderMonitor | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._tls_poll = tls_poll_seconds
        self._ssl: ssl.SSLContext | None = None
        self._tls_stamp: bytes | None = None
        self.kube_error: str | None = None

    # --- readiness ------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every cache has listed once (HAMi's `synced`); never true without an API server."""
        return bool(self.reflectors) and all(r.has_synced() for r in self.reflectors)

    def grpc_services(self) -> Sequence[ServiceRegistration]:
        """Services served next to health and reflection on `grpc_bind`: what the `grpc_services` factory
        given at construction builds from this runtime. The SchedulerService is built there over
        `self.cache` (plus `self.policy` and `self.request_config` for ExplainPod/Simulate)."""
        return self._grpc_factory(self) if self._grpc_factory is not None else ()

    # --- start ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        try:
            self.api = _api_client(cfg)
            self._watch_api = new_api_client(cfg.kube)
        except KubeAccessError as exc:
            # Keep serving probes and metrics so the problem is visible; filter/bind answer with an error.
            self.kube_error = str(exc)
            log.error("kube_unavailable", error=str(exc))
        if self.api is not None and self._watch_api is not None:
            log.info("kube_access", via=describe_access(cfg.kube))
            self.core = client.CoreV1Api(self.api)
            self.kube_http = AsyncKube(self.api.configuration, connections=_BIND_CONNECTIONS)
            # Events on a pool of their own: best-effort writes never hold up a bind's calls.
            self._events_http = AsyncKube(self.api.configuration, connections=_EVENT_CONNECTIONS)
            self.events = EventRecorder(
                self.core,
                cfg.scheduler_name,
                enabled=cfg.emit_events,
                clock=self._clock,
                kube=self._events_http,
                loop=asyncio.get_running_loop(),
            )
            self.locks = NodeLocks(
                self.core,
                ttl_seconds=cfg.node_lock_ttl_seconds,
                clock=self._clock,
                node_view=self.cache.node_lock_view,
                kube=self.kube_http,
            )
            self.binder = Binder(
                self.core,
                self.cache,
                self.locks,
                self.events,
                policy=self.policy,
                request_config=self.request_config,
                lock_wait_seconds=cfg.bind_lock_wait_seconds,
                is_leader=self.leader.is_leader,
                clock=self._clock,
                kube=self.kube_http,
                pods_applied=self._pods_applied,
                metadata_in_binding=await self._binding_carries_metadata(),
            )
            self._start_reflectors(client.CoreV1Api(self._watch_api))
        self.extender = Extender(
            self.cache,
            self.binder,
            self.events,
            self.metrics,
            policy=self.policy,
            request_config=self.request_config,
            filter_mode=cfg.filter_mode,
            ready=self.ready,
            not_ready_error=(
                f"no Kubernetes API: {self.kube_error}"
                if self.kube_error
                else "scheduler caches are not synced yet"
            ),
            sync_wait_seconds=0.0 if self.kube_error else 10.0,
        )
        try:
            self._ssl = self._ssl_context()
            self.http_port = await self._serve_extender(self.extender, cfg.http_bind, self._ssl)
            self.metrics_port = await self._serve(metrics_app(self.metrics), cfg.metrics_bind_address, None)
            self.grpc = build_server(self.grpc_services(), cfg.grpc_bind)
            await self.grpc.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "scheduler_serving",
            extender_port=self.http_port,
            tls=cfg.cert_file is not None,
            metrics_port=self.metrics_port,
            grpc=self.grpc.target,
            filter_mode=cfg.filter_mode,
            node_policy=cfg.node_scheduler_policy,
            gpu_policy=cfg.gpu_scheduler_policy,
        )
        if self.core is not None:
            self._warm_task = asyncio.get_running_loop().create_task(self._after_sync())
            self._loop_task = asyncio.get_running_loop().create_task(self._registration_loop())
            self.leader_monitor = self._leader_monitor(self.core)
            self._leader_task = asyncio.get_running_loop().create_task(self.leader_monitor.run())
        if self._ssl is not None:
            self._tls_task = asyncio.get_running_loop().create_task(self._tls_loop())

    async def _after_sync(self) -> None:
        """Once the caches have listed: build every node's snapshot (the first filter then finds them ready),
        and move what the LIST left in memory out of the garbage collector's way (`gc.freeze`: the cached
        objects are never collected again, so collections stay short)."""
        while not self.ready():
            await asyncio.sleep(0.02)
        global _gc_tuned
        started = time.perf_counter()
        built = self.cache.warm()
        if not _gc_tuned:  # once per process (tests start many runtimes in one)
            _gc_tuned = True
            gc.collect()
            gc.freeze()
            gc.set_threshold(*_GC_THRESHOLDS)
        log.info(
            "caches_warmed",
            snapshots=built,
            frozen=gc.get_freeze_count(),
            seconds=round(time.perf_counter() - started, 3),
        )

    def _pods_applied(self) -> str:
        """The resourceVersion through which the pod watch has fed the cache ("" before it runs)."""
        for reflector in self.reflectors:
            if reflector.name == "pods":
                return reflector.applied_resource_version
        return ""

    def _start_reflectors(self, watch_core: client.CoreV1Api) -> None:
        cfg = self.cfg
        resync = cfg.resync_seconds or None
        self.reflectors = [
            Reflector(
                watch_core.list_node,
                name="nodes",
                label_selector=cfg.node_label_selector or None,
                on_event=self.cache.on_node_event,
                transform=node_state_fields,  # only what the cache reads is kept in memory
                resync_period=resync,
            ),
            Reflector(
                watch_core.list_pod_for_all_namespaces,
                name="pods",
                on_event=self.cache.on_pod_event,
                transform=pod_usage_fields,
                resync_period=resync,
            ),
            Reflector(
                watch_core.list_resource_quota_for_all_namespaces,
                name="resourcequotas",
                on_event=self.cache.on_quota_event,
                resync_period=resync,
            ),
        ]
        if cfg.leader_elect:
            assert self._watch_api is not None
            self.reflectors.append(
                Reflector(
                    client.CoordinationV1Api(self._watch_api).list_namespaced_lease,
                    name="lease",
                    list_kwargs={"namespace": cfg.lease_namespace},
                    field_selector=f"metadata.name={cfg.lease_name}",
                    on_event=self.leader.on_lease_event,
                    resync_period=resync,
                )
            )
        for reflector in self.reflectors:
            reflector.start()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.cfg.cert_file or not self.cfg.key_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls_stamp = self._tls_files_stamp()
        context.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        return context

    def _tls_files_stamp(self) -> bytes | None:
        """A digest of the certificate and key files (content, not mtime: a rotation within the same
        second, or a Secret volume's symlink swap, must still be noticed)."""
        digest = hashlib.sha256()
        try:
            for path in (self.cfg.cert_file or "", self.cfg.key_file or ""):
                digest.update(Path(path).read_bytes())
        except OSError:
            return None
        return digest.digest()

    def reload_tls(self) -> bool:
        """Load the certificate and key again when their files changed (cert-manager rotation, as HAMi's
        certwatcher does); new connections use them, open ones keep theirs. True when reloaded."""
        if self._ssl is None or not self.cfg.cert_file or not self.cfg.key_file:
            return False
        stamp = self._tls_files_stamp()
        if stamp is None or stamp == self._tls_stamp:
            return False
        try:
            self._ssl.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        except (OSError, ssl.SSLError) as exc:  # e.g. the key written before the certificate: retry later
            log.warning("tls_reload_failed", error=str(exc))
            return False
        self._tls_stamp = stamp
        log.info("tls_reloaded", cert_file=self.cfg.cert_file)
        return True

    async def _tls_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tls_poll)
            self.reload_tls()

    async def _binding_carries_metadata(self) -> bool:
        """`bind_writes`: `binding` or `patch-then-binding` as configured; `auto` asks the API server's
        `/version` (docs/hami-wire.md#bind) and falls back to HAMi's two writes when it cannot tell."""
        mode = self.cfg.bind_writes
        if mode != "auto":
            return mode == "binding"
        assert self.kube_http is not None
        try:
            version = await self.kube_http.request("GET", "/version", timeout=10.0)
        except Exception as exc:
            log.warning("bind_writes_version_unknown", error=str(exc), bind_writes="patch-then-binding")
            return False
        in_binding = isinstance(version, dict) and binding_copies_labels(version)
        log.info(
            "bind_writes",
            server=version.get("gitVersion") if isinstance(version, dict) else None,
            bind_writes="binding" if in_binding else "patch-then-binding",
        )
        return in_binding

    async def _serve_extender(
        self, extender: Extender, address: str, ssl_context: ssl.SSLContext | None
    ) -> int:
        host, port = split_host_port(address)
        server = HttpServer(extender.routes(), name="extender", max_body=MAX_BODY_BYTES)
        bound = await server.start(host or None, port, ssl_context)
        self._extender_server = server
        return bound

    async def _serve(self, app: web.Application, address: str, ssl_context: ssl.SSLContext | None) -> int:
        host, port = split_host_port(address)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host or None, port, ssl_context=ssl_context)
        await site.start()
        bound: Any = runner.addresses[0]
        return int(bound[1])

    # --- leadership (docs/hami-wire.md#leader-election) -----------------------------------------------------

    def _leader_monitor(self, core: client.CoreV1Api) -> LeaderMonitor:
        cfg = self.cfg
        label = None
        if cfg.pod_name and cfg.pod_namespace:
            label = pod_role_labeller(core, cfg.pod_namespace, cfg.pod_name)
        else:
            log.info("scheduler_role_label_skipped", reason="POD_NAME or POD_NAMESPACE is not set")
        return LeaderMonitor(self.leader, on_gain=self._leadership_gained, label=label)

    async def _leadership_gained(self) -> None:
        """Leadership gained: a registration pass as soon as the caches have listed (HAMi re-registers)."""
        while not self.ready():
            await asyncio.sleep(0.1)
        await self.registration_pass()

    # --- registration / handshake loop (docs/hami-wire.md#registration-and-health) --------------------------

    async def _registration_loop(self) -> None:
        while True:
            try:
                await self.registration_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registration_pass_failed")
            await asyncio.sleep(self.cfg.health_interval_seconds)

    async def registration_pass(self) -> None:
        """One pass: (leader only) write `Requesting_<now>` handshakes where due and clear node locks past
        their TTL; drop stale reservations."""
        for reservation in self.cache.sweep_reservations(_RESERVATION_MAX_AGE):
            log.info(
                "reservation_expired",
                pod=f"{reservation.namespace}/{reservation.name}",
                node=reservation.node,
            )
        if self.core is None or not self.ready() or not self.leader.is_leader():
            return
        core = self.core
        for node in self.cache.handshake_due():
            body = {"metadata": {"annotations": {wire.NODE_HANDSHAKE: handshake_value(self._clock())}}}
            try:
                await offload(
                    call_json,
                    core.api_client,
                    "PATCH",
                    core_path("nodes", node),
                    body=body,
                    content_type=MERGE_PATCH,
                )
            except Exception as exc:
                log.warning("handshake_write_failed", node=node, error=str(exc))
        if self.locks is not None:
            for node, value, resource_version in self.cache.node_locks():
                await self.locks.clear_expired(node, value, resource_version)

    # --- stop -----------------------------------------------------------------------------------------------

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new binds and finish (or, after `grace` seconds, cancel and roll back) those under way,
        releasing their node locks; then stop serving and stop the watches."""
        if self.binder is not None:
            await self.binder.shutdown(grace)
        for task in (self._warm_task, self._leader_task, self._loop_task, self._tls_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._warm_task = self._leader_task = self._loop_task = self._tls_task = None
        if self._extender_server is not None:
            await self._extender_server.stop(grace=2.0)
            self._extender_server = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.grpc is not None:
            await self.grpc.stop(grace=2.0)
        await self.events.drain()
        reflectors, self.reflectors = self.reflectors, []
        for reflector in reflectors:
            await asyncio.to_thread(reflector.stop)
        for api in (self.api, self._watch_api):
            if api is not None:
                await asyncio.to_thread(api.close)
        self.api = self._watch_api = None
        for http in (self.kube_http, self._events_http):
            if http is not None:
                await http.close()
        self.kube_http = self._events_http = None


def scheduler_services(runtime: SchedulerRuntime) -> list[ServiceRegistration]:
    """The `grpc_services` factory of `SchedulerRuntime`: the SchedulerService over its cache, reading pods
    through the runtime's API client."""

    async def get_pod(namespace: str, name: str) -> Mapping[str, Any] | None:
        core = runtime.core
        if core is None:
            raise OSError(runtime.kube_error or "no Kubernetes API configured")
        try:
            pod: Mapping[str, Any] = await offload(raw_json, core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return pod

    servicer = SchedulerServicer(
        runtime.cache, policy=runtime.policy, request_config=runtime.request_config, get_pod=get_pod
    )
    return [servicer.registration()]


async def run(cfg: SchedulerConfig) -> None:
    """The scheduler process: serve until SIGTERM/SIGINT, then stop in order."""
    try:
        device_config = load_device_config(cfg.device_config_file)
    except ConfigError as exc:
        log.error("device_config_invalid", error=str(exc))
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    log.info("device_config_loaded", nvidia=device_config.nvidia.model_dump(by_alias=True))
    runtime = SchedulerRuntime(cfg, device_config, grpc_services=scheduler_services)
    try:
        await runtime.start()
    except OSError as exc:  # a busy or invalid listen address
        log.error("cannot_listen", error=str(exc))
        raise SystemExit(1) from None
    try:
        await wait_for_shutdown()
        log.info("stopping")
    finally:
        await runtime.stop()
        log.info("stopped")
