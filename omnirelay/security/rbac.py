"""RBAC policies compiled from config into plain Python predicates (once, when the filter's
factory is built), and evaluated per request against a lazy view of the stream.

A policy matches a request when at least one of its ``permissions`` (what is asked: host,
path, method, headers) and at least one of its ``principals`` (who asks: source address,
SPIFFE ID, JWT claims, headers) match; ``and`` / ``or`` / ``not`` combine rules (Envoy's
RBAC model).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omnirelay.security.jwt import JWT_METADATA_KEY
from omnirelay.security.matchers import (
    CidrSet,
    claim_matcher,
    header_matcher,
    normalize_path,
    request_host,
    string_matcher,
)
from omnirelay.security.util import boolean, mapping, reject_unknown, string, string_list

Rule = Callable[["RequestView"], bool]


def peer_spiffe_id(stream: Any) -> str | None:
    """The downstream peer's SPIFFE ID (URI SAN of its verified client certificate on an
    mTLS listener), or None."""
    value = getattr(stream, "peer_identity", None)
    return value if isinstance(value, str) else None


class RequestView:
    """What rules look at, computed on first use and kept for the other policies."""

    __slots__ = ("_host", "_path", "_spiffe", "jwt", "stream")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        md = stream.metadata
        self.jwt: dict | None = md.get(JWT_METADATA_KEY) if isinstance(md, dict) else None
        self._path: str | None = None
        self._host: str | None = None
        self._spiffe: str | None | bool = False

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = normalize_path(self.stream.path)
        return self._path

    @property
    def host(self) -> str:
        if self._host is None:
            self._host = request_host(self.stream.authority)
        return self._host

    @property
    def spiffe_id(self) -> str | None:
        if self._spiffe is False:
            self._spiffe = peer_spiffe_id(self.stream)
        return self._spiffe  # type: ignore[return-value]

    @property
    def claims(self) -> dict | None:
        return self.jwt.get("claims") if self.jwt else None


def _one_key(cfg: Any, where: str, known: tuple[str, ...]) -> tuple[str, Any]:
    cfg = mapping(cfg, where)
    if len(cfg) != 1:
        raise ValueError(f"{where} must have exactly one of {list(known)}, got {sorted(cfg)}")
    (key, value), = cfg.items()
    if key not in known:
        raise ValueError(f"{where}: unknown rule {key!r} (known: {list(known)})")
    return key, value


def _rule_list(value: Any, where: str, compile_one: Callable[[Any, str], Rule]) -> list[Rule]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of rules")
    return [compile_one(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _combinator(key: str, value: Any, where: str, compile_one) -> Rule:
    if key == "not":
        inner = compile_one(value, where)
        return lambda rq: not inner(rq)
    rules = _rule_list(value, where, compile_one)
    if key == "and":
        return lambda rq: all(r(rq) for r in rules)
    return lambda rq: any(r(rq) for r in rules)


def _any(value: Any, where: str) -> Rule:
    if value is not True:
        raise ValueError(f"{where} must be true")
    return lambda rq: True


def _string_rule(value: Any, where: str) -> Callable[[str], bool]:
    if isinstance(value, str):
        return value.__eq__
    return string_matcher(mapping(value, where), where)


PERMISSION_RULES = ("any", "host", "path", "method", "header", "and", "or", "not")
PRINCIPAL_RULES = ("any", "source_ip", "spiffe_id", "jwt_claim", "authenticated", "header",
                   "and", "or", "not")


def compile_permission(cfg: Any, where: str) -> Rule:
    key, value = _one_key(cfg, where, PERMISSION_RULES)
    where = f"{where}.{key}"
    if key in ("and", "or", "not"):
        return _combinator(key, value, where, compile_permission)
    if key == "any":
        return _any(value, where)
    if key == "host":
        # The request's host is lowercased: so are plain (exact) names in the config.
        m = _string_rule(value.lower() if isinstance(value, str) else value, where)
        return lambda rq: m(rq.host)
    if key == "path":
        m = _string_rule(value, where)
        return lambda rq: m(rq.path)
    if key == "method":
        methods = frozenset(m.upper() for m in string_list(value, where))
        return lambda rq: rq.stream.method_name in methods
    hm = header_matcher(value, where)
    return lambda rq: hm(rq.stream.request_headers)


def compile_principal(cfg: Any, where: str) -> Rule:
    key, value = _one_key(cfg, where, PRINCIPAL_RULES)
    where = f"{where}.{key}"
    if key in ("and", "or", "not"):
        return _combinator(key, value, where, compile_principal)
    if key == "any":
        return _any(value, where)
    if key == "source_ip":
        cidrs = CidrSet(string_list(value, where), where)
        return lambda rq: rq.stream.peer in cidrs
    if key == "spiffe_id":
        v = mapping(value, where) if not isinstance(value, str) else {"exact": value}
        reject_unknown(v, ("exact", "prefix"), where)
        if len(v) != 1:
            raise ValueError(f"{where} needs exactly one of ['exact', 'prefix']")
        m = string_matcher(v, where)
        return lambda rq: (sid := rq.spiffe_id) is not None and m(sid)
    if key == "jwt_claim":
        cm = claim_matcher(mapping(value, where), where)
        return lambda rq: rq.jwt is not None and cm(rq.claims)
    if key == "authenticated":
        want = boolean(value, where)
        return lambda rq: (rq.jwt is not None) == want
    hm = header_matcher(value, where)
    return lambda rq: hm(rq.stream.request_headers)


@dataclass(frozen=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]
    principals: tuple[Rule, ...]

    def matches(self, rq: RequestView) -> bool:
        return (any(p(rq) for p in self.permissions)
                and any(p(rq) for p in self.principals))


def compile_policies(value: Any, where: str) -> tuple[Policy, ...]:
    """``{name: {permissions: [...], principals: [...]}}``, in the order given."""
    policies = mapping(value, where)
    out = []
    for name, pcfg in policies.items():
        pwhere = f"{where}.{name}"
        string(name, f"{where} key")
        pcfg = mapping(pcfg, pwhere)
        reject_unknown(pcfg, ("permissions", "principals"), pwhere)
        for k in ("permissions", "principals"):
            if k not in pcfg:
                raise ValueError(f"{pwhere}.{k} is required (use [{{any: true}}] for everything)")
        out.append(Policy(
            name,
            tuple(_rule_list(pcfg["permissions"], f"{pwhere}.permissions", compile_permission)),
            tuple(_rule_list(pcfg["principals"], f"{pwhere}.principals", compile_principal))))
    return tuple(out)


def first_match(policies: tuple[Policy, ...], rq: RequestView) -> str | None:
    for p in policies:
        if p.matches(rq):
            return p.name
    return None
