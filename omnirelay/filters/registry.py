"""Filter factories by dotted name, and chain building from config."""
from __future__ import annotations

import importlib
from collections.abc import Collection

from omnirelay._core import FilterChain
from omnirelay.config import FilterSpec
from omnirelay.filters.base import FilterFactory

_REGISTRY: dict[str, type[FilterFactory]] = {}
_BUILTIN_MODULES = ("omnirelay.filters.http.headers", "omnirelay.filters.http.python",
                    "omnirelay.filters.http.fault", "omnirelay.filters.http.local_ratelimit",
                    "omnirelay.filters.http.jwt_authn", "omnirelay.filters.http.rbac")


class FilterConfigError(ValueError):
    """A filter named in config is unknown or rejected its config."""


def register(name: str):
    """Class decorator registering a FilterFactory under a dotted name."""
    def deco(cls: type[FilterFactory]) -> type[FilterFactory]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"filter {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def known_filters() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_factory(spec: FilterSpec, path: str,
                  clusters: Collection[str] | None = None) -> FilterFactory:
    """``clusters``: the config's cluster names; a factory with a ``check_clusters(names)``
    method (one whose config names clusters) is checked against them."""
    _load_builtins()
    cls = _REGISTRY.get(spec.name)
    if cls is None:
        raise FilterConfigError(
            f"{path}.name: unknown filter {spec.name!r} (known: {', '.join(sorted(_REGISTRY))})")
    try:
        factory = cls(spec.config.to_dict() if hasattr(spec.config, "to_dict")
                      else dict(spec.config), binding=path)
        check = getattr(factory, "check_clusters", None)
        if clusters is not None and check is not None:
            check(clusters)
        return factory
    except (TypeError, ValueError, KeyError) as e:
        raise FilterConfigError(f"{path}.config: {e}") from e


def build_chain(factories: list[FilterFactory]) -> FilterChain:
    return FilterChain(factories, [f.overridden_hooks() for f in factories])
