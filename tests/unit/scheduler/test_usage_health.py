"""Node health (docs/hami-wire.md#lock-and-health-cases; docs/weaknesses.md#wedged-nodes)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.scheduler.health import (
    allocatable_gpus,
    handshake_request_time,
    handshake_value,
    needs_handshake,
    next_dropped,
    node_health,
)

NOW = datetime(2026, 8, 21, 10, 15, 4).astimezone()


def _requesting(age_seconds: float) -> str:
    return handshake_value(NOW - timedelta(seconds=age_seconds))


def test_handshake_value_round_trips_in_local_time() -> None:
    value = handshake_value(NOW)
    assert value.startswith("Requesting_2026-08-21 ")
    assert handshake_request_time(value) == NOW


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Requesting",
        "Requesting_not-a-timestamp",
        "Reported 2026-08-21",
        "Deleted_2026-08-21 10:00:00",
    ],
)
def test_handshake_request_time_of_other_values_is_none(value: str | None) -> None:
    assert handshake_request_time(value) is None


@pytest.mark.parametrize(
    ("devices", "allocatable", "dropped", "handshake", "schedulable"),
    [
        (0, 4, False, None, False),  # nothing registered
        (2, 4, False, None, True),
        (2, 4, True, _requesting(3600), True),  # allocatable back: schedulable again at once
        (2, 0, True, _requesting(1), False),  # allocatable dropped to 0 (plugin gone, reboot)
        (2, None, False, None, True),  # no handshake yet: the leader is about to request one
        (2, 0, False, _requesting(30), True),  # HAMi: younger than 60 s -> healthy
        (2, 0, False, _requesting(61), False),  # older and still no allocatable -> unhealthy
        (2, None, False, "Requesting_2128-12-02 00:00:00", True),  # future -> healthy (Test_CheckHealth)
        (2, None, False, "Requesting", True),  # unparsable -> healthy, unchanged
        (2, None, False, "Requesting_not-a-timestamp", True),
        (2, None, False, "Requesting_2024-01-02 00:00:00", False),  # old, no allocatable
        (2, 3, False, "Requesting_2024-01-02 00:00:00", True),  # old, allocatable present
        (2, None, False, "Deleted_2024-01-02 00:00:00", True),  # never wedged by HAMi's Deleted_
    ],
)
def test_node_health(
    devices: int, allocatable: int | None, dropped: bool, handshake: str | None, schedulable: bool
) -> None:
    health = node_health(
        device_count=devices, allocatable=allocatable, dropped=dropped, handshake=handshake, now=NOW
    )
    assert health.schedulable is schedulable
    if not schedulable:
        assert health.reason


@pytest.mark.parametrize(
    ("dropped", "prev_alloc", "alloc", "prev_reg", "reg", "expected"),
    [
        (False, 4, 0, "r", "r", True),  # dropped to 0
        (False, 4, None, "r", "r", True),  # allocatable vanished
        (True, 0, 0, "r", "r", True),  # stays dropped
        (True, 0, 4, "r", "r", False),  # back
        (True, 0, 0, "r", "r2", False),  # device plugin re-registered
        (False, None, 0, None, "r", False),  # new node: grace period, not "dropped"
        (False, 0, 0, "r", "r", False),
    ],
)
def test_next_dropped(
    dropped: bool,
    prev_alloc: int | None,
    alloc: int | None,
    prev_reg: str | None,
    reg: str | None,
    expected: bool,
) -> None:
    assert next_dropped(dropped, prev_alloc, alloc, prev_reg, reg) is expected


@pytest.mark.parametrize(
    ("value", "changed", "needed"),
    [
        (None, False, True),
        ("Deleted_2024-01-02 00:00:00", False, True),
        ("Reported 2024-01-02", False, True),
        (_requesting(5), False, False),
        (_requesting(5), True, True),
        ("Requesting", False, False),
    ],
)
def test_needs_handshake(value: str | None, changed: bool, needed: bool) -> None:
    assert needs_handshake(value, register_changed=changed) is needed


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"allocatable": {"nvidia.com/gpu": "20"}}, 20),
        ({"allocatable": {"nvidia.com/gpu": 3}}, 3),
        ({"allocatable": {"nvidia.com/gpu": "0"}}, 0),
        ({"allocatable": {"nvidia.com/gpu": "1.5"}}, None),
        ({"allocatable": {"cpu": "4"}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_allocatable_gpus(status: object, expected: int | None) -> None:
    assert allocatable_gpus({"status": status}) == expected
