"""The Python filter API: a factory built once per config load with an immutable
config, creating one per-stream filter object per request (Envoy's model).

A per-stream filter overrides only the hooks it needs; hooks it leaves as the
pass-through defaults are never called by the core.
"""
from __future__ import annotations

from typing import Any, ClassVar

from omnirelay._core import HOOK_METHODS, LocalReply

CONTINUE = 0
STOP = 1

__all__ = ["CONTINUE", "HOOK_METHODS", "STOP", "FilterFactory", "HttpFilter", "LocalReply"]


class HttpFilter:
    """Pass-through per-stream filter. Hooks return CONTINUE, STOP (the filter
    calls ``stream.resume()`` later) or a LocalReply that answers the client.

    Body hooks may also return replacement bytes, or STOP to buffer: the core
    then calls the hook again with everything buffered so far plus the next
    chunk, up to the route's ``max_request_body`` (413 past it).
    """

    def __init__(self, config: Any = None):
        self.config = config

    def on_request_headers(self, stream, end_stream: bool):
        return CONTINUE

    def on_request_body(self, stream, data: bytes, end_stream: bool):
        return CONTINUE

    def on_request_trailers(self, stream, trailers):
        return CONTINUE

    def on_response_headers(self, stream, end_stream: bool):
        return CONTINUE

    def on_response_body(self, stream, data: bytes, end_stream: bool):
        return CONTINUE

    def on_response_trailers(self, stream, trailers):
        return CONTINUE

    def on_log(self, stream) -> None:
        return None


class FilterFactory:
    """Built once per config load. Subclasses set ``filter_class`` and may
    override ``parse_config`` to validate and freeze their config."""

    name: ClassVar[str] = ""
    filter_class: ClassVar[type[HttpFilter]] = HttpFilter

    def __init__(self, config: Any, binding: str = ""):
        # binding: where the filter sits in the config ("spec.routes[0].filters[1]"),
        # for factories that keep state across reloads (e.g. rate-limit buckets).
        self.binding = binding
        self.config = self.parse_config(config)

    def parse_config(self, config: Any) -> Any:
        return config

    def create(self) -> HttpFilter:
        return self.filter_class(self.config)

    @classmethod
    def overridden_hooks(cls) -> frozenset[str]:
        """Hooks the per-stream class overrides; only those are called."""
        fc = cls.filter_class
        return frozenset(h for h in HOOK_METHODS
                         if getattr(fc, h, None) is not getattr(HttpFilter, h))
