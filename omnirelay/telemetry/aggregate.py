"""Series of several processes merged into one view, counters kept monotonic.

Each worker reports cumulative values of its own counters (only those that changed since
its previous report). The sum across workers must not go down when a worker restarts (its
counters start again from 0) or when a counter of a worker restarts (a listener
re-created, an endpoint removed from a cluster): a value lower than the last one is taken
as a restart, and the last value is kept as a base. A counter a worker no longer reports
(its route was removed) keeps its last value; the last values of a worker that exits are
kept ("retired") for the same reason. Gauges are summed over the live workers only.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .metrics import BY_NAME, COUNTER, GAUGE, HISTOGRAM, METRICS, Labels, histogram_count

_MIN_MERGED = frozenset(m.name for m in METRICS if m.merge == "min")

log = logging.getLogger("omnirelay.telemetry")

Key = tuple[str, Labels]
RATE_HISTORY = 120.0  # seconds of request totals kept for /stats rates
RATE_STEP = 0.25  # at most one rate sample per this many seconds
_REQUESTS = "omnirelay_downstream_requests_total"  # labels (listener, code_class)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b, strict=True)]
    return a + b


def _lower(new: Any, old: Any) -> bool:
    if isinstance(new, list):
        return histogram_count(new) < histogram_count(old) or len(new) != len(old)
    return new < old


@dataclass
class Source:
    """One reporting process."""

    values: dict[Key, Any] = field(default_factory=dict)
    base: dict[Key, Any] = field(default_factory=dict)  # folded counter restarts
    detail: dict[str, Any] = field(default_factory=dict)  # the report's "clusters"
    extensions: dict[str, Any] = field(default_factory=dict)  # the report's "extensions"
    updated: float = 0.0  # monotonic time of the last report

    def totals(self) -> dict[Key, Any]:
        """Counter and histogram values with the restarts folded in; gauges as reported."""
        out = dict(self.values)
        for key, b in self.base.items():
            out[key] = _add(out[key], b) if key in out else b
        return out


class Aggregate:
    def __init__(self) -> None:
        self.sources: dict[Any, Source] = {}
        self.retired: dict[Key, Any] = {}
        self._history: deque[tuple[float, float, float]] = deque()  # (t, requests, 5xx)
        self._unknown: set[str] = set()
        self._request_keys: set[Key] = set()

    def update(self, source: Any, report: Mapping[str, Any], now: float | None = None) -> None:
        """Apply a process's report (samples.Reporter.delta, or a whole samples.snapshot):
        series it names take their new value, others keep theirs; `gone` series stop (a
        gauge disappears, a counter keeps counting in the totals); `clusters`, if given,
        replaces the details."""
        now = time.monotonic() if now is None else now
        src = self.sources.setdefault(source, Source())
        values = src.values
        for name, labels, value in report.get("series", ()):
            m = BY_NAME.get(name)
            if m is None:
                if name not in self._unknown:
                    self._unknown.add(name)
                    log.warning("ignoring unknown metric %r from %s", name, source)
                continue
            if m.kind != HISTOGRAM and not isinstance(value, (int, float)):
                continue
            key = (name, tuple(labels))
            if m.kind in (COUNTER, HISTOGRAM):
                old = values.get(key)
                if old is not None and _lower(value, old):
                    src.base[key] = _add(src.base[key], old) if key in src.base else old
                if name == _REQUESTS:
                    self._request_keys.add(key)
            values[key] = value
        for name, labels in report.get("gone", ()):
            key = (name, tuple(labels))
            m = BY_NAME.get(name)
            if m is not None and m.kind == GAUGE:
                values.pop(key, None)
        if "clusters" in report:
            src.detail = dict(report["clusters"])
        if "extensions" in report:
            src.extensions = dict(report["extensions"])
        src.updated = now
        self._record_rate(now)

    def retire(self, source: Any) -> None:
        """A process exited: keep its counters in the totals, drop its gauges."""
        src = self.sources.pop(source, None)
        if src is None:
            return
        for key, value in src.totals().items():
            if BY_NAME[key[0]].kind in (COUNTER, HISTOGRAM):
                self.retired[key] = _add(self.retired[key], value) if key in self.retired \
                    else value

    def series(self) -> dict[Key, Any]:
        """Every series summed over live and retired processes."""
        out: dict[Key, Any] = dict(self.retired)
        for src in self.sources.values():
            for key, value in src.totals().items():
                if key not in out:
                    out[key] = value
                elif key[0] in _MIN_MERGED:
                    out[key] = min(out[key], value)
                else:
                    out[key] = _add(out[key], value)
        return out

    # ---- request rates for /stats and `omnirelay status` ----
    def _record_rate(self, now: float) -> None:
        if self._history and now - self._history[-1][0] < RATE_STEP:
            return
        requests = errors = 0.0
        parts = [self.retired, *(s.values for s in self.sources.values()),
                 *(s.base for s in self.sources.values())]
        for key in self._request_keys:
            for part in parts:
                value = part.get(key)
                if value:
                    requests += value
                    if key[1][1] == "5xx":
                        errors += value
        self._history.append((now, requests, errors))
        while self._history and now - self._history[0][0] > RATE_HISTORY:
            self._history.popleft()

    def rates(self, window: float = 10.0) -> dict[str, float | None]:
        """Requests and 5xx per second over about the last `window` seconds."""
        h = self._history
        if len(h) < 2:
            return {"window_s": 0.0, "requests_per_s": None, "5xx_per_s": None}
        last = h[-1]
        first = next((e for e in h if last[0] - e[0] <= window), h[0])
        if first is last:
            first = h[-2]
        dt = last[0] - first[0]
        return {"window_s": round(dt, 3),
                "requests_per_s": round((last[1] - first[1]) / dt, 3),
                "5xx_per_s": round((last[2] - first[2]) / dt, 3)}
