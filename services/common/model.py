"""The HAMi domain model as plain data.

These types mirror what travels on HAMi's wire (node register annotation, pod device annotations, container
requests, the node lock) so that every service can share one vocabulary. Behaviour lives in plain functions
elsewhere (``services.common.codecs``, ``services.common.resources``); the only methods here are tiny,
obviously-pure helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = [
    "DEFAULT_DEVICE_MODE",
    "MEM_PERCENTAGE_UNSET",
    "CollapsedDevice",
    "ContainerDevice",
    "ContainerDeviceRequest",
    "ContainerDevices",
    "DeviceInfo",
    "DeviceScoringWeights",
    "DeviceUsage",
    "MigPlacement",
    "MigProfile",
    "NodeLock",
    "PodDevices",
    "PodSingleDevice",
]

# The device plugin registers ordinary shared GPUs in this mode (HAMi `HamiCoreMode`); legacy 7-field register
# records imply it.
DEFAULT_DEVICE_MODE: Final = "hami-core"

# HAMi's "no memory percentage requested" sentinel (`GenerateResourceRequests` starts MemPercentagereq at
# 101). Fit only derives memory from the percentage when the value differs from this sentinel.
MEM_PERCENTAGE_UNSET: Final = 101


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """Where a MIG profile may sit on the GPU, in memory-slice units (`{"start":6,"size":1}` on the wire)."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One dynamic-MIG profile a GPU offers (`migProfiles[]` in `hami.io/node-nvidia-register`)."""

    name: str
    memory_mb: int
    core: int
    slice_count: int
    placements: tuple[MigPlacement, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One registered GPU as the device plugin publishes it in `hami.io/node-nvidia-register`.

    `count` is the split count (max concurrent tasks), `devmem` MiB, `devcore` percent of one GPU scaled by
    `deviceCoreScaling`. Defaults describe a healthy hami-core card; decoders always set every field from the
    wire (where a missing key means Go's zero value, e.g. `health` false and `mode` "").
    """

    id: str
    index: int = 0
    count: int = 0
    devmem: int = 0
    devcore: int = 0
    type: str = ""
    numa: int = 0
    mode: str = DEFAULT_DEVICE_MODE
    health: bool = True
    mig_profiles: tuple[MigProfile, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerDevice:
    """One GPU share granted to one container: an entry `UUID,Type,Usedmem,Usedcores` of the pod encoding."""

    uuid: str
    type: str
    usedmem: int
    usedcores: int


# One container slot's devices; a pod's devices of one type, one slot per container (init containers first);
# and the per-type map keyed by the device type (`NVIDIA`).
ContainerDevices = list[ContainerDevice]
PodSingleDevice = list[ContainerDevices]
PodDevices = dict[str, PodSingleDevice]


@dataclass(frozen=True, slots=True)
class CollapsedDevice:
    """A pod's effective use of one GPU after folding init and app containers together (HAMi
    `CollapseInitContainerUsage`): what node usage and quota accounting add for the pod.

    `slots` is how many concurrent tasks the pod runs on the card; usage adds `max(slots, 1)` to `Used`.
    """

    uuid: str
    type: str
    usedmem: int
    usedcores: int
    slots: int = 1

    def as_container_device(self) -> ContainerDevice:
        return ContainerDevice(self.uuid, self.type, self.usedmem, self.usedcores)


@dataclass(slots=True)
class DeviceUsage:
    """A registered GPU plus the usage of the pods placed on it; mutated while a pod is being fitted."""

    id: str
    index: int = 0
    used: int = 0
    count: int = 0
    usedmem: int = 0
    totalmem: int = 0
    usedcores: int = 0
    totalcore: int = 0
    type: str = ""
    numa: int = 0
    mode: str = DEFAULT_DEVICE_MODE
    health: bool = True
    mig_profiles: tuple[MigProfile, ...] = ()

    @classmethod
    def from_device(cls, device: DeviceInfo) -> DeviceUsage:
        """Zero usage for a registered device (the start of HAMi's node usage computation)."""
        return cls(
            id=device.id,
            index=device.index,
            used=0,
            count=device.count,
            usedmem=0,
            totalmem=device.devmem,
            usedcores=0,
            totalcore=device.devcore,
            type=device.type,
            numa=device.numa,
            mode=device.mode,
            health=device.health,
            mig_profiles=device.mig_profiles,
        )

    def copy(self) -> DeviceUsage:
        """A copy to mutate (`dataclasses.replace` costs several times this; a fit copies every card)."""
        return DeviceUsage(
            self.id,
            self.index,
            self.used,
            self.count,
            self.usedmem,
            self.totalmem,
            self.usedcores,
            self.totalcore,
            self.type,
            self.numa,
            self.mode,
            self.health,
            self.mig_profiles,
        )


@dataclass(frozen=True, slots=True)
class ContainerDeviceRequest:
    """What one container asks of one device type (HAMi `ContainerDeviceRequest`).

    `memreq` MiB (already multiplied by `memoryFactor`), `mem_percentage_req` percent of the chosen card or
    `MEM_PERCENTAGE_UNSET`, `coresreq` percent of the card's compute.
    """

    nums: int
    type: str
    memreq: int
    mem_percentage_req: int
    coresreq: int


@dataclass(frozen=True, slots=True)
class NodeLock:
    """The value of `hami.io/mutex.lock`: when it was taken and by which pod.

    The legacy form carries only the timestamp; `namespace` and `name` are then both None.
    """

    acquired_at: datetime
    namespace: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.acquired_at.tzinfo is None or self.acquired_at.utcoffset() is None:
            raise ValueError(
                f"node lock time must be timezone-aware, got naive {self.acquired_at.isoformat()}"
            )
        if (self.namespace is None) != (self.name is None):
            raise ValueError("node lock owner needs both namespace and name, or neither (legacy form)")

    @property
    def is_legacy(self) -> bool:
        return self.namespace is None

    def is_expired(self, now: datetime, timeout: timedelta) -> bool:
        # HAMi forces a release only when strictly more than the timeout has passed (`now - ts > timeout`).
        return now - self.acquired_at > timeout

    def held_by(self, namespace: str, name: str) -> bool:
        return self.namespace == namespace and self.name == name


@dataclass(frozen=True, slots=True)
class DeviceScoringWeights:
    """Weights of the slot, core and memory terms of the GPU score (pod annotation
    `hami.io/device-scoring-weights`); HAMi's default is 1/1/1."""

    slot: int = 1
    core: int = 1
    memory: int = 1
