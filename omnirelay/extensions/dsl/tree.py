"""The syntax tree the parser builds (checked: names, regexes and addresses are valid) and
the compiler turns into closures. Every node keeps where it starts, for error messages."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from omnirelay.security.matchers import CidrSet


class Pos(NamedTuple):
    line: int
    column: int


# ---- values: strings taken from the request, or literals


@dataclass(frozen=True, slots=True)
class Literal:
    text: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Field:
    """A request value: method, path, host, source.ip, source.identity (no argument),
    header / query (a name) or jwt.claim (a path into the claims)."""
    kind: str
    arg: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Concat:
    parts: tuple[Literal | Field, ...]
    pos: Pos


Value = Literal | Field | Concat


# ---- conditions


@dataclass(frozen=True, slots=True)
class Const:
    value: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class Not:
    operand: Cond
    pos: Pos


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str                       # "and" | "or"
    operands: tuple[Cond, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Compare:
    """``left OP right`` for ==, !=, prefix, suffix, contains."""
    op: str
    left: Value
    right: Value
    pos: Pos


@dataclass(frozen=True, slots=True)
class Regex:
    left: Value
    pattern: str
    search: Callable[[str], bool]
    pos: Pos


@dataclass(frozen=True, slots=True)
class InList:
    left: Value
    items: frozenset[str]
    pos: Pos


@dataclass(frozen=True, slots=True)
class InCidr:
    left: Value
    cidrs: CidrSet
    count: int                    # networks: the test's cost in steps
    pos: Pos


@dataclass(frozen=True, slots=True)
class Exists:
    field: Field
    pos: Pos


Cond = Const | Not | BoolOp | Compare | Regex | InList | InCidr | Exists


# ---- actions


@dataclass(frozen=True, slots=True)
class HeaderAction:
    side: str                     # "request" | "response"
    op: str                       # "set" | "add" | "remove"
    name: str                     # lowercase
    value: Value | None           # None for remove
    pos: Pos


@dataclass(frozen=True, slots=True)
class Route:
    cluster: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Value | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class RateLimitKey:
    value: Value
    pos: Pos


@dataclass(frozen=True, slots=True)
class Stop:
    pos: Pos


Action = HeaderAction | Route | Reply | RateLimitKey | Stop


@dataclass(frozen=True, slots=True)
class Rule:
    condition: Cond
    actions: tuple[Action, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
