"""The state of every extension binding of this process, for /extensions and the metrics.

A binding is one extension entry of the loaded config (a Wasm plugin, a native plugin, a
DSL filter). Each host reports its bindings as dicts with at least::

    {"binding": "spec.routes[0].filters[1]", "name": str, "state": str,
     "failure_policy": str, "failures": int, "failures_by_kind": {reason: n},
     "watchdog_trips": {watchdog: n}, "last_error": str | None}

A host provides them with a ``binding_statuses()`` function in its package
(``omnirelay.extensions.<kind>``). Hosts not yet imported by this process have no bindings
and are not imported here. Bindings loaded from a
signed package carry its summary (name, version, sha256, signer key id) under "package".
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from omnirelay.extensions import packages
from omnirelay.extensions.support import support

log = logging.getLogger("omnirelay.extensions")

Entry = tuple[str, tuple[str, ...], Any]

# Wasm failure kinds that are its watchdogs tripping (errors.GuestFailure.kind).
WASM_WATCHDOGS = ("deadline", "memory")

# Package hot reloads of this process (omnirelay.extensions.watch): result -> count.
RELOADS: dict[str, int] = {"applied": 0, "failed": 0}


def _wasm_statuses() -> list[dict[str, Any]]:
    shared = sys.modules.get("omnirelay.extensions.wasm.shared")
    if shared is None:
        return []
    out = []
    for s in shared.binding_statuses():
        by_kind = s.get("failures_by_kind", {})
        out.append(s | {"name": s["plugin"],
                        "watchdog_trips": {k: by_kind[k] for k in WASM_WATCHDOGS
                                           if by_kind.get(k)}})
    return out


def _dsl_statuses() -> list[dict[str, Any]]:
    """The DSL filter's per-binding counters (``filter.stats()``) as binding statuses."""
    flt = sys.modules.get("omnirelay.extensions.dsl.filter")
    stats = getattr(flt, "stats", None)
    if stats is None:
        return []
    out = []
    for binding, c in stats().items():
        budget, errors = c.get("budget_exceeded", 0), c.get("failures", 0)
        by_kind = {k: n for k, n in (("step_budget", budget), ("error", errors)) if n}
        out.append({"binding": binding, "name": binding, "state": "running",
                    "failures": budget + errors, "failures_by_kind": by_kind,
                    "watchdog_trips": {"step_budget": budget} if budget else {},
                    "requests": c.get("evaluations", 0), "matches": c.get("matches", 0)})
    return out


def _host_statuses(kind: str) -> list[dict[str, Any]]:
    if kind == "wasm":
        return _wasm_statuses()
    module = sys.modules.get(f"omnirelay.extensions.{kind}")
    fn = getattr(module, "binding_statuses", None) if module is not None else None
    if fn is None and kind == "dsl":
        fn = _dsl_statuses
    if fn is None:
        return []
    try:
        return list(fn())
    except Exception:  # a host's status bug must not break the admin API or the metrics
        log.exception("%s extension host: binding_statuses failed", kind)
        return []


def bindings() -> list[dict[str, Any]]:
    """Every binding of every host, with its kind and package (if any)."""
    loaded = packages.REGISTRY.snapshot()["bindings"]
    out = []
    for kind in ("wasm", "native", "dsl"):
        for s in _host_statuses(kind):
            entry = {"kind": kind, **s}
            entry.setdefault("watchdog_trips", {})
            entry.setdefault("failures_by_kind", {})
            package = loaded.get(entry.get("binding") or "")
            # A binding whose payload is not the package's was loaded otherwise since.
            if package is not None and (package["kind"] != kind or entry.get("sha256") not in (
                    None, package["sha256"])):
                package = None
            entry["package"] = package
            out.append(entry)
    return sorted(out, key=lambda e: (e["kind"], str(e.get("binding")), str(e.get("name"))))


def extension_status() -> dict[str, Any]:
    """What /extensions shows for this process: bindings (state, failures, policy),
    packages (the active version of each file and its last refusal), the latest
    refusals, hot-reload counts and the hosts this build offers."""
    snap = packages.REGISTRY.snapshot()
    return {"bindings": bindings(), "packages": snap["packages"],
            "recent_failures": snap["recent_failures"], "reloads": dict(RELOADS),
            "hosts": support().abis}


def extension_series() -> list[Entry]:
    """Metric series (telemetry.metrics names): failures and watchdog trips per extension,
    package refusals (reason = the refusal code), package hot reloads."""
    failures: dict[tuple[str, ...], int] = {}
    trips: dict[tuple[str, ...], int] = {}
    for b in bindings():
        name = str(b.get("name") or b.get("binding") or "")
        for reason, n in b["failures_by_kind"].items():
            key = (b["kind"], name, str(reason))
            failures[key] = failures.get(key, 0) + int(n)
        for watchdog, n in b["watchdog_trips"].items():
            key = (b["kind"], name, str(watchdog))
            trips[key] = trips.get(key, 0) + int(n)
    for key, n in packages.REGISTRY.failure_counts().items():
        failures[key] = failures.get(key, 0) + n
    out: list[Entry] = [("omnirelay_extension_failures_total", k, v)
                        for k, v in failures.items()]
    out += [("omnirelay_extension_watchdog_trips_total", k, v) for k, v in trips.items()]
    out += [("omnirelay_extension_reloads_total", (result,), n)
            for result, n in RELOADS.items()]
    return out


def merge_extensions(workers: Mapping[str, Mapping[str, Any]],
                     local: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One /extensions view over the processes: `workers` maps a worker id to what
    `extension_status()` said there; `local` is the serving process's own (the supervisor
    verifies packages when it validates a config, before any worker loads them). Every
    binding, package and refusal is tagged with its "worker"; reload counts are summed."""
    out: dict[str, Any] = {"bindings": [], "packages": [], "recent_failures": [],
                           "reloads": {}, "hosts": support().abis}
    for worker, status in sorted(workers.items()):
        for key in ("bindings", "packages", "recent_failures"):
            out[key] += [{**item, "worker": worker} for item in status.get(key, ())]
        for result, n in status.get("reloads", {}).items():
            out["reloads"][result] = out["reloads"].get(result, 0) + n
    if local is not None:
        out["supervisor"] = {"packages": list(local.get("packages", ())),
                             "recent_failures": list(local.get("recent_failures", ()))}
    out["recent_failures"].sort(key=lambda f: f.get("at") or 0)
    return out
