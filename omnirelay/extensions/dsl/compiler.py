"""Compile a checked syntax tree into closures, once per config load, and evaluate them per
request within a step budget.

Evaluation never runs code from the rule text: a condition is a tree of Python closures
built here, each test a comparison of strings. The language has no loops, calls or
recursion, so a rule set always finishes; the step budget bounds how much of it one request
may use. Steps: a rule costs the steps of its condition's tests (each test one step, a test
against N address ranges N steps), charged whether or not ``and``/``or`` short-circuit, and
a matched rule one more step per action.

Evaluation only computes what to do: ``Program.evaluate`` returns a list of effects and the
filter applies them, so a request that runs out of budget has had none of them applied.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from omnirelay.extensions.dsl import tree as t
from omnirelay.extensions.dsl.errors import BudgetExceeded, DslEvalError
from omnirelay.extensions.dsl.parser import parse
from omnirelay.security.jwt import JWT_METADATA_KEY
from omnirelay.security.matchers import (
    literal_match,
    lookup_claim,
    normalize_path,
    request_host,
)
from omnirelay.security.rbac import peer_spiffe_id

DEFAULT_STEP_BUDGET = 1000

# Effect codes: (code, a, b) tuples that Program.evaluate returns.
REQUEST_SET, REQUEST_ADD, REQUEST_REMOVE = 0, 1, 2
RESPONSE_SET, RESPONSE_ADD, RESPONSE_REMOVE = 3, 4, 5
ROUTE, REPLY, RATELIMIT_KEY = 6, 7, 8
_STOP = (-1, None, None)
_HEADER_CODES = {("request", "set"): REQUEST_SET, ("request", "add"): REQUEST_ADD,
                 ("request", "remove"): REQUEST_REMOVE, ("response", "set"): RESPONSE_SET,
                 ("response", "add"): RESPONSE_ADD, ("response", "remove"): RESPONSE_REMOVE}

Effect = tuple[int, Any, Any]
_UNSET: Any = object()
Getter = Callable[["View"], Any]
Test = Callable[["View"], bool]


class View:
    """The request as the rules see it; each value computed on first use (a rule set that
    reads only headers pays for nothing else)."""

    __slots__ = ("_claims", "_host", "_path", "_query", "_spiffe", "stream")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._path = self._host = self._query = self._claims = self._spiffe = _UNSET

    @property
    def path(self) -> str:
        """Normalized as for RBAC (dot segments, encoded unreserved characters), no query."""
        if self._path is _UNSET:
            self._path = normalize_path(self.stream.path)
        return self._path  # type: ignore[return-value]

    @property
    def host(self) -> str:
        """Lowercase, without the port."""
        if self._host is _UNSET:
            self._host = request_host(self.stream.authority)
        return self._host  # type: ignore[return-value]

    @property
    def spiffe_id(self) -> str | None:
        if self._spiffe is _UNSET:
            self._spiffe = peer_spiffe_id(self.stream)
        return self._spiffe  # type: ignore[return-value]

    @property
    def claims(self) -> dict | None:
        """Claims of the token that omnirelay.filters.http.jwt_authn verified, or None."""
        if self._claims is _UNSET:
            md = self.stream.metadata
            jwt = md.get(JWT_METADATA_KEY) if isinstance(md, dict) else None
            self._claims = jwt.get("claims") if isinstance(jwt, dict) else None
        return self._claims  # type: ignore[return-value]

    def query(self, name: str) -> str | None:
        """The first value of a query parameter, decoded (``+`` is a space)."""
        q = self._query
        if q is _UNSET:
            q = self._query = {}
            target = self.stream.path
            mark = target.find("?")
            if mark >= 0:
                for pair in target[mark + 1:].split("#", 1)[0].split("&"):
                    if pair:
                        k, _, v = pair.partition("=")
                        q.setdefault(unquote_plus(k), unquote_plus(v))
        return q.get(name)  # type: ignore[union-attr]


@dataclass(frozen=True)
class CompiledRule:
    test: Test
    cost: int                         # the condition's steps
    actions: tuple[Callable[[View], Effect], ...]
    line: int


class Program:
    """A compiled rule set: ``evaluate(stream)`` -> (effects, rules matched)."""

    __slots__ = ("_steps", "budget", "has_response_actions", "max_steps", "routes", "rules")

    def __init__(self, rules: tuple[CompiledRule, ...], budget: int,
                 routes: tuple[tuple[str, t.Pos], ...], has_response_actions: bool) -> None:
        self.rules = rules
        self.budget = budget
        self.routes = routes                 # (cluster, where) of every `route` action
        self.has_response_actions = has_response_actions
        # The most steps a request can take (every rule matching).
        self.max_steps = sum(r.cost + len(r.actions) for r in rules)
        self._steps = tuple((r.test, r.cost, r.actions) for r in rules)

    def evaluate(self, stream: Any) -> tuple[list[Effect], int]:
        """Effects in rule order (up to a reply or a stop) and how many rules matched.
        Raises BudgetExceeded, or DslEvalError when a computed value cannot be used."""
        rq = View(stream)
        budget = self.budget
        steps = 0
        matched = 0
        effects: list[Effect] = []
        for test, cost, actions in self._steps:
            steps += cost
            if steps > budget:
                raise BudgetExceeded(budget)
            if not test(rq):
                continue
            matched += 1
            steps += len(actions)
            if steps > budget:
                raise BudgetExceeded(budget)
            for act in actions:
                effect = act(rq)
                if effect is _STOP:
                    return effects, matched
                effects.append(effect)
                if effect[0] == REPLY:
                    return effects, matched
        return effects, matched


def compile_rules(text: str, step_budget: int = DEFAULT_STEP_BUDGET) -> Program:
    """Parse, check and compile a rule text. Raises DslSyntaxError (a ValueError)."""
    rule_set = parse(text)
    routes: list[tuple[str, t.Pos]] = []
    response = False
    rules = []
    for rule in rule_set.rules:
        for a in rule.actions:
            if isinstance(a, t.Route):
                routes.append((a.cluster, a.pos))
            elif isinstance(a, t.HeaderAction) and a.side == "response":
                response = True
        rules.append(CompiledRule(_test(rule.condition), _cost(rule.condition),
                                  tuple(_action(a) for a in rule.actions), rule.pos.line))
    return Program(tuple(rules), step_budget, tuple(routes), response)


# --------------------------------------------------------------------------- values


def _claim_scalar(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    return None


def _claim(v: Any) -> str | list[str] | None:
    """A claim as the rules see it: a string, a list of strings (a list claim's scalar
    elements) or None (absent, null or an object)."""
    if isinstance(v, list):
        return [s for s in map(_claim_scalar, v) if s is not None]
    return _claim_scalar(v)


def _field(f: t.Field, many: bool) -> Getter:
    """A field's getter. ``many``: a list claim stays a list (tests match any element);
    otherwise its elements are joined with ','."""
    kind = f.kind
    if kind == "method":
        return lambda rq: rq.stream.method_name
    if kind == "path":
        return lambda rq: rq.path
    if kind == "host":
        return lambda rq: rq.host
    if kind == "source.ip":
        return lambda rq: rq.stream.peer
    if kind == "source.identity":
        return lambda rq: rq.spiffe_id
    name = f.arg[0]
    if kind == "header":
        def header(rq: View) -> str | None:
            values = rq.stream.request_headers.getall(name)
            if not values:
                return None
            return values[0] if len(values) == 1 else ",".join(values)
        return header
    if kind == "query":
        return lambda rq: rq.query(name)
    lookup = _claim_lookup(f.arg)
    if many:
        return lambda rq: _claim(lookup(rq.claims))

    def claim(rq: View) -> str | None:
        v = _claim(lookup(rq.claims))
        return ",".join(v) if isinstance(v, list) else v
    return claim


def _claim_lookup(arg: tuple[str, ...]) -> Callable[[dict | None], Any]:
    """``("sub",)``; ``("realm_access.roles",)``: a top-level claim of that very name if the
    token has one, else the dotted path into nested claims; ``("https://x/", "roles")``: the
    path given part by part."""
    if len(arg) > 1 or "." not in arg[0]:
        return lambda claims: lookup_claim(claims, arg)
    name = arg[0]
    path = tuple(name.split("."))

    def lookup(claims: dict | None) -> Any:
        if isinstance(claims, dict) and name in claims:
            return claims[name]
        return lookup_claim(claims, path)
    return lookup


def _string(v: t.Value) -> Getter:
    """A getter of a string (an absent value is the empty string), for actions."""
    if isinstance(v, t.Literal):
        text = v.text
        return lambda rq: text
    if isinstance(v, t.Field):
        get = _field(v, False)
        return lambda rq: get(rq) or ""
    parts = [_string(p) for p in v.parts]
    return lambda rq: "".join([p(rq) for p in parts])


def _value(v: t.Value) -> Getter:
    """A getter for a test's operand: None when a single request value is absent."""
    return _field(v, True) if isinstance(v, t.Field) else _string(v)


# --------------------------------------------------------------------------- conditions


def _cost(c: t.Cond) -> int:
    if isinstance(c, t.BoolOp):
        return sum(_cost(o) for o in c.operands)
    if isinstance(c, t.Not):
        return _cost(c.operand)
    if isinstance(c, t.InCidr):
        return c.count
    return 1


def _on_value(left: t.Value, pred: Callable[[str], bool]) -> Test:
    """Apply a string predicate to a test's left operand: false when it is absent, true
    for a list claim when one of its elements matches."""
    get = _value(left)
    if isinstance(left, t.Field) and left.kind == "jwt.claim":
        def test_claim(rq: View) -> bool:
            v = get(rq)
            if v is None:
                return False
            if isinstance(v, list):
                return any(pred(x) for x in v)
            return pred(v)
        return test_claim

    def test(rq: View) -> bool:
        v = get(rq)
        return v is not None and pred(v)
    return test


def _test(c: t.Cond) -> Test:
    if isinstance(c, t.Const):
        value = c.value
        return lambda rq: value
    if isinstance(c, t.Not):
        inner = _test(c.operand)
        return lambda rq: not inner(rq)
    if isinstance(c, t.BoolOp):
        items = tuple(_test(o) for o in c.operands)
        if c.op == "and":
            return lambda rq: all(i(rq) for i in items)
        return lambda rq: any(i(rq) for i in items)
    if isinstance(c, t.Exists):
        get = _field(c.field, True)
        return lambda rq: get(rq) is not None
    if isinstance(c, t.Regex):
        return _on_value(c.left, c.search)
    if isinstance(c, t.InList):
        return _on_value(c.left, c.items.__contains__)
    if isinstance(c, t.InCidr):
        return _on_value(c.left, c.cidrs.__contains__)
    assert isinstance(c, t.Compare)
    if c.op == "!=":
        eq = _test(t.Compare("==", c.left, c.right, c.pos))
        return lambda rq: not eq(rq)
    if isinstance(c.right, t.Literal):
        return _on_value(c.left, literal_match(_MATCH_KINDS[c.op], c.right.text))
    op = c.op
    # The right operand is one string (a list claim's elements joined), None if absent.
    right = _field(c.right, False) if isinstance(c.right, t.Field) else _string(c.right)
    left = _value(c.left)
    many = isinstance(c.left, t.Field) and c.left.kind == "jwt.claim"

    def compare(rq: View) -> bool:
        b = right(rq)
        if b is None:
            return False
        a = left(rq)
        if a is None:
            return False
        if many and isinstance(a, list):
            return any(_apply(op, x, b) for x in a)
        return _apply(op, a, b)
    return compare


# The string operators as the shared matchers name them.
_MATCH_KINDS = {"==": "exact", "prefix": "prefix", "suffix": "suffix", "contains": "contains"}


def _apply(op: str, a: str, b: str) -> bool:
    if op == "==":
        return a == b
    if op == "prefix":
        return a.startswith(b)
    if op == "suffix":
        return a.endswith(b)
    return b in a


# --------------------------------------------------------------------------- actions


def _checked_header_value(get: Getter) -> Getter:
    def value(rq: View) -> str:
        v = get(rq)
        if "\r" in v or "\n" in v or "\0" in v or not _latin1(v):
            raise DslEvalError(f"computed header value {v[:64]!r} has CR, LF, NUL or "
                               "characters beyond Latin-1")
        return v
    return value


def _latin1(v: str) -> bool:
    return v.isascii() or all(ord(c) < 256 for c in v)


def _dynamic(v: t.Value) -> bool:
    return not isinstance(v, t.Literal) and not (
        isinstance(v, t.Concat) and all(isinstance(p, t.Literal) for p in v.parts))


def _action(a: t.Action) -> Callable[[View], Effect]:
    if isinstance(a, t.HeaderAction):
        code = _HEADER_CODES[(a.side, a.op)]
        name = a.name
        if a.value is None:
            effect: Effect = (code, name, None)
            return lambda rq: effect
        if not _dynamic(a.value):
            effect = (code, name, _string(a.value)(None))  # type: ignore[arg-type]
            return lambda rq: effect
        get = _checked_header_value(_string(a.value))
        return lambda rq: (code, name, get(rq))
    if isinstance(a, t.Route):
        effect = (ROUTE, a.cluster, None)
        return lambda rq: effect
    if isinstance(a, t.Reply):
        status = a.status
        body = _string(a.body) if a.body is not None else (lambda rq: "")
        return lambda rq: (REPLY, status, body(rq))
    if isinstance(a, t.RateLimitKey):
        key = _string(a.value)
        return lambda rq: (RATELIMIT_KEY, key(rq), None)
    assert isinstance(a, t.Stop)
    return lambda rq: _STOP
