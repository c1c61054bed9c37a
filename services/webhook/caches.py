"""What the webhook knows about the cluster: namespace GPU quotas and the registered GPU inventory.

Three reflectors (``services.common.reflector``) feed two thread-safe views:

* ``QuotaCache``: ResourceQuota ``spec.hard`` keys ``limits.<gpumem name>`` / ``limits.<gpucores name>``
  (integers; with several quotas in a namespace the smallest limit holds, as every quota must be met), and
  the usage of the GPU pods placed in each namespace, from their ``hami.io/vgpu-devices-allocated``
  annotation collapsed the scheduler's way (docs/hami-wire.md#caches): pods without ``hami.io/vgpu-node`` and
  pods that Succeeded or Failed count nothing; once every init container exited 0 only the app containers
  count.
* ``InventoryCache``: per node, the memory of each GPU in ``hami.io/node-nvidia-register``.

The per-object functions are pure and tested by tables; the caches update incrementally from the
reflectors' events (called in the reflector threads) and are read from the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from services.common import wire
from services.common.codecs import (
    WireFormatError,
    collapse_app_devices,
    collapse_pod_devices,
    decode_node_devices,
    decode_pod_single_device,
)
from services.common.log import get_logger
from services.common.reflector import Reflector, object_key
from services.common.resources import quantity_as_int64
from services.webhook.mutate import NodeGpus, QuotaEntry, QuotaView

__all__ = [
    "InventoryCache",
    "PodUsage",
    "QuotaCache",
    "WebhookCaches",
    "node_gpus",
    "pod_usage",
    "quota_limits",
]

log = get_logger("webhook.caches")

Obj = Mapping[str, Any]

_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def quota_limits(quota: Obj, resource_names: Sequence[str]) -> dict[str, int]:
    """``{resource: limit}`` for the tracked ``limits.<resource>`` keys of a ResourceQuota's ``spec.hard``.
    Values that are not whole numbers (e.g. ``2Gi`` is fine, ``1.5`` is not) are ignored, as HAMi does."""
    hard = _mapping(_mapping(quota.get("spec")).get("hard"))
    limits: dict[str, int] = {}
    for name in resource_names:
        raw = hard.get(f"limits.{name}")
        if isinstance(raw, str | int | float) and not isinstance(raw, bool):
            value = quantity_as_int64(raw)
            if value is not None:
                limits[name] = value
    return limits


@dataclass(frozen=True)
class PodUsage:
    """What one placed GPU pod books against its namespace's quota: MiB (x memoryFactor) and core percent."""

    namespace: str
    mem: int
    cores: int


def _init_containers_done(pod: Obj, init_count: int) -> bool:
    statuses = _mapping(pod.get("status")).get("initContainerStatuses")
    if init_count == 0 or not isinstance(statuses, list) or len(statuses) != init_count:
        return False
    for status in statuses:
        terminated = _mapping(_mapping(_mapping(status).get("state")).get("terminated"))
        if terminated.get("exitCode") != 0 or not terminated:
            return False
    return True


def pod_usage(pod: Obj) -> PodUsage | None:
    """The quota usage of a placed GPU pod, None when it books nothing (docs/hami-wire.md#quota).

    Raises ``WireFormatError`` when the allocation annotation cannot be decoded.
    """
    metadata = _mapping(pod.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    if wire.VGPU_NODE not in annotations:
        return None
    if _mapping(pod.get("status")).get("phase") in _FINISHED_PHASES:
        return None
    allocated = annotations.get(wire.VGPU_DEVICES_ALLOCATED)
    if not isinstance(allocated, str):
        return None
    slots = decode_pod_single_device(allocated)
    init_containers = _mapping(pod.get("spec")).get("initContainers")
    init_count = len(init_containers) if isinstance(init_containers, list) else 0
    if _init_containers_done(pod, init_count):
        devices = collapse_app_devices(slots, init_count)
    else:
        devices = collapse_pod_devices(slots, init_count)
    namespace = metadata.get("namespace")
    return PodUsage(
        namespace=namespace if isinstance(namespace, str) else "",
        mem=sum(d.usedmem for d in devices),
        cores=sum(d.usedcores for d in devices),
    )


def node_gpus(node: Obj) -> NodeGpus | None:
    """The registered GPUs of a node, None when it registers none. Raises ``WireFormatError``."""
    metadata = _mapping(node.get("metadata"))
    register = _mapping(metadata.get("annotations")).get(wire.NODE_NVIDIA_REGISTER)
    if not isinstance(register, str):
        return None
    devices = decode_node_devices(register)
    if not devices:
        return None
    name = metadata.get("name")
    return NodeGpus(node=name if isinstance(name, str) else "", devmem=tuple(d.devmem for d in devices))


class QuotaCache:
    """Namespace -> tracked resource -> (limit, used); fed by pod and ResourceQuota events."""

    def __init__(self, mem_resource: str, core_resource: str) -> None:
        self.mem_resource = mem_resource
        self.core_resource = core_resource
        self._lock = threading.Lock()
        self._quotas: dict[str, tuple[str, dict[str, int]]] = {}  # quota key -> (namespace, limits)
        self._pods: dict[str, PodUsage] = {}  # pod key -> usage
        self._used: dict[str, tuple[int, int]] = {}  # namespace -> (mem, cores)

    def on_quota_event(self, event_type: str, quota: dict[str, Any]) -> None:
        key = object_key(quota)
        namespace = str(_mapping(quota.get("metadata")).get("namespace") or "")
        with self._lock:
            if event_type == "DELETED":
                self._quotas.pop(key, None)
            else:
                self._quotas[key] = (namespace, quota_limits(quota, (self.mem_resource, self.core_resource)))

    def on_pod_event(self, event_type: str, pod: dict[str, Any]) -> None:
        key = object_key(pod)
        usage: PodUsage | None = None
        if event_type != "DELETED":
            try:
                usage = pod_usage(pod)
            except WireFormatError as exc:
                log.warning("pod_allocation_undecodable", pod=key, error=str(exc))
        with self._lock:
            old = self._pods.pop(key, None)
            if old is not None:
                self._add(old, -1)
            if usage is not None and (usage.mem or usage.cores):
                self._pods[key] = usage
                self._add(usage, +1)

    def _add(self, usage: PodUsage, sign: int) -> None:
        mem, cores = self._used.get(usage.namespace, (0, 0))
        mem, cores = max(0, mem + sign * usage.mem), max(0, cores + sign * usage.cores)
        if mem or cores:
            self._used[usage.namespace] = (mem, cores)
        else:
            self._used.pop(usage.namespace, None)

    def view(self, namespace: str) -> dict[str, QuotaEntry]:
        with self._lock:
            limits: dict[str, int] = {}
            for quota_namespace, quota in self._quotas.values():
                if quota_namespace != namespace:
                    continue
                for resource, limit in quota.items():
                    limits[resource] = min(limit, limits.get(resource, limit))
            mem, cores = self._used.get(namespace, (0, 0))
        used = {self.mem_resource: mem, self.core_resource: cores}
        return {resource: QuotaEntry(limit=limit, used=used[resource]) for resource, limit in limits.items()}


class InventoryCache:
    """Node name -> registered GPUs; fed by node events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeGpus] = {}

    def on_node_event(self, event_type: str, node: dict[str, Any]) -> None:
        key = object_key(node)
        gpus: NodeGpus | None = None
        if event_type != "DELETED":
            try:
                gpus = node_gpus(node)
            except WireFormatError as exc:
                log.warning("node_register_undecodable", node=key, error=str(exc))
        with self._lock:
            if gpus is None:
                self._nodes.pop(key, None)
            else:
                self._nodes[key] = gpus

    def snapshot(self) -> list[NodeGpus]:
        with self._lock:
            return list(self._nodes.values())


class WebhookCaches:
    """The reflectors and views the webhook reads; ``quota_view``/``inventory`` return None until synced."""

    def __init__(
        self,
        api_client: Any,
        *,
        mem_resource: str = wire.RESOURCE_GPUMEM,
        core_resource: str = wire.RESOURCE_GPUCORES,
        quota: bool = True,
        inventory: bool = True,
        node_label_selector: str = "",
        pod_label_selector: str = wire.VGPU_NODE,
        resync_period: float | None = 3600.0,
        watch_timeout: float = 300.0,
    ) -> None:
        core = client.CoreV1Api(api_client)
        self.quota = QuotaCache(mem_resource, core_resource)
        self.nodes = InventoryCache()
        self._quota_reflectors: list[Reflector] = []
        self._inventory_reflector: Reflector | None = None
        common: dict[str, Any] = {"resync_period": resync_period, "watch_timeout": watch_timeout}
        if quota:
            self._quota_reflectors = [
                Reflector(
                    core.list_resource_quota_for_all_namespaces,
                    name="resourcequotas",
                    on_event=self.quota.on_quota_event,
                    **common,
                ),
                Reflector(
                    core.list_pod_for_all_namespaces,
                    name="pods",
                    label_selector=pod_label_selector or None,
                    on_event=self.quota.on_pod_event,
                    **common,
                ),
            ]
        if inventory:
            self._inventory_reflector = Reflector(
                core.list_node,
                name="nodes",
                label_selector=node_label_selector or None,
                on_event=self.nodes.on_node_event,
                **common,
            )

    @property
    def reflectors(self) -> list[Reflector]:
        extra = [self._inventory_reflector] if self._inventory_reflector is not None else []
        return [*self._quota_reflectors, *extra]

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            reflector.wait_synced(None if deadline is None else max(0.0, deadline - time.monotonic()))
            for reflector in self.reflectors
        )

    def quota_synced(self) -> bool:
        return bool(self._quota_reflectors) and all(r.has_synced() for r in self._quota_reflectors)

    def inventory_synced(self) -> bool:
        return self._inventory_reflector is not None and self._inventory_reflector.has_synced()

    def quota_view(self, namespace: str) -> QuotaView | None:
        return self.quota.view(namespace) if self.quota_synced() else None

    def inventory(self) -> list[NodeGpus] | None:
        return self.nodes.snapshot() if self.inventory_synced() else None

    def status(self) -> dict[str, Any]:
        return {
            "quota_synced": self.quota_synced() if self._quota_reflectors else None,
            "inventory_synced": self.inventory_synced() if self._inventory_reflector else None,
            "gpu_nodes": len(self.nodes.snapshot()),
        }
