"""omnirelay.filters.http.native: run a native plugin (a shared library built against
omnirelay_plugin.h) as an HTTP filter.

It lives with the host and registers itself when the runtime imports it, so the filter
layer never imports the extension hosts (ARCHITECTURE.md layering).

config (see docs/extensions.md)::

    path: /etc/omnirelay/plugins/add_header.so
    config: '{"header": "x-tag"}'       # string, or a mapping (sent as JSON) for create()
    failure_policy: fail_closed          # fail_open | fail_closed | reload
    reload_fallback: fail_closed         # with reload: what a disabled binding does
    max_call_us: 10000                   # call-time monitor: a hook call longer is a trip
    max_trips: 3                         # trips that disable the binding

The factory exposes ``native_table``: the core calls the plugin's hooks through it, at C
level and without the GIL; no per-stream Python filter object exists. Once the binding
is disabled (the call-time monitor tripped ``max_trips`` times, or a hook returned an
invalid result) its fallback applies: fail_open skips the filter, fail_closed answers 503.
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from omnirelay.extensions.native.config import NativeConfig, parse_native_config
from omnirelay.extensions.native.loader import load_plugin
from omnirelay.extensions.packages import loading
from omnirelay.filters.base import FilterFactory, HttpFilter
from omnirelay.filters.registry import register

_log = logging.getLogger("omnirelay.extensions.native")
_BINDINGS: weakref.WeakSet[NativeFilterFactory] = weakref.WeakSet()


@register("omnirelay.filters.http.native")
class NativeFilterFactory(FilterFactory):
    """Opens the library, checks its ABI and builds the binding's context when the config
    is loaded: a library that cannot be opened, lacks the init symbol, has an
    incompatible ABI or rejects its config is a filter config error."""

    config: NativeConfig

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        self.disabled_at: float | None = None
        cfg = self.config
        if cfg.package is not None:
            # The library is the payload of a signed package, verified first; a payload
            # that fails to load is recorded as the package's failure.
            with loading(cfg.package, "native", binding=binding) as pkg:
                self._load(pkg.payload_file(".so"))
        else:
            self._load(cfg.path)
        self.native_table = self.core.table_address
        _BINDINGS.add(self)

    def _load(self, path: str) -> None:
        self.plugin = load_plugin(path, self.config.sha256)
        self.plugin_name = self.config.name or self.plugin.name
        self.core = self.plugin.bind(self.config, self.plugin_name, on_disable=_DisableHook(self))

    def parse_config(self, config):
        return parse_native_config(config)

    def create(self):
        # The chain calls native_table instead; never used per stream.
        return HttpFilter()

    def overridden_hooks(self):  # instance-level: the hooks the plugin implements
        return self.core.hooks()

    def disable(self, reason: str = "disabled by the operator") -> None:
        """Stop calling the plugin; the fallback applies until the config is loaded again."""
        if not self.core.disabled:
            self.core.disable(reason)
            self._on_disable("manual", reason)

    def _on_disable(self, kind: str, reason: str) -> None:
        self.disabled_at = time.time()
        _log.warning("native plugin %s at %s disabled (%s); failure_policy %s: %s from now on",
                     self.plugin_name, self.binding or "?", reason, self.config.failure_policy,
                     "skipping the filter" if self.config.fallback == "fail_open"
                     else "answering 503")

    def stats(self) -> dict[str, Any]:
        """The binding's status and call counters (this process), in the shape of
        omnirelay.extensions.status: state "running", or "failed" once disabled (the
        fallback applies to every request until the config is loaded again)."""
        s = self.core.stats()
        reason = s["disabled_reason"] or ""
        by_kind = {"bad_result": s["failures"]} if s["failures"] else {}
        if reason.startswith("watchdog:"):
            by_kind["call_time"] = 1
        return {
            "binding": self.binding, "name": self.plugin_name, "plugin": self.plugin_name,
            "path": self.config.path, "abi": self.plugin.abi, "sha256": self.plugin.sha256,
            "state": "failed" if s["disabled"] else "running",
            "failure_policy": self.config.failure_policy, "fallback": self.config.fallback,
            "max_call_us": self.config.max_call_us, "max_trips": self.config.max_trips,
            "calls": s["calls"], "trips": s["trips"],
            "failures": sum(by_kind.values()), "failures_by_kind": by_kind,
            "watchdog_trips": {"call_time": s["trips"]} if s["trips"] else {},
            "fallback_calls": s["fallback_calls"], "call_time_total_ns": s["total_ns"],
            "call_time_max_ns": s["max_ns"], "last_error": s["disabled_reason"],
            "disabled_at": self.disabled_at,
        }


class _DisableHook:
    """The core's on_disable callback, holding the factory weakly (the factory owns the
    core binding, which holds this)."""

    __slots__ = ("factory",)

    def __init__(self, factory: NativeFilterFactory) -> None:
        self.factory = weakref.ref(factory)

    def __call__(self, kind: str, reason: str) -> None:
        f = self.factory()
        if f is not None:
            f._on_disable(kind, reason)


def binding_statuses() -> list[dict[str, Any]]:
    """The status of every live native plugin binding of this process (for the admin API
    and the metrics exporter)."""
    return sorted((f.stats() for f in list(_BINDINGS)), key=lambda d: (d["binding"], d["plugin"]))
