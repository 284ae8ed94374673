"""Every metric OmniRelay exports, declared in one list, and their Prometheus exposition.

Workers (and an embedded Relay) produce *series* — `(name, label values, value)` — for the
names below (see `samples`); the supervisor sums them across workers (`aggregate`) and
renders them here with prometheus-client. docs/operations.md documents the same list; a test
keeps the two in step.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as Family,
)

from omnirelay._core import UPSTREAM_TIME_BOUNDS

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# Label value sets used by the series producers.
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# A histogram value is the per-bucket counts (one per bound, then the overflow slot) + the sum.
HISTOGRAM_BOUNDS: tuple[float, ...] = tuple(UPSTREAM_TIME_BOUNDS)

# Our names are plain Prometheus names, so the classic text format is what we serve.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str  # COUNTER | GAUGE | HISTOGRAM
    labels: tuple[str, ...]
    help: str
    merge: str = "sum"  # across workers: "sum", or "min" for gauges such as deadlines


METRICS: tuple[Metric, ...] = (
    # ---- downstream, per listener (HTTP and L4) ----
    Metric("omnirelay_downstream_connections_total", COUNTER, ("listener",),
           "Client connections accepted."),
    Metric("omnirelay_downstream_connections_active", GAUGE, ("listener",),
           "Client connections open now."),
    Metric("omnirelay_downstream_http2_connections_total", COUNTER, ("listener",),
           "Client connections that spoke HTTP/2 (h2 by ALPN or h2c)."),
    Metric("omnirelay_downstream_requests_total", COUNTER, ("listener", "code_class"),
           "Requests answered, by response status class (1xx to 5xx)."),
    Metric("omnirelay_downstream_requests_active", GAUGE, ("listener",),
           "Requests in flight."),
    Metric("omnirelay_downstream_local_replies_total", COUNTER, ("listener",),
           "Responses the proxy made itself: errors, filter replies, direct responses, "
           "redirects."),
    Metric("omnirelay_downstream_protocol_errors_total", COUNTER, ("listener",),
           "Requests rejected as malformed HTTP (400)."),
    Metric("omnirelay_downstream_rx_bytes_total", COUNTER, ("listener",),
           "Bytes received from clients: request bodies on HTTP listeners, every byte on L4 "
           "listeners."),
    Metric("omnirelay_downstream_tx_bytes_total", COUNTER, ("listener",),
           "Bytes sent to clients: proxied response bodies on HTTP listeners, every byte on L4 "
           "listeners."),
    Metric("omnirelay_downstream_connection_errors_total", COUNTER, ("listener", "reason"),
           "Client connections ended by the proxy: http2_flood (HTTP); idle_timeout, "
           "no_route, tls_invalid, hello_timeout (L4)."),
    Metric("omnirelay_shadow_requests_total", COUNTER, ("listener",),
           "Mirrored (shadow) requests sent."),
    Metric("omnirelay_shadow_failures_total", COUNTER, ("listener",),
           "Mirrored (shadow) requests that failed."),
    # ---- upstream, per route and cluster (HTTP) ----
    Metric("omnirelay_upstream_requests_total", COUNTER, ("cluster", "route"),
           "Upstream attempts started (each retry is one more)."),
    Metric("omnirelay_upstream_responses_total", COUNTER, ("cluster", "route", "code_class"),
           "Upstream response heads received, by status class (retried ones included)."),
    Metric("omnirelay_upstream_retries_total", COUNTER, ("cluster", "route"),
           "Retries scheduled by the route's retry policy."),
    Metric("omnirelay_upstream_timeouts_total", COUNTER, ("cluster", "route"),
           "Requests that ran out of the route timeout (answered 504)."),
    Metric("omnirelay_upstream_per_try_timeouts_total", COUNTER, ("cluster", "route"),
           "Attempts that ran out of the per-try timeout."),
    Metric("omnirelay_upstream_resets_total", COUNTER, ("cluster", "route"),
           "Attempts whose upstream connection or stream was reset."),
    Metric("omnirelay_upstream_connect_failures_total", COUNTER, ("cluster", "route"),
           "Upstream connects that failed or timed out."),
    Metric("omnirelay_upstream_request_duration_seconds", HISTOGRAM, ("cluster", "route"),
           "Upstream response time of completed attempts: from the attempt's start to the "
           "last byte of the response."),
    # ---- clusters ----
    Metric("omnirelay_cluster_overflow_total", COUNTER, ("cluster",),
           "Requests and connections refused by the cluster's circuit breakers."),
    Metric("omnirelay_cluster_ejections_total", COUNTER, ("cluster",),
           "Endpoint ejections by outlier detection."),
    Metric("omnirelay_upstream_connections_active", GAUGE, ("cluster",),
           "Open upstream connections (HTTP clusters)."),
    Metric("omnirelay_upstream_requests_active", GAUGE, ("cluster",),
           "Requests in flight to the cluster (circuit breaker max_requests)."),
    Metric("omnirelay_upstream_requests_pending", GAUGE, ("cluster",),
           "Requests waiting for an upstream connection (max_pending_requests)."),
    # ---- L4 upstream, per listener ----
    Metric("omnirelay_l4_upstream_connections_total", COUNTER, ("listener",),
           "Upstream connects started by an L4 listener."),
    Metric("omnirelay_l4_upstream_connect_failures_total", COUNTER, ("listener", "reason"),
           "L4 connections that got no upstream: error, timeout, overflow, "
           "no_healthy_upstream."),
    # ---- TLS termination, per listener ----
    Metric("omnirelay_tls_certificate_expiry_timestamp_seconds", GAUGE, ("listener", "file"),
           "When each certificate (or the earliest of a CA bundle) a TLS listener relies on "
           "expires, as a Unix time.", merge="min"),
    Metric("omnirelay_tls_handshakes_refused_total", COUNTER, ("listener", "reason"),
           "TLS handshakes the listener refused: expired (its material is past its "
           "not-after; fail closed until a reload brings valid files)."),
    Metric("omnirelay_tls_handshakes_total", COUNTER, ("listener",),
           "TLS handshakes completed by the listener (TLS in the core)."),
    Metric("omnirelay_tls_handshake_errors_total", COUNTER, ("listener", "reason"),
           "TLS handshakes that did not complete: failed (a protocol or verification "
           "error; the alert is sent), timeout (no finished handshake within 10 s)."),
    # ---- extensions (Wasm, native, DSL; signed packages) ----
    Metric("omnirelay_extension_failures_total", COUNTER, ("kind", "extension", "reason"),
           "Extension failures: a binding's (trap, deadline, memory, exit, host, load; "
           "step budget, error) and refused packages (unsigned, unknown_key, bad_signature, "
           "hash_mismatch, unsupported_abi, missing_capability, load_failed, ...)."),
    Metric("omnirelay_extension_watchdog_trips_total", COUNTER,
           ("kind", "extension", "watchdog"),
           "Extension calls stopped by a watchdog: deadline, memory (Wasm), step_budget "
           "(DSL), call_time (native)."),
    Metric("omnirelay_extension_reloads_total", COUNTER, ("result",),
           "Hot reloads after an extension package file changed: applied, or failed (the "
           "running version kept serving)."),
    # ---- metrics Wasm plugins define (proxy_define_metric), by the plugin's metric name ----
    Metric("omnirelay_wasm_plugin_counter_total", COUNTER, ("name",),
           "Counters defined by Wasm plugins."),
    Metric("omnirelay_wasm_plugin_gauge", GAUGE, ("name",),
           "Gauges defined by Wasm plugins (summed over workers)."),
    Metric("omnirelay_wasm_plugin_histogram_observations_total", COUNTER, ("name",),
           "Values recorded into histograms defined by Wasm plugins."),
    Metric("omnirelay_wasm_plugin_histogram_sum_total", COUNTER, ("name",),
           "Sum of the values recorded into histograms defined by Wasm plugins."),
    # ---- access logs, per listener ----
    Metric("omnirelay_access_log_records_total", COUNTER, ("listener", "result"),
           "Access log records by outcome: written, sampled_out, rate_limited, "
           "tenant_rate_limited, dropped (writer backlog), write_error."),
    # ---- the process ----
    Metric("omnirelay_config_info", GAUGE, ("version", "epoch"),
           "The active config: 1, labelled with its metadata version and epoch."),
    Metric("omnirelay_config_lkg_in_use", GAUGE, (),
           "1 while a node under a control plane serves the last-known-good snapshot it "
           "started from (the control plane has not delivered a config since), else 0."),
    Metric("omnirelay_config_reloads_total", COUNTER, ("result",),
           "Config reloads: applied or rejected."),
    Metric("omnirelay_workers", GAUGE, (),
           "Worker processes running (1 for an embedded Relay)."),
    Metric("omnirelay_worker_restarts_total", COUNTER, (),
           "Workers restarted after exiting unexpectedly."),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

Labels = tuple[str, ...]
Series = Mapping[tuple[str, Labels], object]  # (name, label values) -> value


def histogram_count(value: list[float]) -> float:
    return sum(value[:-1])


def cumulative_buckets(value: list[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (`le`, cumulative count) for a histogram value."""
    out, total = [], 0.0
    for bound, n in zip(HISTOGRAM_BOUNDS, value, strict=False):
        total += n
        out.append((_le(bound), total))
    out.append(("+Inf", histogram_count(value)))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def _family(m: Metric) -> Family:
    if m.kind == COUNTER:
        return CounterMetricFamily(m.name, m.help, labels=m.labels)
    if m.kind == GAUGE:
        return GaugeMetricFamily(m.name, m.help, labels=m.labels)
    return HistogramMetricFamily(m.name, m.help, labels=m.labels)


class _Collector:
    def __init__(self, series: Series):
        self.by_name: dict[str, list[tuple[Labels, object]]] = {}
        for (name, labels), value in series.items():
            self.by_name.setdefault(name, []).append((labels, value))

    def collect(self) -> Iterator[Family]:
        for m in METRICS:
            fam = _family(m)
            for labels, value in sorted(self.by_name.get(m.name, ()), key=lambda e: e[0]):
                if m.kind == HISTOGRAM:
                    fam.add_metric(list(labels), buckets=cumulative_buckets(value),
                                   sum_value=value[-1])
                else:
                    fam.add_metric(list(labels), value)
            yield fam


def exposition(series: Series) -> bytes:
    """The Prometheus text format (0.0.4) for `series`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(series))
    return generate_latest(registry)


def as_json(series: Series) -> dict[str, list[dict]]:
    """`series` for /stats: name -> [{"labels": {...}, "value": v}], histograms as
    {"buckets": {le: cumulative}, "sum": s, "count": n}."""
    out: dict[str, list[dict]] = {}
    for (name, labels), value in sorted(series.items(), key=lambda e: e[0]):
        m = BY_NAME[name]
        entry: dict = {"labels": dict(zip(m.labels, labels, strict=True))}
        if m.kind == HISTOGRAM:
            entry["buckets"] = dict(cumulative_buckets(value))
            entry["sum"] = value[-1]
            entry["count"] = histogram_count(value)
        else:
            entry["value"] = value
        out.setdefault(name, []).append(entry)
    return out


def total(series: Series, name: str, **match: str) -> float:
    """The sum of the series called `name` whose labels include `match`."""
    labels = BY_NAME[name].labels
    want = [(labels.index(k), v) for k, v in match.items()]
    return sum(value for (n, lv), value in series.items()
               if n == name and all(lv[i] == v for i, v in want))


