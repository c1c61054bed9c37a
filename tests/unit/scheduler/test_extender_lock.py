"""Node lock decisions (docs/hami-wire.md#node-lock, docs/hami-wire.md#lock-and-health-cases), as pure
functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.scheduler.nodelock import (
    LockVerdict,
    expired_lock_age,
    inspect_lock,
    lock_value,
    owned_by,
    owner_release_reason,
)

NOW = datetime(2026, 8, 21, 10, 15, 4, tzinfo=UTC)
TTL = timedelta(seconds=30)


def test_lock_value_is_hamis_format() -> None:
    assert lock_value("default", "gpu-pod-1", NOW) == "2026-08-21T10:15:04Z,default,gpu-pod-1"
    # Sub-second precision is dropped and any zone is written as UTC, as Go's RFC3339 layout does.
    assert (
        lock_value("ns", "p", datetime(2026, 8, 21, 12, 15, 4, 999_000, tzinfo=UTC).astimezone())
        == "2026-08-21T12:15:04Z,ns,p"
    )


@pytest.mark.parametrize(
    ("value", "verdict", "takeable"),
    [
        (None, LockVerdict.FREE, True),
        ("", LockVerdict.FREE, True),
        ("2026-08-21T10:15:00Z,default,me", LockVerdict.MINE, False),
        ("2026-08-21T10:15:00Z,default,other", LockVerdict.HELD, False),
        ("2026-08-21T10:14:34Z,default,other", LockVerdict.HELD, False),  # exactly the TTL: not yet expired
        ("2026-08-21T10:14:33Z,default,other", LockVerdict.EXPIRED, True),
        ("2026-08-21T10:14:00Z,default,me", LockVerdict.MINE, False),  # ours, even when old
        ("2026-08-21T10:15:00Z", LockVerdict.HELD, False),  # legacy ownerless lock
        ("2026-08-21T09:00:00Z", LockVerdict.EXPIRED, True),
        ("2026-08-21T12:15:00+02:00,default,other", LockVerdict.HELD, False),
        ("garbage", LockVerdict.MALFORMED, True),
        ("2026-08-21T10:15:00Z,default", LockVerdict.MALFORMED, True),
        ("2026-08-21T10:15:00Z,a,b,c", LockVerdict.MALFORMED, True),
        ("2026-13-21T10:15:00Z,default,other", LockVerdict.MALFORMED, True),
    ],
)
def test_inspect_lock(value: str | None, verdict: LockVerdict, takeable: bool) -> None:
    state = inspect_lock(value, "default", "me", NOW, TTL)
    assert state.verdict is verdict
    assert state.takeable is takeable


def test_inspect_lock_details_name_the_holder() -> None:
    assert (
        "held by pod default/other"
        in inspect_lock("2026-08-21T10:15:00Z,default,other", "default", "me", NOW, TTL).detail
    )
    assert "legacy" in inspect_lock("2026-08-21T10:15:00Z", "default", "me", NOW, TTL).detail
    assert "malformed lock annotation" in inspect_lock("x,y", "default", "me", NOW, TTL).detail


@pytest.mark.parametrize(
    ("value", "owned"),
    [
        ("2026-08-21T10:15:04Z,default,me", True),
        ("2026-08-21T10:15:04Z,default,me2", False),
        ("2026-08-21T10:15:04Z,other,me", False),
        ("2026-08-21T10:15:04Z", False),
        (None, False),
    ],
)
def test_owned_by(value: str | None, owned: bool) -> None:
    assert owned_by(value, "default", "me") is owned


def _pod(*, phase: str = "Pending", bind_phase: str | None = None, deleting: bool = False) -> dict[str, Any]:
    annotations = {"hami.io/bind-phase": bind_phase} if bind_phase else {}
    metadata: dict[str, Any] = {"name": "other", "namespace": "default", "annotations": annotations}
    if deleting:
        metadata["deletionTimestamp"] = "2026-08-21T10:15:00Z"
    return {"metadata": metadata, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("owner", "dangling"),
    [
        (None, "no longer exists"),
        (_pod(), None),
        (_pod(bind_phase="allocating"), None),
        (_pod(phase="Running", bind_phase="allocating"), None),
        (_pod(bind_phase="success"), "already went through Allocate"),
        (_pod(bind_phase="failed"), "already went through Allocate"),
        (_pod(phase="Succeeded"), "finished"),
        (_pod(phase="Failed"), "finished"),
        (_pod(deleting=True), "terminating"),
        ({}, None),
    ],
)
def test_owner_release_reason(owner: dict[str, Any] | None, dangling: str | None) -> None:
    reason = owner_release_reason(owner)
    if dangling is None:
        assert reason is None
    else:
        assert reason is not None and dangling in reason


@pytest.mark.parametrize(
    ("value", "age"),
    [
        (None, None),
        ("", None),
        ("2026-08-21T10:15:00Z,default,other", None),  # fresh
        ("2026-08-21T10:14:34Z,default,other", None),  # exactly the TTL: not yet expired
        ("2026-08-21T10:14:33Z,default,other", 31.0),
        ("2026-08-21T10:14:00Z,default,me", 64.0),  # whoever holds it
        ("2026-08-21T09:15:04Z", 3600.0),  # legacy ownerless
        ("garbage", None),  # unreadable: left for an acquire to take over with a reason
    ],
)
def test_expired_lock_age(value: str | None, age: float | None) -> None:
    assert expired_lock_age(value, NOW, TTL) == age
