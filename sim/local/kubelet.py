"""A kubelet stand-in for local mode: the device-manager half of a kubelet, against kube-local.

It does what a kubelet does with device plugins (docs/kubelet-wire.md), and pretends to run pods:

* serves `v1beta1.Registration` on `<dir>/kubelet.sock`; on Register it dials `<dir>/<endpoint>`, calls
  GetDevicePluginOptions and keeps a ListAndWatch stream open (each message replaces the device list), and
  publishes the resource on the node (capacity = all devices, allocatable = healthy ones);
* watches the pods bound to its node (`spec.nodeName`); for each Pending pod it admits the containers in
  kubelet order (init containers, then app containers) that request a device resource: it picks healthy
  device IDs not in use (GetPreferredAllocation first when the plugin offers it), calls Allocate once per
  container, and PreStartContainer when asked to;
* then marks the pod Running (phase, conditions, container statuses) and records what each container got
  (env, mounts, devices) in `<dir>/allocations/<ns>_<pod>.json` and in the pod annotation
  `kube-vgpu.local/allocations` (the same JSON), so tests and `vgpuctl` can read it through the API;
* an Allocate failure rejects the pod as the kubelet does: phase Failed, reason UnexpectedAdmissionError,
  and a Warning Event with that reason;
* `restart()` simulates a kubelet restart: every socket in `<dir>` is deleted and kubelet.sock is created
  again, so plugins must notice and register again. SIGHUP does the same from the command line.

Run it as `python -m sim.local.kubelet --dir /tmp/kv-node-a --node-name gpu-node-a --server URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common.config import KubeAccess
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.kube import KUBE_ERRORS, KubeAccessError, new_api_client
from services.common.log import LogConfig, configure_logging, get_logger
from services.common.reflector import Reflector
from services.common.resources import quantity_as_int64
from sim.local.node_heartbeat import NodeHeartbeat

log = get_logger("kubelet-standin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
ALLOCATIONS_ANNOTATION = "kube-vgpu.local/allocations"
HEALTHY = "Healthy"
REJECTED_REASON = "UnexpectedAdmissionError"
MERGE_PATCH = "application/merge-patch+json"
_SAFE_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")

Obj = dict[str, Any]


class AdmissionError(Exception):
    """The pod cannot be admitted; the message is what the pod status and event show."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_requests(container: Mapping[str, Any], resources: Sequence[str]) -> list[tuple[str, int]]:
    """(resource, count) for each device resource the container asks for (limits first, then requests)."""
    spec = container.get("resources") or {}
    found: list[tuple[str, int]] = []
    for name in resources:
        raw = None
        for section in ("limits", "requests"):
            entries = spec.get(section) or {}
            if name in entries:
                raw = entries[name]
                break
        if raw is None:
            continue
        count = quantity_as_int64(raw) if isinstance(raw, str | int | float) else None
        if count is not None and count > 0:
            found.append((name, count))
    return found


@dataclass
class PluginEndpoint:
    """One registered device plugin and what its ListAndWatch last said."""

    resource: str
    endpoint: str
    options: api_pb2.DevicePluginOptions
    channel: grpc.aio.Channel
    stub: Any  # api_pb2_grpc.DevicePluginAsyncStub
    devices: dict[str, str] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    updates: int = 0


@dataclass
class ContainerRecord:
    name: str
    init: bool
    resource: str
    device_ids: list[str]
    envs: dict[str, str]
    mounts: list[dict[str, Any]]
    devices: list[dict[str, str]]
    annotations: dict[str, str]

    def as_json(self) -> Obj:
        return {
            "name": self.name,
            "init": self.init,
            "resource": self.resource,
            "deviceIDs": self.device_ids,
            "envs": self.envs,
            "mounts": self.mounts,
            "devices": self.devices,
            "annotations": self.annotations,
        }


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self._kubelet = kubelet

    async def Register(self, request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        problem = self._kubelet.check_registration(request)
        if problem:
            log.warning("registration_refused", resource=request.resource_name, reason=problem)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self._kubelet.accept_registration(request)
        return api_pb2.Empty()


class KubeletStandIn:
    """See the module docstring. `await start()`, then `await stop()`; `await restart()` in between."""

    def __init__(
        self,
        plugin_dir: str | Path,
        node_name: str,
        api: client.ApiClient,
        *,
        resources: Sequence[str] = ("nvidia.com/gpu",),
        admission_timeout: float = 30.0,
    ) -> None:
        self.dir = Path(plugin_dir)
        self.node_name = node_name
        self.resources = tuple(resources)
        self.admission_timeout = admission_timeout
        self.allocations_dir = self.dir / "allocations"
        self.core: Any = client.CoreV1Api(api)
        self.plugins: dict[str, PluginEndpoint] = {}
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.restarts = 0
        self.admitted: dict[str, str] = {}  # pod uid -> "Running" | "Failed"
        self._in_use: dict[str, set[str]] = {}  # pod uid -> device IDs held by its app containers
        self._server: GrpcServerHandle | None = None
        self._reflector: Reflector | None = None
        self._queue: asyncio.Queue[tuple[str, Obj]] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.allocations_dir.mkdir(parents=True, exist_ok=True)
        await self._serve()
        self._worker = asyncio.create_task(self._work(), name="kubelet-pods")
        self._reflector = Reflector(
            self.core.list_pod_for_all_namespaces,
            name=f"kubelet-{self.node_name}",
            field_selector=f"spec.nodeName={self.node_name}",
            on_event=self._on_pod_event,
            watch_timeout=60.0,
            backoff_initial=0.2,
            backoff_max=5.0,
        )
        self._reflector.start()
        log.info("kubelet_started", node=self.node_name, socket=str(self.dir / KUBELET_SOCKET))

    async def stop(self) -> None:
        if self._reflector is not None:
            await asyncio.to_thread(self._reflector.stop)
            self._reflector = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_plugins()
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
        log.info("kubelet_stopped", node=self.node_name)

    async def restart(self) -> None:
        """A kubelet restart as plugins see it: all sockets in the dir deleted, kubelet.sock re-created."""
        if self._server is not None:
            await self._server.stop(grace=0)
            self._server = None
        await self._drop_plugins()
        for sock in self.dir.glob("*.sock"):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        await self._serve()
        self.restarts += 1
        log.info("kubelet_restarted", node=self.node_name, restarts=self.restarts)

    async def _serve(self) -> None:
        self._server = build_server(
            [(api_pb2_grpc.add_RegistrationServicer_to_server, _Registration(self), "v1beta1.Registration")],
            f"unix:{self.dir / KUBELET_SOCKET}",
        )
        await self._server.start()

    async def _drop_plugins(self) -> None:
        plugins, self.plugins = list(self.plugins.values()), {}
        for plugin in plugins:
            await self._close_plugin(plugin)

    @staticmethod
    async def _close_plugin(plugin: PluginEndpoint) -> None:
        if plugin.task is not None:
            plugin.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plugin.task
        await plugin.channel.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- registration and ListAndWatch -----------------------------------------------------------

    def check_registration(self, request: api_pb2.RegisterRequest) -> str | None:
        if request.version != API_VERSION:
            return f"unsupported device plugin API version {request.version!r}; want {API_VERSION}"
        if not request.resource_name or "/" not in request.resource_name:
            return f"invalid extended resource name {request.resource_name!r}"
        endpoint = request.endpoint
        if not endpoint or "/" in endpoint or endpoint in (".", "..") or endpoint == KUBELET_SOCKET:
            return f"endpoint {endpoint!r} must be a socket file name in {self.dir}"
        return None

    def accept_registration(self, request: api_pb2.RegisterRequest) -> None:
        self.registrations.append(request)
        log.info("plugin_registered", resource=request.resource_name, endpoint=request.endpoint)
        self._spawn(self._connect(request), f"plugin-{request.resource_name}")

    async def _connect(self, request: api_pb2.RegisterRequest) -> None:
        channel = grpc.aio.insecure_channel(f"unix:{self.dir / request.endpoint}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        try:
            options = await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=10, wait_for_ready=True)
        except grpc.RpcError as exc:
            log.error("plugin_unreachable", resource=request.resource_name, error=str(exc))
            await channel.close()
            return
        plugin = PluginEndpoint(request.resource_name, request.endpoint, options, channel, stub)
        previous = self.plugins.get(request.resource_name)
        self.plugins[request.resource_name] = plugin
        if previous is not None:
            await self._close_plugin(previous)
        plugin.task = asyncio.create_task(self._list_and_watch(plugin), name=f"law-{plugin.resource}")

    async def _list_and_watch(self, plugin: PluginEndpoint) -> None:
        try:
            async for response in plugin.stub.ListAndWatch(api_pb2.Empty()):
                plugin.devices = {d.ID: d.health for d in response.devices}
                plugin.updates += 1
                plugin.synced.set()
                healthy = sum(1 for h in plugin.devices.values() if h == HEALTHY)
                log.info(
                    "plugin_devices", resource=plugin.resource, devices=len(plugin.devices), healthy=healthy
                )
                await self._notify()
                await self._publish_capacity(plugin.resource, len(plugin.devices), healthy)
        except grpc.RpcError as exc:
            log.warning("plugin_stream_ended", resource=plugin.resource, error=str(exc))
        if self.plugins.get(plugin.resource) is plugin:
            # The plugin went away: its devices cannot be handed out until it registers again, and a pod
            # admitted meanwhile waits for that (as at start) instead of finding 0 devices and failing.
            plugin.devices = {}
            plugin.synced.clear()
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _publish_capacity(self, resource: str, total: int, healthy: int) -> None:
        body = {"status": {"capacity": {resource: str(total)}, "allocatable": {resource: str(healthy)}}}
        try:
            await asyncio.to_thread(
                self.core.patch_node_status,
                self.node_name,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except KUBE_ERRORS as exc:
            log.warning("node_capacity_update_failed", node=self.node_name, error=str(exc))

    # --- pods ------------------------------------------------------------------------------------

    def _on_pod_event(self, event_type: str, pod: Obj) -> None:
        """Reflector thread -> event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._queue.put_nowait, (event_type, pod))

    async def _work(self) -> None:
        while True:
            event_type, pod = await self._queue.get()
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid") or "")
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            if event_type == "DELETED" or phase in ("Succeeded", "Failed"):
                if self._in_use.pop(uid, None) is not None:
                    await self._notify()
                continue
            if phase != "Pending" or uid in self.admitted or meta.get("deletionTimestamp"):
                continue
            self.admitted[uid] = "Admitting"
            try:
                await self._admit(pod)
            except Exception:
                log.exception("admission_crashed", pod=f"{meta.get('namespace')}/{meta.get('name')}")

    def _free_devices(self, plugin: PluginEndpoint, own: set[str]) -> list[str]:
        taken = set().union(*self._in_use.values()) if self._in_use else set()
        return [i for i, h in plugin.devices.items() if h == HEALTHY and i not in taken and i not in own]

    async def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(self.admission_timeout):
                async with self._changed:
                    await self._changed.wait_for(ready)
        except TimeoutError:
            raise AdmissionError(f"{what} (waited {self.admission_timeout:g}s)") from None

    async def _allocate_container(
        self, container: Mapping[str, Any], resource: str, count: int, own: set[str]
    ) -> tuple[list[str], api_pb2.ContainerAllocateResponse, PluginEndpoint]:
        for attempt in (1, 2):
            await self._wait_for(
                lambda: resource in self.plugins and self.plugins[resource].synced.is_set(),
                f"no device plugin registered for {resource}",
            )
            plugin = self.plugins[resource]
            try:
                return await self._allocate_on(plugin, container, resource, count, own)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                    raise
                # The plugin died after it was last seen (a restart): its stream's end has not been handled
                # yet. As for a pod admitted while no plugin is registered, wait for it to register again
                # rather than fail the pod on a connection that is already gone.
                log.warning("plugin_unreachable_waiting", resource=resource, error=exc.details())
                await self._wait_for(
                    functools.partial(self._plugin_gone, resource, plugin),
                    f"device plugin for {resource} unreachable but still registered",
                )
        raise AssertionError("unreachable")

    def _plugin_gone(self, resource: str, plugin: PluginEndpoint) -> bool:
        """`plugin`'s stream end has been handled, or another plugin registered for `resource` since."""
        return self.plugins.get(resource) is not plugin or not plugin.synced.is_set()

    async def _allocate_on(
        self, plugin: PluginEndpoint, container: Mapping[str, Any], resource: str, count: int, own: set[str]
    ) -> tuple[list[str], api_pb2.ContainerAllocateResponse, PluginEndpoint]:
        available = self._free_devices(plugin, own)
        if len(available) < count:
            # The kubelet does not queue: a pod that does not fit is rejected at once.
            raise AdmissionError(
                f"requested number of devices unavailable for {resource}. "
                f"Requested: {count}, Available: {len(available)}"
            )
        chosen = available[:count]
        if plugin.options.get_preferred_allocation_available:
            preferred = await plugin.stub.GetPreferredAllocation(
                api_pb2.PreferredAllocationRequest(
                    container_requests=[
                        api_pb2.ContainerPreferredAllocationRequest(
                            available_deviceIDs=available, must_include_deviceIDs=[], allocation_size=count
                        )
                    ]
                ),
                timeout=30,
            )
            ids = list(preferred.container_responses[0].deviceIDs) if preferred.container_responses else []
            if len(ids) == count and len(set(ids)) == count and set(ids) <= set(available):
                chosen = ids
        allocate_started = time.perf_counter()
        response = await plugin.stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)]
            ),
            timeout=30,
        )
        allocate_ms = round((time.perf_counter() - allocate_started) * 1000, 3)
        if len(response.container_responses) != 1:
            raise AdmissionError(
                f"Allocate answered {len(response.container_responses)} responses for 1 container"
            )
        if plugin.options.pre_start_required:
            await plugin.stub.PreStartContainer(
                api_pb2.PreStartContainerRequest(devices_ids=chosen), timeout=30
            )
        log.info(
            "container_allocated",
            container=container.get("name"),
            resource=resource,
            devices=chosen,
            allocate_ms=allocate_ms,
        )
        return chosen, response.container_responses[0], plugin

    async def _admit(self, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid") or "")
        spec = pod.get("spec") or {}
        key = f"{namespace}/{name}"
        ordered = [(c, True) for c in spec.get("initContainers") or []] + [
            (c, False) for c in spec.get("containers") or []
        ]
        records: list[ContainerRecord] = []
        own: set[str] = set()
        self._in_use[uid] = own
        try:
            for container, is_init in ordered:
                for resource, count in container_requests(container, self.resources):
                    ids, answer, _plugin = await self._allocate_container(container, resource, count, own)
                    if not is_init:
                        # Init containers run one at a time and pass their devices on; apps keep theirs.
                        own.update(ids)
                    records.append(_record(container, is_init, resource, ids, answer))
        except (AdmissionError, grpc.RpcError) as exc:
            self._in_use.pop(uid, None)
            await self._notify()
            if isinstance(exc, grpc.aio.AioRpcError):
                cause = f"rpc error: code = {exc.code().name} desc = {exc.details()}"
            else:
                cause = str(exc)
            message = f"Allocate failed due to {cause}, which is unexpected"
            await self._reject(pod, message)
            self.admitted[uid] = "Failed"
            return
        document = {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "node": self.node_name,
            "containers": [r.as_json() for r in records],
        }
        await asyncio.to_thread(self._write_record, namespace, name, document)
        await self._run(pod, document)
        self.admitted[uid] = "Running"
        log.info("pod_running", pod=key, containers=len(records))

    def record_path(self, namespace: str, name: str) -> Path:
        for part in (namespace, name):
            if _SAFE_NAME_RE.fullmatch(part) is None:
                raise AdmissionError(f"pod name part {part!r} cannot be a file name")
        return self.allocations_dir / f"{namespace}_{name}.json"

    def _write_record(self, namespace: str, name: str, document: Obj) -> None:
        target = self.record_path(namespace, name)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=self.allocations_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, target)

    async def _run(self, pod: Obj, document: Obj) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        spec = pod.get("spec") or {}
        now = _now()
        compact = json.dumps(document, separators=(",", ":"), sort_keys=True)
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_pod,
                name,
                namespace,
                {"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: compact}}},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 403:
                log.error("pod_status_update_failed", pod=f"{namespace}/{name}", error=str(exc))
                return
            # A real API server with NodeRestriction lets a node write only its pods' status, as it should
            # (a kubelet writes no annotations): the record file under allocations/ is the only copy then.
            log.info(
                "allocation_annotation_forbidden",
                pod=f"{namespace}/{name}",
                record=str(self.record_path(namespace, name)),
            )
        except KUBE_ERRORS as exc:
            log.error("pod_status_update_failed", pod=f"{namespace}/{name}", error=str(exc))
            return
        try:
            status = {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": now,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "initContainerStatuses": [
                    _status(
                        c,
                        {
                            "terminated": {
                                "exitCode": 0,
                                "reason": "Completed",
                                "startedAt": now,
                                "finishedAt": now,
                            }
                        },
                        uid=meta.get("uid"),
                    )
                    for c in spec.get("initContainers") or []
                ],
                "containerStatuses": [
                    _status(c, {"running": {"startedAt": now}}, uid=meta.get("uid"), started=True)
                    for c in spec.get("containers") or []
                ],
            }
            await asyncio.to_thread(
                self.core.patch_namespaced_pod_status,
                name,
                namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except KUBE_ERRORS as exc:
            log.error("pod_status_update_failed", pod=f"{namespace}/{name}", error=str(exc))

    async def _reject(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        log.warning("pod_rejected", pod=f"{namespace}/{name}", reason=REJECTED_REASON, message=message)
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": name,
                "uid": meta.get("uid"),
            },
            "reason": REJECTED_REASON,
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        status = {"phase": "Failed", "reason": REJECTED_REASON, "message": f"Pod was rejected: {message}"}
        try:
            await asyncio.to_thread(
                self.core.create_namespaced_event, namespace, event, _preload_content=False
            )
            await asyncio.to_thread(
                self.core.patch_namespaced_pod_status,
                name,
                namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except KUBE_ERRORS as exc:
            log.error("pod_reject_update_failed", pod=f"{namespace}/{name}", error=str(exc))


def _record(
    container: Mapping[str, Any],
    is_init: bool,
    resource: str,
    ids: list[str],
    answer: api_pb2.ContainerAllocateResponse,
) -> ContainerRecord:
    return ContainerRecord(
        name=str(container.get("name") or ""),
        init=is_init,
        resource=resource,
        device_ids=list(ids),
        envs=dict(answer.envs),
        mounts=[
            {"containerPath": m.container_path, "hostPath": m.host_path, "readOnly": m.read_only}
            for m in answer.mounts
        ],
        devices=[
            {"containerPath": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}
            for d in answer.devices
        ],
        annotations=dict(answer.annotations),
    )


def _status(container: Mapping[str, Any], state: Obj, *, uid: Any, started: bool = False) -> Obj:
    name = str(container.get("name") or "")
    status: Obj = {
        "name": name,
        "state": state,
        "ready": True,
        "restartCount": 0,
        "image": container.get("image") or "",
        "imageID": "",
        "containerID": f"local://{uid}/{name}",
    }
    if started:
        status["started"] = True
    return status


# --- command line ------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace, access: KubeAccess) -> int:
    try:
        api = new_api_client(access)
    except KubeAccessError as exc:
        log.error("kube_access_invalid", error=str(exc))
        return 2
    kubelet = KubeletStandIn(
        args.dir,
        args.node_name,
        api,
        resources=args.resource or ["nvidia.com/gpu"],
        admission_timeout=args.admission_timeout,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    restarts: asyncio.Queue[None] = asyncio.Queue()
    # Handlers before kubelet.sock exists: a SIGHUP sent as soon as the socket appears must restart the
    # stand-in, not kill it with the default action.
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, restarts.put_nowait, None)
    await kubelet.start()
    heartbeat = asyncio.create_task(NodeHeartbeat(api, args.node_name).run(stop), name="node-heartbeat")
    try:
        while not stop.is_set():
            waiter = asyncio.create_task(stop.wait())
            restart = asyncio.create_task(restarts.get())
            done, pending = await asyncio.wait({waiter, restart}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if restart in done:
                await kubelet.restart()
    finally:
        stop.set()
        await heartbeat
        await kubelet.stop()
        api.close()  # type: ignore[no-untyped-call]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kube-vgpu-local kubelet",
        description="A kubelet stand-in: device plugin registration, Allocate, pods marked Running.",
    )
    parser.add_argument("--dir", required=True, help="device plugin directory (kubelet.sock, allocations/)")
    parser.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME"), help="node to act for ($NODE_NAME)"
    )
    parser.add_argument(
        "--server", default=None, help="API server URL (kube-local), e.g. http://127.0.0.1:8001"
    )
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--resource", action="append", help="device resource to allocate (repeatable)")
    parser.add_argument("--admission-timeout", type=float, default=30.0, help="seconds to wait for devices")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name (or $NODE_NAME) is required")
    configure_logging(LogConfig(level=args.log_level), service="kubelet-standin")
    return asyncio.run(_serve(args, KubeAccess(server=args.server, kubeconfig=args.kubeconfig)))


if __name__ == "__main__":
    raise SystemExit(main())
