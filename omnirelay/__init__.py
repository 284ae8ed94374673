"""OmniRelay: a fast L4/L7 proxy and embeddable data plane.

Embedding: ``async with omnirelay.Relay(config) as relay: ...`` (docs/embedding.md).

Names load lazily, so the control plane can import ``omnirelay.config`` without pulling
in the compiled core and the runtime.
"""
from __future__ import annotations

import importlib
from typing import Any

from omnirelay._version import __version__

_EXPORTS = {
    "Config": "omnirelay.config", "ConfigError": "omnirelay.config",
    "load_config": "omnirelay.config",
    "CONTINUE": "omnirelay.filters", "STOP": "omnirelay.filters",
    "FilterFactory": "omnirelay.filters", "HttpFilter": "omnirelay.filters",
    "LocalReply": "omnirelay.filters", "register": "omnirelay.filters",
    "Relay": "omnirelay.relay",
}

__all__ = ["CONTINUE", "STOP", "Config", "ConfigError", "FilterFactory", "HttpFilter",
           "LocalReply", "Relay", "__version__", "load_config", "register"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a subpackage such as omnirelay.config, as before the names went lazy
            return importlib.import_module(f"omnirelay.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"omnirelay.{name}":
                raise  # the subpackage exists but one of its imports is missing
            raise AttributeError(f"module 'omnirelay' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
