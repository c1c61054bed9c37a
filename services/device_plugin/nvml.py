"""GPU discovery and health events through NVML (`nvidia-ml-py`, imported as `pynvml`).

Discovery reads, per card: UUID, NVML index, name, total memory (NOT_SUPPORTED -> None: unified-memory
GPUs, which registration then sizes with `preConfiguredDeviceMemory` or skips), the NUMA node from
`/sys/bus/pci/devices/<busid>/numa_node` (negative or unreadable -> 0) and whether MIG mode is on.

Health: one NVML event set with the XID-critical and double-bit ECC event types each card supports;
`next_event` waits on it. A failed wait (other than a timeout) reports every GPU, as HAMi does; a card that
cannot be registered for events is reported once as "lost" only if it does not answer NVML at all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from services.common.log import get_logger
from services.device_plugin.gpu import GpuBackendError, GpuEvent, GpuInfo, sysfs_pci_address

log = get_logger("device_plugin.nvml")

_MIB = 1024 * 1024


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_numa_node(bus_id: str, sysfs_root: Path = Path("/sys/bus/pci/devices")) -> int:
    """The card's NUMA node from sysfs; -1 (no affinity), missing or garbage -> 0 (HAMi's rule)."""
    try:
        value = int((sysfs_root / sysfs_pci_address(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(value, 0)


class NvmlBackend:
    """GPU backend over NVML. `nvml` may be replaced (tests pass a fake module with the same functions)."""

    name = "nvml"

    def __init__(
        self, nvml: ModuleType | None = None, sysfs_root: Path = Path("/sys/bus/pci/devices")
    ) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:  # pragma: no cover - the dependency is always installed
                raise GpuBackendError(f"nvidia-ml-py is not installed: {exc}") from exc
            nvml = pynvml
        self._nvml = nvml
        self._sysfs_root = sysfs_root
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._event_set: Any = None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise GpuBackendError(
                f"NVML could not be initialised ({exc}): is the NVIDIA driver installed and is this "
                "container run with the NVIDIA runtime? On a machine without GPUs, local mode runs "
                "kube-vgpu-sim-device-plugin (simulated GPUs) instead"
            ) from exc
        except OSError as exc:
            raise GpuBackendError(f"NVML library could not be loaded: {exc}") from exc

    # --- discovery ---------------------------------------------------------------------------------

    def discover(self) -> Sequence[GpuInfo]:
        nvml = self._nvml
        with self._lock:
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as exc:
                raise GpuBackendError(f"NVML could not count the GPUs: {exc}") from exc
            return [self._describe(index) for index in range(count)]

    def _describe(self, index: int) -> GpuInfo:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            raise GpuBackendError(f"NVML could not read GPU {index}: {exc}") from exc
        present = True
        name = "unknown"
        memory: int | None = None
        numa = 0
        mig = False
        try:
            name = _text(nvml.nvmlDeviceGetName(handle))
            try:
                memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB
            except nvml.NVMLError_NotSupported:
                memory = None
            bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            numa = read_numa_node(bus_id, self._sysfs_root)
            try:
                current, _pending = nvml.nvmlDeviceGetMigMode(handle)
                mig = current == nvml.NVML_DEVICE_MIG_ENABLE
            except nvml.NVMLError_NotSupported:
                mig = False
        except nvml.NVMLError as exc:
            # The card is enumerated but does not answer: register it, unhealthy, so the scheduler sees it.
            log.warning("gpu_query_failed", device_uuid=uuid, index=index, error=str(exc))
            present = False
        return GpuInfo(
            uuid=uuid, index=index, name=name, memory_mib=memory, numa=numa, mig_enabled=mig, present=present
        )

    # --- events ------------------------------------------------------------------------------------

    def _ensure_event_set(self) -> Any:
        nvml = self._nvml
        if self._event_set is not None:
            return self._event_set
        event_set = nvml.nvmlEventSetCreate()
        wanted = nvml.nvmlEventTypeXidCriticalError | nvml.nvmlEventTypeDoubleBitEccError
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            try:
                supported = int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
                nvml.nvmlDeviceRegisterEvents(handle, wanted & supported, event_set)
            except nvml.NVMLError_NotSupported:
                log.warning("gpu_health_events_not_supported", device_uuid=uuid)
        self._event_set = event_set
        return event_set

    def next_event(self, timeout: float) -> GpuEvent | None:
        nvml = self._nvml
        if self._closing.is_set():
            return None
        with self._lock:
            if self._closing.is_set():
                return None
            try:
                event_set = self._ensure_event_set()
                data = nvml.nvmlEventSetWait_v2(event_set, max(1, int(timeout * 1000)))
            except nvml.NVMLError_Timeout:
                return None
            except nvml.NVMLError as exc:
                # HAMi marks every device unhealthy when the wait itself fails.
                return GpuEvent(kind="lost", uuid=None, detail=f"NVML event wait failed: {exc}")
            event_type = int(data.eventType)
            try:
                uuid: str | None = _text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                uuid = None
        if event_type & nvml.nvmlEventTypeXidCriticalError:
            return GpuEvent(kind="xid", uuid=uuid, xid=int(data.eventData))
        return GpuEvent(kind="ecc", uuid=uuid, detail=f"NVML event type {event_type:#x}")

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            nvml = self._nvml
            try:
                if self._event_set is not None:
                    nvml.nvmlEventSetFree(self._event_set)
                    self._event_set = None
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.debug("nvml_shutdown_failed", error=str(exc))
