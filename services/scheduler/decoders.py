"""Kubernetes Node and Pod objects (JSON shape) decoded into the scheduler's plain data: pure, no I/O.

- `pod_context`: what fitting needs to know about a pod, its per-container GPU requests first of all.
- `pod_usage_from_object`: the GPU usage a pod holds, from its `hami.io/vgpu-node`,
  `hami.io/vgpu-devices-allocated` and `hami.io/vgpu-mig-allocations` annotations and its init containers'
  state (the counting rules are in `services.scheduler.cache`).
- `node_state_from_object`: a node's registered GPUs (`hami.io/node-nvidia-register`) and what the health
  rules of `services.scheduler.health` read.

Missing or mistyped fields read as empty; an undecodable annotation is reported to the caller, never raised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from services.common import wire
from services.common.codecs import WireFormatError, decode_node_devices, decode_pod_single_device
from services.common.model import (
    CollapsedDevice,
    ContainerDeviceRequest,
    DeviceInfo,
    MigPlacement,
    PodSingleDevice,
)
from services.common.resources import NvidiaRequestConfig, pod_container_requests
from services.scheduler.allocation import collapse_allocation
from services.scheduler.health import NodeHealth, allocatable_gpus, next_dropped, node_health

__all__ = [
    "NodeState",
    "PodContext",
    "PodUsage",
    "init_containers_done",
    "metadata_of",
    "node_state_from_object",
    "pod_context",
    "pod_finished",
    "pod_usage_from_object",
]

_DEFAULT_CONFIG: Final = NvidiaRequestConfig()
_TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
_NEVER: Final = datetime.min.replace(tzinfo=UTC)  # a time the time-independent health rules never read


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def metadata_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's `metadata` (empty when missing or not a mapping)."""
    return _mapping(obj.get("metadata"))


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


# --- The pod to fit -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodContext:
    """What fitting needs to know about a pod. `requests` has one entry per container (init containers first,
    then app containers; None for a container without a GPU request): slot i of the allocation is container i.
    Slots `[0, init_count)` are init containers; `sidecar_slots` are the ones among them that keep running
    (`restartPolicy: Always`)."""

    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str]
    requests: tuple[ContainerDeviceRequest | None, ...]
    init_count: int = 0
    sidecar_slots: frozenset[int] = frozenset()

    @property
    def has_gpu_request(self) -> bool:
        return any(request is not None for request in self.requests)

    @property
    def app_requests_gpu(self) -> bool:
        """Whether a long-running container (app or sidecar) requests a GPU: the pods whose bind takes the
        node lock (docs/hami-wire.md#bind step 3)."""
        return any(req is not None for i, req in enumerate(self.requests) if not self.is_init(i))

    def is_init(self, slot: int) -> bool:
        """Whether the slot is an init container that runs to completion (a sidecar is not)."""
        return slot < self.init_count and slot not in self.sidecar_slots


def _containers(spec: Mapping[str, Any], key: str) -> list[object]:
    containers = spec.get(key)
    return list(containers) if isinstance(containers, list | tuple) else []


def pod_context(pod: Mapping[str, Any], cfg: NvidiaRequestConfig = _DEFAULT_CONFIG) -> PodContext:
    """A `PodContext` from a pod in Kubernetes JSON shape (missing fields read as empty)."""
    meta = metadata_of(pod)
    spec = _mapping(pod.get("spec"))
    init_containers = _containers(spec, "initContainers")
    sidecars = frozenset(
        i
        for i, container in enumerate(init_containers)
        if isinstance(container, Mapping) and container.get("restartPolicy") == "Always"
    )
    return PodContext(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        annotations=_str_map(meta.get("annotations")),
        requests=tuple(pod_container_requests(spec, cfg)),
        init_count=len(init_containers),
        sidecar_slots=sidecars,
    )


# --- The usage a pod holds ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodUsage:
    """A GPU pod as the usage computation sees it. `allocation` is the decoded
    `hami.io/vgpu-devices-allocated` (slot i = container i, init containers first)."""

    uid: str
    namespace: str
    name: str
    node: str
    allocation: PodSingleDevice
    init_count: int = 0
    sidecar_slots: frozenset[int] = frozenset()
    init_released: bool = False
    terminating: bool = False
    bind_phase: str = ""
    scheduled_unix: int = 0
    mig: tuple[tuple[str, MigPlacement], ...] = ()
    # `collapsed()`, computed once per decoded pod version: every snapshot of the node adds it again.
    collapsed_usage: tuple[CollapsedDevice, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        usage = collapse_allocation(self.effective_allocation(), self.init_count, self.sidecar_slots)
        object.__setattr__(self, "collapsed_usage", tuple(usage))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def effective_allocation(self) -> PodSingleDevice:
        """The allocation that still holds resources: init containers drop out once they have all exited."""
        if not self.init_released:
            return self.allocation
        return [
            [] if slot < self.init_count and slot not in self.sidecar_slots else list(cards)
            for slot, cards in enumerate(self.allocation)
        ]

    def collapsed(self) -> list[CollapsedDevice]:
        """Per-GPU usage (HAMi `CollapseInitContainerUsage`, sidecar-aware), sorted by UUID."""
        return list(self.collapsed_usage)


def _init_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = spec.get("initContainers")
    return [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []


def init_containers_done(pod: Mapping[str, Any]) -> bool:
    """Whether every run-to-completion init container has terminated with exit code 0 (native sidecars,
    `restartPolicy: Always`, keep running and are not waited for)."""
    spec = _mapping(pod.get("spec"))
    status = _mapping(pod.get("status"))
    inits = [c.get("name") for c in _init_containers(spec) if c.get("restartPolicy") != "Always"]
    if not inits:
        return False
    statuses = status.get("initContainerStatuses")
    by_name = {
        s.get("name"): s for s in (statuses if isinstance(statuses, list) else []) if isinstance(s, Mapping)
    }
    for name in inits:
        terminated = _mapping(_mapping(by_name.get(name)).get("state")).get("terminated")
        if not isinstance(terminated, Mapping) or terminated.get("exitCode") != 0:
            return False
    return True


def _mig_assignments(value: str | None) -> tuple[tuple[str, MigPlacement], ...]:
    """(GPU UUID, placement) pairs of `hami.io/vgpu-mig-allocations` (docs/hami-wire.md#mig-allocations), bad
    entries skipped."""
    if not value:
        return ()
    try:
        entries = json.loads(value)
    except ValueError:
        return ()
    found: list[tuple[str, MigPlacement]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        uuid, placement = entry.get("gpuUUID"), entry.get("placement")
        if isinstance(uuid, str) and isinstance(placement, dict):
            start, size = placement.get("start"), placement.get("size")
            if isinstance(start, int) and isinstance(size, int):
                found.append((uuid, MigPlacement(start, size)))
    return tuple(found)


def pod_usage_from_object(pod: Mapping[str, Any]) -> tuple[PodUsage | None, str | None]:
    """The usage a pod object holds, or None when it holds none; the second value explains an annotation
    that could not be decoded (the pod then holds none either, and the caller logs it)."""
    metadata = metadata_of(pod)
    annotations = _str_map(metadata.get("annotations"))
    node = annotations.get(wire.VGPU_NODE)
    uid = metadata.get("uid")
    if not node or not isinstance(uid, str) or not uid:
        return None, None
    status = _mapping(pod.get("status"))
    if status.get("phase") in _TERMINAL_PHASES:
        return None, None
    raw = annotations.get(wire.VGPU_DEVICES_ALLOCATED)
    if raw is None:
        return None, None
    try:
        allocation = decode_pod_single_device(raw)
    except WireFormatError as exc:
        return None, str(exc)
    spec = _mapping(pod.get("spec"))
    inits = _init_containers(spec)
    try:
        scheduled = int(annotations.get(wire.VGPU_TIME, "0"))
    except ValueError:
        scheduled = 0
    usage = PodUsage(
        uid=uid,
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        node=node,
        allocation=allocation,
        init_count=len(inits),
        sidecar_slots=frozenset(i for i, c in enumerate(inits) if c.get("restartPolicy") == "Always"),
        init_released=init_containers_done(pod),
        terminating=bool(metadata.get("deletionTimestamp")),
        bind_phase=annotations.get(wire.BIND_PHASE, ""),
        scheduled_unix=scheduled,
        mig=_mig_assignments(annotations.get(wire.VGPU_MIG_ALLOCATIONS)),
    )
    if not any(usage.allocation):
        return None, None
    return usage, None


# The annotations `pod_usage_from_object` reads.
_USAGE_ANNOTATIONS: Final = (
    wire.VGPU_NODE,
    wire.VGPU_TIME,
    wire.VGPU_DEVICES_ALLOCATED,
    wire.VGPU_MIG_ALLOCATIONS,
    wire.BIND_PHASE,
)
_KEPT_METADATA: Final = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")


def pod_usage_fields(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod object that `pod_usage_from_object` and `pod_finished` read, nothing else: the
    scheduler's pod watch keeps only these (a cluster's pods carry managed fields, env, volumes, ... that it
    never reads, several kB each). Both functions answer the same for the result as for `pod`."""
    metadata = metadata_of(pod)
    kept: dict[str, Any] = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    annotations = _mapping(metadata.get("annotations"))
    kept["annotations"] = {key: annotations[key] for key in _USAGE_ANNOTATIONS if key in annotations}
    spec = _mapping(pod.get("spec"))
    status = _mapping(pod.get("status"))
    slim: dict[str, Any] = {"metadata": kept}
    if "initContainers" in spec:
        inits = spec["initContainers"]
        slim["spec"] = {
            "initContainers": [
                {key: c[key] for key in ("name", "restartPolicy") if key in c}
                if isinstance(c, Mapping)
                else c
                for c in inits
            ]
            if isinstance(inits, list)
            else inits
        }
    slim_status = {key: status[key] for key in ("phase",) if key in status}
    statuses = status.get("initContainerStatuses")
    if statuses is not None:
        slim_status["initContainerStatuses"] = (
            [
                {"name": s.get("name"), "state": {"terminated": _mapping(s.get("state")).get("terminated")}}
                if isinstance(s, Mapping)
                else s
                for s in statuses
            ]
            if isinstance(statuses, list)
            else statuses
        )
    if slim_status:
        slim["status"] = slim_status
    return slim


def node_state_fields(node: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node object that `node_state_from_object` reads (metadata without managed fields,
    status.allocatable and status.capacity): the scheduler's node watch keeps only these."""
    metadata = metadata_of(node)
    kept = {
        key: metadata[key]
        for key in ("name", "uid", "resourceVersion", "labels", "annotations")
        if key in metadata
    }
    status = _mapping(node.get("status"))
    return {
        "metadata": kept,
        "status": {key: status[key] for key in ("allocatable", "capacity") if key in status},
    }


def pod_finished(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has run to completion (phase Succeeded or Failed): it holds no usage any more."""
    phase = _mapping(pod.get("status")).get("phase")
    return isinstance(phase, str) and phase in _TERMINAL_PHASES


# --- Nodes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node as last seen: its registered GPUs and what the health rules need."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    devices: tuple[DeviceInfo, ...]
    register: str | None
    decode_error: str | None
    allocatable: int | None
    dropped: bool = False
    # The device plugin re-registered while the kubelet shows no GPUs: the leader restarts the grace period
    # with a fresh handshake request (sticky until the handshake value changes).
    refresh_handshake: bool = False
    resource_version: str = ""

    def schedules_like(self, other: NodeState) -> bool:
        """Whether fitting reads the same from both: they differ at most in the node lock annotation (taken
        and released around every bind) and the resourceVersion, which no snapshot depends on."""
        return (
            self.register == other.register
            and self.devices == other.devices
            and self.decode_error == other.decode_error
            and self.allocatable == other.allocatable
            and self.dropped == other.dropped
            and self.refresh_handshake == other.refresh_handshake
            and self.labels == other.labels
            and _without_lock(self.annotations) == _without_lock(other.annotations)
        )

    @property
    def steady_health(self) -> NodeHealth | None:
        """The node's health when it does not depend on the time (every case but a handshake awaiting the
        kubelet), else None."""
        if self.decode_error is not None or not self.devices:
            return self.health(_NEVER)
        if (self.allocatable is not None and self.allocatable > 0) or self.dropped:
            return self.health(_NEVER)
        return None

    def health(self, now: datetime) -> NodeHealth:
        if self.decode_error is not None:
            return NodeHealth(False, f"undecodable {wire.NODE_NVIDIA_REGISTER}: {self.decode_error}")
        return node_health(
            device_count=len(self.devices),
            allocatable=self.allocatable,
            dropped=self.dropped,
            handshake=self.annotations.get(wire.NODE_HANDSHAKE),
            now=now,
        )

    @property
    def handshake(self) -> str | None:
        return self.annotations.get(wire.NODE_HANDSHAKE)


def _without_lock(annotations: Mapping[str, str]) -> Mapping[str, str]:
    if wire.NODE_LOCK not in annotations:
        return annotations
    return {k: v for k, v in annotations.items() if k != wire.NODE_LOCK}


def node_state_from_object(node: Mapping[str, Any], previous: NodeState | None = None) -> NodeState:
    metadata = metadata_of(node)
    annotations = _str_map(metadata.get("annotations"))
    register = annotations.get(wire.NODE_NVIDIA_REGISTER)
    devices: tuple[DeviceInfo, ...] = ()
    error: str | None = None
    if previous is not None and register is not None and register == previous.register:
        # Unchanged registration (the common node update: a lock or handshake write): no decode.
        devices, error = previous.devices, previous.decode_error
    elif register is not None:
        try:
            devices = tuple(decode_node_devices(register))
        except WireFormatError as exc:
            error = str(exc)
    allocatable = allocatable_gpus(dict(node))
    prev_alloc = previous.allocatable if previous else None
    prev_register = previous.register if previous else None
    handshake = annotations.get(wire.NODE_HANDSHAKE)
    reregistered = previous is not None and register != prev_register and register is not None
    refresh = (
        previous is not None and previous.refresh_handshake and handshake == previous.handshake
    ) or reregistered
    return NodeState(
        name=str(metadata.get("name") or ""),
        labels=_str_map(metadata.get("labels")),
        annotations=annotations,
        devices=devices,
        register=register,
        decode_error=error,
        allocatable=allocatable,
        dropped=next_dropped(
            previous.dropped if previous else False, prev_alloc, allocatable, prev_register, register
        ),
        refresh_handshake=refresh and not (allocatable is not None and allocatable > 0),
        resource_version=str(metadata.get("resourceVersion") or ""),
    )
