"""Comma lists and booleans of node and pod annotations (docs/hami-wire.md#node-annotations,
docs/hami-wire.md#pod-annotations)."""

from __future__ import annotations

import pytest

from services.common.codecs import WireFormatError, parse_bool, parse_cordon, parse_type_list, parse_uuid_list


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("dev-1, ", frozenset({"dev-1"}), id="hami-cordon-fixture-trailing-blank"),
        pytest.param("dev-0,dev-1", frozenset({"dev-0", "dev-1"}), id="two"),
        pytest.param(" GPU-a ,,GPU-b,GPU-a", frozenset({"GPU-a", "GPU-b"}), id="blanks-empties-duplicates"),
        pytest.param("", frozenset(), id="empty"),
        pytest.param(" , ,", frozenset(), id="only-separators"),
        pytest.param(None, frozenset(), id="absent"),
    ],
)
def test_parse_cordon_and_uuid_lists(value: str | None, expected: frozenset[str]) -> None:
    assert parse_cordon(value) == expected
    assert parse_uuid_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("A100,V100", ("A100", "V100"), id="spec-example"),
        pytest.param("1080,2080", ("1080", "2080"), id="nouse-example"),
        pytest.param(" a100 , Tesla t4", ("A100", "TESLA T4"), id="trimmed-and-upper-cased"),
        pytest.param("A100,", ("A100",), id="empty-entry-dropped-not-match-all"),
        pytest.param("a100,A100", ("A100",), id="deduplicated"),
        pytest.param("", (), id="empty-means-no-constraint"),
        pytest.param(None, (), id="absent"),
    ],
)
def test_parse_type_list(value: str | None, expected: tuple[str, ...]) -> None:
    assert parse_type_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(v, True) for v in ("1", "t", "T", "TRUE", "true", "True")]
    + [(v, False) for v in ("0", "f", "F", "FALSE", "false", "False")],
)
def test_parse_bool_accepts_go_parsebool_spellings(value: str, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["", "yes", "no", "tRUE", "True ", " 1", "2", "on"])
def test_parse_bool_rejects_everything_else(value: str) -> None:
    with pytest.raises(WireFormatError) as excinfo:
        parse_bool(value)
    assert f"{value!r} is not a boolean" in str(excinfo.value)
