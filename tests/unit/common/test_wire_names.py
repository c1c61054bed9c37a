"""HAMi's wire names, pinned to the strings of the spec (sections 1.1, 2.1, 2.2): they must never drift."""

from __future__ import annotations

import pytest

from services.common import wire


@pytest.mark.parametrize(
    ("constant", "value"),
    [
        (wire.NVIDIA, "NVIDIA"),
        (wire.NODE_NVIDIA_REGISTER, "hami.io/node-nvidia-register"),
        (wire.NODE_NVIDIA_SCORE, "hami.io/node-nvidia-score"),
        (wire.NODE_HANDSHAKE, "hami.io/node-handshake"),
        (wire.NODE_LOCK, "hami.io/mutex.lock"),
        (wire.DEVICE_CORDON, "hami.io/device-cordon"),
        (wire.VGPU_NODE, "hami.io/vgpu-node"),
        (wire.VGPU_TIME, "hami.io/vgpu-time"),
        (wire.VGPU_DEVICES_TO_ALLOCATE, "hami.io/vgpu-devices-to-allocate"),
        (wire.VGPU_DEVICES_ALLOCATED, "hami.io/vgpu-devices-allocated"),
        (wire.VGPU_MIG_ALLOCATIONS, "hami.io/vgpu-mig-allocations"),
        (wire.BIND_PHASE, "hami.io/bind-phase"),
        (wire.BIND_TIME, "hami.io/bind-time"),
        (wire.USE_GPU_TYPE, "nvidia.com/use-gputype"),
        (wire.NOUSE_GPU_TYPE, "nvidia.com/nouse-gputype"),
        (wire.USE_GPU_UUID, "nvidia.com/use-gpuuuid"),
        (wire.NOUSE_GPU_UUID, "nvidia.com/nouse-gpuuuid"),
        (wire.NUMA_BIND, "nvidia.com/numa-bind"),
        (wire.VGPU_MODE, "nvidia.com/vgpu-mode"),
        (wire.NODE_SCHEDULER_POLICY, "hami.io/node-scheduler-policy"),
        (wire.GPU_SCHEDULER_POLICY, "hami.io/gpu-scheduler-policy"),
        (wire.DEVICE_SCORING_WEIGHTS, "hami.io/device-scoring-weights"),
        (wire.WEBHOOK_LABEL, "hami.io/webhook"),
        (wire.WEBHOOK_IGNORE, "ignore"),
        (wire.SCHEDULER_ROLE_LABEL, "hami.io/scheduler-role"),
        (wire.POD_GROUP_LABEL, "scheduling.x-k8s.io/pod-group"),
        (wire.RESOURCE_GPU, "nvidia.com/gpu"),
        (wire.RESOURCE_GPUMEM, "nvidia.com/gpumem"),
        (wire.RESOURCE_GPUMEM_PERCENTAGE, "nvidia.com/gpumem-percentage"),
        (wire.RESOURCE_GPUCORES, "nvidia.com/gpucores"),
        (wire.RESOURCE_PRIORITY, "nvidia.com/priority"),
        (wire.MODE_HAMI_CORE, "hami-core"),
        (wire.MODE_MIG, "mig"),
        (wire.MODE_MPS, "mps"),
        (wire.SCHEDULER_NAME, "hami-scheduler"),
        (wire.NODE_UNREGISTERED, "node unregistered"),
    ],
)
def test_wire_name(constant: str, value: str) -> None:
    assert constant == value


def test_bind_phases() -> None:
    assert [p.value for p in wire.BindPhase] == ["allocating", "success", "failed"]


def test_handshake_time_format_matches_go_datetime_layout() -> None:
    from datetime import datetime

    stamp = datetime(2024, 1, 2, 3, 4, 5).strftime(wire.HANDSHAKE_TIME_FORMAT)
    assert f"{wire.HANDSHAKE_REQUESTING}_{stamp}" == "Requesting_2024-01-02 03:04:05"
