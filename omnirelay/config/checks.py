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

from .model import ACCESS_LOG_FIELDS
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
_AUTHORITY_HINT = "expected a DNS name or an IP address (IPv6 in brackets), optionally with ':port'"

# Headers the proxy manages itself: hop-by-hop fields (RFC 9110 section 7.6.1) and message
# framing. Header edits may not touch them; the upstream Host is changed with `rewrite`.
MANAGED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


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


def number(low: float, high: float | None = None) -> Check[float]:
    """A finite int or float within [low, high] (no upper bound if None), as a float."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected number, got {type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be finite, got {value!r}")
        if high is None and value < low:
            raise ValueError(f"must be at least {low:g}, got {value!r}")
        if high is not None and not low <= value <= high:
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


def int_one_of(allowed: Collection[int]) -> Check[int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected integer, got {type_name(value)}")
        if value not in allowed:
            raise ValueError(
                f"unsupported value {value!r} (allowed: {', '.join(map(str, allowed))})"
            )
        return value

    return check


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


def edited_header_name(*, request: bool) -> Check[str]:
    """A header name that request (or response) header edits may touch: not one the proxy
    manages itself (hop-by-hop and message framing), lowercased."""

    def check(value: object) -> str:
        name = header_name(value)
        if name == "host" and request:
            raise ValueError(
                "cannot edit 'host' here: change the upstream Host with rewrite.host or "
                "rewrite.auto_host"
            )
        if name in MANAGED_HEADERS:
            raise ValueError(
                f"cannot edit {name!r}: hop-by-hop and framing headers are managed by the proxy"
            )
        return name

    return check


def present(hint: str = "") -> Check[bool]:
    """`present: true`; false has no meaning of its own and is rejected with `hint`."""

    def check(value: object) -> bool:
        if not boolean(value):
            raise ValueError(f"only true is accepted{hint}")
        return value

    return check


def method(value: object) -> str:
    """An HTTP method: an RFC 9110 token, written in upper case since methods are
    case-sensitive ("get" is a different, unknown method)."""
    text = string(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"invalid method {text!r}: must be an RFC 9110 token")
    if text != text.upper():
        raise ValueError(
            f"invalid method {text!r}: methods are case-sensitive, write {text.upper()!r}"
        )
    return text


def regex(value: object) -> str:
    """A Python `re` pattern, kept as written once it compiles."""
    text = nonempty_string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regex {text!r}: {exc}") from None
    return text


def substitution(pattern: str, template: object) -> str:
    """An `re.sub` template valid for `pattern`: escapes and group references must resolve."""
    text = string(template)
    try:
        re.compile(pattern).sub(text, "")  # the template is parsed before any matching
    except (re.error, IndexError) as exc:  # IndexError: unknown group name
        raise ValueError(f"invalid substitution {text!r}: {exc}") from None
    return text


ADMIN_TOKEN_MIN = 16


def admin_token(value: object) -> str:
    """A bearer token: printable ASCII without spaces, long enough not to be guessed."""
    text = string(value)
    if any(not "!" <= c <= "~" for c in text):
        raise ValueError("invalid token: use printable ASCII without spaces")
    if not ADMIN_TOKEN_MIN <= len(text) <= 1024:
        raise ValueError(
            f"token must be {ADMIN_TOKEN_MIN} to 1024 characters long, got {len(text)}"
        )
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


def _uri_host(host: str) -> bool:
    """A host as written in a URL: a DNS name, an IPv4 address or a bracketed IPv6 address."""
    if host.startswith("["):
        return _is_ip(host[1:-1], ipaddress.IPv6Address)
    return _dns_name(host)


def authority(value: object) -> str:
    """host[:port] as sent in a Host header (IPv6 in brackets), lowercased."""
    text = nonempty_string(value)
    match = _HOST_PORT.fullmatch(text.lower())
    if not match or not match["host"] or not _uri_host(match["host"]):
        raise ValueError(f"invalid host {text!r}: {_AUTHORITY_HINT}")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"invalid host {text!r}: port must be between 1 and 65535")
    return text.lower()


def uri_host(value: object) -> str:
    """A host without a port, as in a URL (IPv6 in brackets), lowercased."""
    text = nonempty_string(value)
    match = _HOST_PORT.fullmatch(text.lower())
    if match and match["host"] and _uri_host(match["host"]) and match["port"] is not None:
        raise ValueError(f"invalid host {text!r}: give the port in 'port', not in 'host'")
    if not match or not match["host"] or not _uri_host(match["host"]):
        raise ValueError(
            f"invalid host {text!r}: expected a DNS name or an IP address (IPv6 in brackets)"
        )
    return text.lower()


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


def server_name(value: object) -> str:
    """An SNI server name to route on: '*', '*.suffix' or an exact DNS name, lowercased.

    SNI carries DNS names only (RFC 6066 section 3): no IP addresses, ports or trailing dot.
    """
    text = nonempty_string(value).lower()
    if text == "*":
        return text
    rest = text.removeprefix("*.")
    if "*" in rest:
        raise ValueError(
            f"invalid server name {text!r}: '*' is only allowed alone or as a leading '*.' label"
        )
    if _is_ip(rest) or _is_ip(rest.strip("[]"), ipaddress.IPv6Address):
        raise ValueError(f"invalid server name {text!r}: SNI carries DNS names, not IP addresses")
    if not _dns_name(rest):
        raise ValueError(
            f"invalid server name {text!r}: use '*', '*.example.com' or an exact DNS name "
            "(no port, no trailing dot)"
        )
    return text


def spiffe_id(value: object) -> str:
    """A SPIFFE ID: spiffe://<trust domain>/<path> (the trust domain lowercase, no port)."""
    text = nonempty_string(value)
    scheme, sep, rest = text.partition("://")
    domain, _, id_path = rest.partition("/")
    if scheme != "spiffe" or not sep or not domain or not _dns_name(domain) or ":" in domain:
        raise ValueError(
            f"invalid SPIFFE ID {text!r}: use spiffe://<trust-domain>/<path>, "
            "e.g. spiffe://example.org/ns/prod/sa/payments"
        )
    if domain != domain.lower():
        raise ValueError(f"invalid SPIFFE ID {text!r}: the trust domain must be lowercase")
    if not id_path or any(seg in ("", ".", "..") for seg in id_path.split("/")):
        raise ValueError(f"invalid SPIFFE ID {text!r}: the path needs non-empty segments")
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


def access_log_template(value: object) -> str:
    """A text access-log template: %FIELD% tokens naming access-log fields (any case);
    "%%" is a literal percent sign."""
    text = nonempty_string(value)
    parts = text.split("%")
    if len(parts) % 2 == 0:
        raise ValueError("unbalanced '%' (write %% for a literal percent sign)")
    for token in parts[1::2]:
        if token and token.lower() not in ACCESS_LOG_FIELDS:
            raise ValueError(
                f"unknown field %{token}% (known: {', '.join(ACCESS_LOG_FIELDS)})"
            )
    return text
