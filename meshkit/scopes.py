"""Desired-state scopes and which one a node is served from.

A scope names one whole config document in the store: `global`, `region/<region>`,
`tenant/<tenant>` or `node/<node id>`. A node is served the most specific scope that has a
document, in this order: its node scope, its tenant's, its region's (the first segment of its
locality), then `global`. Documents are not merged: a more specific scope replaces the others.
"""

from __future__ import annotations

import re

GLOBAL = "global"
KINDS = ("node", "tenant", "region")  # most specific first
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class ScopeError(ValueError):
    pass


def check_scope(scope: str | None) -> str:
    """The scope in canonical form ("" and None mean `global`); ScopeError if malformed."""
    if not scope:
        return GLOBAL
    if scope == GLOBAL:
        return scope
    kind, _, name = scope.partition("/")
    if kind not in KINDS or not _NAME.fullmatch(name):
        raise ScopeError(
            f"bad scope {scope!r}: expected 'global', 'region/<name>', 'tenant/<name>' or "
            "'node/<id>', names being 1-128 of A-Z a-z 0-9 . _ : - (starting alphanumeric)"
        )
    return scope


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def scopes_for(node_id: str, tenant: str = "", region: str = "") -> list[str]:
    """The scopes a node may be served from, most specific first."""
    scopes = []
    for kind, name in (("node", node_id), ("tenant", tenant), ("region", region)):
        if name and _NAME.fullmatch(name):
            scopes.append(f"{kind}/{name}")
    scopes.append(GLOBAL)
    return scopes
