"""What the admin endpoints read: the supervisor of `omnirelay run`, or an embedded Relay.

Neither class imports what it wraps (the supervisor and the Relay import this package);
they read a few documented attributes.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnirelay.config import Admin, Config, canonical_json
from omnirelay.extensions.status import extension_status, merge_extensions
from omnirelay.telemetry import Aggregate
from omnirelay.telemetry.samples import Reporter

if TYPE_CHECKING:
    from omnirelay.relay import Relay
    from omnirelay.runtime.supervisor import Supervisor

log = logging.getLogger("omnirelay.admin")

Series = dict[tuple[str, tuple[str, ...]], Any]


def read_token(admin: Admin | None) -> str | None:
    """The admin token: `token`, or the stripped contents of `token_file` (read on every
    mutation, so a rotated file applies at once). None: mutations disabled."""
    if admin is None:
        return None
    if admin.token is not None:
        return admin.token
    if admin.token_file is None:
        return None
    try:
        token = Path(admin.token_file).read_text().strip()
    except OSError as e:
        log.error("admin token_file %s unreadable (%s): mutations refused", admin.token_file,
                  e.strerror or e)
        return None
    return token or None


def config_summary(config: Config, since: float) -> dict[str, Any]:
    return {
        "version": config.metadata.version,
        "epoch": config.metadata.epoch,
        "sha256": hashlib.sha256(canonical_json(config)).hexdigest(),
        "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
    }


def process_series(config: Config, workers: int, restarts: int,
                   reloads: dict[str, int], lkg_in_use: bool = False) -> Series:
    """The series the serving process adds to what its workers report."""
    meta = config.metadata
    out: Series = {
        ("omnirelay_config_info", (meta.version, str(meta.epoch))): 1,
        ("omnirelay_config_lkg_in_use", ()): int(lkg_in_use),
        ("omnirelay_workers", ()): workers,
        ("omnirelay_worker_restarts_total", ()): restarts,
    }
    for result, n in reloads.items():
        out[("omnirelay_config_reloads_total", (result,))] = n
    return out


class SupervisorSource:
    """The admin view of `omnirelay run`: workers' reports merged by the supervisor."""

    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor

    def token(self) -> str | None:
        return read_token(self.sup.config.admin)

    def readiness(self) -> tuple[bool, str]:
        phase = self.sup.phase.value
        n = len(self.sup.workers_status())
        if phase == "serving":
            return True, f"config {self.sup.config.metadata.version} active on {n} workers"
        if phase == "starting":
            ready = sum(w["ready"] for w in self.sup.workers_status())
            return False, f"starting: {ready} of {self.sup.workers} workers listening"
        return False, "draining" if self.sup.drain_requested else "stopping"

    def series(self) -> Series:
        out = dict(self.sup.telemetry.series())
        out.update(process_series(self.sup.config, len(self.sup.workers_status()),
                                  self.sup.restarts, self.sup.reloads,
                                  self.sup.config_source == "lkg"))
        return out

    def stats(self, window: float = 10.0) -> dict[str, Any]:
        ready, why = self.readiness()
        workers = self.sup.workers_status()
        for w in workers:
            src = self.sup.telemetry.sources.get(w["pid"])
            totals = src.totals() if src else {}
            w["requests_total"] = sum(v for (name, _), v in totals.items()
                                      if name == "omnirelay_downstream_requests_total")
        return {"mode": "supervisor", "pid": os.getpid(), "phase": self.sup.phase.value,
                "ready": ready, "reason": why,
                "config": config_summary(self.sup.config, self.sup.config_since),
                "workers_configured": self.sup.workers, "workers": workers,
                "worker_restarts": self.sup.restarts, "reloads": dict(self.sup.reloads),
                "rates": self.sup.telemetry.rates(window)}

    def config_dump(self) -> dict[str, Any]:
        workers = self.sup.workers_status()
        active = config_summary(self.sup.config, self.sup.config_since)
        active["source"] = str(self.sup.config_path) if self.sup.config_path else "built-in"
        active["workers"] = {"total": len(workers), "on_this_version": sum(
            w["config_version"] == self.sup.config.metadata.version for w in workers)}
        # Under a control plane: the config being activated and the LKG file (node.py).
        slots = getattr(self.sup, "config_slots", None)
        return {"active": active, "staged": None, "last_known_good": None,
                **(slots() if slots is not None else {})}

    def cluster_details(self) -> dict[str, dict[str, Any]]:
        srcs = self.sup.telemetry.sources
        return {str(w["slot"]): srcs[w["pid"]].detail
                for w in self.sup.workers_status() if w["pid"] in srcs}

    def extensions(self) -> dict[str, Any]:
        srcs = self.sup.telemetry.sources
        return merge_extensions({str(w["slot"]): srcs[w["pid"]].extensions
                                 for w in self.sup.workers_status() if w["pid"] in srcs},
                                local=extension_status())

    def drain(self) -> str:
        self.sup.request_drain()
        return (f"stopped accepting; in-flight requests have up to "
                f"{self.sup.drain_timeout:g}s, then the process exits")

    def set_log_level(self, level: str, logger: str) -> None:
        self.sup.set_log_level(level, logger)


class RelaySource:
    """The admin view of an embedded Relay (one process, read directly)."""

    def __init__(self, relay: Relay, settings: Admin):
        self.relay = relay
        self.settings = settings
        self.telemetry = Aggregate()
        self.reporter = Reporter()
        self.started = time.monotonic()
        self.pid = os.getpid()

    def refresh(self) -> None:
        self.telemetry.update(self.pid, self.reporter.delta(self.relay.telemetry_snapshot()))

    def token(self) -> str | None:
        return read_token(self.settings)

    def readiness(self) -> tuple[bool, str]:
        if self.relay.ready:
            return True, f"config {self.relay.config_version} active"
        return False, "not serving (starting, draining or stopped)"

    def series(self) -> Series:
        self.refresh()
        out = dict(self.telemetry.series())
        out.update(process_series(self.relay.config, 1, 0, self.relay.reloads))
        return out

    def stats(self, window: float = 10.0) -> dict[str, Any]:
        ready, why = self.readiness()
        self.refresh()
        src = self.telemetry.sources[self.pid]
        requests = sum(v for (name, _), v in src.totals().items()
                       if name == "omnirelay_downstream_requests_total")
        return {"mode": "embedded", "pid": self.pid, "phase": "serving" if ready else "stopped",
                "ready": ready, "reason": why,
                "config": config_summary(self.relay.config, self.relay.config_since),
                "workers_configured": 1,
                "workers": [{"slot": 0, "pid": self.pid, "ready": ready,
                             "uptime_s": round(time.monotonic() - self.started, 3),
                             "config_version": self.relay.config_version,
                             "stats_age_s": 0.0, "requests_total": requests}],
                "worker_restarts": 0, "reloads": dict(self.relay.reloads),
                "rates": self.telemetry.rates(window)}

    def config_dump(self) -> dict[str, Any]:
        active = config_summary(self.relay.config, self.relay.config_since)
        active["source"] = "embedded"
        active["workers"] = {"total": 1, "on_this_version": 1}
        return {"active": active, "staged": None, "last_known_good": None}

    def cluster_details(self) -> dict[str, dict[str, Any]]:
        self.refresh()
        return {"0": self.telemetry.sources[self.pid].detail}

    def extensions(self) -> dict[str, Any]:
        return merge_extensions({"0": extension_status()})

    def drain(self) -> str:
        asyncio.get_running_loop().create_task(self.relay.stop())
        return "stopped accepting; in-flight requests finish, then the relay stops"

    def set_log_level(self, level: str, logger: str) -> None:
        logging.getLogger(logger or None).setLevel(level.upper())
