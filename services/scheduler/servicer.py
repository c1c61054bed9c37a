"""SchedulerService over gRPC: what tooling (vgpuctl) asks the scheduler, answered from the usage cache.

Read-only by construction: every RPC takes snapshots from the `UsageCache` and runs the same pure
`evaluate` the extender's filter runs, so ExplainPod and Simulate say exactly what a filter call would
decide, without reserving, patching or binding anything. Protobuf types stay in this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubevgpu.device.v1 import device_pb2
from kubevgpu.scheduler.v1 import scheduler_service_pb2 as pb
from kubevgpu.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.codecs import parse_reasons
from services.common.grpc_server import ServiceRegistration
from services.common.model import ContainerDevice, DeviceUsage, PodSingleDevice
from services.common.resources import NvidiaRequestConfig
from services.common.selectors import SelectorError, parse_label_selector
from services.scheduler.cache import UsageCache
from services.scheduler.decoders import PodUsage, pod_context
from services.scheduler.filtering import FilterOutcome, evaluate
from services.scheduler.fit import NodeFit, PodAnnotationError, SchedulingPolicy, node_score

SERVICE_NAME = "kubevgpu.scheduler.v1.SchedulerService"
_REASON_TOTAL = re.compile(r"^\d+/(\d+) ")

PodGetter = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""Reads one pod (namespace, name) from the API; None when it does not exist."""


def _health(healthy: bool) -> device_pb2.DeviceHealth.ValueType:
    return device_pb2.DEVICE_HEALTH_HEALTHY if healthy else device_pb2.DEVICE_HEALTH_UNHEALTHY


def device_usage_message(usage: DeviceUsage) -> device_pb2.DeviceUsage:
    return device_pb2.DeviceUsage(
        device=device_pb2.Device(
            uuid=usage.id,
            index=usage.index,
            type=usage.type,
            memory_mib=usage.totalmem,
            cores_percent=usage.totalcore,
            split_count=usage.count,
            numa=usage.numa,
            health=_health(usage.health),
            mode=usage.mode,
        ),
        used_slots=usage.used,
        used_memory_mib=usage.usedmem,
        used_cores_percent=usage.usedcores,
    )


def node_message(name: str, devices: Sequence[DeviceUsage], cordoned: Iterable[str]) -> pb.Node:
    return pb.Node(
        name=name,
        devices=[device_usage_message(d) for d in devices],
        cordoned_device_uuids=sorted(cordoned),
        total_memory_mib=sum(d.totalmem for d in devices),
        used_memory_mib=sum(d.usedmem for d in devices),
        total_cores_percent=sum(d.totalcore for d in devices),
        used_cores_percent=sum(d.usedcores for d in devices),
        total_slots=sum(d.count for d in devices),
        used_slots=sum(d.used for d in devices),
        score=node_score(devices),
    )


def container_messages(
    allocation: PodSingleDevice, init_count: int, names: Sequence[str] = ()
) -> list[device_pb2.ContainerDevices]:
    def card(dev: ContainerDevice) -> device_pb2.ContainerDevice:
        return device_pb2.ContainerDevice(
            uuid=dev.uuid, type=dev.type, used_memory_mib=dev.usedmem, used_cores_percent=dev.usedcores
        )

    return [
        device_pb2.ContainerDevices(
            container_name=names[slot] if slot < len(names) else "",
            container_index=slot,
            devices=[card(d) for d in cards],
            init_container=slot < init_count,
        )
        for slot, cards in enumerate(allocation)
    ]


def container_names(pod: Mapping[str, Any]) -> list[str]:
    """Slot order of HAMi's encoding: init containers first, then app containers."""
    spec = pod.get("spec") or {}
    return [
        str(c.get("name", ""))
        for key in ("initContainers", "containers")
        for c in (spec.get(key) or [])
        if isinstance(c, Mapping)
    ]


def verdict_message(fit: NodeFit, init_count: int, names: Sequence[str]) -> pb.NodeVerdict:
    counts = parse_reasons(fit.reason) if fit.reason else {}
    # Every entry of HAMi's string shares one denominator: the number of candidate cards on the node.
    match = _REASON_TOTAL.match(fit.reason)
    total = int(match.group(1)) if match else 0
    return pb.NodeVerdict(
        node_name=fit.node,
        fits=fit.fits,
        reason=fit.reason,
        reasons=[pb.ReasonCount(reason=r, count=c, total=total) for r, c in sorted(counts.items())],
        score=fit.score,
        containers=container_messages(fit.devices, init_count, names) if fit.fits else [],
    )


def pod_allocation_message(usage: PodUsage) -> pb.PodAllocation:
    return pb.PodAllocation(
        pod=device_pb2.PodDevices(
            namespace=usage.namespace,
            name=usage.name,
            uid=usage.uid,
            node=usage.node,
            containers=container_messages(usage.allocation, usage.init_count),
        ),
        bind_phase=usage.bind_phase,
        scheduled_unix_seconds=usage.scheduled_unix,
    )


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(
        self,
        cache: UsageCache,
        *,
        policy: SchedulingPolicy,
        request_config: NvidiaRequestConfig,
        get_pod: PodGetter,
    ) -> None:
        self._cache = cache
        self._policy = policy
        self._request_config = request_config
        self._get_pod = get_pod

    def registration(self) -> ServiceRegistration:
        return ServiceRegistration(pb_grpc.add_SchedulerServiceServicer_to_server, self, SERVICE_NAME)

    def _node(self, name: str) -> pb.Node | None:
        snapshot = self._cache.snapshot(name, include_unhealthy=True)
        if snapshot is None:
            return None
        return node_message(name, snapshot.devices, snapshot.cordoned)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        try:
            selector = parse_label_selector(request.label_selector)
        except SelectorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"label_selector: {exc}")
        nodes = []
        for state in sorted(self._cache.nodes(), key=lambda s: s.name):
            if request.node_name and state.name != request.node_name:
                continue
            if not selector.matches(state.labels):
                continue
            node = self._node(state.name)
            if node is not None:
                nodes.append(node)
        return pb.ListNodesResponse(nodes=nodes)

    async def GetNode(self, request: pb.GetNodeRequest, context: Any) -> pb.GetNodeResponse:
        node = self._node(request.node_name) if request.node_name else None
        if node is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"node {request.node_name!r} has no registered GPUs (no hami.io/node-nvidia-register "
                "annotation, or not matched by the scheduler's node label selector)",
            )
        return pb.GetNodeResponse(node=node)

    async def ListPodAllocations(
        self, request: pb.ListPodAllocationsRequest, context: Any
    ) -> pb.ListPodAllocationsResponse:
        usages = [
            u
            for u in self._cache.pods(include_reservations=True)
            if (not request.node_name or u.node == request.node_name)
            and (not request.namespace or u.namespace == request.namespace)
        ]
        usages.sort(key=lambda u: (u.namespace, u.name))
        return pb.ListPodAllocationsResponse(allocations=[pod_allocation_message(u) for u in usages])

    def _evaluate(self, pod: Mapping[str, Any], node_names: Sequence[str]) -> tuple[FilterOutcome, int]:
        ctx = pod_context(pod, self._request_config)
        candidates = list(node_names) or sorted(self._cache.node_names())
        snapshots = {name: self._cache.snapshot(name, exclude_uid=ctx.uid or None) for name in candidates}
        quota = self._cache.quota_view(exclude_uid=ctx.uid or None)
        return evaluate(ctx, candidates, snapshots, self._policy, quota), ctx.init_count

    async def ExplainPod(self, request: pb.ExplainPodRequest, context: Any) -> pb.ExplainPodResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        namespace = request.namespace or "default"
        try:
            pod = await self._get_pod(namespace, request.name)
        except (ApiException, OSError, HTTPError) as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"cannot read pod {namespace}/{request.name}: {exc}"
            )
        if pod is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pod {namespace}/{request.name} not found")
        assert pod is not None
        try:
            outcome, init_count = self._evaluate(pod, ())
        except PodAnnotationError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        names = container_names(pod)
        return pb.ExplainPodResponse(
            namespace=namespace,
            name=request.name,
            assigned_node=str((pod.get("spec") or {}).get("nodeName") or ""),
            verdicts=[verdict_message(v, init_count, names) for v in outcome.verdicts],
        )

    async def Simulate(self, request: pb.SimulateRequest, context: Any) -> pb.SimulateResponse:
        try:
            pod = json.loads(request.pod_json)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"pod_json is not valid JSON: {exc}")
        if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pod_json must be a Pod object with a spec")
        try:
            outcome, init_count = self._evaluate(pod, list(request.node_names))
        except PodAnnotationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        names = container_names(pod)
        verdicts = [verdict_message(v, init_count, names) for v in outcome.verdicts]
        best = outcome.best
        if best is None:
            return pb.SimulateResponse(
                fits=False,
                verdicts=verdicts,
                message=f"no node fits: {len(outcome.failed)} of {len(outcome.verdicts)} nodes do not meet",
            )
        return pb.SimulateResponse(
            fits=True,
            node_name=best.node,
            containers=container_messages(best.devices, init_count, names),
            verdicts=verdicts,
            message=f"would land on {best.node} ({outcome.policy.node_policy} node policy)",
        )
