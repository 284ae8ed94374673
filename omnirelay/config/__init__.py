"""Static config for OmniRelay: schema, loading, validation and canonical JSON.

This is the bottom layer, shared with the MeshKit control plane, so it imports nothing else
from omnirelay. See docs/configuration.md for the document reference.
"""

from .canonical import canonical_json
from .errors import ConfigError, ConfigIssue
from .frozen import FrozenDict
from .loader import load_config
from .model import (
    Admin,
    CircuitBreakers,
    Cluster,
    Config,
    DirectResponse,
    Discovery,
    Endpoint,
    FilterSpec,
    HashKey,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    HealthCheck,
    Http2Options,
    Listener,
    Metadata,
    Mirror,
    OutlierDetection,
    QueryMatch,
    Redirect,
    RetryPolicy,
    Rewrite,
    Rollout,
    Route,
    RouteMatch,
    SniRoute,
    Spec,
    TcpProxy,
    TlsContext,
    UpstreamTls,
    WeightedCluster,
)
from .serialize import config_to_dict
from .units import parse_duration, parse_size

__all__ = [
    "Admin",
    "CircuitBreakers",
    "Cluster",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DirectResponse",
    "Discovery",
    "Endpoint",
    "FilterSpec",
    "FrozenDict",
    "HashKey",
    "HeaderEdits",
    "HeaderMatch",
    "HeaderValue",
    "HealthCheck",
    "Http2Options",
    "Listener",
    "Metadata",
    "Mirror",
    "OutlierDetection",
    "QueryMatch",
    "Redirect",
    "RetryPolicy",
    "Rewrite",
    "Rollout",
    "Route",
    "RouteMatch",
    "SniRoute",
    "Spec",
    "TcpProxy",
    "TlsContext",
    "UpstreamTls",
    "WeightedCluster",
    "canonical_json",
    "config_to_dict",
    "load_config",
    "parse_duration",
    "parse_size",
]
