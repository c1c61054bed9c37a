"""One device plugin instance: the GPUs it advertises, their health, and the parts that publish them.

The plugin owns the device view (discovered GPUs -> managed GPUs and kubelet replicas, at a version) and
hands it to three parts: the kubelet API (`servicer`), our socket and registration with the kubelet
(`kubelet`) and the node's register annotation (`registration`).

Health events come from the GPU backend in a thread; a change re-sends ListAndWatch at once and
refreshes the node annotation. A GPU marked unhealthy by an XID recovers after `health.recovery_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.common.grpc_server import GrpcServerHandle
from services.common.log import get_logger
from services.device_plugin.config import DevicePluginConfig, PluginSettings
from services.device_plugin.devices import Snapshot, managed_gpus, replicas
from services.device_plugin.gpu import GpuBackend, GpuBackendError, GpuEvent, GpuInfo
from services.device_plugin.health import HealthTracker
from services.device_plugin.hostfs import HostLayout, LibFiles, prepare_host
from services.device_plugin.kubelet import KubeletEndpoint
from services.device_plugin.kubeops import KubeOps
from services.device_plugin.registration import NodeRegistrar
from services.device_plugin.servicer import DevicePluginServicer

log = get_logger("device_plugin")


class DevicePlugin:
    """One plugin instance for one resource on one node. `start()`, then `stop()`."""

    def __init__(
        self,
        cfg: DevicePluginConfig,
        settings: PluginSettings,
        backend: GpuBackend,
        kube: KubeOps,
        *,
        probe: GrpcServerHandle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.backend = backend
        self.layout = HostLayout(cfg.hook_path, cfg.host_hook_dir, cfg.vgpulock_dir)
        self.tracker = HealthTracker(
            enabled=cfg.health.enabled,
            ignored_xids=cfg.health.ignored_xids,
            recovery_seconds=cfg.health.recovery_seconds,
            clock=clock,
        )
        self.servicer = DevicePluginServicer(settings, kube, self.layout, self)
        self.endpoint = KubeletEndpoint(
            Path(cfg.plugin_dir),
            settings.resource_name,
            self.servicer,
            watch_interval=cfg.kubelet_watch_interval_seconds,
            probe=probe,
        )
        self.registrar = NodeRegistrar(cfg, settings, kube, lambda: self._snapshot)

        self._gpus: list[GpuInfo] = []
        self._snapshot = Snapshot.of(0, (), ())
        self._changed = asyncio.Condition()
        self._health_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._health_thread: threading.Thread | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the device view -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def libs(self) -> LibFiles | None:
        """libvgpu and ld.so.preload as installed on the host; None before `start()`."""
        return self.servicer.libs

    async def next_snapshot(self, seen_version: int) -> Snapshot | None:
        """The snapshot once its version differs from `seen_version`; None once the plugin stops."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._stopping or self._snapshot.version != seen_version)
            return None if self._stopping else self._snapshot

    def _refresh(self) -> bool:
        """Recompute health and the advertised devices; wake ListAndWatch and registration on change."""
        managed = managed_gpus(
            self._gpus, self.settings, lambda g: self.tracker.is_healthy(g.uuid, g.present)
        )
        reps = replicas(managed, self.settings.split_count)
        if tuple(managed) == self._snapshot.managed and tuple(reps) == self._snapshot.replicas:
            return False
        self._snapshot = Snapshot.of(self._snapshot.version + 1, managed, reps)
        unhealthy = [m.uuid for m in managed if not m.record.health]
        log.info(
            "devices_changed",
            version=self._snapshot.version,
            gpus=len(managed),
            replicas=len(reps),
            unhealthy=unhealthy,
        )
        if self._loop is not None:
            self._loop.create_task(self._notify())
        self.registrar.wake()
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def rediscover(self) -> None:
        gpus = list(await asyncio.to_thread(self.backend.discover))
        self._gpus = gpus
        self._refresh()

    # --- start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Discover, prepare host files, serve, register; raises GpuBackendError when there is no GPU."""
        self._loop = asyncio.get_running_loop()
        self._gpus = list(await asyncio.to_thread(self.backend.discover))
        self._refresh()
        if not self._snapshot.managed:
            raise GpuBackendError(
                f"no usable GPU on node {self.settings.node_name} ({len(self._gpus)} discovered, none "
                "left after filterdevices, MIG and memory checks)"
            )
        self.servicer.libs = await asyncio.to_thread(prepare_host, self.layout, self.cfg.libvgpu_source)
        await self.endpoint.start()
        self._health_thread = threading.Thread(target=self._health_events, name="gpu-health", daemon=True)
        self._health_thread.start()
        self._tasks = [
            asyncio.create_task(self.endpoint.watch(), name="kubelet-watch"),
            asyncio.create_task(self.registrar.run(), name="node-register"),
            asyncio.create_task(self._recovery_loop(), name="health-recovery"),
        ]
        log.info(
            "device_plugin_started",
            node=self.settings.node_name,
            resource=self.settings.resource_name,
            socket=str(self.endpoint.socket_path),
            gpus=[m.uuid for m in self._snapshot.managed],
            split=self.settings.split_count,
        )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._notify()
        # An Allocate in flight finishes (annotation written, lock released) before the server goes:
        # a SIGTERM must not leave a node lock behind (HAMi#2330).
        await self.servicer.drain(timeout=10)
        await self.endpoint.stop()
        self.backend.close()
        if self._health_thread is not None:
            await asyncio.to_thread(self._health_thread.join, 5.0)
        log.info("device_plugin_stopped", node=self.settings.node_name)

    # --- health ----------------------------------------------------------------------------------

    def _health_events(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stopping:
            try:
                event = self.backend.next_event(1.0)
            except Exception as exc:  # a broken backend must not kill the thread silently
                log.exception("gpu_event_wait_failed", error=str(exc))
                event = GpuEvent(kind="lost", detail=f"event wait failed: {exc}")
                time.sleep(1.0)
            if event is not None and not self._stopping:
                with contextlib.suppress(RuntimeError):  # loop closed while stopping
                    loop.call_soon_threadsafe(self.handle_event, event)

    def handle_event(self, event: GpuEvent) -> None:
        """Apply one backend event (on the event loop)."""
        if event.kind == "changed":
            if self._loop is not None:
                self._loop.create_task(self.rediscover())
            return
        verdict = self.tracker.record(event, [g.uuid for g in self._gpus])
        if verdict.marked:
            self._refresh()
            self._health_wakeup.set()

    async def _recovery_loop(self) -> None:
        while not self._stopping:
            delay = self.tracker.seconds_to_next_recovery()
            self._health_wakeup.clear()
            if delay is None:
                await self._health_wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._health_wakeup.wait(), timeout=delay + 0.01)
            self._refresh()
