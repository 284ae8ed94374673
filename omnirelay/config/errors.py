"""Config problems: one `ConfigIssue` per problem, all of them carried by one `ConfigError`."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

_IDENTIFIER_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem, located by its document path such as `spec.routes[2].cluster`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A config that cannot be used. `issues` lists every problem found: field problems in
    document order, then cross-reference problems (names, references, sockets)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(map(str, self.issues)))

    def __reduce__(self):
        # The default reduce would rebuild from the joined message and lose the issues.
        return (type(self), (self.issues,))


@functools.lru_cache(maxsize=4096)
def _bare(key: str) -> bool:
    # Field names repeat across a document (a 10,000-route config asks ~300,000 times).
    return bool(key) and set(key) <= _IDENTIFIER_KEY


def field_path(parent: str, key: object) -> str:
    """Path of mapping entry `key` under `parent`; keys that would read ambiguously are quoted."""
    if isinstance(key, str) and _bare(key):
        return f"{parent}.{key}" if parent else key
    quoted = json.dumps(key, ensure_ascii=False) if isinstance(key, str) else repr(key)
    return f"{parent}[{quoted}]"


def item_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"
