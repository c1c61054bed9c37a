"""Which pods run on this node, and which GPUs each of their containers was given.

`PodIndex` is fed by reflector events (pods with `spec.nodeName=<node>`, and this node's object for its
registered GPU inventory) and keeps, per pod UID, what the monitor needs: namespace, name, phase, the
containers that may hold a cache, and each container's slot of `hami.io/vgpu-devices-allocated` (slot i is
init container i while i < #init, else app container i - #init: HAMi's contract, docs/hami-wire.md#allocate).
A container's limits are therefore known as soon as the scheduler allocated them, before its first CUDA call
(HAMi#1814).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common import wire
from services.common.codecs import WireFormatError, decode_node_devices, decode_pod_single_device
from services.common.log import get_logger
from services.common.model import ContainerDevice

log = get_logger("monitor.pods")

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class PodContainer:
    name: str
    # Devices of this container's slot, in annotation order (the order of CUDA_DEVICE_MEMORY_LIMIT_<i>).
    devices: tuple[ContainerDevice, ...] = ()
    init: bool = False
    # An init container with restartPolicy Always (a native sidecar) runs beside the app containers.
    sidecar: bool = False

    @property
    def reported(self) -> bool:
        """App containers and sidecars are reported; plain init containers have finished by then."""
        return not self.init or self.sidecar


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    phase: str = ""
    containers: tuple[PodContainer, ...] = ()
    allocation_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in _TERMINAL_PHASES

    def container(self, name: str) -> PodContainer | None:
        for container in self.containers:
            if container.name == name:
                return container
        return None


@dataclass(frozen=True, slots=True)
class RegisteredGpu:
    index: int
    type: str
    # `devmem` of the node's inventory: MiB times deviceMemoryScaling (0: unknown).
    devmem_mib: int = 0


def _container_specs(pod: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    spec = pod.get("spec")
    items = spec.get(key) if isinstance(spec, Mapping) else None
    return [c for c in items or [] if isinstance(c, Mapping)]


def pod_info(pod: Mapping[str, Any]) -> PodInfo | None:
    """The monitor's view of one pod object; None when it has no UID."""
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid = meta.get("uid")
    if not isinstance(uid, str) or not uid:
        return None
    annotations = meta.get("annotations")
    annotations = annotations if isinstance(annotations, Mapping) else {}
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else ""
    inits = _container_specs(pod, "initContainers")
    apps = _container_specs(pod, "containers")
    slots: list[list[ContainerDevice]] = []
    error: str | None = None
    raw = annotations.get(wire.VGPU_DEVICES_ALLOCATED)
    if isinstance(raw, str) and raw:
        try:
            slots = decode_pod_single_device(raw)
        except WireFormatError as exc:
            error = str(exc)
    containers: list[PodContainer] = []
    for position, (spec, is_init) in enumerate([(c, True) for c in inits] + [(c, False) for c in apps]):
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            continue
        devices = tuple(slots[position]) if position < len(slots) else ()
        sidecar = is_init and spec.get("restartPolicy") == "Always"
        containers.append(PodContainer(name=name, devices=devices, init=is_init, sidecar=sidecar))
    return PodInfo(
        uid=uid,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        phase=phase if isinstance(phase, str) else "",
        containers=tuple(containers),
        allocation_error=error,
    )


@dataclass
class PodIndex:
    """Pods of this node by UID plus the node's registered GPUs, updated from reflector threads."""

    node_name: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pods: dict[str, PodInfo] = field(default_factory=dict, repr=False)
    _gpus: dict[str, RegisteredGpu] = field(default_factory=dict, repr=False)
    _synced: threading.Event = field(default_factory=threading.Event, repr=False)
    _has_source: bool = False

    def on_pod_event(self, event_type: str, obj: dict[str, Any]) -> None:
        info = pod_info(obj)
        if info is None:
            return
        if info.allocation_error:
            log.warning(
                "pod_allocation_undecodable",
                pod=f"{info.namespace}/{info.name}",
                error=info.allocation_error,
            )
        with self._lock:
            if event_type == "DELETED":
                self._pods.pop(info.uid, None)
            else:
                self._pods[info.uid] = info

    def on_node_event(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("name") != self.node_name:
            return
        gpus: dict[str, RegisteredGpu] = {}
        if event_type != "DELETED":
            raw = (meta.get("annotations") or {}).get(wire.NODE_NVIDIA_REGISTER, "")
            try:
                devices = decode_node_devices(raw) if isinstance(raw, str) else []
            except WireFormatError as exc:
                log.warning("node_register_undecodable", error=str(exc))
                devices = []
            gpus = {d.id: RegisteredGpu(index=d.index, type=d.type, devmem_mib=d.devmem) for d in devices}
        with self._lock:
            self._gpus = gpus

    def replace(self, pods: Sequence[PodInfo]) -> None:
        """Set every pod at once (tests, and sources without events)."""
        with self._lock:
            self._pods = {p.uid: p for p in pods}

    def set_registered(self, gpus: Mapping[str, RegisteredGpu]) -> None:
        with self._lock:
            self._gpus = dict(gpus)

    def attach_source(self) -> None:
        """A pod source exists: stale-dir cleanup waits for `mark_synced` from now on."""
        self._has_source = True

    def mark_synced(self) -> None:
        self._synced.set()

    @property
    def synced(self) -> bool:
        """True once the pod list is complete: only then may an unknown UID mean 'gone'."""
        return self._synced.is_set()

    @property
    def has_source(self) -> bool:
        return self._has_source

    def get(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def pods(self) -> dict[str, PodInfo]:
        with self._lock:
            return dict(self._pods)

    def registered(self) -> dict[str, RegisteredGpu]:
        with self._lock:
            return dict(self._gpus)

    def __contains__(self, uid: object) -> bool:
        with self._lock:
            return uid in self._pods
