"""Our place in the kubelet's device plugin dir: the socket we serve, registration, re-registration.

Life cycle (as NVIDIA's plugin, docs/hami-wire.md#device-plugin-startup): serve the Device Plugin API on
`<plugin dir>/nvidia-<short resource>.sock`, dial ourselves until an RPC answers, then Register with the
kubelet on `<plugin dir>/kubelet.sock`. A watcher polls kubelet.sock (inode, ctime) and our socket: when
the kubelet restarts it deletes every socket there and re-creates kubelet.sock, and we serve afresh and
register again within `kubelet_watch_interval_seconds`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.log import get_logger
from services.device_plugin.servicer import DevicePluginServicer

log = get_logger("device_plugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
# The gRPC health service name the probes ask for: SERVING once the kubelet accepted our registration.
SERVICE_NAME = "v1beta1.DevicePlugin"


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


class KubeletEndpoint:
    """Serves `servicer` on our socket and keeps it registered with the kubelet. `start()`, then `watch()`
    as a task, then `stop()`."""

    def __init__(
        self,
        plugin_dir: Path,
        resource_name: str,
        servicer: DevicePluginServicer,
        *,
        watch_interval: float,
        probe: GrpcServerHandle | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.resource_name = resource_name
        self.socket_path = plugin_dir / socket_name(resource_name)
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self.servicer = servicer
        self.watch_interval = watch_interval
        self.probe = probe
        # Counters for logs and tests.
        self.registrations = 0
        self.server_starts = 0
        self.registered = asyncio.Event()

        self._server: GrpcServerHandle | None = None
        self._registered_stamp: tuple[int, int] | None = None
        self._waiting_logged = False

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        await self._serve()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    async def _serve(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        handle = build_server(
            [(api_pb2_grpc.add_DevicePluginServicer_to_server, self.servicer, SERVICE_NAME)],
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

    async def _register_with_kubelet(self) -> None:
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.resource_name,
            options=self.servicer.options(),
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

    async def watch(self) -> None:
        """Register, and register again whenever the kubelet restarts; runs until cancelled."""
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except (grpc.RpcError, OSError) as exc:
                log.warning(
                    "kubelet_registration_failed", kubelet_socket=str(self.kubelet_socket), error=str(exc)
                )
            await asyncio.sleep(self.watch_interval)

    async def _tick(self) -> None:
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
            resource=self.resource_name,
            endpoint=self.socket_path.name,
            registrations=self.registrations,
        )
