"""omnirelay.filters.http.dsl: requests checked and edited by rules of the rule language.

It lives with the language and registers itself when the runtime imports it, so the filter
layer never imports the extension hosts (ARCHITECTURE.md layering).

config (see docs/dsl.md)::

    rules: |                       # the rule text, compiled when the config loads
    # package: rules.orpkg         # or a signed extension package (kind dsl) holding it
      when path prefix "/api/" { set request header "x-api" = "1"; route "api" }
    # or package: /etc/omnirelay/ext/rules.orpkg   (a signed `dsl` package holding the text)
    step_budget: 1000              # the most steps one request may take
    failure_policy: fail_closed    # fail_open | fail_closed

Rules are evaluated in the request-headers hook; response header actions of the rules that
matched are applied in the response-headers hook (that hook is only installed when the rules
have such actions). A request whose evaluation runs past the step budget, or fails (a
computed header value that is not a valid one, a ``route`` the proxy refuses), gets the
binding's failure policy: fail_open passes it on without the rules' edits, fail_closed
answers 503. Counters by binding: ``stats()``.
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from omnirelay.extensions.dsl import compiler as c
from omnirelay.extensions.dsl.errors import BudgetExceeded, DslSyntaxError
from omnirelay.extensions.packages import loading
from omnirelay.filters.base import CONTINUE, HOOK_METHODS, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.http.local_ratelimit import KEY_METADATA
from omnirelay.filters.registry import register
from omnirelay.security.util import LogLimiter, mapping, reject_unknown

NAME = "omnirelay.filters.http.dsl"
POLICIES = ("fail_open", "fail_closed")
MAX_STEP_BUDGET = 1_000_000
FAIL_CLOSED_STATUS = 503
FAIL_CLOSED_BODY = b"rule evaluation failed\n"
FAIL_CLOSED_REASON = "dsl_fail_closed"
REPLY_REASON = "dsl_reply"
_KEYS = ("failure_policy", "rules", "step_budget")

log = logging.getLogger("omnirelay.filters.dsl")


class DslCounters:
    """Totals of one binding, kept across reloads (they never go backwards)."""

    __slots__ = ("budget_exceeded", "evaluations", "failures", "matches")
    NAMES = ("evaluations", "matches", "budget_exceeded", "failures")

    def __init__(self) -> None:
        self.evaluations = 0        # requests evaluated
        self.matches = 0            # rules that matched, summed over requests
        self.budget_exceeded = 0    # requests that ran out of steps
        self.failures = 0           # requests whose evaluation or edits failed otherwise

    def snapshot(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in self.NAMES}


_COUNTERS: dict[str, DslCounters] = {}


def stats() -> dict[str, dict[str, int]]:
    """Counters of every dsl filter entry, by binding (``spec.routes[0].filters[1]``)."""
    return {b: s.snapshot() for b, s in sorted(_COUNTERS.items())}


@dataclass(frozen=True)
class DslConfig:
    program: c.Program
    fail_open: bool


def parse_config(config) -> DslConfig:
    config = mapping({} if config is None else config, "config")
    reject_unknown(config, _KEYS, "")
    if "rules" not in config:
        raise ValueError("rules is required (the rule text; see docs/dsl.md)")
    rules = config["rules"]
    if not isinstance(rules, str):
        raise TypeError(f"rules must be a string (the rule text), got {type(rules).__name__}")
    budget = config.get("step_budget", c.DEFAULT_STEP_BUDGET)
    if isinstance(budget, bool) or not isinstance(budget, int) \
            or not 1 <= budget <= MAX_STEP_BUDGET:
        raise ValueError(f"step_budget must be an integer from 1 to {MAX_STEP_BUDGET}, "
                         f"got {budget!r}")
    policy = config.get("failure_policy", "fail_closed")
    if policy not in POLICIES:
        raise ValueError(f"failure_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    try:
        program = c.compile_rules(rules, budget)
    except DslSyntaxError as e:
        raise ValueError(f"rules:{e}") from None
    return DslConfig(program, policy == "fail_open")


class DslFilter(HttpFilter):
    __slots__ = ("f", "response")

    def __init__(self, factory: DslFactory) -> None:
        self.f = factory
        self.response: list[c.Effect] | None = None   # response edits of matched rules

    def on_request_headers(self, stream, end_stream):
        f = self.f
        counters = f.counters
        counters.evaluations += 1
        try:
            effects, matched = f.program.evaluate(stream)
        except BudgetExceeded as e:
            counters.budget_exceeded += 1
            return f.fail(stream, str(e))
        except Exception as e:  # noqa: BLE001 - DslEvalError or a bug: the policy applies
            counters.failures += 1
            return f.fail(stream, f"{type(e).__name__}: {e}")
        if matched:
            counters.matches += matched
        if not effects:
            return CONTINUE
        try:
            return self.apply(stream, effects)
        except Exception as e:  # noqa: BLE001 - e.g. set_cluster refused: the policy applies
            counters.failures += 1
            return f.fail(stream, f"{type(e).__name__}: {e}")

    def apply(self, stream, effects: list[c.Effect]):
        response = None
        for code, a, b in effects:
            if code == c.REQUEST_SET:
                stream.request_headers.set(a, b)
            elif code == c.REQUEST_ADD:
                stream.request_headers.add(a, b)
            elif code == c.REQUEST_REMOVE:
                stream.request_headers.remove(a)
            elif code == c.ROUTE:
                stream.set_cluster(a)
            elif code == c.RATELIMIT_KEY:
                md = stream.metadata
                if not isinstance(md, dict):
                    md = stream.metadata = {}
                md[KEY_METADATA] = a
            elif code == c.REPLY:
                # The response edits so far become the reply's headers (removes have
                # nothing to remove from a reply the proxy writes).
                headers = [(n, v) for k, n, v in response or ()
                           if k in (c.RESPONSE_SET, c.RESPONSE_ADD)]
                return LocalReply(a, b, headers=headers, reason=REPLY_REASON)
            else:
                if response is None:
                    response = []
                response.append((code, a, b))
        self.response = response
        return CONTINUE

    def on_response_headers(self, stream, end_stream):
        edits = self.response
        if edits:
            headers = stream.response_headers
            for code, name, value in edits:
                if code == c.RESPONSE_SET:
                    headers.set(name, value)
                elif code == c.RESPONSE_ADD:
                    headers.add(name, value)
                else:
                    headers.remove(name)
        return CONTINUE


@register(NAME)
class DslFactory(FilterFactory):
    filter_class = DslFilter

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        cfg: DslConfig = self.config
        self.program = cfg.program
        self.fail_open = cfg.fail_open
        self.counters = (_COUNTERS.setdefault(binding, DslCounters()) if binding
                         else DslCounters())
        self.log = LogLimiter(log)

    def parse_config(self, config):
        if isinstance(config, Mapping) and "package" in config:
            # The rules are the payload of a signed extension package, verified first; rules
            # that do not compile are recorded as the package's failure.
            rest = {k: v for k, v in config.items() if k != "package"}
            if "rules" in rest:
                raise ValueError("give rules or package, not both")
            with loading(config["package"], "dsl", binding=self.binding) as pkg:
                return parse_config({**rest, "rules": pkg.payload.decode("utf-8")})
        return parse_config(config)

    def create(self):
        return DslFilter(self)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def overridden_hooks(self) -> frozenset[str]:  # type: ignore[override]
        # Per binding, not per class: without response actions the response hook is not
        # installed, so responses do not pay a call into this filter.
        hooks = {"on_request_headers"}
        if self.program.has_response_actions:
            hooks.add("on_response_headers")
        return frozenset(h for h in HOOK_METHODS if h in hooks)

    def check_clusters(self, names: Collection[str]) -> None:
        """Refuse ``route`` actions naming no cluster of the config (the registry calls this
        when the config is built)."""
        for cluster, pos in self.program.routes:
            if cluster not in names:
                raise ValueError(f"rules:{pos.line}:{pos.column}: route to unknown cluster "
                                 f"{cluster!r} (clusters: {', '.join(sorted(names)) or 'none'})")

    def fail(self, stream, why: str):
        policy = "fail_open" if self.fail_open else "fail_closed"
        self.log(logging.WARNING, "dsl %s: %s %s: %s (%s)", self.binding or "unbound",
                 stream.method_name, stream.path, why, policy)
        if self.fail_open:
            return CONTINUE
        return LocalReply(FAIL_CLOSED_STATUS, FAIL_CLOSED_BODY, reason=FAIL_CLOSED_REASON)
