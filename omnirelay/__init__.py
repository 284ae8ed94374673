"""OmniRelay: a fast L4/L7 proxy and embeddable data plane.

Embedding: ``async with omnirelay.Relay(config) as relay: ...`` (docs/embedding.md).
"""
from omnirelay._version import __version__
from omnirelay.config import Config, ConfigError, load_config
from omnirelay.filters import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply, register
from omnirelay.relay import Relay

__all__ = ["CONTINUE", "STOP", "Config", "ConfigError", "FilterFactory", "HttpFilter",
           "LocalReply", "Relay", "__version__", "load_config", "register"]
