"""Durations (to float seconds) and sizes (to int bytes), as written in config documents."""

from __future__ import annotations

import math
import re
from fractions import Fraction

# Longer suffixes first so "ms" is not read as "m" followed by garbage.
_DURATION_UNITS = {
    "us": Fraction(1, 1_000_000),
    "ms": Fraction(1, 1_000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3_600),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_DURATION_HINT = (
    "expected seconds as a number or a string like '250ms', '1.5s', '2m', '1h', '500us'"
)

_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_SIZE = re.compile(r"(\d+)(B|KB|MB|GB|KiB|MiB|GiB)")
_SIZE_HINT = "expected bytes as an integer or a string like '512B', '64KiB', '1MiB', '10KB', '1GB'"


def parse_duration(value: object) -> float:
    """Seconds from a non-negative number of seconds or a string such as "250ms" or "1m30s".

    Raises TypeError or ValueError with a message fit for a config issue.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if isinstance(value, str):
        if value.startswith("-") and _DURATION.fullmatch(value[1:]):
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        if not _DURATION.fullmatch(value):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
        # Exact arithmetic, then one rounding: "100ms" is exactly float 0.1, not 100 * 0.001.
        exact = sum(Fraction(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: must be finite")
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        exact = value
    try:
        seconds = float(exact)
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too large") from None
    if math.isinf(seconds):
        raise ValueError(f"invalid duration {value!r}: too large")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a non-negative integer or a string such as "64KiB" (binary) or "10KB" (decimal).

    Raises TypeError or ValueError with a message fit for a config issue.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"invalid size {value!r}: {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    if value.startswith("-") and _SIZE.fullmatch(value[1:]):
        raise ValueError(f"invalid size {value!r}: must not be negative")
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def format_duration(seconds: float) -> str:
    """Short human form for messages, e.g. 0.25 -> "0.25s"."""
    return f"{seconds:g}s"
