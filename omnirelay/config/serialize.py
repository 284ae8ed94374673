"""`config_to_dict`: the normalized document for a `Config`, the inverse of `load_config`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from .frozen import FrozenDict
from .model import Config, RouteMatch


def config_to_dict(config: Config,
                   free_form: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Plain dicts and lists with every field spelled out, defaults included.

    Durations are float seconds and sizes int bytes, so `load_config(config_to_dict(c)) == c`
    and the result is ready for `canonical_json`. Unset optional fields appear as null and
    unset lists as [] (a route's other actions, a cluster's `endpoints` under discovery).
    `free_form`, if given, is applied to the plain copy of every free-form mapping (filter
    configs, labels): the only parts not plain JSON by construction.
    """

    def plain(value: Any) -> Any:
        t = type(value)
        names = _FIELDS.get(t)
        if names is not None:
            return {name: plain(getattr(value, name)) for name in names}
        if t is tuple:
            return [plain(item) for item in value]
        if t is RouteMatch:
            return _route_match(value, plain)
        if is_dataclass(value) and not isinstance(value, type):
            _FIELDS[t] = tuple(f.name for f in fields(value))
            return plain(value)
        if isinstance(value, FrozenDict):
            d = value.to_dict()
            return d if free_form is None else free_form(d)
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        return value

    return plain(config)


# Field names of each dataclass met, in declaration order (fields() is slow to call
# per object, and a 10,000-route config has a few hundred thousand of them).
_FIELDS: dict[type, tuple[str, ...]] = {}


def _route_match(match: RouteMatch, plain: Callable[[Any], Any]) -> dict[str, Any]:
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
        "headers": plain(match.headers),
        "query": plain(match.query),
    }
