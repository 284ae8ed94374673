"""omnirelay.filters.http.jwt_authn: verify JWT bearer tokens (Envoy's jwt_authn filter).

config::

    providers:
      <name>:
        issuer: https://idp.example.com        # required; the token's iss must equal it
        audiences: [api]                       # optional; the token's aud must contain one
        algorithms: [RS256, ES256, EdDSA]      # optional; default: every supported one
        clock_skew: 60s                        # tolerance on exp / nbf
        require_expiration: true               # refuse tokens without exp
        local_jwks: {file: /etc/keys/jwks.json, check_interval: 1s}   # or {inline: "..."}
        remote_jwks:                           # or: fetched through a cluster
          cluster: idp
          uri: https://idp.example.com/.well-known/jwks.json
          timeout: 2s
          refresh_interval: 10m
          stale_ttl: 1h
          min_refetch_interval: 30s
    rules:                                     # first matching prefix wins
      - {prefix: /healthz, require: skip}
      - {prefix: /api/, require: required, providers: [idp]}
      - {prefix: /, require: optional}
    token: {headers: [{name: authorization, prefix: "Bearer "}], query_params: []}
    strip_token: false
    forward_payload_header: x-jwt-payload
    realm: omnirelay
    cache_size: 1024                           # verified tokens remembered (0: none)

Claims of a verified token are in ``stream.metadata["omnirelay.jwt_authn"]`` (a dict:
provider, issuer, claims) for the filters after this one (RBAC). Refusals are 401 with
``WWW-Authenticate: Bearer realm="...", error="invalid_token", error_description="..."``
(no ``error`` when the token is missing, RFC 6750 3.1). See docs/filters.md.

Signature checks run synchronously (tens of microseconds); key fetches never do: a request
that needs keys not fetched yet STOPs and is resumed (or refused) when the shared fetch ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from urllib.parse import unquote_plus

from omnirelay.filters.base import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import register
from omnirelay.security.jwks import LocalJwks, LocalJwksConfig, RemoteJwks, RemoteJwksConfig
from omnirelay.security.jwt import (
    FORBIDDEN_ALGORITHMS,
    JWT_METADATA_KEY,
    SUPPORTED_ALGORITHMS,
    JwtError,
    Token,
    check_algorithm,
    check_claims,
    decode,
    verify_signature,
)
from omnirelay.security.matchers import normalize_path
from omnirelay.security.upstream import HttpUri
from omnirelay.security.util import (
    Counters,
    LogLimiter,
    boolean,
    duration,
    header_name,
    mapping,
    reject_unknown,
    string,
    string_list,
)

NAME = "omnirelay.filters.http.jwt_authn"
METADATA_KEY = JWT_METADATA_KEY

SKIP, OPTIONAL, REQUIRED = "skip", "optional", "required"

_KEYS = ("cache_size", "forward_payload_header", "providers", "realm", "rules", "strip_token",
         "token")
# Tokens longer than this are verified every time, never cached (bounds the cache's memory).
CACHE_MAX_TOKEN = 4096
_PROVIDER_KEYS = ("algorithms", "audiences", "clock_skew", "issuer", "local_jwks",
                  "remote_jwks", "require_expiration")
_LOCAL_KEYS = ("check_interval", "file", "inline")
_REMOTE_KEYS = ("cluster", "min_refetch_interval", "refresh_interval", "stale_ttl",
                "timeout", "uri")
_RULE_KEYS = ("prefix", "providers", "require")
_TOKEN_KEYS = ("headers", "query_params")

log = logging.getLogger("omnirelay.filters.jwt_authn")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    issuer: str
    audiences: frozenset[str]
    algorithms: frozenset[str]
    clock_skew: float
    require_expiration: bool
    local: LocalJwksConfig | None
    remote: RemoteJwksConfig | None


@dataclass(frozen=True)
class Rule:
    prefix: str
    require: str
    providers: frozenset[str] | None     # None: any provider


@dataclass(frozen=True)
class JwtAuthnConfig:
    providers: tuple[ProviderConfig, ...]
    rules: tuple[Rule, ...]
    headers: tuple[tuple[str, str], ...]          # (lowercase name, prefix)
    query_params: tuple[str, ...]
    strip_token: bool
    forward_payload_header: str | None
    realm: str
    cache_size: int = 1024


def _parse_local(value, where: str) -> LocalJwksConfig:
    cfg = mapping(value, where)
    reject_unknown(cfg, _LOCAL_KEYS, where)
    if ("file" in cfg) == ("inline" in cfg):
        raise ValueError(f"{where} needs exactly one of file, inline")
    check = duration(cfg.get("check_interval", 1.0), f"{where}.check_interval")
    if "file" in cfg:
        return LocalJwksConfig(file=string(cfg["file"], f"{where}.file"), check_interval=check)
    inline = cfg["inline"]
    if isinstance(inline, dict):
        inline = json.dumps(inline)
    return LocalJwksConfig(inline=string(inline, f"{where}.inline"), check_interval=check)


def _parse_remote(value, where: str) -> RemoteJwksConfig:
    cfg = mapping(value, where)
    reject_unknown(cfg, _REMOTE_KEYS, where)
    for k in ("cluster", "uri"):
        if k not in cfg:
            raise ValueError(f"{where}.{k} is required")
    return RemoteJwksConfig(
        cluster=string(cfg["cluster"], f"{where}.cluster"),
        uri=HttpUri.parse(string(cfg["uri"], f"{where}.uri"), f"{where}.uri"),
        timeout=duration(cfg.get("timeout", 2.0), f"{where}.timeout", positive=True),
        refresh_interval=duration(cfg.get("refresh_interval", 600.0),
                                  f"{where}.refresh_interval", positive=True),
        stale_ttl=duration(cfg.get("stale_ttl", 3600.0), f"{where}.stale_ttl"),
        min_refetch_interval=duration(cfg.get("min_refetch_interval", 30.0),
                                      f"{where}.min_refetch_interval"))


def _parse_provider(name, value, where: str) -> ProviderConfig:
    string(name, "providers key")
    cfg = mapping(value, where)
    reject_unknown(cfg, _PROVIDER_KEYS, where)
    if "issuer" not in cfg:
        raise ValueError(f"{where}.issuer is required")
    if ("local_jwks" in cfg) == ("remote_jwks" in cfg):
        raise ValueError(f"{where} needs exactly one of local_jwks, remote_jwks")
    algs = string_list(cfg.get("algorithms", list(SUPPORTED_ALGORITHMS)), f"{where}.algorithms")
    for a in algs:
        if a in FORBIDDEN_ALGORITHMS or a.upper() in FORBIDDEN_ALGORITHMS:
            raise ValueError(f"{where}.algorithms: {a!r} is never accepted (only asymmetric "
                             f"signatures: {list(SUPPORTED_ALGORITHMS)})")
        if a not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"{where}.algorithms: unsupported {a!r} "
                             f"(supported: {list(SUPPORTED_ALGORITHMS)})")
    return ProviderConfig(
        name=name,
        issuer=string(cfg["issuer"], f"{where}.issuer"),
        audiences=frozenset(string_list(cfg.get("audiences", []), f"{where}.audiences",
                                        empty=True)),
        algorithms=frozenset(algs),
        clock_skew=duration(cfg.get("clock_skew", 60.0), f"{where}.clock_skew"),
        require_expiration=boolean(cfg.get("require_expiration", True),
                                   f"{where}.require_expiration"),
        local=_parse_local(cfg["local_jwks"], f"{where}.local_jwks") if "local_jwks" in cfg
        else None,
        remote=_parse_remote(cfg["remote_jwks"], f"{where}.remote_jwks") if "remote_jwks" in cfg
        else None)


def _parse_rules(value, providers: set[str]) -> tuple[Rule, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("rules must be a non-empty list")
    rules = []
    for i, r in enumerate(value):
        where = f"rules[{i}]"
        r = mapping(r, where)
        reject_unknown(r, _RULE_KEYS, where)
        if "prefix" not in r:
            raise ValueError(f"{where}.prefix is required")
        prefix = string(r["prefix"], f"{where}.prefix")
        if not prefix.startswith("/"):
            raise ValueError(f"{where}.prefix must start with '/', got {prefix!r}")
        require = r.get("require", REQUIRED)
        if require not in (SKIP, OPTIONAL, REQUIRED):
            raise ValueError(f"{where}.require must be one of required, optional, skip; "
                             f"got {require!r}")
        names = None
        if "providers" in r:
            names = frozenset(string_list(r["providers"], f"{where}.providers"))
            unknown = sorted(names - providers)
            if unknown:
                raise ValueError(f"{where}.providers: unknown providers {unknown} "
                                 f"(known: {sorted(providers)})")
        rules.append(Rule(prefix, require, names))
    return tuple(rules)


def _parse_token(value) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    cfg = mapping(value, "token")
    reject_unknown(cfg, _TOKEN_KEYS, "token")
    headers = []
    raw_headers = cfg.get("headers", [])
    if not isinstance(raw_headers, list):
        raise TypeError("token.headers must be a list")
    for i, h in enumerate(raw_headers):
        where = f"token.headers[{i}]"
        if isinstance(h, str):
            h = {"name": h}
        h = mapping(h, where)
        reject_unknown(h, ("name", "prefix"), where)
        if "name" not in h:
            raise ValueError(f"{where}.name is required")
        headers.append((header_name(h["name"], f"{where}.name"),
                        string(h.get("prefix", ""), f"{where}.prefix", empty=True)))
    params = string_list(cfg.get("query_params", []), "token.query_params", empty=True)
    if not headers and not params:
        raise ValueError("token: give at least one header or query parameter")
    return tuple(headers), params


def parse_config(config) -> JwtAuthnConfig:
    if config is None:
        config = {}
    config = mapping(config, "config")
    reject_unknown(config, _KEYS, "")
    if "providers" not in config:
        raise ValueError("providers is required (a mapping of provider name to settings)")
    pmap = mapping(config["providers"], "providers")
    if not pmap:
        raise ValueError("providers must not be empty")
    providers = tuple(_parse_provider(n, v, f"providers.{n}") for n, v in pmap.items())
    issuers: dict[str, str] = {}
    for p in providers:
        if p.issuer in issuers:
            raise ValueError(f"providers.{p.name}.issuer: {p.issuer!r} is also the issuer of "
                             f"provider {issuers[p.issuer]!r} (tokens pick their provider by iss)")
        issuers[p.issuer] = p.name
    names = {p.name for p in providers}
    rules = (_parse_rules(config["rules"], names) if "rules" in config
             else (Rule("/", REQUIRED, None),))
    headers, params = (_parse_token(config["token"]) if "token" in config
                       else ((("authorization", "Bearer "),), ()))
    payload_header = config.get("forward_payload_header")
    if payload_header is not None:
        payload_header = header_name(payload_header, "forward_payload_header")
    realm = string(config.get("realm", "omnirelay"), "realm")
    if any(c in realm for c in '"\\\r\n\0') or not realm.isprintable():
        raise ValueError(f"realm must not contain quotes, backslashes or control characters, "
                         f"got {realm!r}")
    cache_size = config.get("cache_size", 1024)
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise ValueError(f"cache_size must be an integer >= 0, got {cache_size!r}")
    return JwtAuthnConfig(providers, rules, headers, params,
                          boolean(config.get("strip_token", False), "strip_token"),
                          payload_header, realm, cache_size)


# --------------------------------------------------------------------------- shared state

# Key sources by (binding, provider config): a reload that keeps a provider unchanged keeps
# its cached keys (no refetch); freed once no loaded config uses them.
_SOURCES: weakref.WeakValueDictionary[tuple, LocalJwks | RemoteJwks] = (
    weakref.WeakValueDictionary())
# Counters by binding, kept for the life of the process (totals never go backwards).
_COUNTERS: dict[str, Counters] = {}


def stats() -> dict[str, dict[str, int]]:
    """Counters of every jwt_authn filter entry, by binding (``spec.routes[0].filters[0]``):
    allowed, missing, denied_<code>, jwks_fetch, jwks_fetch_failed, ..."""
    return {b: c.snapshot() for b, c in sorted(_COUNTERS.items())}


class Provider:
    __slots__ = ("cfg", "name", "source")

    def __init__(self, cfg: ProviderConfig, source: LocalJwks | RemoteJwks) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.source = source


def _source(cfg: ProviderConfig, binding: str, counters: Counters) -> LocalJwks | RemoteJwks:
    where = f"{binding or NAME}: provider {cfg.name}"
    jwks_cfg = cfg.local or cfg.remote
    key = (binding, cfg.name, jwks_cfg)
    src = _SOURCES.get(key) if binding else None
    if src is None:
        src = (LocalJwks(cfg.local, where) if cfg.local is not None
               else RemoteJwks(cfg.remote, where, counters))  # type: ignore[arg-type]
        if binding:
            _SOURCES[key] = src
    return src


# --------------------------------------------------------------------------- filter


class JwtAuthnFilter(HttpFilter):
    __slots__ = ("f", "task")

    def __init__(self, factory: JwtAuthnFactory) -> None:
        self.f = factory
        self.task: asyncio.Task | None = None

    def on_request_headers(self, stream, end_stream):
        f = self.f
        headers = stream.request_headers
        if f.payload_header is not None:
            # Only the proxy may set it: a client-supplied one never reaches the upstream.
            headers.remove(f.payload_header)
        rule = f.rule_for(stream.path)
        if rule.require == SKIP:
            return CONTINUE
        found = f.find_tokens(stream)
        if not found:
            if rule.require == REQUIRED:
                f.counters.inc("missing")
                return f.missing_reply()
            return CONTINUE
        if len(found) > 1:
            f.counters.inc("denied_multiple_tokens")
            return f.refuse("invalid_request", "more than one token", 400, "jwt_bad_request")
        where, raw = found[0]
        try:
            hit = f.cache.get(raw) if f.cache_size else None
            if hit is not None and f.cached_ok(hit, rule):
                f.check(hit[2], hit[0])
                f.accept(stream, hit[2], hit[0], where)
                return CONTINUE
            token = decode(raw)
            provider = f.provider_for(token, rule)
            check_algorithm(token, provider.cfg.algorithms)
            return f.verify(stream, token, provider, where, self, allow_wait=True)
        except JwtError as e:
            return f.refuse_error(e)

    def wait(self, stream, fetch: asyncio.Task, token: Token, provider: Provider,
             where: tuple[str, str]) -> int:
        self.task = asyncio.get_running_loop().create_task(
            self._after_fetch(stream, fetch, token, provider, where))
        return STOP

    async def _after_fetch(self, stream, fetch, token, provider, where) -> None:
        with contextlib.suppress(Exception):   # the fetch logs its own failures
            await asyncio.shield(fetch)
        f = self.f
        try:
            try:
                r = f.verify(stream, token, provider, where, self, allow_wait=False)
            except JwtError as e:
                r = f.refuse_error(e)
            if r is CONTINUE:
                stream.resume()
            else:
                stream.reply(r.status, r.body, r.headers, r.reason)
        except Exception:
            log.exception("jwt_authn: completing a request after a key fetch failed")
            try:
                stream.reply(500, b"filter failure\n", reason="filter_failure")
            except Exception:
                log.exception("jwt_authn: could not answer the request")
        finally:
            self.task = None


@register(NAME)
class JwtAuthnFactory(FilterFactory):
    filter_class = JwtAuthnFilter

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        cfg: JwtAuthnConfig = self.config
        if binding:
            self.counters = _COUNTERS.setdefault(binding, Counters())
        else:
            self.counters = Counters()
        self.providers = {p.name: Provider(p, _source(p, binding, self.counters))
                          for p in cfg.providers}
        self.by_issuer = {p.cfg.issuer: p for p in self.providers.values()}
        self.rules = cfg.rules
        self.headers = cfg.headers
        self.query_params = cfg.query_params
        self.payload_header = cfg.forward_payload_header
        self.strip = cfg.strip_token
        self.realm = cfg.realm
        # Verified tokens: raw token -> (provider, key set that verified it, Token); oldest
        # evicted first. Per factory: a reload starts empty.
        self.cache_size = cfg.cache_size
        self.cache: dict[str, tuple[Provider, object, Token]] = {}
        self._missing_header = f'Bearer realm="{cfg.realm}"'
        self.log = LogLimiter(log)

    def parse_config(self, config):
        return parse_config(config)

    def create(self):
        return JwtAuthnFilter(self)

    # ---- request path ----
    def rule_for(self, target: str) -> Rule:
        path = normalize_path(target)
        for r in self.rules:
            if path.startswith(r.prefix):
                return r
        return _FAIL_CLOSED

    def find_tokens(self, stream) -> list[tuple[tuple[str, str], str]]:
        """[((kind, name), token)] for every place a token was found."""
        found = []
        headers = stream.request_headers
        for name, prefix in self.headers:
            if name not in headers:
                continue
            for value in headers.getall(name):
                if prefix:
                    if len(value) < len(prefix) or value[:len(prefix)].lower() != prefix.lower():
                        continue          # another scheme (e.g. Basic): not ours
                    value = value[len(prefix):]
                found.append((("header", name), value.strip()))
        if self.query_params:
            target = stream.path
            q = target.find("?")
            if q >= 0:
                for pair in target[q + 1:].split("&"):
                    k, _, v = pair.partition("=")
                    k = unquote_plus(k)
                    if k in self.query_params:
                        found.append((("query", k), unquote_plus(v)))
        return found

    def provider_for(self, token: Token, rule: Rule) -> Provider:
        iss = token.claims.get("iss")
        provider = self.by_issuer.get(iss) if isinstance(iss, str) else None
        if provider is None or (rule.providers is not None and provider.name not in rule.providers):
            raise JwtError("bad_issuer", "issuer not allowed")
        return provider

    def verify(self, stream, token: Token, provider: Provider, where, flt: JwtAuthnFilter,
               allow_wait: bool):
        """CONTINUE, a LocalReply, or (allow_wait) STOP with a fetch to wait for; raises
        JwtError for a refused token."""
        source = provider.source
        now = time.monotonic()
        keys = source.current(now)
        if keys is None:
            fetch = source.wait_task(now) if allow_wait else None
            if fetch is not None:
                return flt.wait(stream, fetch, token, provider, where)
            self.counters.inc("denied_jwks_unavailable")
            self.log(logging.WARNING, "jwt_authn %s: no signing keys for provider %s",
                     self.binding, provider.name)
            return self.refuse("invalid_token", "signing keys unavailable", 401,
                               "jwks_unavailable")
        try:
            verify_signature(token, keys)
        except JwtError as e:
            if e.code == "unknown_kid" and allow_wait:
                fetch = source.refetch_task(now)
                if fetch is not None:
                    return flt.wait(stream, fetch, token, provider, where)
            raise
        self.check(token, provider)
        if self.cache_size and len(token.raw) <= CACHE_MAX_TOKEN:
            cache = self.cache
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]          # the oldest entry
            cache[token.raw] = (provider, keys, token)
        self.accept(stream, token, provider, where)
        return CONTINUE

    def check(self, token: Token, provider: Provider) -> None:
        cfg = provider.cfg
        check_claims(token.claims, issuer=cfg.issuer, audiences=cfg.audiences, now=time.time(),
                     clock_skew=cfg.clock_skew, require_exp=cfg.require_expiration)

    def cached_ok(self, hit: tuple, rule: Rule) -> bool:
        """A token verified before may skip decoding and the signature check if the rule
        accepts its provider and the provider's keys are still the ones that verified it
        (any key change, reload or refresh, verifies again). Claims are checked anyway."""
        provider, keys, _ = hit
        if rule.providers is not None and provider.name not in rule.providers:
            return False
        return provider.source.current(time.monotonic()) is keys

    def accept(self, stream, token: Token, provider: Provider, where) -> None:
        md = stream.metadata
        if not isinstance(md, dict):
            md = {}
            stream.metadata = md
        md[METADATA_KEY] = {"provider": provider.name, "issuer": provider.cfg.issuer,
                            "claims": token.claims}
        headers = stream.request_headers
        if self.payload_header is not None:
            headers.set(self.payload_header, token.payload_segment)
        if self.strip:
            kind, name = where
            if kind == "header":
                headers.remove(name)
            else:
                stream.target = _strip_query_param(stream.target, name)
        self.counters.inc("allowed")

    # ---- replies ----
    def missing_reply(self) -> LocalReply:
        return LocalReply(401, b"bearer token required\n",
                          headers=[("www-authenticate", self._missing_header)],
                          reason="jwt_missing")

    def refuse(self, error: str, description: str, status: int = 401,
               reason: str = "jwt_invalid") -> LocalReply:
        value = (f'Bearer realm="{self.realm}", error="{error}", '
                 f'error_description="{description}"')
        return LocalReply(status, f"{description}\n", headers=[("www-authenticate", value)],
                          reason=reason)

    def refuse_error(self, e: JwtError) -> LocalReply:
        self.counters.inc(f"denied_{e.code}")
        self.log(logging.INFO, "jwt_authn %s: token refused: %s", self.binding, e.description)
        return self.refuse("invalid_token", e.description)


_FAIL_CLOSED = Rule("/", REQUIRED, None)


def _strip_query_param(target: bytes, name: str) -> bytes:
    text = target.decode("latin-1")
    path, q, query = text.partition("?")
    if not q:
        return target
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != name]
    return (path + ("?" + "&".join(kept) if kept else "")).encode("latin-1")
