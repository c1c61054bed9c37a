"""`hami.io/mutex.lock`: `<RFC3339>,<ns>,<name>` or the legacy bare timestamp
(docs/hami-wire.md#node-lock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.codecs import WireFormatError, encode_node_lock, parse_node_lock
from services.common.model import NodeLock

T0 = datetime(2026, 8, 21, 10, 15, 4, tzinfo=UTC)
TIMEOUT = timedelta(minutes=5)  # HAMi's default --node-lock-timeout


@pytest.mark.parametrize(
    ("lock", "value"),
    [
        pytest.param(
            NodeLock(T0, "default", "gpu-pod-1"), "2026-08-21T10:15:04Z,default,gpu-pod-1", id="spec-example"
        ),
        pytest.param(NodeLock(T0), "2026-08-21T10:15:04Z", id="legacy-bare-timestamp"),
        pytest.param(
            NodeLock(T0.replace(microsecond=999_999), "ns", "p"),
            "2026-08-21T10:15:04Z,ns,p",
            id="whole-seconds",
        ),
        pytest.param(
            NodeLock(datetime(2026, 8, 21, 12, 15, 4, tzinfo=timezone(timedelta(hours=2))), "ns", "p"),
            "2026-08-21T10:15:04Z,ns,p",
            id="written-in-utc",
        ),
        pytest.param(
            NodeLock(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)), "0999-01-02T03:04:05Z", id="four-digit-year"
        ),
    ],
)
def test_encode_node_lock(lock: NodeLock, value: str) -> None:
    assert encode_node_lock(lock) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1", NodeLock(T0, "default", "gpu-pod-1"), id="spec-example"
        ),
        pytest.param("2026-08-21T10:15:04Z", NodeLock(T0), id="legacy"),
        pytest.param(
            "2026-08-21T12:15:04+02:00,ns,p", NodeLock(T0, "ns", "p"), id="offset-normalised-to-utc"
        ),
        pytest.param("2026-08-21T05:15:04-05:00", NodeLock(T0), id="negative-offset"),
        pytest.param(
            "2026-08-21T10:15:04.5Z,ns,p", NodeLock(T0.replace(microsecond=500_000), "ns", "p"), id="fraction"
        ),
        pytest.param("2026-08-21T10:15:04Z,,", NodeLock(T0, "", ""), id="empty-owner-parts-kept"),
    ],
)
def test_parse_node_lock(value: str, expected: NodeLock) -> None:
    parsed = parse_node_lock(value)
    assert parsed == expected
    assert parsed.acquired_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            "2026-08-21T10:15:04Z,default",
            "malformed lock annotation '2026-08-21T10:15:04Z,default'",
            id="two-parts",
        ),
        pytest.param("2026-08-21T10:15:04Z,a,b,c", "malformed lock annotation", id="four-parts"),
        pytest.param("not-a-time,default,p", "time 'not-a-time' is not RFC3339", id="bad-time"),
        pytest.param("", "malformed lock annotation '': time '' is not RFC3339", id="empty"),
        pytest.param("2026-08-21T10:15:04", "is not RFC3339", id="no-zone"),
        pytest.param("2026-08-21 10:15:04Z", "is not RFC3339", id="space-separator"),
        pytest.param(
            "2026-13-01T00:00:00Z,ns,p", "time '2026-13-01T00:00:00Z' is out of range", id="month-13"
        ),
        pytest.param("2026-08-21T24:00:00Z", "is out of range", id="hour-24"),
    ],
)
def test_parse_node_lock_errors(value: str, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        parse_node_lock(value)
    assert message in str(excinfo.value)
    assert "malformed lock annotation" in str(excinfo.value)


def test_encode_refuses_an_owner_with_a_comma() -> None:
    with pytest.raises(WireFormatError, match="must not contain ','"):
        encode_node_lock(NodeLock(T0, "ns", "a,b"))


# The lock cases of docs/hami-wire.md#lock-and-health-cases, reduced to the pure decision inputs: is the
# existing lock past the timeout (forced release, re-lock), and is it held by the requesting pod (treated as
# acquired)?
@pytest.mark.parametrize(
    ("value", "age", "requester", "expired", "held"),
    [
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1",
            timedelta(minutes=1),
            ("default", "gpu-pod-1"),
            False,
            True,
            id="same-pod-is-ok",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1",
            timedelta(minutes=1),
            ("default", "other"),
            False,
            False,
            id="other-live-pod-contention",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1",
            timedelta(minutes=1),
            ("kube-system", "gpu-pod-1"),
            False,
            False,
            id="same-name-other-namespace",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1",
            TIMEOUT,
            ("default", "other"),
            False,
            False,
            id="exactly-timeout-still-held",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z,default,gpu-pod-1",
            TIMEOUT + timedelta(seconds=1),
            ("default", "other"),
            True,
            False,
            id="expired-relock",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z",
            timedelta(minutes=1),
            ("default", "gpu-pod-1"),
            False,
            False,
            id="legacy-lock-has-no-owner",
        ),
        pytest.param(
            "2026-08-21T10:15:04Z",
            timedelta(hours=1),
            ("default", "gpu-pod-1"),
            True,
            False,
            id="legacy-lock-expires",
        ),
    ],
)
def test_lock_cases(
    value: str, age: timedelta, requester: tuple[str, str], expired: bool, held: bool
) -> None:
    lock = parse_node_lock(value)
    assert lock.is_expired(T0 + age, TIMEOUT) is expired
    assert lock.held_by(*requester) is held


def test_legacy_flag() -> None:
    assert parse_node_lock("2026-08-21T10:15:04Z").is_legacy
    assert not parse_node_lock("2026-08-21T10:15:04Z,ns,p").is_legacy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"acquired_at": datetime(2026, 8, 21, 10, 15, 4)}, "must be timezone-aware"),
        ({"acquired_at": T0, "namespace": "ns"}, "needs both namespace and name"),
        ({"acquired_at": T0, "name": "p"}, "needs both namespace and name"),
    ],
)
def test_node_lock_model_rejects_half_built_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeLock(**kwargs)  # type: ignore[arg-type]


owner_part = st.text(st.characters(codec="utf-8", exclude_characters=","), max_size=20)
whole_second_utc = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))


@given(whole_second_utc, st.none() | st.tuples(owner_part, owner_part))
def test_encode_then_parse_is_identity(moment: datetime, owner: tuple[str, str] | None) -> None:
    lock = NodeLock(moment) if owner is None else NodeLock(moment, *owner)
    assert parse_node_lock(encode_node_lock(lock)) == lock
