"""Capability gating: which connected nodes a document would reach that cannot run it.

A document needs a capability for each optional part it uses (omnirelay.config.requirements,
shared with the node's config client, which refuses such a snapshot itself); a node has the
capabilities its Hello announced (flattened as `api:...`, `feature:...`, `wasm:...`).
The publish pipeline refuses a document when a connected node it targets (the node's most
specific scope with a document would be the published one) lacks one, unless forced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from omnirelay.config import Config
from omnirelay.config.requirements import required

from .scopes import scopes_for


@dataclass(frozen=True, slots=True)
class Gap:
    node: str
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """A connected node as gating sees it."""

    id: str
    tenant: str
    region: str
    capabilities: frozenset[str]


def targets(scope: str, node: Target, has_document: Callable[[str], bool]) -> bool:
    """Whether `node` would be served `scope` once it has a document."""
    for candidate in scopes_for(node.id, node.tenant, node.region):
        if candidate == scope or has_document(candidate):
            return candidate == scope
    return False


def gaps(scope: str, config: Config, nodes: Iterable[Target],
         has_document: Callable[[str], bool]) -> list[Gap]:
    """Connected nodes targeted by publishing `config` on `scope` that lack a capability."""
    needs = required(config)
    if not needs:
        return []
    found = []
    for node in nodes:
        if not targets(scope, node, has_document):
            continue
        missing = tuple(sorted(c for c in needs if c not in node.capabilities))
        if missing:
            found.append(Gap(node.id, missing))
    return sorted(found, key=lambda g: g.node)


def describe(found: list[Gap], limit: int = 20) -> str:
    lines = [f"  node {g.node}: lacks {', '.join(g.missing)}" for g in found[:limit]]
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more nodes")
    return "\n".join(lines)
