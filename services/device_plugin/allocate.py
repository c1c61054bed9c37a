"""Allocate and GetPreferredAllocation as pure functions of the pod, the request and the node
(docs/hami-wire.md#allocate).

The scheduler wrote the pod's devices into `hami.io/vgpu-devices-to-allocate`, one slot per container (init
containers first). The kubelet calls Allocate once per container in that same order; each call takes the
first non-empty slot, answers the env and mounts libvgpu needs, and empties the slot. Nothing here does
I/O: `services.device_plugin.servicer` fetches the pod, writes host files and patches the API.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common import wire
from services.common.codecs import WireFormatError, decode_pod_single_device, encode_pod_single_device
from services.common.codecs import parse_bool as go_parse_bool
from services.common.model import ContainerDevice, PodSingleDevice
from services.device_plugin.config import PluginSettings
from services.device_plugin.devices import physical_id
from services.device_plugin.hostfs import HostLayout, HostPathError, LibFiles, container_dir_name

ENV_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
ENV_MEMORY_LIMIT_PREFIX = "CUDA_DEVICE_MEMORY_LIMIT_"
ENV_SM_LIMIT = "CUDA_DEVICE_SM_LIMIT"
ENV_SHARED_CACHE = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
ENV_OVERSUBSCRIBE = "CUDA_OVERSUBSCRIBE"
ENV_LOG_LEVEL = "LIBCUDA_LOG_LEVEL"
ENV_CORE_POLICY = "GPU_CORE_UTILIZATION_POLICY"
ENV_DISABLE_CONTROL = "CUDA_DISABLE_CONTROL"

DEVICE_NUMBER_NOT_MATCHED = "device number not matched"


class AllocationError(Exception):
    """Allocate cannot go on. `code` picks the gRPC status: not_found (no pod), invalid (the pod's
    annotations or the kubelet's request are wrong), failed_precondition, unavailable (API), internal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """What one container gets, and which slot of the pod's annotation it consumed."""

    slot: int
    container: str
    init: bool
    devices: tuple[ContainerDevice, ...]
    envs: dict[str, str]
    mounts: tuple[Mount, ...]
    cache_dir_name: str


@dataclass(slots=True)
class PodAllocation:
    """The plans for one AllocateRequest and the annotation value left afterwards."""

    plans: list[ContainerPlan] = field(default_factory=list)
    remaining: str = ""
    done: bool = False


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _containers(pod: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    items = spec.get(key) or []
    return [c for c in items if isinstance(c, Mapping)]


def container_for_slot(pod: Mapping[str, Any], slot: int) -> tuple[Mapping[str, Any], bool]:
    """Slot i is init container i while i < #init, else app container i - #init (docs/hami-wire.md#allocate
    step 3)."""
    inits = _containers(pod, "initContainers")
    apps = _containers(pod, "containers")
    if slot < len(inits):
        return inits[slot], True
    if slot - len(inits) < len(apps):
        return apps[slot - len(inits)], False
    raise AllocationError(
        "invalid",
        f"pod {pod_key(pod)}: device slot {slot} of {wire.VGPU_DEVICES_TO_ALLOCATE} has no container "
        f"({len(inits)} init + {len(apps)} app containers); the annotation does not match the pod spec",
    )


def container_env_true(container: Mapping[str, Any], name: str) -> bool:
    """Whether the container spec sets env `name` to a Go-true value (literal values only)."""
    for item in container.get("env") or []:
        if isinstance(item, Mapping) and item.get("name") == name:
            value = item.get("value")
            if not isinstance(value, str):
                return False
            try:
                return go_parse_bool(value)
            except WireFormatError:
                return False
    return False


def decode_slots(pod: Mapping[str, Any]) -> PodSingleDevice:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if wire.VGPU_DEVICES_TO_ALLOCATE not in annotations:
        raise AllocationError(
            "invalid",
            f"pod {pod_key(pod)} has no {wire.VGPU_DEVICES_TO_ALLOCATE} annotation: it was not placed by "
            f"hami-scheduler (check spec.schedulerName) or its devices were already handed out",
        )
    value = annotations[wire.VGPU_DEVICES_TO_ALLOCATE]
    try:
        return decode_pod_single_device(value)
    except WireFormatError as exc:
        raise AllocationError(
            "invalid", f"pod {pod_key(pod)}: {wire.VGPU_DEVICES_TO_ALLOCATE} {value!r} is malformed: {exc}"
        ) from None


def first_open_slot(slots: Sequence[Sequence[ContainerDevice]]) -> int | None:
    for index, slot in enumerate(slots):
        if slot:
            return index
    return None


def container_envs(
    devices: Sequence[ContainerDevice], settings: PluginSettings, layout: HostLayout, cache_name: str
) -> dict[str, str]:
    envs: dict[str, str] = {
        ENV_VISIBLE_DEVICES: ",".join(dict.fromkeys(d.uuid for d in devices)),
    }
    for i, device in enumerate(devices):
        envs[f"{ENV_MEMORY_LIMIT_PREFIX}{i}"] = f"{device.usedmem}m"
    envs[ENV_SM_LIMIT] = str(devices[0].usedcores)
    envs[ENV_SHARED_CACHE] = f"{layout.container_vgpu}/{cache_name}.cache"
    if settings.oversubscribed:
        envs[ENV_OVERSUBSCRIBE] = "true"
    if settings.lib_cuda_log_level:
        envs[ENV_LOG_LEVEL] = settings.lib_cuda_log_level
    if settings.disable_core_limit:
        envs[ENV_CORE_POLICY] = "disable"
    return envs


def container_mounts(
    layout: HostLayout, libs: LibFiles, cache_dir_name: str, *, preload: bool
) -> tuple[Mount, ...]:
    vgpu = layout.container_vgpu
    mounts = [
        Mount(f"{vgpu}/libvgpu.so", str(libs.libvgpu), True),
        Mount(vgpu, str(layout.containers_dir / cache_dir_name), False),
        Mount("/tmp/vgpulock", layout.vgpulock_dir, False),
    ]
    if preload:
        mounts.append(Mount("/etc/ld.so.preload", str(libs.ld_so_preload), True))
    if libs.license is not None:
        mounts.append(Mount("/tmp/license", str(libs.license), True))
        if libs.validator is not None:
            mounts.append(Mount("/usr/bin/vgpuvalidator", str(libs.validator), True))
    return tuple(mounts)


def device_count_mismatch(
    key: str,
    container: str,
    slot: int,
    assigned: Sequence[ContainerDevice],
    device_ids: Sequence[str],
    resource_name: str,
) -> str | None:
    """Why the kubelet's request for `container` does not fit the GPUs the scheduler assigned it (slot `slot`
    of the pod's to-allocate annotation), or None when the counts agree.

    The kubelet chose `device_ids` from the container's `resource_name` limit; the scheduler chose `assigned`
    from the same limit. Different counts mean one of them read another request (an edited pod, a stale
    annotation): handing out the annotation's GPUs would give the container what nobody asked for."""
    if len(device_ids) == len(assigned):
        return None
    return (
        f"{DEVICE_NUMBER_NOT_MATCHED}: pod {key} container {container!r} asks for {len(device_ids)} "
        f"{resource_name} device(s) ({', '.join(device_ids) or 'none'}) but slot {slot} holds "
        f"{len(assigned)} GPU(s) ({', '.join(d.uuid for d in assigned) or 'none'}) assigned by the scheduler "
        f"in {wire.VGPU_DEVICES_TO_ALLOCATE}; the container's {resource_name} request and the scheduler's "
        "annotation disagree"
    )


def plan_allocation(
    pod: Mapping[str, Any],
    requests: Sequence[Sequence[str]],
    *,
    settings: PluginSettings,
    layout: HostLayout,
    libs: LibFiles,
    node_gpus: frozenset[str],
    new_cache_name: Callable[[], str] = lambda: str(uuidlib.uuid4()),
) -> PodAllocation:
    """Consume one slot per container request (each a list of kubelet device IDs) and say what each gets."""
    meta = pod.get("metadata") or {}
    key = pod_key(pod)
    slots = decode_slots(pod)
    uid = str(meta.get("uid") or "")
    result = PodAllocation()
    for request_index, device_ids in enumerate(requests):
        slot = first_open_slot(slots)
        if slot is None:
            raise AllocationError(
                "invalid",
                f"pod {key}: the kubelet asked for {len(device_ids)} device(s) for container request "
                f"#{request_index} but every slot of {wire.VGPU_DEVICES_TO_ALLOCATE} is already allocated",
            )
        devices = slots[slot]
        container, is_init = container_for_slot(pod, slot)
        name = str(container.get("name") or "")
        mismatch = device_count_mismatch(key, name, slot, devices, device_ids, settings.resource_name)
        if mismatch is not None:
            raise AllocationError("invalid", mismatch)
        foreign = [d.uuid for d in devices if d.uuid not in node_gpus]
        if foreign:
            raise AllocationError(
                "invalid",
                f"pod {key}: GPU(s) {', '.join(foreign)} in {wire.VGPU_DEVICES_TO_ALLOCATE} are not "
                f"advertised by node {settings.node_name}; the pod was placed with a stale inventory",
            )
        try:
            cache_dir = container_dir_name(uid, name)
        except HostPathError as exc:
            raise AllocationError("invalid", f"pod {key}: {exc}") from None
        preload = not container_env_true(container, ENV_DISABLE_CONTROL)
        result.plans.append(
            ContainerPlan(
                slot=slot,
                container=name,
                init=is_init,
                devices=tuple(devices),
                envs=container_envs(devices, settings, layout, new_cache_name()),
                mounts=container_mounts(layout, libs, cache_dir, preload=preload),
                cache_dir_name=cache_dir,
            )
        )
        slots[slot] = []
    result.remaining = encode_pod_single_device(slots)
    result.done = first_open_slot(slots) is None
    return result


def kubelet_choice_differs(
    devices: Sequence[ContainerDevice], device_ids: Sequence[str], replica_map: Mapping[str, str]
) -> bool:
    """Whether the kubelet's IDs name other GPUs than the annotation (podresources would then disagree
    with what the container really gets, HAMi#1741)."""
    chosen = sorted(physical_id(i, replica_map) for i in device_ids)
    return chosen != sorted(d.uuid for d in devices)


def preferred_for_container(
    devices: Sequence[ContainerDevice],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    replica_map: Mapping[str, str],
) -> list[str]:
    """The kubelet IDs to prefer: must-include IDs first, then for each annotated GPU not yet covered the
    first available replica of it, up to `size` (docs/hami-wire.md#preferred-allocation). Empty when a GPU has
    no free replica."""
    chosen = list(dict.fromkeys(must_include))
    covered = {physical_id(i, replica_map) for i in chosen}
    taken = set(chosen)
    for device in devices:
        if len(chosen) >= size:
            break
        if device.uuid in covered:
            continue
        pick = next(
            (i for i in available if i not in taken and physical_id(i, replica_map) == device.uuid), None
        )
        if pick is None:
            return []
        chosen.append(pick)
        taken.add(pick)
        covered.add(device.uuid)
    return chosen[:size] if len(chosen) >= size else []


def plan_preferred(
    pod: Mapping[str, Any],
    requests: Sequence[tuple[Sequence[str], Sequence[str], int]],
    replica_map: Mapping[str, str],
) -> list[list[str]]:
    """One preference per container request: request i maps to the i-th non-empty slot."""
    open_slots = [slot for slot in decode_slots(pod) if slot]
    answers: list[list[str]] = []
    for index, (available, must_include, size) in enumerate(requests):
        if index >= len(open_slots):
            answers.append([])
            continue
        answers.append(
            preferred_for_container(open_slots[index][:size], available, must_include, size, replica_map)
        )
    return answers
