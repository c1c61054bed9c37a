"""Our kubelet protos are wire-identical to the kubelet's Device Plugin v1beta1 and PodResources v1 APIs.

The tables below are transcribed from the kubelet's API definitions (see docs/kubelet-wire.md).
Every message, field name, number and type, and every RPC path, is checked against the generated
descriptors, in both directions (nothing missing, nothing extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor

from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from kubevgpu.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from kubevgpu.kubelet.podresources.v1 import api_pb2 as pr
from kubevgpu.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc

# (message, field, type, number); type is a scalar name, a message name, "repeated X", "optional X"
# or "map<K, V>". Messages without fields have field None.
DEVICE_PLUGIN_FIELDS: list[tuple[str, str | None, str, int]] = [
    ("DevicePluginOptions", "pre_start_required", "bool", 1),
    ("DevicePluginOptions", "get_preferred_allocation_available", "bool", 2),
    ("RegisterRequest", "version", "string", 1),
    ("RegisterRequest", "endpoint", "string", 2),
    ("RegisterRequest", "resource_name", "string", 3),
    ("RegisterRequest", "options", "DevicePluginOptions", 4),
    ("Empty", None, "", 0),
    ("ListAndWatchResponse", "devices", "repeated Device", 1),
    ("TopologyInfo", "nodes", "repeated NUMANode", 1),
    ("NUMANode", "ID", "int64", 1),
    ("Device", "ID", "string", 1),
    ("Device", "health", "string", 2),
    ("Device", "topology", "TopologyInfo", 3),
    ("PreStartContainerRequest", "devices_ids", "repeated string", 1),
    ("PreStartContainerResponse", None, "", 0),
    ("PreferredAllocationRequest", "container_requests", "repeated ContainerPreferredAllocationRequest", 1),
    ("ContainerPreferredAllocationRequest", "available_deviceIDs", "repeated string", 1),
    ("ContainerPreferredAllocationRequest", "must_include_deviceIDs", "repeated string", 2),
    ("ContainerPreferredAllocationRequest", "allocation_size", "int32", 3),
    (
        "PreferredAllocationResponse",
        "container_responses",
        "repeated ContainerPreferredAllocationResponse",
        1,
    ),
    ("ContainerPreferredAllocationResponse", "deviceIDs", "repeated string", 1),
    ("AllocateRequest", "container_requests", "repeated ContainerAllocateRequest", 1),
    ("ContainerAllocateRequest", "devices_ids", "repeated string", 1),
    ("CDIDevice", "name", "string", 1),
    ("AllocateResponse", "container_responses", "repeated ContainerAllocateResponse", 1),
    ("ContainerAllocateResponse", "envs", "map<string, string>", 1),
    ("ContainerAllocateResponse", "mounts", "repeated Mount", 2),
    ("ContainerAllocateResponse", "devices", "repeated DeviceSpec", 3),
    ("ContainerAllocateResponse", "annotations", "map<string, string>", 4),
    ("ContainerAllocateResponse", "cdi_devices", "repeated CDIDevice", 5),
    ("Mount", "container_path", "string", 1),
    ("Mount", "host_path", "string", 2),
    ("Mount", "read_only", "bool", 3),
    ("DeviceSpec", "container_path", "string", 1),
    ("DeviceSpec", "host_path", "string", 2),
    ("DeviceSpec", "permissions", "string", 3),
]

POD_RESOURCES_FIELDS: list[tuple[str, str | None, str, int]] = [
    ("AllocatableResourcesRequest", None, "", 0),
    ("AllocatableResourcesResponse", "devices", "repeated ContainerDevices", 1),
    ("AllocatableResourcesResponse", "cpu_ids", "repeated int64", 2),
    ("AllocatableResourcesResponse", "memory", "repeated ContainerMemory", 3),
    ("ListPodResourcesRequest", None, "", 0),
    ("ListPodResourcesResponse", "pod_resources", "repeated PodResources", 1),
    ("PodResources", "name", "string", 1),
    ("PodResources", "namespace", "string", 2),
    ("PodResources", "containers", "repeated ContainerResources", 3),
    ("PodResources", "cpu_ids", "repeated int64", 4),
    ("PodResources", "memory", "repeated ContainerMemory", 5),
    ("ContainerResources", "name", "string", 1),
    ("ContainerResources", "devices", "repeated ContainerDevices", 2),
    ("ContainerResources", "cpu_ids", "repeated int64", 3),
    ("ContainerResources", "memory", "repeated ContainerMemory", 4),
    ("ContainerResources", "dynamic_resources", "repeated DynamicResource", 5),
    ("ContainerMemory", "memory_type", "string", 1),
    ("ContainerMemory", "size", "uint64", 2),
    ("ContainerMemory", "topology", "TopologyInfo", 3),
    ("ContainerDevices", "resource_name", "string", 1),
    ("ContainerDevices", "device_ids", "repeated string", 2),
    ("ContainerDevices", "topology", "TopologyInfo", 3),
    ("TopologyInfo", "nodes", "repeated NUMANode", 1),
    ("NUMANode", "ID", "int64", 1),
    ("DynamicResource", "claim_name", "string", 2),
    ("DynamicResource", "claim_namespace", "string", 3),
    ("DynamicResource", "claim_resources", "repeated ClaimResource", 4),
    ("ClaimResource", "cdi_devices", "repeated CDIDevice", 1),
    ("ClaimResource", "driver_name", "string", 2),
    ("ClaimResource", "pool_name", "string", 3),
    ("ClaimResource", "device_name", "string", 4),
    ("ClaimResource", "share_id", "optional string", 5),
    ("CDIDevice", "name", "string", 1),
    ("GetPodResourcesRequest", "pod_name", "string", 1),
    ("GetPodResourcesRequest", "pod_namespace", "string", 2),
    ("GetPodResourcesResponse", "pod_resources", "PodResources", 1),
]

# (full method path, request, response, server streaming)
DEVICE_PLUGIN_RPCS = [
    ("/v1beta1.Registration/Register", "RegisterRequest", "Empty", False),
    ("/v1beta1.DevicePlugin/GetDevicePluginOptions", "Empty", "DevicePluginOptions", False),
    ("/v1beta1.DevicePlugin/ListAndWatch", "Empty", "ListAndWatchResponse", True),
    (
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "PreferredAllocationRequest",
        "PreferredAllocationResponse",
        False,
    ),
    ("/v1beta1.DevicePlugin/Allocate", "AllocateRequest", "AllocateResponse", False),
    (
        "/v1beta1.DevicePlugin/PreStartContainer",
        "PreStartContainerRequest",
        "PreStartContainerResponse",
        False,
    ),
]

POD_RESOURCES_RPCS = [
    ("/v1.PodResourcesLister/List", "ListPodResourcesRequest", "ListPodResourcesResponse", False),
    (
        "/v1.PodResourcesLister/GetAllocatableResources",
        "AllocatableResourcesRequest",
        "AllocatableResourcesResponse",
        False,
    ),
    ("/v1.PodResourcesLister/Get", "GetPodResourcesRequest", "GetPodResourcesResponse", False),
]

SCALARS = {
    "string": FieldDescriptor.TYPE_STRING,
    "bool": FieldDescriptor.TYPE_BOOL,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
}

APIS = [
    pytest.param(
        dp.DESCRIPTOR, "v1beta1", DEVICE_PLUGIN_FIELDS, DEVICE_PLUGIN_RPCS, dp_grpc, id="deviceplugin"
    ),
    pytest.param(pr.DESCRIPTOR, "v1", POD_RESOURCES_FIELDS, POD_RESOURCES_RPCS, pr_grpc, id="podresources"),
]


def _rows(table: list[tuple[str, str | None, str, int]]) -> list[Any]:
    return [pytest.param(row, id=f"{row[0]}.{row[1] or '-'}") for row in table]


def _type_name(field: FieldDescriptor) -> str:
    """Describe a field in the table's notation."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        assert entry is not None
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"map<{_type_name(key)}, {_type_name(value)}>"
        base = entry.name
    else:
        names = {v: k for k, v in SCALARS.items()}
        base = names.get(field.type, f"type#{field.type}")
    if field.is_repeated:
        return f"repeated {base}"
    if field.containing_oneof is not None and field.containing_oneof.name == f"_{field.name}":
        return f"optional {base}"
    return base


@pytest.mark.parametrize(("file", "package", "table", "rpcs", "grpc_module"), APIS)
def test_file_package_and_message_set(
    file: FileDescriptor, package: str, table: list[Any], rpcs: list[Any], grpc_module: Any
) -> None:
    assert file.package == package
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    assert proto.syntax == "proto3"
    assert list(proto.dependency) == []  # self-contained: no gogoproto or other imports
    assert set(file.message_types_by_name) == {row[0] for row in table}
    for message in file.message_types_by_name.values():
        expected = {row[1] for row in table if row[0] == message.name and row[1] is not None}
        assert {f.name for f in message.fields} == expected, message.name
        # Only synthetic oneofs of proto3 `optional` fields; no real oneofs in these APIs.
        for oneof in message.oneofs:
            assert [f.name for f in oneof.fields] == [oneof.name[1:]], message.full_name


@pytest.mark.parametrize("row", _rows(DEVICE_PLUGIN_FIELDS))
def test_device_plugin_field(row: tuple[str, str | None, str, int]) -> None:
    _check_field(dp.DESCRIPTOR, row)


@pytest.mark.parametrize("row", _rows(POD_RESOURCES_FIELDS))
def test_pod_resources_field(row: tuple[str, str | None, str, int]) -> None:
    _check_field(pr.DESCRIPTOR, row)


def _check_field(file: FileDescriptor, row: tuple[str, str | None, str, int]) -> None:
    message_name, field_name, type_name, number = row
    message = file.message_types_by_name[message_name]
    if field_name is None:
        assert len(message.fields) == 0
        return
    field = message.fields_by_name[field_name]
    assert field.number == number
    assert _type_name(field) == type_name
    if field.type == FieldDescriptor.TYPE_MESSAGE and not type_name.startswith("map<"):
        # Message-typed fields refer to messages of the same package.
        target = field.message_type
        assert target is not None
        assert target.full_name == f"{file.package}.{target.name}"
    assert message.fields_by_number[number] is field


@pytest.mark.parametrize(("file", "package", "table", "rpcs", "grpc_module"), APIS)
def test_rpc_paths_and_streaming(
    file: FileDescriptor, package: str, table: list[Any], rpcs: list[Any], grpc_module: Any
) -> None:
    found = {}
    for service in file.services_by_name.values():
        for method in service.methods:
            found[f"/{service.full_name}/{method.name}"] = (
                method.input_type.full_name,
                method.output_type.full_name,
                method.server_streaming,
                method.client_streaming,
            )
    expected = {
        path: (f"{package}.{request}", f"{package}.{response}", streaming, False)
        for path, request, response, streaming in rpcs
    }
    assert found == expected
    # The generated stubs dial exactly these paths.
    source = Path(grpc_module.__file__).read_text(encoding="utf-8")
    for path, *_ in rpcs:
        assert f"'{path}'" in source, path


def test_list_and_watch_is_the_only_stream() -> None:
    streams = [
        f"/{s.full_name}/{m.name}"
        for f in (dp.DESCRIPTOR, pr.DESCRIPTOR)
        for s in f.services_by_name.values()
        for m in s.methods
        if m.server_streaming or m.client_streaming
    ]
    assert streams == ["/v1beta1.DevicePlugin/ListAndWatch"]


def test_allocate_response_wire_bytes() -> None:
    response = dp.AllocateResponse(
        container_responses=[
            dp.ContainerAllocateResponse(
                envs={"A": "1"},
                mounts=[dp.Mount(container_path="/c", host_path="/h", read_only=True)],
            )
        ]
    )
    # envs entry (field 1, LEN): key (1) "A", value (2) "1"
    envs = bytes([0x0A, 0x06, 0x0A, 0x01, 0x41, 0x12, 0x01, 0x31])
    # mounts (field 2, LEN): container_path (1) "/c", host_path (2) "/h", read_only (3, varint) 1
    mounts = bytes([0x12, 0x0A, 0x0A, 0x02, 0x2F, 0x63, 0x12, 0x02, 0x2F, 0x68, 0x18, 0x01])
    container = envs + mounts
    expected = bytes([0x0A, len(container)]) + container  # container_responses (field 1, LEN)

    assert response.SerializeToString(deterministic=True) == expected
    parsed = dp.AllocateResponse.FromString(expected)
    assert parsed == response
    assert dict(parsed.container_responses[0].envs) == {"A": "1"}
    assert parsed.container_responses[0].mounts[0].read_only is True


def test_register_request_wire_bytes() -> None:
    request = dp.RegisterRequest(
        version="v1beta1",
        endpoint="x.sock",
        resource_name="nvidia.com/gpu",
        options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    expected = (
        b"\x0a\x07v1beta1"
        + b"\x12\x06x.sock"
        + b"\x1a\x0envidia.com/gpu"
        + b"\x22\x02\x10\x01"  # options (4): get_preferred_allocation_available (2) = true
    )
    assert request.SerializeToString() == expected
    assert dp.RegisterRequest.FromString(expected) == request


def test_claim_resource_optional_share_id_has_presence() -> None:
    unset = pr.ClaimResource(driver_name="d")
    empty = pr.ClaimResource(driver_name="d", share_id="")
    assert not unset.HasField("share_id")
    assert empty.HasField("share_id")
    assert unset.SerializeToString() == b"\x12\x01d"
    # An explicitly set empty optional string is still sent: field 5, LEN, length 0.
    assert empty.SerializeToString() == b"\x12\x01d\x2a\x00"
    assert pr.ClaimResource.FromString(b"\x2a\x00").HasField("share_id")


def test_dynamic_resource_numbering_starts_at_two() -> None:
    resource = pr.DynamicResource(claim_name="c")
    assert resource.SerializeToString() == b"\x12\x01c"
