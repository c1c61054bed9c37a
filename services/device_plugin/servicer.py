"""The kubelet's Device Plugin API (v1beta1) as this plugin answers it: ListAndWatch, GetPreferredAllocation
and Allocate.

Allocate is serialized (docs/hami-wire.md#allocate) and all-or-nothing for the pod: the plan comes from the
pure `services.device_plugin.allocate`; this module finds the pod being bound, creates the container's host
dirs, writes the annotation once (resourceVersion-checked) and, on failure, marks the pod failed and drops
the node lock. An `AllocationError` becomes a gRPC status the kubelet shows on the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import grpc
from kubernetes.client.exceptions import ApiException

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common import wire
from services.common.codecs import WireFormatError, decode_pod_single_device, parse_node_lock
from services.common.kube import KUBE_ERRORS
from services.common.log import get_logger
from services.device_plugin.allocate import (
    AllocationError,
    PodAllocation,
    kubelet_choice_differs,
    plan_allocation,
    plan_preferred,
    pod_key,
)
from services.device_plugin.config import PluginSettings
from services.device_plugin.devices import Snapshot
from services.device_plugin.hostfs import HostLayout, HostPathError, LibFiles, ensure_container_dir
from services.device_plugin.kubeops import KubeOps, annotations_of, resource_version_of

log = get_logger("device_plugin")

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


class DeviceSource(Protocol):
    """The plugin's current view of its GPUs, as the kubelet API reads it."""

    @property
    def snapshot(self) -> Snapshot: ...

    async def next_snapshot(self, seen_version: int) -> Snapshot | None:
        """The snapshot once its version differs from `seen_version`; None once the plugin stops."""
        ...


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """The Device Plugin API for one resource on one node.

    `libs` (libvgpu and ld.so.preload as installed on the host) is set once the host files are prepared,
    before the socket is served.
    """

    def __init__(
        self, settings: PluginSettings, kube: KubeOps, layout: HostLayout, devices: DeviceSource
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.layout = layout
        self.devices = devices
        self.libs: LibFiles | None = None
        self._alloc_lock = asyncio.Lock()

    def options(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=self.settings.preferred_allocation
        )

    async def drain(self, timeout: float) -> None:
        """Let an Allocate in flight finish, then hold the lock so no other starts (up to `timeout`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._alloc_lock.acquire()

    # --- gRPC methods ----------------------------------------------------------------------------

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.DevicePluginOptions:
        return self.options()

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        async for response in self.list_and_watch():
            yield response

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.PreferredAllocationResponse:
        return await self.preferred_allocation(request)

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.AllocateResponse:
        try:
            return await self.allocate(request)
        except AllocationError as exc:
            await context.abort(_GRPC_CODES.get(exc.code, grpc.StatusCode.INTERNAL), exc.message)
            raise  # unreachable: abort raises

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    # --- ListAndWatch ----------------------------------------------------------------------------

    async def list_and_watch(self) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        sent = -1
        while True:
            snapshot = await self.devices.next_snapshot(sent)
            if snapshot is None:
                return
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

    # --- the pod being bound ---------------------------------------------------------------------

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
        """The pod being bound to this node (docs/hami-wire.md#allocate step 1): the node lock's owner, else
        the pending pod bound here with a live bind phase and devices left to allocate, oldest bind-time
        first."""
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

    # --- GetPreferredAllocation and Allocate -----------------------------------------------------

    async def preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        asks = [
            (list(r.available_deviceIDs), list(r.must_include_deviceIDs), int(r.allocation_size))
            for r in request.container_requests
        ]
        try:
            pod = await self.find_pending_pod()
            answers = plan_preferred(pod, asks, self.devices.snapshot.replica_gpus)
        except _NO_PREFERENCE_ERRORS as exc:
            # No preference is not an error: the kubelet picks, and Allocate reports what is wrong.
            log.warning("preferred_allocation_unavailable", error=str(exc))
            answers = [[] for _ in asks]
        return api_pb2.PreferredAllocationResponse(
            container_responses=[api_pb2.ContainerPreferredAllocationResponse(deviceIDs=a) for a in answers]
        )

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
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
        replica_gpus = self.devices.snapshot.replica_gpus
        for p, ids in zip(plan.plans, asks, strict=True):
            if kubelet_choice_differs(p.devices, ids, replica_gpus):
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
        node_gpus = frozenset(m.uuid for m in self.devices.snapshot.managed)
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
