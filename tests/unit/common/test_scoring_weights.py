"""`hami.io/device-scoring-weights: slot=<int>,core=<int>,memory=<int>` (docs/hami-wire.md#pod-annotations,
docs/hami-wire.md#score-cases)."""

from __future__ import annotations

import pytest

from services.common.codecs import WireFormatError, parse_device_scoring_weights
from services.common.model import DeviceScoringWeights


def test_default_weights_are_one_each() -> None:
    assert DeviceScoringWeights() == DeviceScoringWeights(slot=1, core=1, memory=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("slot=1,core=1,memory=3", DeviceScoringWeights(1, 1, 3), id="hami-fixture"),
        pytest.param("slot=1,core=3,memory=1", DeviceScoringWeights(1, 3, 1), id="core-heavy"),
        pytest.param("memory=3,slot=1,core=2", DeviceScoringWeights(1, 2, 3), id="any-order"),
        pytest.param(
            " slot = 0 , core=0,memory=7 ", DeviceScoringWeights(0, 0, 7), id="whitespace-and-zeros"
        ),
        pytest.param("slot=+2,core=0,memory=0", DeviceScoringWeights(2, 0, 0), id="go-atoi-plus-sign"),
    ],
)
def test_parse_device_scoring_weights(value: str, expected: DeviceScoringWeights) -> None:
    assert parse_device_scoring_weights(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("slot=1,core=1", "missing key(s) memory", id="missing-key"),
        pytest.param("core=1", "missing key(s) slot, memory", id="two-missing"),
        pytest.param("slot=1,slot=2,core=1,memory=1", "duplicate key 'slot'", id="duplicate"),
        pytest.param("slot=-1,core=1,memory=1", "slot value -1 is negative", id="negative"),
        pytest.param("slot=1,core=1,memory=1,gpu=2", "unknown key 'gpu'", id="unknown-key"),
        pytest.param("Slot=1,core=1,memory=1", "unknown key 'Slot'", id="keys-are-lower-case"),
        pytest.param("slot=0,core=0,memory=0", "all weights are zero", id="all-zero"),
        pytest.param("slot=a,core=1,memory=1", "slot value 'a' is not an integer", id="not-an-integer"),
        pytest.param("slot=1.5,core=1,memory=1", "slot value '1.5' is not an integer", id="fraction"),
        pytest.param("slot,core=1,memory=1", "entry 'slot' is not key=value", id="no-equals"),
        pytest.param("slot=1,core=1,memory=1,", "entry '' is not key=value", id="trailing-comma"),
        pytest.param("", "entry '' is not key=value", id="empty"),
    ],
)
def test_parse_device_scoring_weights_errors(value: str, message: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        parse_device_scoring_weights(value)
    assert message in str(excinfo.value)
    assert repr(value) in str(excinfo.value)
