"""Capability gating: which connected nodes a document would reach that cannot run it.

A document needs a capability for each optional part it uses; a node has the capabilities its
Hello announced (flattened as `api:...`, `feature:...`, `wasm:...`, nodes.capability_list).
The publish pipeline refuses a document when a connected node it targets (the node's most
specific scope with a document would be the published one) lacks one, unless forced.

Baseline HTTP/1.1 proxying and Python filters are not gated: every OmniRelay build has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from omnirelay.config import Config

from .scopes import scopes_for

# Filters that need an extension runtime (the filter name -> the node feature that runs it).
FILTER_FEATURES = {
    "omnirelay.filters.http.wasm": "feature:wasm",
    "omnirelay.filters.http.native": "feature:native",
    "omnirelay.filters.http.dsl": "feature:dsl",
}
# Listener protocols beyond HTTP (the node's /capabilities protocol names).
LISTENER_FEATURES = {"tcp": "feature:tcp", "tls_passthrough": "feature:tls_passthrough"}


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


def required(config: Config) -> dict[str, str]:
    """Capability -> the first place in the document that needs it (for messages)."""
    needs: dict[str, str] = {}

    def need(capability: str, where: str) -> None:
        needs.setdefault(capability, where)

    for listener in config.spec.listeners:
        feature = LISTENER_FEATURES.get(listener.protocol)
        if feature:
            need(feature, f"listener {listener.name}")
        for spec in listener.filters:
            if spec.name in FILTER_FEATURES:
                need(FILTER_FEATURES[spec.name], f"listener {listener.name} filter {spec.name}")
    for route in config.spec.routes:
        for spec in route.filters:
            if spec.name in FILTER_FEATURES:
                need(FILTER_FEATURES[spec.name], f"route {route.name} filter {spec.name}")
    for cluster in config.spec.clusters:
        if cluster.protocol == "http2":
            # h2 over TLS (ALPN), h2c by prior knowledge in the clear.
            need("feature:h2" if cluster.tls is not None else "feature:h2c",
                 f"cluster {cluster.name}")
    return needs


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
