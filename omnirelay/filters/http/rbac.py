"""omnirelay.filters.http.rbac: allow or deny requests by policy (Envoy's RBAC filter).

config::

    action: ALLOW            # ALLOW: deny unless a policy matches; DENY: deny if one matches
    shadow: false            # true: evaluate, log and count, never block
    policies:
      <name>:
        permissions: [...]   # what: any, host, path, method, header, and/or/not
        principals: [...]    # who: any, source_ip, spiffe_id, jwt_claim, authenticated,
                             #      header, and/or/not

Policies are compiled when the factory is built; a request is checked in its request-headers
hook. A denied request gets ``403`` with ``x-omnirelay-reason: rbac_denied``; the log line
names the policy (DENY) or says that none matched (ALLOW). JWT principals read the claims
that ``omnirelay.filters.http.jwt_authn`` stored in ``stream.metadata`` (so list that filter
first). The decision is stored in ``stream.metadata["omnirelay.rbac"]``:
``{"allowed": bool, "policy": name or None, "shadow": bool}``. See docs/filters.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from omnirelay.filters.base import CONTINUE, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import register
from omnirelay.security.rbac import Policy, RequestView, compile_policies, first_match
from omnirelay.security.util import Counters, LogLimiter, boolean, mapping, reject_unknown

NAME = "omnirelay.filters.http.rbac"
METADATA_KEY = "omnirelay.rbac"
REASON = "rbac_denied"
BODY = b"RBAC: access denied\n"
_KEYS = ("action", "policies", "shadow")

log = logging.getLogger("omnirelay.filters.rbac")

# Counters by binding (allowed, denied, shadow_allowed, shadow_denied, policy.<name>),
# kept for the life of the process.
_COUNTERS: dict[str, Counters] = {}


def stats() -> dict[str, dict[str, int]]:
    """Counters of every rbac filter entry, by binding (``spec.routes[0].filters[1]``)."""
    return {b: c.snapshot() for b, c in sorted(_COUNTERS.items())}


@dataclass(frozen=True)
class RbacConfig:
    allow: bool                      # action ALLOW (True) or DENY (False)
    shadow: bool
    policies: tuple[Policy, ...]


def parse_config(config) -> RbacConfig:
    if config is None:
        config = {}
    config = mapping(config, "config")
    reject_unknown(config, _KEYS, "")
    action = config.get("action", "ALLOW")
    if not isinstance(action, str) or action.upper() not in ("ALLOW", "DENY"):
        raise ValueError(f"action must be ALLOW or DENY, got {action!r}")
    if "policies" not in config:
        raise ValueError("policies is required (a mapping of policy name to "
                         "{permissions, principals}; {} with action ALLOW denies everything)")
    return RbacConfig(action.upper() == "ALLOW",
                      boolean(config.get("shadow", False), "shadow"),
                      compile_policies(config["policies"], "policies"))


class RbacFilter(HttpFilter):
    __slots__ = ("f",)

    def __init__(self, factory: RbacFactory) -> None:
        self.f = factory

    def on_request_headers(self, stream, end_stream):
        f = self.f
        policy = first_match(f.policies, RequestView(stream))
        allowed = (policy is not None) == f.allow
        md = stream.metadata
        if not isinstance(md, dict):
            md = {}
            stream.metadata = md
        md[METADATA_KEY] = {"allowed": allowed, "policy": policy, "shadow": f.shadow}
        counters = f.counters
        if policy is not None:
            counters.inc(f"policy.{policy}")
        if allowed:
            counters.inc("shadow_allowed" if f.shadow else "allowed")
            return CONTINUE
        why = f"policy {policy!r} matched" if policy is not None else "no policy matched"
        if f.shadow:
            counters.inc("shadow_denied")
            f.log(logging.INFO, "rbac %s shadow: would deny %s %s from %s (%s action, %s)",
                  f.binding, stream.method_name, stream.path, stream.peer, f.action, why)
            return CONTINUE
        counters.inc("denied")
        f.log(logging.INFO, "rbac %s: denied %s %s from %s (%s action, %s)", f.binding,
              stream.method_name, stream.path, stream.peer, f.action, why)
        return LocalReply(403, BODY, reason=REASON)


@register(NAME)
class RbacFactory(FilterFactory):
    filter_class = RbacFilter

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        cfg: RbacConfig = self.config
        self.allow = cfg.allow
        self.action = "ALLOW" if cfg.allow else "DENY"
        self.shadow = cfg.shadow
        self.policies = cfg.policies
        self.counters = _COUNTERS.setdefault(binding, Counters()) if binding else Counters()
        self.log = LogLimiter(log)

    def parse_config(self, config):
        return parse_config(config)

    def create(self):
        return RbacFilter(self)
