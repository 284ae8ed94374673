"""omnirelay.filters.http.python: load a user FilterFactory by import path.

config: {factory: "package.module:FactoryClass", config: {...}}
"""
from __future__ import annotations

import importlib

from omnirelay.filters.base import FilterFactory
from omnirelay.filters.registry import register


@register("omnirelay.filters.http.python")
class PythonFilterFactory(FilterFactory):
    """Wraps the user's factory so its hooks are the ones the core sees."""

    def __init__(self, config, binding: str = ""):
        self.binding = binding
        config = dict(config or {})
        target = config.pop("factory", None)
        inner_cfg = config.pop("config", {})
        if config:
            raise ValueError(f"unknown keys {sorted(config)} (known: config, factory)")
        if not isinstance(target, str) or ":" not in target:
            raise ValueError("factory must be 'module:FactoryClass'")
        mod_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import {target!r}: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, FilterFactory)):
            raise TypeError(f"{target!r} is not a FilterFactory subclass")
        self.inner = cls(inner_cfg)
        self.config = self.inner.config

    def create(self):
        return self.inner.create()

    def overridden_hooks(self):  # instance-level: depends on the wrapped class
        return self.inner.overridden_hooks()
