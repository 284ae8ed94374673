from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnirelay.config import parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("100ms", 0.1),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
        ("1m30s", 90.0),
        ("1h0m1s", 3601.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        (-1, ValueError, "must not be negative"),
        (-0.5, ValueError, "must not be negative"),
        ("-1s", ValueError, "must not be negative"),
        (True, TypeError, "invalid duration True"),
        (None, TypeError, "invalid duration None"),
        ([1], TypeError, "invalid duration [1]"),
        ("abc", ValueError, "expected seconds as a number or a string like '250ms'"),
        ("30", ValueError, "invalid duration '30'"),
        ("10 s", ValueError, "invalid duration '10 s'"),
        ("1d", ValueError, "invalid duration '1d'"),
        ("1.s", ValueError, "invalid duration '1.s'"),
        ("", ValueError, "invalid duration ''"),
        (math.nan, ValueError, "must be finite"),
        (math.inf, ValueError, "must be finite"),
        (10**400, ValueError, "too large"),
        ("9" * 400 + "h", ValueError, "too large"),
    ],
)
def test_parse_duration_rejects(value: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        parse_duration(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("value", "nbytes"),
    [
        (0, 0),
        (65536, 65536),
        ("512B", 512),
        ("10KB", 10_000),
        ("1MB", 1_000_000),
        ("2GB", 2_000_000_000),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("1GiB", 1073741824),
    ],
)
def test_parse_size_accepts(value: object, nbytes: int) -> None:
    assert parse_size(value) == nbytes


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        (-1, ValueError, "must not be negative"),
        ("-1KiB", ValueError, "must not be negative"),
        (True, TypeError, "invalid size True"),
        (1.5, TypeError, "invalid size 1.5"),
        ("1.5MiB", ValueError, "expected bytes as an integer"),
        ("1mb", ValueError, "invalid size '1mb'"),
        ("64", ValueError, "invalid size '64'"),
        ("64 KiB", ValueError, "invalid size '64 KiB'"),
        ("1TB", ValueError, "invalid size '1TB'"),
    ],
)
def test_parse_size_rejects(value: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        parse_size(value)
    assert fragment in str(caught.value)


_DURATION_FACTORS = {"us": 1_000_000, "ms": 1_000, "s": 1}
_DURATION_MULTIPLES = {"m": 60, "h": 3600}
_SIZE_FACTORS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


@given(st.integers(0, 10**12), st.sampled_from(sorted(_DURATION_FACTORS)))
def test_duration_subsecond_units_are_exact(count: int, unit: str) -> None:
    # Division by an integer is correctly rounded, so this is the best float for the value.
    assert parse_duration(f"{count}{unit}") == count / _DURATION_FACTORS[unit]


@given(st.integers(0, 10**9), st.sampled_from(sorted(_DURATION_MULTIPLES)))
def test_duration_minutes_and_hours(count: int, unit: str) -> None:
    assert parse_duration(f"{count}{unit}") == count * _DURATION_MULTIPLES[unit]


@given(st.floats(min_value=0, allow_infinity=False, allow_nan=False))
def test_duration_numbers_are_seconds_and_idempotent(seconds: float) -> None:
    parsed = parse_duration(seconds)
    assert parsed == seconds
    assert parse_duration(parsed) == parsed


@given(st.integers(0, 10**6), st.integers(0, 59), st.integers(0, 59))
def test_duration_compound(hours: int, minutes: int, seconds: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == hours * 3600 + minutes * 60 + seconds


@given(st.integers(0, 10**15), st.sampled_from(sorted(_SIZE_FACTORS)))
def test_size_units(count: int, unit: str) -> None:
    assert parse_size(f"{count}{unit}") == count * _SIZE_FACTORS[unit]


@given(st.integers(min_value=0))
def test_size_integers_are_bytes(nbytes: int) -> None:
    assert parse_size(nbytes) == nbytes
