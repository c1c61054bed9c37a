"""The one interface GPU discovery hides behind, with the data it hands up.

The product implements it with NVML (`services.device_plugin.nvml`, real cards); local mode and tests run
`kube-vgpu-sim-device-plugin`, whose backend reads a simulated inventory. Everything above this interface
(registration, health, the kubelet API, Allocate) is the same code for both.

Backends are synchronous: `discover()` is called from a worker thread and `next_event()` blocks in a
dedicated health thread; neither touches the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class GpuBackendError(RuntimeError):
    """The backend cannot enumerate or watch GPUs (no driver, NVML not found, unreadable inventory)."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One physical GPU as discovered.

    `memory_mib` is None when the driver cannot report it (unified-memory GPUs, NVML NOT_SUPPORTED);
    `present` is False when the backend knows the card is there but not working (simulated `healthy: false`,
    or an NVML query that fails for that card).
    """

    uuid: str
    index: int
    name: str
    memory_mib: int | None
    numa: int = 0
    mig_enabled: bool = False
    present: bool = True


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """A health-relevant event. `uuid` None means every GPU (e.g. NVML's event wait failed).

    `xid` is the XID of a critical error event (None for other kinds); `kind` names the event for logs:
    "xid", "ecc", "lost" (the device stopped answering), "changed" (re-discover: presence may differ).
    """

    kind: str
    uuid: str | None = None
    xid: int | None = None
    detail: str = ""


class GpuBackend(Protocol):
    """GPU discovery and health events."""

    name: str

    def discover(self) -> Sequence[GpuInfo]:
        """Every GPU on the node, in index order. Raises GpuBackendError when nothing can be read."""
        ...

    def next_event(self, timeout: float) -> GpuEvent | None:
        """Block up to `timeout` seconds for the next event; None when none came."""
        ...

    def close(self) -> None:
        """Release the backend (NVML shutdown); `next_event` returns None promptly afterwards."""
        ...


def device_type_name(name: str) -> str:
    """The registered `type`: the card name, prefixed `NVIDIA-` unless it already starts with NVIDIA (HAMi
    `pkg/device-plugin/nvidiadevice/nvinternal/plugin/register.go`)."""
    return name if name.upper().startswith("NVIDIA") else f"NVIDIA-{name}"


def sysfs_pci_address(bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` as sysfs names it: `0000:3b:00.0` (four-digit domain, lower case)."""
    text = bus_id.strip().lower()
    domain, sep, rest = text.partition(":")
    if not sep:
        return text
    return f"{domain[-4:].rjust(4, '0')}:{rest}"
