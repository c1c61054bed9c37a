"""Kubernetes quantity grammar: numbers, exponents, decimal and binary SI suffixes."""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.common.resources import QuantityError, QuantityValue, parse_quantity, quantity_as_int64


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", Fraction(0)),
        ("1", Fraction(1)),
        ("4096", Fraction(4096)),
        ("+5", Fraction(5)),
        ("-1", Fraction(-1)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("007", Fraction(7)),
        ("1n", Fraction(1, 10**9)),
        ("1u", Fraction(1, 10**6)),
        ("100m", Fraction(1, 10)),
        ("1k", Fraction(1000)),
        ("1.5k", Fraction(1500)),
        ("2M", Fraction(2 * 10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1Ki", Fraction(1024)),
        ("1Mi", Fraction(2**20)),
        ("16Gi", Fraction(16 * 2**30)),
        ("16.0Gi", Fraction(16 * 2**30)),
        ("0.5Gi", Fraction(2**29)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e+3", Fraction(1000)),
        ("2e-3", Fraction(2, 1000)),
        ("-1.5e1", Fraction(-15)),
        (7, Fraction(7)),
        (-3, Fraction(-3)),
        (0.1, Fraction(1, 10)),
        (2.0, Fraction(2)),
    ],
)
def test_parse_quantity(value: QuantityValue, expected: Fraction) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "invalid quantity ''"),
        (" 1", "invalid quantity ' 1'"),
        ("1 ", "unknown suffix ' '"),
        ("abc", "invalid quantity 'abc'"),
        (".", "invalid quantity '.'"),
        ("--1", "invalid quantity '--1'"),
        ("1.2.3", "unknown suffix '.3'"),
        ("1Kb", "unknown suffix 'Kb'"),
        ("1ki", "unknown suffix 'ki'"),
        ("1K", "unknown suffix 'K'"),
        ("1e", "unknown suffix 'e'"),
        ("1e1.5", "unknown suffix 'e1.5'"),
        ("Ki", "invalid quantity 'Ki'"),
        ("\u0661", "invalid quantity"),  # an Arabic-Indic digit is not a Kubernetes digit
        ("1e99999", "exponent 99999 is out of range"),
        (float("nan"), "must be finite"),
        (float("inf"), "must be finite"),
        (True, "got the boolean True"),
    ],
)
def test_parse_quantity_errors_name_the_input(value: QuantityValue, message: str) -> None:
    with pytest.raises(QuantityError) as excinfo:
        parse_quantity(value)
    assert message in str(excinfo.value)


def test_quantity_error_is_a_value_error() -> None:
    assert issubclass(QuantityError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16Gi", 17179869184),
        ("2k", 2000),
        ("1000m", 1),
        ("-1", -1),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # beyond int64
        ("1.5", None),
        ("500m", None),
        ("not-a-quantity", None),
        ("\u0663", None),  # a digit to str.isdigit, not to Kubernetes
        ("\u00b2", None),
        ("0042", 42),
        (3, 3),
    ],
)
def test_quantity_as_int64(value: QuantityValue, expected: int | None) -> None:
    assert quantity_as_int64(value) == expected
