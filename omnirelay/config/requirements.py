"""What a config document needs from the node that runs it, as capability strings.

A node's capabilities are its Hello's, flattened (`flatten`): `api:<version>`,
`feature:<name>` (protocols, extension runtimes, ABIs, host features) and `wasm:<engine>`.
MeshKit refuses a publish that a connected, targeted node could not run (meshkit.gating) and
the node's config client refuses such a snapshot itself (omnirelay.control.client): both use
`required` so they agree on what a document needs.

Baseline HTTP/1.1 proxying and Python filters are not listed: every OmniRelay build has them.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from .model import Config

if TYPE_CHECKING:
    from .protos.mesh_pb2 import Capabilities

# Filters that need an extension runtime (the filter name -> the node feature that runs it).
FILTER_FEATURES = {
    "omnirelay.filters.http.wasm": "feature:wasm",
    "omnirelay.filters.http.native": "feature:native",
    "omnirelay.filters.http.dsl": "feature:dsl",
}
# Listener protocols beyond HTTP (the node's /capabilities protocol names).
LISTENER_FEATURES = {"tcp": "feature:tcp", "tls_passthrough": "feature:tls_passthrough"}


def flatten(caps: Capabilities) -> tuple[str, ...]:
    """A Hello's capabilities as the strings `required` names."""
    return (
        *(f"api:{v}" for v in caps.api_versions),
        *(f"feature:{v}" for v in caps.features),
        *(f"wasm:{v}" for v in caps.wasm_runtimes),
    )


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


def missing(config: Config, capabilities: Collection[str]) -> dict[str, str]:
    """What `config` needs that `capabilities` lacks: capability -> the first place needing
    it, sorted by capability."""
    return {c: where for c, where in sorted(required(config).items()) if c not in capabilities}


def describe(gaps: dict[str, str]) -> Iterable[str]:
    """One line per missing capability: `feature:wasm (needed by route r filter ...)`."""
    return (f"{capability} (needed by {where})" for capability, where in gaps.items())
