"""The device plugin at run time: kubelet API, registration with the kubelet, node annotation, health.

Life cycle (as NVIDIA's plugin, spec engineering-notes §1.2): discover GPUs, serve the Device Plugin API on
`<plugin dir>/nvidia-<short resource>.sock`, dial ourselves until an RPC answers, then Register with the
kubelet on `<plugin dir>/kubelet.sock`. A watcher polls kubelet.sock (inode, ctime) and our socket: when
the kubelet restarts it deletes every socket there and re-creates kubelet.sock, and we serve afresh and
register again within `kubelet_watch_interval_seconds`.

Health events come from the GPU backend in a thread; a change re-sends ListAndWatch at once and
refreshes the node annotation. Allocate is serialized (spec §5.5) and all-or-nothing for the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from kubernetes.client.exceptions import ApiException

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common import wire
from services.common.codecs import (
    WireFormatError,
    decode_pod_single_device,
    encode_node_devices,
    parse_node_lock,
)
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.log import get_logger
from services.device_plugin.allocate import (
    AllocationError,
    PodAllocation,
    kubelet_choice_differs,
    plan_allocation,
    plan_preferred,
    pod_key,
)
from services.device_plugin.config import DevicePluginConfig
from services.device_plugin.devices import ManagedGpu, Replica, extended_capacity, managed_gpus, replicas
from services.device_plugin.gpu import GpuBackend, GpuBackendError, GpuEvent, GpuInfo
from services.device_plugin.health import HealthTracker
from services.device_plugin.hostfs import (
    HostLayout,
    HostPathError,
    LibFiles,
    ensure_container_dir,
    prepare_host,
)
from services.device_plugin.kubeops import KUBE_ERRORS, KubeOps, annotations_of, resource_version_of
from services.device_plugin.settings import PluginSettings

log = get_logger("device_plugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
SERVICE_NAME = "v1beta1.DevicePlugin"

_GRPC_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}
_LIVE_BIND_PHASES = (wire.BindPhase.ALLOCATING.value, wire.BindPhase.SUCCESS.value)
_CONFLICT_RETRIES = 3
_NO_PREFERENCE_ERRORS: tuple[type[BaseException], ...] = (AllocationError, *KUBE_ERRORS)


def socket_name(resource_name: str) -> str:
    """`nvidia-<short name>.sock` (`nvidia.com/gpu` -> `nvidia-gpu.sock`), as HAMi names it."""
    short = resource_name.rsplit("/", 1)[-1]
    return f"nvidia-{short}.sock"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ListAndWatch sends and registration writes, at one version."""

    version: int
    managed: tuple[ManagedGpu, ...]
    replicas: tuple[Replica, ...]


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
        self.kube = kube
        self.probe = probe
        self.layout = HostLayout(cfg.hook_path, cfg.host_hook_dir, cfg.vgpulock_dir)
        self.tracker = HealthTracker(
            enabled=cfg.health.enabled,
            ignored_xids=cfg.health.ignored_xids,
            recovery_seconds=cfg.health.recovery_seconds,
            clock=clock,
        )
        self.plugin_dir = Path(cfg.plugin_dir)
        self.socket_path = self.plugin_dir / socket_name(settings.resource_name)
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        self.libs: LibFiles | None = None
        # Counters for logs and tests.
        self.registrations = 0
        self.server_starts = 0
        self.node_patches = 0
        self.status_patches = 0

        self._gpus: list[GpuInfo] = []
        self._snapshot = Snapshot(0, (), ())
        self._replica_map: dict[str, str] = {}
        self._changed: asyncio.Condition | None = None
        self._register_wakeup: asyncio.Event | None = None
        self._health_wakeup: asyncio.Event | None = None
        self._alloc_lock: asyncio.Lock | None = None
        self._server: GrpcServerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._health_thread: threading.Thread | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registered_stamp: tuple[int, int] | None = None
        self._waiting_logged = False
        self.registered = asyncio.Event()

    # --- state -----------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _refresh(self) -> bool:
        """Recompute health and the advertised devices; wake ListAndWatch and registration on change."""
        managed = tuple(
            managed_gpus(self._gpus, self.settings, lambda g: self.tracker.is_healthy(g.uuid, g.present))
        )
        reps = tuple(replicas(managed, self.settings.split_count))
        if managed == self._snapshot.managed and reps == self._snapshot.replicas:
            return False
        self._snapshot = Snapshot(self._snapshot.version + 1, managed, reps)
        self._replica_map = {r.id: r.uuid for r in reps}
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
        if self._register_wakeup is not None:
            self._register_wakeup.set()
        return True

    async def _notify(self) -> None:
        if self._changed is None:
            return
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
        self._changed = asyncio.Condition()
        self._register_wakeup = asyncio.Event()
        self._health_wakeup = asyncio.Event()
        self._alloc_lock = asyncio.Lock()
        self._gpus = list(await asyncio.to_thread(self.backend.discover))
        self._refresh()
        if not self._snapshot.managed:
            raise GpuBackendError(
                f"no usable GPU on node {self.settings.node_name} ({len(self._gpus)} discovered, none "
                "left after filterdevices, MIG and memory checks)"
            )
        self.libs = await asyncio.to_thread(prepare_host, self.layout, self.cfg.libvgpu_source)
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        await self._serve()
        self._health_thread = threading.Thread(target=self._health_events, name="gpu-health", daemon=True)
        self._health_thread.start()
        self._tasks = [
            asyncio.create_task(self._kubelet_watch(), name="kubelet-watch"),
            asyncio.create_task(self._register_loop(), name="node-register"),
            asyncio.create_task(self._recovery_loop(), name="health-recovery"),
        ]
        log.info(
            "device_plugin_started",
            node=self.settings.node_name,
            resource=self.settings.resource_name,
            socket=str(self.socket_path),
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
        if self._alloc_lock is not None:
            # An Allocate in flight finishes (annotation written, lock released) before the server goes:
            # a SIGTERM must not leave a node lock behind (HAMi#2330).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._alloc_lock.acquire()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        self.backend.close()
        if self._health_thread is not None:
            await asyncio.to_thread(self._health_thread.join, 5.0)
        log.info("device_plugin_stopped", node=self.settings.node_name)

    # --- serving and kubelet registration --------------------------------------------------------

    async def _serve(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        handle = build_server(
            [(api_pb2_grpc.add_DevicePluginServicer_to_server, _Servicer(self), SERVICE_NAME)],
            f"unix:{self.socket_path}",
        )
        await handle.start()
        self._server = handle
        self.server_starts += 1
        # Self-dial: the kubelet must find a live server the moment we register.
        async with grpc.aio.insecure_channel(f"unix:{self.socket_path}") as channel:
            await api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
                api_pb2.Empty(), timeout=5, wait_for_ready=True
            )

    def options(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=self.settings.preferred_allocation
        )

    async def _register_with_kubelet(self) -> None:
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.settings.resource_name,
            options=self.options(),
        )
        async with grpc.aio.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=10)

    async def _set_ready(self, ready: bool) -> None:
        if ready:
            self.registered.set()
        else:
            self.registered.clear()
        if self.probe is not None:
            await self.probe.set_serving(SERVICE_NAME, ready)

    async def _kubelet_watch(self) -> None:
        interval = self.cfg.kubelet_watch_interval_seconds
        while not self._stopping:
            try:
                await self._kubelet_tick()
            except asyncio.CancelledError:
                raise
            except (grpc.RpcError, OSError) as exc:
                log.warning(
                    "kubelet_registration_failed", kubelet_socket=str(self.kubelet_socket), error=str(exc)
                )
            await asyncio.sleep(interval)

    async def _kubelet_tick(self) -> None:
        stamp = _stamp(self.kubelet_socket)
        ours_present = self.socket_path.exists()
        if stamp is None:
            if self._registered_stamp is not None:
                log.warning("kubelet_socket_gone", kubelet_socket=str(self.kubelet_socket))
                self._registered_stamp = None
                await self._set_ready(False)
            elif not self._waiting_logged:
                log.info("waiting_for_kubelet", kubelet_socket=str(self.kubelet_socket))
            self._waiting_logged = True
            if not ours_present:
                await self._serve()
            return
        if stamp == self._registered_stamp and ours_present:
            return
        if self._registered_stamp is not None or not ours_present:
            # The kubelet restarted (it re-creates kubelet.sock and removes our socket): serve afresh.
            log.info("kubelet_restart_detected", our_socket_present=ours_present)
            await self._set_ready(False)
            await self._serve()
        await self._register_with_kubelet()
        self._waiting_logged = False
        self._registered_stamp = stamp
        self.registrations += 1
        await self._set_ready(True)
        log.info(
            "registered_with_kubelet",
            resource=self.settings.resource_name,
            endpoint=self.socket_path.name,
            registrations=self.registrations,
        )

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
            if self._health_wakeup is not None:
                self._health_wakeup.set()

    async def _recovery_loop(self) -> None:
        assert self._health_wakeup is not None
        while not self._stopping:
            delay = self.tracker.seconds_to_next_recovery()
            self._health_wakeup.clear()
            if delay is None:
                await self._health_wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._health_wakeup.wait(), timeout=delay + 0.01)
            self._refresh()

    # --- node annotation -------------------------------------------------------------------------

    async def sync_node(self) -> bool:
        """Write the register annotation (and opt-in capacity) when the node does not show it yet."""
        snapshot = self._snapshot
        value = encode_node_devices(m.record for m in snapshot.managed)
        node = await self.kube.get_node(self.settings.node_name)
        changed = False
        if annotations_of(node).get(wire.NODE_NVIDIA_REGISTER) != value:
            await self.kube.patch_node_annotations(
                self.settings.node_name, {wire.NODE_NVIDIA_REGISTER: value}
            )
            self.node_patches += 1
            changed = True
            log.info("node_registered", node=self.settings.node_name, devices=len(snapshot.managed))
        if self.cfg.publish_extended_capacity:
            memory, cores = extended_capacity(snapshot.managed)
            wanted = {wire.RESOURCE_GPUMEM: str(memory), wire.RESOURCE_GPUCORES: str(cores)}
            status = node.get("status") or {}
            current = [status.get("capacity") or {}, status.get("allocatable") or {}]
            if any(section.get(k) != v for section in current for k, v in wanted.items()):
                await self.kube.patch_node_status(
                    self.settings.node_name, {"capacity": dict(wanted), "allocatable": dict(wanted)}
                )
                self.status_patches += 1
                changed = True
        return changed

    async def _register_loop(self) -> None:
        assert self._register_wakeup is not None
        while not self._stopping:
            self._register_wakeup.clear()
            try:
                await self.sync_node()
                delay = self.cfg.register_interval_seconds
            except asyncio.CancelledError:
                raise
            except KUBE_ERRORS as exc:
                log.warning("node_register_failed", node=self.settings.node_name, error=str(exc))
                delay = self.cfg.register_retry_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._register_wakeup.wait(), timeout=delay)

    # --- pending pod -----------------------------------------------------------------------------

    @staticmethod
    def _has_work(pod: Mapping[str, Any]) -> bool:
        """Whether Allocate has something to do (or to report) for this pod: a slot left to hand out, or an
        annotation so broken that the pod must be failed. A pod whose slots are all handed out is left
        alone, so a stray Allocate (a pod not placed by hami-scheduler) never fails a healthy pod."""
        annotations = annotations_of(pod)
        value = annotations.get(wire.VGPU_DEVICES_TO_ALLOCATE)
        if value is None:
            return annotations.get(wire.BIND_PHASE) == wire.BindPhase.ALLOCATING.value
        try:
            return any(decode_pod_single_device(value))
        except WireFormatError:
            return True

    def _is_candidate(self, pod: Mapping[str, Any], *, from_lock: bool) -> bool:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return False
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        annotations = annotations_of(pod)
        node = annotations.get(wire.VGPU_NODE)
        if phase != "Pending" or not self._has_work(pod):
            return False
        if from_lock:
            # The lock names the pod being bound to this node; only the placement must agree.
            return node in (None, self.settings.node_name)
        return (
            wire.BIND_TIME in annotations
            and annotations.get(wire.BIND_PHASE) in _LIVE_BIND_PHASES
            and node == self.settings.node_name
        )

    async def find_pending_pod(self) -> dict[str, Any]:
        """The pod being bound to this node (spec §5.5 step 1): the node lock's owner, else the pending pod
        bound here with a live bind phase and devices left to allocate, oldest bind-time first."""
        node_name = self.settings.node_name
        node = await self.kube.get_node(node_name)
        value = annotations_of(node).get(wire.NODE_LOCK)
        if value:
            try:
                lock = parse_node_lock(value)
            except WireFormatError as exc:
                log.warning("node_lock_unreadable", node=node_name, error=str(exc))
            else:
                if lock.namespace is not None and lock.name is not None:
                    pod = await self.kube.get_pod(lock.namespace, lock.name)
                    if pod is not None and self._is_candidate(pod, from_lock=True):
                        return pod
        candidates = [
            p for p in await self.kube.pods_on_node(node_name) if self._is_candidate(p, from_lock=False)
        ]
        if not candidates:
            raise AllocationError("not_found", f"no binding pod found on node {node_name}")

        def bind_time(pod: Mapping[str, Any]) -> float:
            try:
                return float(annotations_of(pod).get(wire.BIND_TIME, ""))
            except ValueError:
                return float("inf")

        return min(candidates, key=bind_time)

    # --- kubelet RPCs ----------------------------------------------------------------------------

    async def list_and_watch(self) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        assert self._changed is not None
        sent = -1
        while not self._stopping:
            async with self._changed:

                def ready(last: int = sent) -> bool:
                    return self._stopping or self._snapshot.version != last

                await self._changed.wait_for(ready)
                if self._stopping:
                    return
                snapshot = self._snapshot
            sent = snapshot.version
            yield self.device_list(snapshot)

    def device_list(self, snapshot: Snapshot) -> api_pb2.ListAndWatchResponse:
        devices = []
        for rep in snapshot.replicas:
            device = api_pb2.Device(ID=rep.id, health=rep.health)
            if self.settings.enable_numa_topology:
                device.topology.nodes.append(api_pb2.NUMANode(ID=rep.numa))
            devices.append(device)
        return api_pb2.ListAndWatchResponse(devices=devices)

    async def preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        asks = [
            (list(r.available_deviceIDs), list(r.must_include_deviceIDs), int(r.allocation_size))
            for r in request.container_requests
        ]
        try:
            pod = await self.find_pending_pod()
            answers = plan_preferred(pod, asks, self._replica_map)
        except _NO_PREFERENCE_ERRORS as exc:
            # No preference is not an error: the kubelet picks, and Allocate reports what is wrong.
            log.warning("preferred_allocation_unavailable", error=str(exc))
            answers = [[] for _ in asks]
        return api_pb2.PreferredAllocationResponse(
            container_responses=[api_pb2.ContainerPreferredAllocationResponse(deviceIDs=a) for a in answers]
        )

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        assert self._alloc_lock is not None
        async with self._alloc_lock:
            return await self._allocate_locked(request)

    async def _allocate_locked(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        asks = [list(r.devices_ids) for r in request.container_requests]
        try:
            pod = await self.find_pending_pod()
        except KUBE_ERRORS as exc:
            raise AllocationError("unavailable", f"cannot look up the pod being bound: {exc}") from None
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        key = pod_key(pod)
        try:
            plan = await self._commit(pod, asks)
        except AllocationError as exc:
            await self._fail(namespace, name, exc.message)
            raise AllocationError(exc.code, self._failure_text(key, exc.message)) from None
        except (HostPathError, OSError) as exc:
            await self._fail(namespace, name, str(exc))
            raise AllocationError("internal", self._failure_text(key, f"host files: {exc}")) from None
        except KUBE_ERRORS as exc:
            await self._fail(namespace, name, str(exc))
            raise AllocationError("unavailable", self._failure_text(key, f"API error: {exc}")) from None
        if plan.done:
            try:
                await self.kube.release_node_lock(self.settings.node_name, namespace, name)
            except KUBE_ERRORS as exc:
                # The containers have their devices; a lock we could not drop expires on its own.
                log.error("node_lock_release_failed", node=self.settings.node_name, pod=key, error=str(exc))
        for p, ids in zip(plan.plans, asks, strict=True):
            if kubelet_choice_differs(p.devices, ids, self._replica_map):
                log.warning(
                    "kubelet_devices_differ_from_annotation",
                    pod=key,
                    container=p.container,
                    kubelet=ids,
                    annotation=[d.uuid for d in p.devices],
                    hint="the annotation's GPUs are used; enable preferred_allocation so both agree",
                )
            log.info(
                "allocated",
                pod=key,
                container=p.container,
                slot=p.slot,
                devices=[f"{d.uuid}:{d.usedmem}MiB:{d.usedcores}%" for d in p.devices],
                bind_phase_success=plan.done,
            )
        return api_pb2.AllocateResponse(
            container_responses=[
                api_pb2.ContainerAllocateResponse(
                    envs=p.envs,
                    mounts=[
                        api_pb2.Mount(
                            container_path=m.container_path, host_path=m.host_path, read_only=m.read_only
                        )
                        for m in p.mounts
                    ],
                )
                for p in plan.plans
            ]
        )

    async def _commit(self, pod: dict[str, Any], asks: Sequence[Sequence[str]]) -> PodAllocation:
        """Plan, create the host dirs, then write the annotation once (resourceVersion-checked)."""
        assert self.libs is not None
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        node_gpus = frozenset(m.uuid for m in self._snapshot.managed)
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            plan = plan_allocation(
                pod, asks, settings=self.settings, layout=self.layout, libs=self.libs, node_gpus=node_gpus
            )
            uid = str(meta.get("uid") or "")
            for p in plan.plans:
                await asyncio.to_thread(ensure_container_dir, self.layout, uid, p.container)
            update: dict[str, str | None] = {wire.VGPU_DEVICES_TO_ALLOCATE: plan.remaining}
            if plan.done:
                update[wire.BIND_PHASE] = wire.BindPhase.SUCCESS.value
            try:
                await self.kube.patch_pod_annotations(
                    namespace, name, update, resource_version=resource_version_of(pod)
                )
                return plan
            except ApiException as exc:
                if exc.status != 409 or attempt == _CONFLICT_RETRIES:
                    raise
                log.info("pod_changed_during_allocate", pod=f"{namespace}/{name}", attempt=attempt)
                fresh = await self.kube.get_pod(namespace, name)
                if fresh is None:
                    raise AllocationError(
                        "not_found", f"pod {namespace}/{name} was deleted during Allocate"
                    ) from None
                pod = fresh
                meta = pod.get("metadata") or {}
        raise AssertionError("unreachable")

    async def _fail(self, namespace: str, name: str, why: str) -> None:
        """bind-phase=failed and the lock released; both best effort (the error is what matters)."""
        log.error("allocate_failed", pod=f"{namespace}/{name}", error=why)
        try:
            await self.kube.patch_pod_annotations(
                namespace, name, {wire.BIND_PHASE: wire.BindPhase.FAILED.value}
            )
        except KUBE_ERRORS as exc:
            log.error("bind_phase_update_failed", pod=f"{namespace}/{name}", error=str(exc))
        try:
            await self.kube.release_node_lock(self.settings.node_name, namespace, name)
        except KUBE_ERRORS as exc:
            log.error("node_lock_release_failed", node=self.settings.node_name, error=str(exc))

    @staticmethod
    def _failure_text(key: str, message: str) -> str:
        return (
            f"{message} [pod {key} marked {wire.BIND_PHASE}=failed and its node lock released; fix the cause "
            "and recreate the pod so the scheduler assigns devices again]"
        )


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    """The gRPC face of DevicePlugin: converts AllocationError into a status the kubelet shows."""

    def __init__(self, plugin: DevicePlugin) -> None:
        self._plugin = plugin

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.DevicePluginOptions:
        return self._plugin.options()

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        async for response in self._plugin.list_and_watch():
            yield response

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.PreferredAllocationResponse:
        return await self._plugin.preferred_allocation(request)

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.AllocateResponse:
        try:
            return await self._plugin.allocate(request)
        except AllocationError as exc:
            await context.abort(_GRPC_CODES.get(exc.code, grpc.StatusCode.INTERNAL), exc.message)
            raise  # unreachable: abort raises

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()
