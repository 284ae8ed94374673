"""What one process reports: its core counters as metric series, and cluster details.

Runs in each worker every REPORT_INTERVAL (and on demand in an embedded Relay). Reading
the counters is a few attribute reads per listener, cluster and route: the hot path only
bumps C fields and never calls in here. A (route, cluster) pair is reported once it saw
its first upstream attempt, so a big route table with few busy routes stays cheap, and
`Reporter` sends only what changed since its last report.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omnirelay._core import L4Stats

from .metrics import CODE_CLASSES, Labels

REPORT_INTERVAL = 0.5  # seconds between a worker's reports to the supervisor

Entry = tuple[str, Labels, Any]

_L4_ERRORS = {"idle_timeout": "downstream_cx_idle_timeout", "no_route": "downstream_cx_no_route",
              "tls_invalid": "downstream_cx_tls_invalid",
              "hello_timeout": "downstream_cx_hello_timeout"}


def listener_series(name: str, stats: Any, connections: int) -> list[Entry]:
    """Series of one listener from its core Stats (HTTP) or L4Stats."""
    s = stats
    lb = (name,)
    out: list[Entry] = [
        ("omnirelay_downstream_connections_total", lb, s.downstream_cx_total),
        ("omnirelay_downstream_connections_active", lb, connections),
    ]
    if isinstance(s, L4Stats):
        fail, timeout = s.upstream_cx_connect_fail, s.upstream_cx_connect_timeout
        out += [
            ("omnirelay_downstream_rx_bytes_total", lb, s.downstream_cx_rx_bytes_total),
            ("omnirelay_downstream_tx_bytes_total", lb, s.downstream_cx_tx_bytes_total),
            ("omnirelay_l4_upstream_connections_total", lb, s.upstream_cx_total),
            ("omnirelay_l4_upstream_connect_failures_total", (name, "error"), fail - timeout),
            ("omnirelay_l4_upstream_connect_failures_total", (name, "timeout"), timeout),
            ("omnirelay_l4_upstream_connect_failures_total", (name, "overflow"),
             s.upstream_cx_overflow),
            ("omnirelay_l4_upstream_connect_failures_total", (name, "no_healthy_upstream"),
             s.upstream_cx_none_healthy),
        ]
        out += [("omnirelay_downstream_connection_errors_total", (name, reason), getattr(s, f))
                for reason, f in _L4_ERRORS.items()]
        return out
    by_class = (s.downstream_rq_1xx, s.downstream_rq_2xx, s.downstream_rq_3xx,
                s.downstream_rq_4xx, s.downstream_rq_5xx)
    out += [("omnirelay_downstream_requests_total", (name, cls), n)
            for cls, n in zip(CODE_CLASSES, by_class, strict=True)]
    out += [
        ("omnirelay_downstream_http2_connections_total", lb, s.downstream_cx_http2_total),
        ("omnirelay_downstream_requests_active", lb, s.downstream_rq_active),
        ("omnirelay_downstream_local_replies_total", lb, s.downstream_rq_local_reply),
        ("omnirelay_downstream_protocol_errors_total", lb, s.downstream_rq_protocol_error),
        ("omnirelay_downstream_rx_bytes_total", lb, s.downstream_rq_body_bytes),
        ("omnirelay_downstream_tx_bytes_total", lb, s.downstream_rs_body_bytes),
        ("omnirelay_downstream_connection_errors_total", (name, "http2_flood"),
         s.downstream_cx_http2_flood),
        ("omnirelay_shadow_requests_total", lb, s.upstream_rq_shadow),
        ("omnirelay_shadow_failures_total", lb, s.upstream_rq_shadow_failed),
    ]
    return out


def upstream_series(route: str, cluster: str, u: Any) -> list[Entry]:
    """Series of one (route, cluster) pair from its core UpstreamStats."""
    lb = (cluster, route)
    d = u.as_dict()
    out: list[Entry] = [
        ("omnirelay_upstream_requests_total", lb, d["rq_total"]),
        ("omnirelay_upstream_retries_total", lb, d["rq_retry"]),
        ("omnirelay_upstream_timeouts_total", lb, d["rq_timeout"]),
        ("omnirelay_upstream_per_try_timeouts_total", lb, d["rq_per_try_timeout"]),
        ("omnirelay_upstream_resets_total", lb, d["rq_reset"]),
        ("omnirelay_upstream_connect_failures_total", lb, d["cx_connect_fail"]),
        ("omnirelay_upstream_request_duration_seconds", lb, [*d["time_counts"], d["time_sum"]]),
    ]
    out += [("omnirelay_upstream_responses_total", (cluster, route, cls), d[f"rq_{cls}"])
            for cls in CODE_CLASSES]
    return out


def cluster_series(name: str, c: Any) -> list[Entry]:
    """Series of one core Cluster: breaker overflows, ejections and live usage."""
    eps = c.endpoints
    lb = (name,)
    return [
        ("omnirelay_cluster_overflow_total", lb, c.overflows),
        ("omnirelay_cluster_ejections_total", lb, sum(e.ejections for e in eps)),
        ("omnirelay_upstream_connections_active", lb, sum(e.open_connections for e in eps)),
        ("omnirelay_upstream_requests_active", lb, c.rq_active),
        ("omnirelay_upstream_requests_pending", lb, c.rq_pending),
    ]


def cluster_detail(c: Any) -> dict[str, Any]:
    """One core Cluster as /clusters shows it for one process."""
    return {"overflows": c.overflows, "rq_active": c.rq_active, "rq_pending": c.rq_pending,
            **c.stats()}


def snapshot(listeners: Mapping[str, Any], clusters: Mapping[str, Any],
             upstream: Mapping[tuple[str, str], Any],
             extra: Iterable[Entry] = ()) -> dict[str, Any]:
    """A process's report: {"series": [[name, labels, value], ...], "clusters": {...}}.

    `listeners`: name -> runtime (with .stats and .active_connections); `clusters`:
    name -> core Cluster; `upstream`: (route, cluster) -> UpstreamStats. JSON-ready."""
    series: list[Entry] = []
    for name, runtime in listeners.items():
        series += listener_series(name, runtime.stats, runtime.active_connections)
    for (route, cluster), u in upstream.items():
        if u.rq_total:  # nothing else can be counted before the first attempt
            series += upstream_series(route, cluster, u)
    for name, c in clusters.items():
        series += cluster_series(name, c)
    series += extra
    return {"series": [[n, list(lb), v] for n, lb, v in series],
            "clusters": {name: cluster_detail(c) for name, c in clusters.items()}}


class Reporter:
    """Turns full snapshots into reports of what changed since the previous one:
    {"series": [changed entries], "gone": [[name, labels], ...] (series no longer in the
    snapshot), "clusters": {...} (only when the details changed)}. The receiver
    (`Aggregate.update`) applies them in order; the first report is complete."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.last_clusters: dict[str, Any] | None = None
        self.last_extensions: dict[str, Any] | None = None

    def delta(self, snap: Mapping[str, Any]) -> dict[str, Any]:
        current = {(name, tuple(labels)): value for name, labels, value in snap["series"]}
        last = self.last
        changed = [[name, list(labels), value] for (name, labels), value in current.items()
                   if last.get((name, labels)) != value]
        gone = [[name, list(labels)] for (name, labels) in last if (name, labels) not in current]
        self.last = current
        out: dict[str, Any] = {"series": changed}
        if gone:
            out["gone"] = gone
        if snap["clusters"] != self.last_clusters:
            out["clusters"] = self.last_clusters = snap["clusters"]
        # The process's extension bindings and packages (/extensions), when they changed.
        if snap.get("extensions") is not None and snap["extensions"] != self.last_extensions:
            out["extensions"] = self.last_extensions = snap["extensions"]
        return out
