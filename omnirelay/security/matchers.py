"""Matchers compiled once from config for the security filters: request paths (normalized
the way an origin resolves them), strings, headers, source CIDRs and JWT claims."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from omnirelay.security.util import boolean, header_name, mapping, reject_unknown, string

_UNRESERVED_PCT = re.compile(r"%(2[DdEe]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")


def request_host(authority: str | None) -> str:
    """The request's host for security decisions: lowercase, without the port (an IPv6
    literal keeps its brackets)."""
    h = (authority or "").lower()
    if h.startswith("["):
        return h[:h.find("]") + 1] if "]" in h else h
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


def normalize_path(target: str) -> str:
    """The path of a request target (query dropped) as the origin will resolve it, for
    security decisions: percent-encoded unreserved characters decoded (``%2e`` is ``.``),
    backslashes as slashes, repeated slashes merged and dot segments removed (RFC 3986
    5.2.4). ``/public/../admin`` and ``/public/%2e%2e/admin`` are ``/admin``. Encoded
    slashes (``%2F``) stay encoded. The request itself is forwarded unchanged."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        # absolute-form targets were turned into origin form by the core; "*" and others
        path = "/" + path
    if "%" not in path and "\\" not in path and "/." not in path and "//" not in path:
        return path
    if "%" in path:
        path = _UNRESERVED_PCT.sub(lambda m: unquote(m.group(0)), path)
    path = path.replace("\\", "/")
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    result = "/" + "/".join(out)
    if segments[-1] in ("", ".", "..") and result != "/":
        result += "/"
    return result


# --------------------------------------------------------------------------- strings

StringMatch = Callable[[str], bool]
_STRING_KINDS = ("exact", "prefix", "suffix", "contains", "regex")


def string_matcher(cfg: dict, where: str, extra: tuple[str, ...] = ()) -> StringMatch:
    """One of ``exact``/``prefix``/``suffix``/``contains``/``regex`` (full match), with
    optional ``ignore_case``."""
    reject_unknown(cfg, (*_STRING_KINDS, "ignore_case", *extra), where)
    kinds = [k for k in _STRING_KINDS if k in cfg]
    if len(kinds) != 1:
        raise ValueError(f"{where} needs exactly one of {list(_STRING_KINDS)}"
                         + (f" (got {kinds})" if kinds else ""))
    kind = kinds[0]
    ignore_case = boolean(cfg.get("ignore_case", False), f"{where}.ignore_case")
    value = string(cfg[kind], f"{where}.{kind}", empty=kind == "exact")
    if kind == "regex":
        try:
            rx = re.compile(value, re.IGNORECASE if ignore_case else 0)
        except re.error as e:
            raise ValueError(f"{where}.regex: invalid regular expression: {e}") from None
        return lambda s: rx.fullmatch(s) is not None
    if ignore_case:
        value = value.lower()
        base = literal_match(kind, value)
        return lambda s: base(s.lower())
    return literal_match(kind, value)


def literal_match(kind: str, value: str) -> StringMatch:
    """A test of a string against `value`: exact, prefix, suffix or (else) contains."""
    if kind == "exact":
        return value.__eq__
    if kind == "prefix":
        return lambda s: s.startswith(value)
    if kind == "suffix":
        return lambda s: s.endswith(value)
    return lambda s: value in s


# --------------------------------------------------------------------------- headers


def header_matcher(cfg: Any, where: str) -> Callable[[Any], bool]:
    """``{name, exact|prefix|suffix|contains|regex|present: true, ignore_case, invert}`` on
    a HeaderMap. Several headers of one name are matched as their values joined by ","
    (like Envoy); ``present: false`` matches when the header is absent."""
    cfg = mapping(cfg, where)
    if "name" not in cfg:
        raise ValueError(f"{where}.name is required")
    name = header_name(cfg["name"], f"{where}.name")
    invert = boolean(cfg.get("invert", False), f"{where}.invert")
    rest = {k: v for k, v in cfg.items() if k not in ("name", "invert")}
    if "present" in rest:
        reject_unknown(rest, ("present",), where)
        present = boolean(rest["present"], f"{where}.present")

        def match(headers: Any) -> bool:
            return ((name in headers) == present) != invert
        return match
    value_match = string_matcher(rest, where)

    def match_value(headers: Any) -> bool:
        values = headers.getall(name)
        if not values:
            return invert
        return value_match(",".join(values) if len(values) > 1 else values[0]) != invert
    return match_value


# --------------------------------------------------------------------------- addresses


class CidrSet:
    """Source-address ranges; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is matched as
    IPv4. A peer that is not an IP address (a Unix socket, "unknown") matches nothing."""

    __slots__ = ("v4", "v6")

    def __init__(self, cidrs: tuple[str, ...], where: str) -> None:
        v4, v6 = [], []
        for i, c in enumerate(cidrs):
            try:
                net = ipaddress.ip_network(c, strict=False)
            except ValueError as e:
                raise ValueError(f"{where}[{i}]: invalid CIDR {c!r}: {e}") from None
            (v4 if net.version == 4 else v6).append(net)
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def __contains__(self, addr: str | None) -> bool:
        ip = parse_ip(addr)
        if ip is None:
            return False
        nets = self.v4 if ip.version == 4 else self.v6
        return any(ip in n for n in nets)


def parse_ip(addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
        return ip.ipv4_mapped  # type: ignore[union-attr]
    return ip


# --------------------------------------------------------------------------- claims


def claim_path(value: Any, where: str) -> tuple[str, ...]:
    """``claim: sub`` (one top-level claim, dots included: ``https://example.com/roles``)
    or ``claim: [realm_access, roles]`` (a path into nested objects)."""
    if isinstance(value, str):
        return (string(value, where),)
    if isinstance(value, list) and value:
        return tuple(string(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} must be a claim name or a non-empty list of names")


def lookup_claim(claims: dict | None, path: tuple[str, ...]) -> Any:
    value: Any = claims
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def claim_matcher(cfg: dict, where: str) -> Callable[[dict | None], bool]:
    """``{claim, exact|prefix|suffix|contains|regex|present, ignore_case}``. A string claim
    is matched as is; a list claim matches when one of its string elements does; ``exact``
    may also be a boolean or a number, compared with the claim's JSON value (type included).
    A missing claim matches only ``present: false``."""
    if "claim" not in cfg:
        raise ValueError(f"{where}.claim is required")
    path = claim_path(cfg["claim"], f"{where}.claim")
    rest = {k: v for k, v in cfg.items() if k != "claim"}
    if "present" in rest:
        reject_unknown(rest, ("present",), where)
        present = boolean(rest["present"], f"{where}.present")
        return lambda claims: (lookup_claim(claims, path) is not None) == present
    exact = rest.get("exact")
    if isinstance(exact, bool | int | float) and len(rest) == 1:
        want_type = bool if isinstance(exact, bool) else (int, float)

        def match_scalar(claims: dict | None) -> bool:
            v = lookup_claim(claims, path)
            items = v if isinstance(v, list) else [v]
            return any(isinstance(x, want_type) and (isinstance(x, bool) == isinstance(exact, bool))
                       and x == exact for x in items)
        return match_scalar
    smatch = string_matcher(rest, where)

    def match(claims: dict | None) -> bool:
        v = lookup_claim(claims, path)
        if isinstance(v, str):
            return smatch(v)
        if isinstance(v, list):
            return any(isinstance(x, str) and smatch(x) for x in v)
        return False
    return match
