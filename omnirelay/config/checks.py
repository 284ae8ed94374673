"""Value checks for single config fields.

Each check takes a raw document value and returns the normalized value, or raises TypeError
(wrong type) or ValueError (bad value) whose message becomes a config issue at the field's path.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, TypeVar

from .units import parse_duration, parse_size

T = TypeVar("T")
Check = Callable[[Any], T]

_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    dict: "mapping",
    list: "list",
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.IGNORECASE)
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>\d{1,5}))?")
_HOST_PATTERN_HINT = "use '*', '*.example.com' or an exact host, optionally with ':port'"


def type_name(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def string(value: object) -> str:
    if isinstance(value, str):
        return value
    hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
    raise TypeError(f"expected string, got {type_name(value)}{hint}")


def nonempty_string(value: object) -> str:
    if not string(value):
        raise ValueError("must not be empty")
    return value


def optional(check: Check[T]) -> Check[T | None]:
    """`check`, but null is accepted as None."""
    return lambda value: None if value is None else check(value)


def integer(low: int, high: int | None = None) -> Check[int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected integer, got {type_name(value)}")
        _in_range(value, low, high, "")
        return value

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected boolean, got {type_name(value)}")
    return value


def number(low: float, high: float) -> Check[float]:
    """A finite int or float within [low, high], normalized to float."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected number, got {type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be finite, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
        return float(value)

    return check


def status_code(value: object) -> int:
    """An HTTP status code, 100-599."""
    return integer(100, 599)(value)


def host_header(value: object) -> str:
    """A Host header value to send: non-empty printable ASCII without spaces, kept as written."""
    text = nonempty_string(value)
    if any(not "!" <= c <= "~" for c in text):
        raise ValueError(f"invalid host {text!r}: use printable ASCII without spaces")
    return text


def duration(*, positive: bool = False) -> Check[float]:
    def check(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError("must be greater than 0")
        return seconds

    return check


def size(low: int = 0, high: int | None = None) -> Check[int]:
    def check(value: object) -> int:
        nbytes = parse_size(value)
        _in_range(nbytes, low, high, " bytes")
        return nbytes

    return check


def _in_range(value: int, low: int, high: int | None, unit: str) -> None:
    if high is None and value < low:
        raise ValueError(f"must be at least {low}{unit}, got {value}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}{unit}, got {value}")


def one_of(allowed: Collection[str]) -> Check[str]:
    def check(value: object) -> str:
        if string(value) not in allowed:
            raise ValueError(f"unsupported value {value!r} (allowed: {', '.join(allowed)})")
        return value

    return check


def object_name(value: object) -> str:
    """Names of listeners, routes and clusters; they end up in logs and metric labels."""
    if not _NAME.fullmatch(string(value)):
        raise ValueError(
            f"invalid name {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def dotted_name(value: object) -> str:
    if not _DOTTED.fullmatch(string(value)):
        raise ValueError(
            f"invalid filter name {value!r}: expected a dotted identifier "
            "like 'omnirelay.filters.http.headers'"
        )
    return value


def header_name(value: object) -> str:
    """Lowercased, since HTTP field names are case-insensitive."""
    if not _TOKEN.fullmatch(string(value)):
        raise ValueError(f"invalid header name {value!r}: must be an RFC 9110 token")
    return value.lower()


def header_value(value: object) -> str:
    # Parsers strip surrounding whitespace from field values, so such a value could never match.
    text = string(value)
    if any(not (" " <= c <= "~" or c == "\t") for c in text):
        raise ValueError(f"invalid header value {text!r}: use printable ASCII, spaces and tabs")
    if text != text.strip(" \t"):
        raise ValueError(f"invalid header value {text!r}: leading or trailing whitespace")
    return text


def via_name(value: object) -> str:
    if string(value) and not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid via name {value!r}: must be an RFC 9110 token or empty")
    return value


def http_path(value: object) -> str:
    text = string(value)
    if not text.startswith("/"):
        raise ValueError(f"invalid path {text!r}: must start with '/'")
    if any(c in "?#" or not "!" <= c <= "~" for c in text):
        raise ValueError(
            f"invalid path {text!r}: use printable ASCII without spaces, '?' or '#' "
            "(percent-encode other bytes)"
        )
    return text


def _dns_name(name: str) -> bool:
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    # An all-numeric last label would make "300.1.1.1" pass as a name; it must be real IPv4.
    return not labels[-1].isdigit() or _is_ip(name, ipaddress.IPv4Address)


def _is_ip(text: str, kind: Callable[[str], object] = ipaddress.ip_address) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def host_pattern(value: object) -> str:
    """A route host: '*', '*.suffix' or an exact host, each but '*' with an optional ':port'."""
    text = nonempty_string(value).lower()
    if text == "*":
        return text
    wildcard = text.startswith("*.")
    rest = text[2:] if wildcard else text
    if "*" in rest:
        raise ValueError(
            f"invalid host {text!r}: '*' is only allowed alone or as a leading '*.' label"
        )
    match = _HOST_PORT.fullmatch(rest)
    if not match or not match["host"]:
        raise ValueError(f"invalid host {text!r}: {_HOST_PATTERN_HINT}")
    host, port = match["host"], match["port"]
    if host.startswith("["):
        valid = not wildcard and _is_ip(host[1:-1], ipaddress.IPv6Address)
    else:
        valid = _dns_name(host)
    if not valid:
        raise ValueError(f"invalid host {text!r}: {_HOST_PATTERN_HINT}")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid host {text!r}: port must be between 1 and 65535")
    return text


def listen_address(value: object) -> str:
    text = string(value)
    if text == "localhost" or _is_ip(text):
        return text
    hint = " (write IPv6 addresses without brackets)" if text.startswith("[") else ""
    raise ValueError(f"invalid address {text!r}: expected an IP address or 'localhost'{hint}")


def endpoint_address(value: object) -> str:
    text = string(value)
    if _is_ip(text) or _dns_name(text):
        return text
    hint = " (write IPv6 addresses without brackets)" if text.startswith("[") else ""
    raise ValueError(f"invalid address {text!r}: expected an IP address or DNS name{hint}")


def timestamp(value: object) -> str:
    """RFC 3339 date-time with an offset; kept as written so signatures cover the exact text."""
    text = string(value)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(
            f"invalid timestamp {text!r}: expected RFC 3339 like '2024-05-01T12:00:00Z'"
        )
    return text
