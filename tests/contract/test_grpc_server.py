"""services.common.grpc_server: a real grpc.aio server with health, reflection and our service."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from services.common.grpc_server import (
    HEALTH_SERVICE_NAME,
    REFLECTION_SERVICE_NAME,
    REFLECTION_V1_SERVICE_NAME,
    GrpcServerHandle,
    ServiceRegistration,
    build_server,
    unix_socket_path,
)

SERVICE = "v1beta1.DevicePlugin"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TinyPlugin(api_pb2_grpc.DevicePluginServicer):
    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: Any
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=True)


def plugin_spec() -> tuple[Any, Any, str]:
    # The generated base class answers UNIMPLEMENTED for the other methods (abstract only in the stubs).
    plugin = TinyPlugin()  # type: ignore[abstract]
    return (api_pb2_grpc.add_DevicePluginServicer_to_server, plugin, SERVICE)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: sun_path holds about 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="kv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def unix_server(sock_dir: Path) -> AsyncIterator[GrpcServerHandle]:
    handle = build_server([plugin_spec()], f"unix:{sock_dir / 'dp.sock'}")
    await handle.start()
    yield handle
    await handle.stop(grace=None)


async def check(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def reflection_request(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([request]), timeout=5)
    responses = [r async for r in call]
    assert len(responses) == 1
    return responses[0]


async def test_unix_server_health_reflection_and_rpc(unix_server: GrpcServerHandle) -> None:
    assert unix_server.socket_path is not None
    assert unix_server.socket_path.is_socket()
    assert unix_server.port is None
    assert unix_server.target == f"unix:{unix_server.socket_path}"

    async with grpc.aio.insecure_channel(unix_server.target) as channel:
        assert await check(channel, "") == SERVING
        assert await check(channel, SERVICE) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await check(channel, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        listed = await reflection_request(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert names == {SERVICE, HEALTH_SERVICE_NAME, REFLECTION_SERVICE_NAME, REFLECTION_V1_SERVICE_NAME}

        by_symbol = await reflection_request(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
        )
        files = by_symbol.file_descriptor_response.file_descriptor_proto
        assert files, by_symbol
        assert b"kubevgpu/kubelet/deviceplugin/v1beta1/api.proto" in files[0]

        options = await api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
            api_pb2.Empty(), timeout=5
        )
        assert options.pre_start_required is True

        # The kubelet's method path, spelled out, reaches the same handler.
        raw = channel.unary_unary(
            "/v1beta1.DevicePlugin/GetDevicePluginOptions",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.DevicePluginOptions.FromString,
        )
        assert (await raw(api_pb2.Empty(), timeout=5)).pre_start_required is True

        with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
            await api_pb2_grpc.DevicePluginStub(channel).Allocate(api_pb2.AllocateRequest(), timeout=5)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_v1_answers_as_v1alpha_does(unix_server: GrpcServerHandle) -> None:
    """grpc.reflection.v1 (what grpcurl asks for first), by its method path: the messages are wire-identical
    to v1alpha's, so the v1alpha classes encode and decode them here."""
    async with grpc.aio.insecure_channel(unix_server.target) as channel:
        info = channel.stream_stream(
            f"/{REFLECTION_V1_SERVICE_NAME}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        listed, by_symbol = [r async for r in info(iter(requests), timeout=5)]
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, REFLECTION_V1_SERVICE_NAME} <= names
    files = by_symbol.file_descriptor_response.file_descriptor_proto
    assert files and b"kubevgpu/kubelet/deviceplugin/v1beta1/api.proto" in files[0]


async def test_stop_reports_not_serving_then_closes_socket(sock_dir: Path) -> None:
    handle = build_server([plugin_spec()], f"unix:{sock_dir / 'dp.sock'}")
    await handle.start()
    path = handle.socket_path
    assert path is not None

    async with grpc.aio.insecure_channel(handle.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await watch.read()
        assert first.status == SERVING

        stopping = asyncio.create_task(handle.stop(grace=0.3))
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert second.status == NOT_SERVING
        await stopping
        watch.cancel()

    check_servicer = await handle.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert check_servicer.status == NOT_SERVING
    assert not path.exists()
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await check(channel, "")
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    await handle.stop()  # idempotent


async def test_tcp_server_on_ephemeral_port() -> None:
    handle = build_server([ServiceRegistration(*plugin_spec())], "127.0.0.1:0")
    assert handle.socket_path is None
    assert handle.port is not None and handle.port > 0
    assert handle.target == f"127.0.0.1:{handle.port}"

    async with handle, grpc.aio.insecure_channel(handle.target) as channel:
        assert await check(channel, "") == SERVING
        assert await check(channel, SERVICE) == SERVING
        options = await api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
            api_pb2.Empty(), timeout=5
        )
        assert options.pre_start_required is True

    async with grpc.aio.insecure_channel(handle.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await check(channel, "")
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_busy_tcp_port_is_an_error() -> None:
    first = build_server([], "127.0.0.1:0")
    await first.start()
    try:
        with pytest.raises(OSError):
            build_server([], f"127.0.0.1:{first.port}")
    finally:
        await first.stop(grace=None)


async def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays behind, as after a crash
    assert path.is_socket()

    handle = build_server([plugin_spec()], f"unix://{path}")
    async with handle, grpc.aio.insecure_channel(handle.target) as channel:
        assert await check(channel, SERVICE) == SERVING


async def test_regular_file_at_socket_path_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "data.sock"
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        build_server([plugin_spec()], f"unix:{path}")
    assert path.read_text() == "not a socket"


async def test_duplicate_or_reserved_service_names_are_refused() -> None:
    with pytest.raises(ValueError):
        build_server([plugin_spec(), plugin_spec()], "127.0.0.1:0")
    add, servicer, _ = plugin_spec()
    with pytest.raises(ValueError):
        build_server([(add, servicer, HEALTH_SERVICE_NAME)], "127.0.0.1:0")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("unix:/run/x.sock", Path("/run/x.sock")),
        ("unix:///run/x.sock", Path("/run/x.sock")),
        ("unix:rel/x.sock", Path("rel/x.sock")),
        ("127.0.0.1:50051", None),
        ("[::]:0", None),
    ],
)
def test_unix_socket_path(address: str, expected: Path | None) -> None:
    assert unix_socket_path(address) == expected
