"""The running monitor: pod watch, scan and feedback loops, `/metrics` and MonitorService.

`run` is the process (`cli.main` hands it the parsed config): it starts a `MonitorRuntime` and stops it on
SIGTERM. The integration tests start `MonitorRuntime` in-process.

Without any Kubernetes access (no kube.server, kubeconfig or service account) the monitor still runs: it
maps and validates caches, serves host metrics and its own counters, but cannot name the pods behind the
caches (so no container series) and never removes a directory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from kubernetes import client

from services.common.config import split_host_port
from services.common.entrypoint import wait_for_shutdown
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.kube import KubeAccessError, describe_access, new_api_client
from services.common.log import bind_context, get_logger
from services.common.reflector import Reflector
from services.monitor.bounds import device_memory_totals
from services.monitor.codec import KNOWN_REASONS
from services.monitor.config import MonitorConfig
from services.monitor.hostgpu import HostGpus, HostGpuStat, open_host_gpus
from services.monitor.metrics import ErrorCounts, MonitorCounters, MonitorMetrics, metrics_app
from services.monitor.monitor import UUID_LEN, Monitor
from services.monitor.podresources import PodResourcesClient, PodResourcesSource
from services.monitor.pods import PodIndex
from services.monitor.regions import OWN_REASONS, RegionStore
from services.monitor.servicer import SERVICE_NAME, MonitorServicer

__all__ = ["MonitorRuntime", "run"]

log = get_logger("monitor")


class MonitorRuntime:
    def __init__(
        self,
        cfg: MonitorConfig,
        *,
        host_gpus: HostGpus | None = None,
        api_client: Any = None,
        use_kube: bool = True,
    ) -> None:
        self.cfg = cfg
        self.errors = ErrorCounts((*OWN_REASONS, *KNOWN_REASONS))
        self.pods = PodIndex(cfg.node_name)
        self.store = RegionStore(
            cfg.containers_dir,
            max_open=cfg.max_open_regions,
            on_error=self.errors,
        )
        self.podresources = (
            PodResourcesSource(PodResourcesClient(cfg.podresources_socket))
            if cfg.podresources_socket
            else None
        )
        self._host_gpus = host_gpus
        self.host: HostGpus | None = None
        self._host_index: dict[str, int] = {}
        self._host_memory: dict[str, int] = {}
        self.monitor = Monitor(
            cfg.node_name,
            self.store,
            self.pods,
            podresources=self.podresources,
            stale_grace_seconds=cfg.stale_grace_seconds,
            mig_apply_lock_file=cfg.mig_apply_lock_file,
            host_index=self.host_index,
            memory_totals=self.memory_totals,
        )
        self.metrics = MonitorMetrics(self.monitor.snapshot, self.host_stats, self.counters)
        self._api = api_client
        self._own_api = False
        self._use_kube = use_kube
        self.reflectors: list[Reflector] = []
        self.grpc: GrpcServerHandle | None = None
        self.metrics_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- data for metrics and gRPC ------------------------------------------------------------------------

    def host_stats(self) -> list[HostGpuStat]:
        return self.host.stats() if self.host is not None else []

    def host_index(self) -> dict[str, int]:
        index = {uuid: gpu.index for uuid, gpu in self.pods.registered().items()}
        index.update(self._host_index)
        return index

    def memory_totals(self) -> dict[str, int]:
        """Per GPU, the larger of the registered inventory's and NVML's memory (services.monitor.bounds)."""
        registered = {uuid: gpu.devmem_mib for uuid, gpu in self.pods.registered().items()}
        return device_memory_totals(registered, self._host_memory, UUID_LEN)

    def counters(self) -> MonitorCounters:
        stats = self.monitor.stats
        return MonitorCounters(
            region_errors=self.errors.snapshot(),
            regions_mapped=self.store.open_count(),
            container_dirs=len(self.store.dirs()),
            stale_removed=stats.stale_removed,
            feedback_writes=stats.feedback_writes,
            clamped_values=stats.clamped,
        )

    # --- lifecycle ----------------------------------------------------------------------------------------

    def _start_kube(self) -> None:
        if not self._use_kube:
            return
        if self._api is None:
            try:
                self._api = new_api_client(self.cfg.kube)
                self._own_api = True
            except KubeAccessError as exc:
                log.warning("no_pod_source", error=str(exc), effect="caches are read but not named by pod")
                return
        log.info("kube_access", source=describe_access(self.cfg.kube))
        core = client.CoreV1Api(self._api)
        resync = self.cfg.resync_seconds or None
        self.reflectors = [
            Reflector(
                core.list_pod_for_all_namespaces,
                name="pods",
                field_selector=f"spec.nodeName={self.cfg.node_name}",
                on_event=self.pods.on_pod_event,
                resync_period=resync,
            ),
            Reflector(
                core.list_node,
                name="node",
                field_selector=f"metadata.name={self.cfg.node_name}",
                on_event=self.pods.on_node_event,
                resync_period=resync,
            ),
        ]
        self.pods.attach_source()
        for reflector in self.reflectors:
            reflector.start()

    async def start(self) -> None:
        cfg = self.cfg
        try:
            host: HostGpus
            if self._host_gpus is not None:
                host = self._host_gpus
            else:
                host = await asyncio.to_thread(open_host_gpus, cfg.host_gpus)
            self.host = host
            stats = await asyncio.to_thread(host.stats)
            self._host_index = {s.uuid: s.index for s in stats}
            # A card's size does not change while the monitor runs: read once, not at every snapshot.
            self._host_memory = {s.uuid: s.memory_total_bytes for s in stats}
            log.info("host_gpus", source=host.name, count=len(stats))
            self._start_kube()
            self.metrics_port = await self._serve_metrics(cfg.metrics_bind_address)
            servicer = MonitorServicer(
                cfg.node_name,
                self.monitor.snapshot,
                self.host_stats,
                self.pods.registered,
                default_interval_seconds=cfg.scan_interval_seconds,
            )
            self.grpc = build_server([servicer.registration()], cfg.grpc_bind)
            await self.grpc.start()
        except BaseException:
            await self.stop()
            raise
        await asyncio.to_thread(self.monitor.scan)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(cfg.scan_interval_seconds, self._scan, "scan"))]
        if cfg.feedback_enabled:
            feedback = self._every(cfg.feedback_interval_seconds, self.monitor.feedback, "feedback")
            self._tasks.append(loop.create_task(feedback))
        log.info(
            "monitor_serving",
            node=cfg.node_name,
            containers_dir=str(cfg.containers_dir),
            metrics_port=self.metrics_port,
            grpc=self.grpc.target if self.grpc else None,
            service=SERVICE_NAME,
        )

    def _scan(self) -> None:
        if not self.pods.synced and self.reflectors and self.reflectors[0].has_synced():
            self.pods.mark_synced()
        self.monitor.scan()

    async def _every(self, period: float, work: Callable[[], object], what: str) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(work)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor_pass_failed", what=what)

    async def _serve_metrics(self, address: str) -> int:
        host, port = split_host_port(address)
        runner = web.AppRunner(metrics_app(self.metrics.render), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host or None, port)
        await site.start()
        bound: Any = runner.addresses[0]
        return int(bound[1])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.grpc is not None:
            await self.grpc.stop(grace=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for reflector in self.reflectors:
            await asyncio.to_thread(reflector.stop)
        self.store.close()
        if self.host is not None:
            self.host.close()
        if self._api is not None and self._own_api:
            self._api.close()
        self._api = None


async def run(cfg: MonitorConfig) -> None:
    """The monitor process: serve until SIGTERM/SIGINT, then stop in order."""
    bind_context(node=cfg.node_name)
    runtime = MonitorRuntime(cfg)
    await runtime.start()
    try:
        await wait_for_shutdown()
    finally:
        await runtime.stop()
        get_logger("kube-vgpu-monitor").info("stopped")
