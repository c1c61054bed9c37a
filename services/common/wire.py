"""Every HAMi wire name kube-vgpu reads or writes, in one place.

The values are fixed by HAMi v2.10 (see the spec, sections 1 and 2): a node, pod or dashboard that works with
HAMi must work with kube-vgpu, so none of these strings may change.
"""

from __future__ import annotations

import enum
from typing import Final

# --- Device type --------------------------------------------------------------------------------------------

# The key of the NVIDIA entries in PodDevices and the `Type` the scheduler writes into pod device encodings
# (always this literal, never the card model such as "NVIDIA-Tesla T4").
NVIDIA: Final = "NVIDIA"

# --- Node annotations (docs/hami-wire.md#node-annotations) --------------------------------------------------

NODE_NVIDIA_REGISTER: Final = "hami.io/node-nvidia-register"
NODE_NVIDIA_SCORE: Final = "hami.io/node-nvidia-score"
NODE_HANDSHAKE: Final = "hami.io/node-handshake"
NODE_LOCK: Final = "hami.io/mutex.lock"
DEVICE_CORDON: Final = "hami.io/device-cordon"

# Handshake value prefixes. The scheduler writes `Requesting_<YYYY-MM-DD HH:MM:SS>`; the legacy plugin
# answered `Reported ...` and an unanswered request became `Deleted_...`.
HANDSHAKE_REQUESTING: Final = "Requesting"
HANDSHAKE_REPORTED: Final = "Reported"
HANDSHAKE_DELETED: Final = "Deleted"
HANDSHAKE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

# --- Pod annotations written by the scheduler and device plugin (docs/hami-wire.md#pod-annotations) ---------

VGPU_NODE: Final = "hami.io/vgpu-node"  # annotation and label
VGPU_TIME: Final = "hami.io/vgpu-time"
VGPU_DEVICES_TO_ALLOCATE: Final = "hami.io/vgpu-devices-to-allocate"
VGPU_DEVICES_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
VGPU_MIG_ALLOCATIONS: Final = "hami.io/vgpu-mig-allocations"
BIND_PHASE: Final = "hami.io/bind-phase"
BIND_TIME: Final = "hami.io/bind-time"


class BindPhase(enum.StrEnum):
    """Values of `hami.io/bind-phase`: the scheduler sets `allocating` at Bind, the plugin the outcome."""

    ALLOCATING = "allocating"
    SUCCESS = "success"
    FAILED = "failed"


# --- User-facing pod annotations (docs/hami-wire.md#pod-annotations) ----------------------------------------

USE_GPU_TYPE: Final = "nvidia.com/use-gputype"
NOUSE_GPU_TYPE: Final = "nvidia.com/nouse-gputype"
USE_GPU_UUID: Final = "nvidia.com/use-gpuuuid"
NOUSE_GPU_UUID: Final = "nvidia.com/nouse-gpuuuid"
NUMA_BIND: Final = "nvidia.com/numa-bind"
VGPU_MODE: Final = "nvidia.com/vgpu-mode"
NODE_SCHEDULER_POLICY: Final = "hami.io/node-scheduler-policy"
GPU_SCHEDULER_POLICY: Final = "hami.io/gpu-scheduler-policy"
DEVICE_SCORING_WEIGHTS: Final = "hami.io/device-scoring-weights"

# --- Labels -------------------------------------------------------------------------------------------------

WEBHOOK_LABEL: Final = "hami.io/webhook"
WEBHOOK_IGNORE: Final = "ignore"  # namespace or pod label value that excludes the object from the webhook
SCHEDULER_ROLE_LABEL: Final = "hami.io/scheduler-role"
SCHEDULER_ROLE_LEADER: Final = "leader"
SCHEDULER_ROLE_FOLLOWER: Final = "follower"
GPU_NODE_LABEL: Final = "gpu"  # device plugin DaemonSet nodeSelector `gpu: "on"`
GPU_NODE_LABEL_VALUE: Final = "on"
POD_GROUP_LABEL: Final = "scheduling.x-k8s.io/pod-group"

# --- Default resource names (docs/hami-wire.md#resources) ---------------------------------------------------

RESOURCE_GPU: Final = "nvidia.com/gpu"
RESOURCE_GPUMEM: Final = "nvidia.com/gpumem"
RESOURCE_GPUMEM_PERCENTAGE: Final = "nvidia.com/gpumem-percentage"
RESOURCE_GPUCORES: Final = "nvidia.com/gpucores"
RESOURCE_PRIORITY: Final = "nvidia.com/priority"

# --- Device modes (registered `mode`, matched by `nvidia.com/vgpu-mode`) ------------------------------------

MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODE_MPS: Final = "mps"

# --- Scheduler policies -------------------------------------------------------------------------------------

POLICY_BINPACK: Final = "binpack"
POLICY_SPREAD: Final = "spread"
POLICY_TOPOLOGY_AWARE: Final = "topology-aware"
POLICY_MUTEX: Final = "mutex"
POLICY_NUMA: Final = "numa"

# --- Scheduler name -----------------------------------------------------------------------------------------

SCHEDULER_NAME: Final = "hami-scheduler"
DEFAULT_SCHEDULER_NAME: Final = "default-scheduler"


# --- Fit failure reasons (docs/hami-wire.md#fit-reasons) ----------------------------------------------------


class Reason(enum.StrEnum):
    """Why a card or node was rejected. The values appear verbatim in FailedNodes, events and logs."""

    CARD_TYPE_MISMATCH = "CardTypeMismatch"
    CARD_UUID_MISMATCH = "CardUuidMismatch"
    CARD_TIME_SLICING_EXHAUSTED = "CardTimeSlicingExhausted"
    CARD_COMPUTE_UNITS_EXHAUSTED = "CardComputeUnitsExhausted"
    CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
    CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
    CARD_NOT_HEALTH = "CardNotHealth"
    CARD_CORDONED = "CardCordoned"
    NUMA_NOT_FIT = "NumaNotFit"
    EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT = "ExclusiveDeviceAllocateConflict"
    CARD_NOT_FOUND_CUSTOM_FILTER_RULE = "CardNotFoundCustomFilterRule"
    CARD_MIG_TOPOLOGY_INFEASIBLE = "CardMigTopologyInfeasible"
    NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
    ALLOCATED_CARDS_INSUFFICIENT_REQUEST = "AllocatedCardsInsufficientRequest"
    RESOURCE_QUOTA_NOT_FIT = "ResourceQuotaNotFit"
    NODE_UNFIT_POD = "NodeUnfitPod"
    NODE_FIT_POD = "NodeFitPod"
    MODE_NOT_FIT = "ModeNotFit"


# Plain (uncounted) failure strings HAMi puts into FailedNodes besides the counted reasons above.
NODE_UNREGISTERED: Final = "node unregistered"
DEVICE_TYPE_NOT_FOUND: Final = "Device type not found"
