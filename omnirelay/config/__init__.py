"""Static config for OmniRelay: schema, loading, validation and canonical JSON.

This is the bottom layer, shared with the MeshKit control plane, so it imports nothing else
from omnirelay. See docs/configuration.md for the document reference.
"""

from .canonical import canonical_json
from .errors import ConfigError, ConfigIssue
from .frozen import FrozenDict
from .loader import load_config
from .model import (
    Cluster,
    Config,
    Endpoint,
    FilterSpec,
    HeaderMatch,
    Listener,
    Metadata,
    Rollout,
    Route,
    RouteMatch,
    Spec,
)
from .serialize import config_to_dict
from .units import parse_duration, parse_size

__all__ = [
    "Cluster",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Endpoint",
    "FilterSpec",
    "FrozenDict",
    "HeaderMatch",
    "Listener",
    "Metadata",
    "Rollout",
    "Route",
    "RouteMatch",
    "Spec",
    "canonical_json",
    "config_to_dict",
    "load_config",
    "parse_duration",
    "parse_size",
]
