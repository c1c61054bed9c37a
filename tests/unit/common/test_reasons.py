"""Fit failure reasons: the vocabulary and `"<count>/<total> <Reason>, ..."` strings
(docs/hami-wire.md#fit-reasons)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.codecs import format_reasons, parse_reasons
from services.common.wire import Reason

# Spec 3.5, file pkg/device/common/common.go: every reason string HAMi defines.
SPEC_VOCABULARY = [
    "CardTypeMismatch",
    "CardUuidMismatch",
    "CardTimeSlicingExhausted",
    "CardComputeUnitsExhausted",
    "CardInsufficientMemory",
    "CardInsufficientCore",
    "CardNotHealth",
    "CardCordoned",
    "NumaNotFit",
    "ExclusiveDeviceAllocateConflict",
    "CardNotFoundCustomFilterRule",
    "CardMigTopologyInfeasible",
    "NodeInsufficientDevice",
    "AllocatedCardsInsufficientRequest",
    "ResourceQuotaNotFit",
    "NodeUnfitPod",
    "NodeFitPod",
    "ModeNotFit",
]


def test_reason_enum_is_exactly_the_spec_vocabulary() -> None:
    assert sorted(r.value for r in Reason) == sorted(SPEC_VOCABULARY)


@pytest.mark.parametrize("value", SPEC_VOCABULARY)
def test_reason_members_are_their_wire_strings(value: str) -> None:
    assert Reason(value) == value
    assert f"{Reason(value)}" == value


@pytest.mark.parametrize(
    ("counts", "total", "expected"),
    [
        pytest.param(
            {Reason.CARD_TYPE_MISMATCH: 1, Reason.CARD_INSUFFICIENT_MEMORY: 1},
            2,
            "1/2 CardInsufficientMemory, 1/2 CardTypeMismatch",
            id="spec-example",
        ),
        pytest.param({}, 8, "", id="no-reasons"),
        pytest.param({"CardInsufficientMemory": 3}, 8, "3/8 CardInsufficientMemory", id="single"),
        pytest.param(
            {"CardInsufficientMemory": 3, "CardInsufficientCore": 2, "CardNotHealth": 3},
            8,
            "2/8 CardInsufficientCore, 3/8 CardInsufficientMemory, 3/8 CardNotHealth",
            id="hami-gen-reason-sorted",
        ),
        pytest.param({"A": 2, "B": 10}, 12, "10/12 B, 2/12 A", id="whole-entries-sorted-lexicographically"),
        pytest.param({"CardNotHealth": 0, "NumaNotFit": 1}, 2, "1/2 NumaNotFit", id="zero-counts-left-out"),
    ],
)
def test_format_reasons(counts: Mapping[str, int], total: int, expected: str) -> None:
    assert format_reasons(counts, total) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "1/2 CardTypeMismatch, 2/2 NumaNotFit", {"CardTypeMismatch": 1, "NumaNotFit": 2}, id="spec"
        ),
        pytest.param(
            "3/8 CardInsufficientMemory, 2/8 CardInsufficientCore, 3/8 CardNotHealth",
            {"CardInsufficientMemory": 3, "CardInsufficientCore": 2, "CardNotHealth": 3},
            id="hami-base",
        ),
        pytest.param("4/4 CardTypeMismatch", {"CardTypeMismatch": 4}, id="single"),
        pytest.param("", {}, id="empty"),
        pytest.param("invalid_reason_format", {}, id="malformed-skipped-like-hami"),
        pytest.param("node unregistered", {}, id="plain-failure-string"),
        pytest.param("NodeInsufficientDevice, 1/3 CardNotHealth", {"CardNotHealth": 1}, id="mixed"),
        pytest.param("1/2 A, 2/2 A", {"A": 2}, id="repeated-reason-last-wins"),
        pytest.param(
            " 1/2 CardNotHealth ,2/2 NumaNotFit", {"CardNotHealth": 1, "NumaNotFit": 2}, id="spacing"
        ),
    ],
)
def test_parse_reasons(value: str, expected: dict[str, int]) -> None:
    assert parse_reasons(value) == expected


reason_names = st.sampled_from(SPEC_VOCABULARY) | st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,20}", fullmatch=True)


@given(st.dictionaries(reason_names, st.integers(1, 10_000), max_size=8), st.integers(0, 10_000))
def test_parse_inverts_format(counts: dict[str, int], extra_total: int) -> None:
    total = max(counts.values(), default=0) + extra_total
    assert parse_reasons(format_reasons(counts, total)) == counts
