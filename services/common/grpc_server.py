"""The one way every kube-vgpu gRPC server is built.

``build_server`` wraps ``grpc.aio.server()`` and always adds the standard health service
(``grpc.health.v1.Health``) and server reflection, so every server of the suite can be probed with
grpc_health_probe / grpcurl the same way. It binds a TCP address (``host:port``; port 0 lets the server pick)
or a unix socket (``unix:/path`` or ``unix:///path``; a stale socket file is removed first).

Usage::

    handle = build_server(
        [(api_pb2_grpc.add_DevicePluginServicer_to_server, plugin, "v1beta1.DevicePlugin")],
        "unix:/var/lib/kubelet/device-plugins/nvidia-gpu.sock",
    )
    await handle.start()  # health: "" and every service SERVING
    ...
    await handle.stop(grace=5.0)  # health: NOT_SERVING first, then the server stops
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = [
    "HEALTH_SERVICE_NAME",
    "REFLECTION_SERVICE_NAME",
    "REFLECTION_V1_SERVICE_NAME",
    "GrpcServerHandle",
    "ServiceRegistration",
    "build_server",
    "unix_socket_path",
]

HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE_NAME: str = reflection.SERVICE_NAME
# grpc.reflection.v1 is what current clients (grpcurl, grpcui, Postman) ask for first. Its messages are
# wire-identical to v1alpha's, whose implementation grpcio-reflection ships, so one servicer answers under
# both names.
REFLECTION_V1_SERVICE_NAME: str = "grpc.reflection.v1.ServerReflection"

_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)

AddServicerFn = Callable[[Any, grpc.aio.Server], None]
"""A generated ``add_<Service>Servicer_to_server(servicer, server)`` function."""


@dataclass(frozen=True)
class ServiceRegistration:
    """One service to serve: the generated add function, the servicer, and the full service name.

    The full service name is the proto package plus service (``"kubevgpu.scheduler.v1.SchedulerService"``,
    ``"v1beta1.DevicePlugin"``); it is what health checks and reflection report.
    """

    add_to_server: AddServicerFn
    servicer: Any
    service_name: str


ServiceSpec = ServiceRegistration | tuple[AddServicerFn, Any, str]


def unix_socket_path(address: str) -> Path | None:
    """The file path of a ``unix:`` address (``unix:relative``, ``unix:/abs``, ``unix:///abs``), else None."""
    if not address.startswith("unix:"):
        return None
    rest = address[len("unix:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"empty unix socket path in {address!r}")
    return Path(rest)


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


class GrpcServerHandle:
    """A built (bound, not yet started) gRPC server with its health servicer."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: Any,
        address: str,
        port: int | None,
        socket_path: Path | None,
        service_names: Sequence[str],
    ) -> None:
        self.server = server
        # grpc_health.v1.health.aio.HealthServicer (the package ships no type information).
        self.health = health
        self.address = address
        # Bound TCP port (useful with port 0); None for a unix socket.
        self.port = port
        self.socket_path = socket_path
        # Application services, without health and reflection.
        self.service_names: tuple[str, ...] = tuple(service_names)
        self._started = False
        self._stopped = False

    @property
    def target(self) -> str:
        """What a client passes to ``grpc.aio.insecure_channel`` to reach this server."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        host = self.address.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "[::]":
            host = "[::1]"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Start serving and mark the server ("") and every service SERVING."""
        if self._started:
            raise RuntimeError("server already started")
        await self.server.start()
        self._started = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in self.service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_serving(self, service_name: str, serving: bool) -> None:
        """Report one service (or "" for the whole server) as SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service_name, status)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING everywhere, then stop; in-flight RPCs get ``grace`` seconds to finish.

        Idempotent. A unix socket file the server leaves behind is removed.
        """
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                _remove_stale_socket(self.socket_path)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True if it stopped, False on timeout."""
        return await self.server.wait_for_termination(timeout)

    async def __aenter__(self) -> GrpcServerHandle:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _enable_reflection(names: Sequence[str], server: grpc.aio.Server) -> None:
    """Server reflection under v1alpha and v1, one servicer behind both."""
    servicer = reflection.aio.ReflectionServicer(list(names))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )


def build_server(
    services: Sequence[ServiceSpec],
    address: str,
    *,
    options: Sequence[tuple[str, Any]] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    reflection_enabled: bool = True,
) -> GrpcServerHandle:
    """Create a grpc.aio server with ``services`` plus health and reflection, bound to ``address``.

    ``services`` holds ``ServiceRegistration``s or ``(add_fn, servicer, full_service_name)`` tuples.
    ``address`` is ``host:port`` (port 0 picks a free port, see ``handle.port``) or ``unix:<path>``.
    ``options`` are grpc channel arguments; ``grpc.so_reuseport`` defaults to 0 (binding a busy port fails).
    Call from inside the asyncio event loop that will run the server. The server is bound but not started:
    ``await handle.start()``.
    """
    registrations = [s if isinstance(s, ServiceRegistration) else ServiceRegistration(*s) for s in services]
    names = [r.service_name for r in registrations]
    reserved = {HEALTH_SERVICE_NAME, REFLECTION_SERVICE_NAME, REFLECTION_V1_SERVICE_NAME}
    if len(set(names)) != len(names) or reserved & set(names):
        raise ValueError(f"duplicate or reserved service names in {names}")

    # No SO_REUSEPORT unless asked for: a second server on a busy port must fail, not share it silently.
    server_options = dict(_DEFAULT_OPTIONS)
    server_options.update(dict(options or ()))
    server = grpc.aio.server(
        interceptors=list(interceptors) if interceptors else None,
        options=list(server_options.items()),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    for registration in registrations:
        registration.add_to_server(registration.servicer, server)

    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        _enable_reflection(
            [*names, HEALTH_SERVICE_NAME, REFLECTION_V1_SERVICE_NAME, REFLECTION_SERVICE_NAME], server
        )

    socket_path = unix_socket_path(address)
    if socket_path is not None:
        _remove_stale_socket(socket_path)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports bind failures as RuntimeError
        raise OSError(f"could not bind gRPC server to {address}: {exc}") from exc
    if (socket_path is None and bound == 0) or (socket_path is not None and not socket_path.exists()):
        raise OSError(f"could not bind gRPC server to {address}")
    return GrpcServerHandle(
        server=server,
        health=health,
        address=address,
        port=None if socket_path is not None else bound,
        socket_path=socket_path,
        service_names=names,
    )
