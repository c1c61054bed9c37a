"""Optional source: the kubelet's PodResources API v1 (`List`), when its socket is there.

The kubelet answers which device IDs each container of each pod on this node holds. It names pods by
namespace/name only (no UID), so it cannot replace the API watch for pairing `<podUID>_<container>` dirs
with pods; the monitor uses it to learn a container's GPUs when the pod carries no (or an undecodable)
`hami.io/vgpu-devices-allocated` annotation. HAMi's plugin advertises replica IDs `GPU-<uuid>-<n>` (ours may
also use `<uuid>::<n>`); `physical_uuid` strips the replica suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubevgpu.kubelet.podresources.v1 import api_pb2, api_pb2_grpc
from services.common.log import get_logger

log = get_logger("monitor.podresources")

_REPLICA_SUFFIX_RE = re.compile(r"-[0-9]+$")
DEFAULT_TIMEOUT_SECONDS = 5.0

# (namespace, pod name) -> container name -> physical GPU UUIDs, in the kubelet's order, deduplicated.
PodDevicesMap = dict[tuple[str, str], dict[str, tuple[str, ...]]]


def physical_uuid(device_id: str) -> str:
    """The GPU behind a kubelet device ID: `<uuid>::<n>` and `GPU-<uuid>-<n>` lose their replica suffix."""
    if "::" in device_id:
        return device_id.split("::", 1)[0]
    if device_id.count("-") == 6:
        return _REPLICA_SUFFIX_RE.sub("", device_id)
    return device_id


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class PodResourcesClient:
    """A blocking client of `v1.PodResourcesLister/List` on a unix socket."""

    socket_path: str
    resource_prefixes: tuple[str, ...] = ("nvidia.com/",)
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def available(self) -> bool:
        return Path(self.socket_path).exists()

    def list_devices(self) -> PodDevicesMap:
        """Every pod's containers and their GPU UUIDs; grpc.RpcError when the kubelet does not answer."""
        with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
            stub = api_pb2_grpc.PodResourcesListerStub(channel)
            reply = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        result: PodDevicesMap = {}
        for pod in reply.pod_resources:
            containers: dict[str, tuple[str, ...]] = {}
            for container in pod.containers:
                ids = [
                    physical_uuid(device_id)
                    for devices in container.devices
                    if devices.resource_name.startswith(self.resource_prefixes)
                    for device_id in devices.device_ids
                ]
                if ids:
                    containers[container.name] = _unique(ids)
            if containers:
                result[(pod.namespace, pod.name)] = containers
        return result


class PodResourcesSource:
    """The last answer of the kubelet, refreshed by the scan loop; empty while the socket is missing."""

    def __init__(self, client: PodResourcesClient) -> None:
        self.client = client
        self._devices: PodDevicesMap = {}
        self._failing = False

    def refresh(self) -> None:
        if not self.client.available():
            self._devices = {}
            return
        try:
            self._devices = self.client.list_devices()
        except grpc.RpcError as exc:
            if not self._failing:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                log.warning("podresources_unavailable", socket=self.client.socket_path, code=str(code))
            self._failing = True
            return
        if self._failing:
            log.info("podresources_available", socket=self.client.socket_path)
        self._failing = False

    def devices(self, namespace: str, pod: str, container: str) -> tuple[str, ...]:
        return self._devices.get((namespace, pod), {}).get(container, ())
