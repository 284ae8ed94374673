"""`config_to_dict`: the normalized document for a `Config`, the inverse of `load_config`."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from .frozen import FrozenDict
from .model import Config, RouteMatch


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain dicts and lists with every field spelled out, defaults included.

    Durations are float seconds and sizes int bytes, so `load_config(config_to_dict(c)) == c`
    and the result is ready for `canonical_json`. Unset optional fields appear as null and
    unset lists as [] (a route's other actions, a cluster's `endpoints` under discovery).
    """
    return _plain(config)


def _plain(value: Any) -> Any:
    if isinstance(value, RouteMatch):
        return _route_match(value)
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, FrozenDict):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _route_match(match: RouteMatch) -> dict[str, Any]:
    # The document nests the path kind; the model flattens it into three fields.
    if match.path_regex is not None:
        path = {"regex": match.path_regex}
    elif match.path_exact is not None:
        path = {"exact": match.path_exact}
    else:
        path = {"prefix": match.path_prefix}
    return {
        "hosts": list(match.hosts),
        "path": path,
        "methods": list(match.methods),
        "headers": _plain(match.headers),
        "query": _plain(match.query),
    }
