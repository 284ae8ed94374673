"""omnirelay.filters.http.headers: add, set or remove request/response headers."""
from __future__ import annotations

from dataclasses import dataclass

from omnirelay.filters.base import CONTINUE, FilterFactory, HttpFilter
from omnirelay.filters.registry import register

_KEYS = {"request_add", "request_set", "request_remove",
         "response_add", "response_set", "response_remove"}


@dataclass(frozen=True)
class HeadersConfig:
    request_add: tuple[tuple[str, str], ...] = ()
    request_set: tuple[tuple[str, str], ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[tuple[str, str], ...] = ()
    response_set: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()


def _pairs(value, key):
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a mapping of header name to value")
    out = []
    for k, v in value.items():
        if not isinstance(v, str) or any(c in v for c in "\r\n\0"):
            raise ValueError(f"{key}.{k}: value must be a string without CR, LF or NUL")
        out.append((str(k), v))
    return tuple(out)


class HeadersFilter(HttpFilter):
    __slots__ = ("cfg",)

    def __init__(self, cfg: HeadersConfig):
        self.cfg = cfg

    def on_request_headers(self, stream, end_stream):
        _apply(stream.request_headers, self.cfg.request_remove, self.cfg.request_set,
               self.cfg.request_add)
        return CONTINUE

    def on_response_headers(self, stream, end_stream):
        _apply(stream.response_headers, self.cfg.response_remove, self.cfg.response_set,
               self.cfg.response_add)
        return CONTINUE


def _apply(headers, remove, set_, add):
    for name in remove:
        headers.remove(name)
    for name, value in set_:
        headers.set(name, value)
    for name, value in add:
        headers.add(name, value)


@register("omnirelay.filters.http.headers")
class HeadersFactory(FilterFactory):
    filter_class = HeadersFilter

    def parse_config(self, config):
        config = dict(config or {})
        unknown = set(config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
        kw = {}
        for key in ("request_add", "request_set", "response_add", "response_set"):
            if key in config:
                kw[key] = _pairs(config[key], key)
        for key in ("request_remove", "response_remove"):
            if key in config:
                if not isinstance(config[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list of header names")
                kw[key] = tuple(str(x) for x in config[key])
        return HeadersConfig(**kw)
