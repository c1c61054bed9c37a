"""Host GPU statistics (the `hami_host_gpu_*` series and `ListDevices`) behind one small interface.

`NvmlHostGpus` asks NVML (`nvidia-ml-py`) at each call; `NoHostGpus` is the machine without a GPU or driver,
where the host series are simply left out. `open_host_gpus("auto")` tries NVML and falls back cleanly.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from services.common.log import get_logger

log = get_logger("monitor.hostgpu")


def device_type_name(name: str) -> str:
    """`NVIDIA-` + the NVML name, unless the name already starts with NVIDIA (no `NVIDIA-NVIDIA A100`)."""
    return name if name.upper().startswith("NVIDIA") else f"NVIDIA-{name}"


@dataclass(frozen=True, slots=True)
class HostGpuStat:
    uuid: str
    index: int
    type: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int
    memory_utilization_percent: int


class HostGpus(Protocol):
    name: str

    def stats(self) -> list[HostGpuStat]: ...

    def close(self) -> None: ...


class NoHostGpus:
    """No GPU statistics: no NVML on this machine (or turned off)."""

    name = "none"

    def stats(self) -> list[HostGpuStat]:
        return []

    def close(self) -> None:
        return None


class HostGpuError(RuntimeError):
    pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlHostGpus:
    """GPU statistics from NVML; `nvml` may be a fake module with the same functions (tests)."""

    name = "nvml"

    def __init__(self, nvml: ModuleType | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml = nvml
        self._lock = threading.Lock()
        self._failed: set[int] = set()
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError, OSError) as exc:
            raise HostGpuError(f"NVML could not be initialised: {exc}") from exc

    def stats(self) -> list[HostGpuStat]:
        nvml = self._nvml
        out: list[HostGpuStat] = []
        with self._lock:
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as exc:
                log.warning("nvml_count_failed", error=str(exc))
                return []
            for index in range(count):
                try:
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    util = nvml.nvmlDeviceGetUtilizationRates(handle)
                    out.append(
                        HostGpuStat(
                            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                            index=index,
                            type=device_type_name(_text(nvml.nvmlDeviceGetName(handle))),
                            memory_used_bytes=int(memory.used),
                            memory_total_bytes=int(memory.total),
                            utilization_percent=int(util.gpu),
                            memory_utilization_percent=int(util.memory),
                        )
                    )
                    self._failed.discard(index)
                except nvml.NVMLError as exc:
                    # One card that does not answer (Xid 79, NVML error 999) must not hide the others.
                    if index not in self._failed:
                        log.warning("nvml_device_query_failed", index=index, error=str(exc))
                    self._failed.add(index)
        return out

    def close(self) -> None:
        # Shutting down a half-broken driver must not fail the monitor's exit.
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def open_host_gpus(kind: str, nvml: ModuleType | None = None) -> HostGpus:
    """`nvml` (errors propagate), `none`, or `auto`: NVML when it initialises, else none (logged once)."""
    if kind == "none":
        return NoHostGpus()
    try:
        return NvmlHostGpus(nvml)
    except (HostGpuError, ImportError) as exc:
        if kind == "nvml":
            raise HostGpuError(str(exc)) from exc
        log.info("host_gpu_stats_disabled", reason=str(exc))
        return NoHostGpus()
