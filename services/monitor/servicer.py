"""MonitorService over gRPC: this node's GPUs and every GPU container's usage (the numbers of `/metrics`).

Snapshots are taken in a worker thread (they read the mapped regions), never on the event loop.
`WatchContainerUsage` sends one snapshot per interval (the request's, else the server's refresh period,
at least `MIN_WATCH_INTERVAL_MS`) until the client cancels or the server stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from kubevgpu.monitor.v1 import monitor_service_pb2 as pb
from kubevgpu.monitor.v1 import monitor_service_pb2_grpc as pb_grpc
from services.common.grpc_server import ServiceRegistration
from services.monitor.hostgpu import HostGpuStat
from services.monitor.monitor import ContainerView, Snapshot
from services.monitor.pods import RegisteredGpu

SERVICE_NAME: Final = "kubevgpu.monitor.v1.MonitorService"
MIN_WATCH_INTERVAL_MS: Final = 100


def container_message(view: ContainerView) -> pb.ContainerUsage:
    return pb.ContainerUsage(
        namespace=view.namespace,
        pod_name=view.pod,
        container_name=view.container,
        pod_uid=view.pod_uid,
        last_kernel_time_unix_seconds=view.last_kernel_time,
        devices=[
            pb.ContainerDeviceUsage(
                uuid=d.uuid,
                index=d.vindex,
                memory_used_bytes=d.memory_used_bytes,
                memory_limit_bytes=d.memory_limit_bytes,
                context_bytes=d.context_bytes,
                module_bytes=d.module_bytes,
                buffer_bytes=d.buffer_bytes,
                core_used_percent=max(0, d.core_used_percent),
                core_limit_percent=max(0, d.core_limit_percent),
            )
            for d in view.devices
        ],
    )


def _select(snapshot: Snapshot, namespace: str, pod_name: str) -> list[pb.ContainerUsage]:
    return [
        container_message(v)
        for v in snapshot.containers
        if (not namespace or v.namespace == namespace) and (not pod_name or v.pod == pod_name)
    ]


class MonitorServicer(pb_grpc.MonitorServiceServicer):
    def __init__(
        self,
        node_name: str,
        snapshot: Callable[[], Snapshot],
        host_stats: Callable[[], Sequence[HostGpuStat]],
        registered: Callable[[], dict[str, RegisteredGpu]],
        *,
        default_interval_seconds: float = 5.0,
    ) -> None:
        self.node_name = node_name
        self._snapshot = snapshot
        self._host_stats = host_stats
        self._registered = registered
        self._default_interval = default_interval_seconds

    def registration(self) -> ServiceRegistration:
        return ServiceRegistration(pb_grpc.add_MonitorServiceServicer_to_server, self, SERVICE_NAME)

    def _devices(self) -> list[pb.HostDevice]:
        stats = self._host_stats()
        if stats:
            return [
                pb.HostDevice(
                    uuid=s.uuid,
                    index=s.index,
                    type=s.type,
                    memory_used_bytes=s.memory_used_bytes,
                    memory_total_bytes=s.memory_total_bytes,
                    utilization_percent=s.utilization_percent,
                    memory_utilization_percent=s.memory_utilization_percent,
                )
                for s in stats
            ]
        # No NVML here (a simulated node): the node's registered inventory, without live statistics.
        return [
            pb.HostDevice(uuid=uuid, index=gpu.index, type=gpu.type)
            for uuid, gpu in sorted(self._registered().items(), key=lambda item: item[1].index)
        ]

    async def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:
        devices = await asyncio.to_thread(self._devices)
        return pb.ListDevicesResponse(node_name=self.node_name, devices=devices)

    async def ListContainerUsage(
        self, request: pb.ListContainerUsageRequest, context: Any
    ) -> pb.ListContainerUsageResponse:
        snapshot = await asyncio.to_thread(self._snapshot)
        return pb.ListContainerUsageResponse(
            node_name=self.node_name, containers=_select(snapshot, request.namespace, request.pod_name)
        )

    async def WatchContainerUsage(
        self, request: pb.WatchContainerUsageRequest, context: Any
    ) -> AsyncIterator[pb.WatchContainerUsageResponse]:
        interval_ms = request.interval_ms or int(self._default_interval * 1000)
        interval = max(MIN_WATCH_INTERVAL_MS, interval_ms) / 1000
        while True:
            started = time.monotonic()
            snapshot = await asyncio.to_thread(self._snapshot)
            yield pb.WatchContainerUsageResponse(
                node_name=self.node_name,
                timestamp_unix_ms=int(snapshot.taken_at * 1000),
                containers=_select(snapshot, request.namespace, request.pod_name),
            )
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
