"""From discovered GPUs to what the node advertises: register records, kubelet replicas, capacity.

Pure functions (docs/hami-wire.md#node-register-loop). A GPU is registered with `count = deviceSplitCount`,
`devmem` = physical MiB x `deviceMemoryScaling` (floored), `devcore = 100 x deviceCoreScaling`, `type` = card
name prefixed `NVIDIA-`, the NUMA node, the operating mode and its health. The kubelet sees `split` replicas
per GPU, `<uuid>-0 ... <uuid>-<split-1>`, each with the GPU's health.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.common.model import DeviceInfo
from services.device_plugin.config import PluginSettings
from services.device_plugin.gpu import GpuInfo, device_type_name

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

_REPLICA_SUFFIX_RE = re.compile(r"-[0-9]+$")


@dataclass(frozen=True, slots=True)
class Skipped:
    uuid: str
    index: int
    why: str


@dataclass(frozen=True, slots=True)
class ManagedGpu:
    """A GPU this plugin advertises: what was discovered and the record registered for it."""

    gpu: GpuInfo
    record: DeviceInfo

    @property
    def uuid(self) -> str:
        return self.gpu.uuid


def select_gpus(
    gpus: Iterable[GpuInfo], settings: PluginSettings
) -> tuple[list[tuple[GpuInfo, int]], list[Skipped]]:
    """The GPUs to advertise with their registered memory, and the ones left out (with the reason)."""
    chosen: list[tuple[GpuInfo, int]] = []
    skipped: list[Skipped] = []
    for gpu in gpus:
        if gpu.uuid in settings.filter_uuids or gpu.index in settings.filter_indices:
            skipped.append(Skipped(gpu.uuid, gpu.index, "listed in filterdevices of the node config"))
            continue
        if gpu.mig_enabled:
            skipped.append(
                Skipped(gpu.uuid, gpu.index, "MIG mode is enabled on the card; hami-core cannot share it")
            )
            continue
        memory = gpu.memory_mib
        if memory is None or memory <= 0:
            if settings.preconfigured_memory <= 0:
                skipped.append(
                    Skipped(
                        gpu.uuid,
                        gpu.index,
                        "the driver reports no memory size; set preConfiguredDeviceMemory to register it",
                    )
                )
                continue
            memory = settings.preconfigured_memory
        elif settings.memory_scaling != 1:
            memory = int(memory * settings.memory_scaling)
        chosen.append((gpu, memory))
    return chosen, skipped


def managed_gpus(
    gpus: Iterable[GpuInfo], settings: PluginSettings, healthy: Callable[[GpuInfo], bool]
) -> list[ManagedGpu]:
    chosen, _ = select_gpus(gpus, settings)
    devcore = int(100 * settings.core_scaling)
    return [
        ManagedGpu(
            gpu=gpu,
            record=DeviceInfo(
                id=gpu.uuid,
                index=gpu.index,
                count=settings.split_count,
                devmem=memory,
                devcore=devcore,
                type=device_type_name(gpu.name),
                numa=gpu.numa,
                mode=settings.operating_mode,
                health=healthy(gpu),
            ),
        )
        for gpu, memory in chosen
    ]


def replica_id(uuid: str, replica: int) -> str:
    return f"{uuid}-{replica}"


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    uuid: str
    health: str
    numa: int


def replicas(managed: Sequence[ManagedGpu], split_count: int) -> list[Replica]:
    """The kubelet's device list: `split_count` replicas per GPU, in GPU order."""
    return [
        Replica(
            id=replica_id(m.uuid, n),
            uuid=m.uuid,
            health=HEALTHY if m.record.health else UNHEALTHY,
            numa=m.gpu.numa,
        )
        for m in managed
        for n in range(split_count)
    ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ListAndWatch sends and registration writes, at one version.

    `replica_gpus` maps each replica ID to its GPU UUID: the IDs the kubelet hands back are read through it.
    """

    version: int
    managed: tuple[ManagedGpu, ...]
    replicas: tuple[Replica, ...]
    replica_gpus: Mapping[str, str]

    @classmethod
    def of(cls, version: int, managed: Sequence[ManagedGpu], reps: Sequence[Replica]) -> Snapshot:
        return cls(version, tuple(managed), tuple(reps), {r.id: r.uuid for r in reps})


def physical_id(device_id: str, known: Mapping[str, str] | None = None) -> str:
    """The GPU UUID behind a kubelet device ID (docs/hami-wire.md#preferred-allocation): our own replica map
    first; else `id::replica` drops the suffix, and an ID with exactly six dashes (`GPU-<uuid>-<n>`) drops its
    numeric suffix."""
    if known is not None and device_id in known:
        return known[device_id]
    if "::" in device_id:
        return device_id.split("::", 1)[0]
    if device_id.count("-") == 6:
        return _REPLICA_SUFFIX_RE.sub("", device_id)
    return device_id


def extended_capacity(managed: Sequence[ManagedGpu]) -> tuple[int, int]:
    """(gpumem MiB, gpucores) of the healthy GPUs, for the opt-in node capacity (HAMi#2839)."""
    healthy = [m.record for m in managed if m.record.health]
    return sum(d.devmem for d in healthy), sum(d.devcore for d in healthy)
