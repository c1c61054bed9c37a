"""Node registration health (docs/hami-wire.md#registration-and-health, docs/weaknesses.md#wedged-nodes): pure
functions over what a node object shows.

A node is schedulable when its `hami.io/node-nvidia-register` annotation lists at least one GPU and the
kubelet reports allocatable `nvidia.com/gpu` > 0. While allocatable is still 0 or missing (a node that just
came up, a device plugin that only writes the annotation), the node gets HAMi's grace period: 60 s from the
scheduler's `hami.io/node-handshake: Requesting_<time>`. A node whose allocatable dropped to 0 (device plugin
gone, node rebooting) is unschedulable at once.

Unlike HAMi this never wedges a node: there is no `Deleted_` state. As soon as allocatable is back above 0, or
the device plugin re-registers (the register annotation changes, which restarts the grace period), the node is
schedulable again; a `Deleted_...` value left by HAMi is simply replaced by a fresh `Requesting_...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.common import wire
from services.common.resources import quantity_as_int64

__all__ = [
    "HANDSHAKE_GRACE",
    "NodeHealth",
    "allocatable_gpus",
    "handshake_request_time",
    "handshake_value",
    "needs_handshake",
    "next_dropped",
    "node_health",
]

# HAMi's window between writing `Requesting_<time>` and expecting the kubelet to report the GPUs.
HANDSHAKE_GRACE: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class NodeHealth:
    schedulable: bool
    reason: str = ""


def allocatable_gpus(node: dict[str, object], resource: str = wire.RESOURCE_GPU) -> int | None:
    """The node's allocatable GPU slots (`status.allocatable[nvidia.com/gpu]`); None if absent or invalid."""
    status = node.get("status")
    allocatable = status.get("allocatable") if isinstance(status, dict) else None
    raw = allocatable.get(resource) if isinstance(allocatable, dict) else None
    if not isinstance(raw, str | int):
        return None
    return quantity_as_int64(raw)


def handshake_value(now: datetime) -> str:
    """`Requesting_<YYYY-MM-DD HH:MM:SS>` in the scheduler's local time, as HAMi writes it."""
    return f"{wire.HANDSHAKE_REQUESTING}_{now.astimezone().strftime(wire.HANDSHAKE_TIME_FORMAT)}"


def handshake_request_time(value: str | None) -> datetime | None:
    """The time of a `Requesting_<time>` handshake (local time), None for any other or unparsable value."""
    if not value or not value.startswith(wire.HANDSHAKE_REQUESTING + "_"):
        return None
    try:
        naive = datetime.strptime(value[len(wire.HANDSHAKE_REQUESTING) + 1 :], wire.HANDSHAKE_TIME_FORMAT)
    except ValueError:
        return None
    return naive.astimezone()  # a naive time is taken as local time


def needs_handshake(value: str | None, *, register_changed: bool = False) -> bool:
    """Whether the leader should (re)write `Requesting_<now>`: no request yet (absent, HAMi's `Deleted_...`
    or the legacy `Reported ...`), or the device plugin has just re-registered (restart the grace period)."""
    return register_changed or value is None or wire.HANDSHAKE_REQUESTING not in value


def next_dropped(
    dropped: bool,
    previous_allocatable: int | None,
    allocatable: int | None,
    previous_register: str | None,
    register: str | None,
) -> bool:
    """Whether the node is in the "allocatable dropped to 0" state after an update: entered when allocatable
    falls from > 0 to 0/absent, left when allocatable is > 0 again or the register annotation changes."""
    if allocatable is not None and allocatable > 0:
        return False
    if register != previous_register and previous_register is not None:
        return False
    if previous_allocatable is not None and previous_allocatable > 0:
        return True
    return dropped


def node_health(
    *,
    device_count: int,
    allocatable: int | None,
    dropped: bool,
    handshake: str | None,
    now: datetime,
    grace: timedelta = HANDSHAKE_GRACE,
) -> NodeHealth:
    """Whether the scheduler may place pods on the node (docs/hami-wire.md#registration-and-health)."""
    if device_count <= 0:
        return NodeHealth(False, "no GPU registered")
    if allocatable is not None and allocatable > 0:
        return NodeHealth(True)
    if dropped:
        return NodeHealth(False, f"allocatable {wire.RESOURCE_GPU} dropped to 0")
    requested = handshake_request_time(handshake)
    if requested is None or now - requested <= grace:
        return NodeHealth(True, "waiting for the kubelet to report GPUs")
    return NodeHealth(
        False, f"no allocatable {wire.RESOURCE_GPU} {grace.total_seconds():g}s after the handshake request"
    )
