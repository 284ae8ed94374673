"""Compile a validated Config into the core's immutable tables.

Clusters are the long-lived objects: a reload keeps the core Cluster (and the
pools of endpoints that stay) so in-flight and idle connections survive. So are the
upstream counters of each (route, cluster) pair, so that counters only ever grow.
Everything that can fail (filter factories, TLS certificates) is built before
anything is touched.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import omnirelay.extensions.dsl.filter  # registers omnirelay.filters.http.dsl
import omnirelay.extensions.native.filter  # registers omnirelay.extensions.native
import omnirelay.extensions.wasm.filter  # noqa: F401  (registers omnirelay.filters.http.wasm)
from omnirelay._core import Cluster as CoreCluster
from omnirelay._core import (
    HeaderEdits,
    L4ListenerState,
    ListenerState,
    RouteEntry,
    RouteTable,
    UpstreamStats,
)
from omnirelay.config import Config
from omnirelay.config.model import Endpoint, Listener, Route
from omnirelay.config.model import HeaderEdits as HeaderEditsSpec
from omnirelay.extensions.packages import use_trust
from omnirelay.filters.registry import build_chain, build_factory
from omnirelay.runtime.tls import (
    ServerTls,
    build_client_contexts,
    build_tls_contexts,
    core_tls_reason,
)
from omnirelay.security.upstream import publish_clusters
from omnirelay.telemetry.accesslog import AccessLogger
from omnirelay.telemetry.tap import TapHub
from omnirelay.telemetry.tracing import ExportSettings, ListenerHook, Pipeline

# How long a tls_passthrough listener waits for a whole ClientHello.
CLIENT_HELLO_TIMEOUT = 5.0
# How long a replaced access logger keeps accepting records of in-flight requests.
ACCESS_LOG_RETIRE_DELAY = 5.0


@dataclass(frozen=True)
class BuiltConfig:
    config: Config
    # ListenerState for `protocol: http`, L4ListenerState for tcp / tls_passthrough
    listeners: dict[str, ListenerState | L4ListenerState]
    # server-side SSLContext of each `protocol: http` listener with `tls`
    tls: dict[str, ServerTls] = field(default_factory=dict)


class TableBuilder:
    def __init__(self) -> None:
        self.clusters: dict[str, CoreCluster] = {}
        # Endpoints a discovery feed set, by cluster: they outlive config reloads.
        self.discovered: dict[str, tuple[Endpoint, ...]] = {}
        # Upstream counters by (route, cluster): they outlive config reloads.
        self.upstream_stats: dict[tuple[str, str], UpstreamStats] = {}
        # Access loggers by listener: kept across reloads while their settings stay the same.
        self.access_logs: dict[str, AccessLogger] = {}
        # Span export pipelines by settings (shared by listeners, kept across reloads), the
        # request hooks of the latest build, and the taps that hooks serve.
        self.pipelines: dict[ExportSettings, Pipeline] = {}
        self.hooks: dict[str, tuple[ListenerState, ListenerHook]] = {}
        self.taps = TapHub()
        self.taps.on_change = self._apply_hooks

    def build(self, config: Config) -> BuiltConfig:
        spec = config.spec
        use_trust(config.extensions)  # what the filters' extension packages are checked against
        names = frozenset(c.name for c in spec.clusters)  # for filters that name clusters
        route_filters = {
            r.name: [build_factory(f, f"spec.routes[{i}].filters[{j}]", names)
                     for j, f in enumerate(r.filters)]
            for i, r in enumerate(spec.routes)}
        listener_filters = {
            lst.name: [build_factory(f, f"spec.listeners[{i}].filters[{j}]", names)
                       for j, f in enumerate(lst.filters)]
            for i, lst in enumerate(spec.listeners)}
        tls = build_tls_contexts(spec.listeners)
        cluster_tls = build_client_contexts(spec.clusters)
        # Nothing below can fail on a validated config: commit cluster changes.
        clusters = {}
        for c in spec.clusters:
            core = self.clusters.get(c.name) or CoreCluster(c.name)
            core.connect_timeout = c.connect_timeout
            core.idle_timeout = c.idle_timeout if c.idle_timeout > 0 else 1e12
            core.max_idle = c.max_idle_per_endpoint
            core.buffer_limit = c.buffer_limit
            core.set_overprovisioning(c.overprovisioning_factor)
            h2 = c.http2
            core.set_http2(c.protocol == "http2", h2.max_concurrent_streams,
                           h2.initial_stream_window_size, h2.initial_connection_window_size)
            core.set_tls(cluster_tls.get(c.name), c.tls.sni if c.tls else None,
                         c.tls.allowed_spiffe_ids if c.tls else (),
                         core=core_tls_reason() is None)
            discovered = self.discovered.get(c.name)
            if c.discovery is None or discovered is None:
                # A discovery-fed cluster keeps what its feed said across reloads.
                self.discovered.pop(c.name, None)
                core.set_endpoints(_endpoint_specs(c.endpoints))
            hk = c.hash_key
            core.set_lb(c.lb_policy, hk.header if hk else None, bool(hk and hk.source_ip))
            cb = c.circuit_breakers
            core.set_circuit_breakers(cb.max_connections, cb.max_pending_requests,
                                      cb.max_requests, cb.max_retries)
            od = c.outlier_detection
            if od is None:
                core.set_outlier_detection()
            else:
                core.set_outlier_detection(od.consecutive_5xx, od.consecutive_gateway_failure,
                                           od.base_ejection_time, od.max_ejection_time,
                                           od.max_ejection_percent, od.interval)
            clusters[c.name] = core
        for name, old in self.clusters.items():
            if name not in clusters:
                old.close_idle()
                self.discovered.pop(name, None)
        self.clusters = clusters
        publish_clusters(self, clusters)  # filters that call clusters (JWKS) find them by name
        upstream_stats = {}
        route_stats: dict[str, dict[str, UpstreamStats]] = {}
        for r in spec.routes:
            names = [w.name for w in r.weighted_clusters] or ([r.cluster] if r.cluster else [])
            for name in names:
                key = (r.name, name)
                stats = upstream_stats[key] = self.upstream_stats.get(key) or UpstreamStats()
                route_stats.setdefault(r.name, {})[name] = stats
        # Counters of clusters a filter chose (set_cluster) survive the reload too.
        route_names = {r.name for r in spec.routes}
        for key, stats in self.upstream_stats.items():
            if key[0] in route_names and key[1] in clusters:
                upstream_stats.setdefault(key, stats)
        self.upstream_stats = upstream_stats
        listeners: dict[str, ListenerState | L4ListenerState] = {}
        access_logs: dict[str, AccessLogger] = {}
        pipelines: dict[ExportSettings, Pipeline] = {}
        hooks: dict[str, tuple[ListenerState, ListenerHook]] = {}
        for lst in spec.listeners:
            if lst.protocol != "http":
                listeners[lst.name] = _l4_state(lst, clusters)
                continue
            entries = []
            for r in config.routes_for(lst):
                factories = listener_filters[lst.name] + route_filters[r.name]
                entries.append(_route_entry(
                    r, clusters, build_chain(factories) if factories else None,
                    route_stats.get(r.name, {})))
            listeners[lst.name] = ListenerState(
                lst.name, RouteTable(entries), via=lst.via,
                xff_trusted_hops=lst.xff_trusted_hops, max_header_bytes=lst.max_header_bytes,
                idle_timeout=lst.idle_timeout if lst.idle_timeout > 0 else 1e12,
                request_timeout=lst.request_timeout if lst.request_timeout > 0 else 1e12,
                buffer_limit=lst.buffer_limit,
                scheme="https" if lst.tls is not None else "http",
                h2_max_concurrent_streams=lst.http2.max_concurrent_streams,
                h2_initial_stream_window=lst.http2.initial_stream_window_size,
                h2_initial_connection_window=lst.http2.initial_connection_window_size)
            listeners[lst.name].clusters = clusters
            listeners[lst.name].upstream_stats = upstream_stats
            if lst.access_log is not None:
                logger = self.access_logs.get(lst.name)
                if logger is None or logger.spec != lst.access_log:
                    logger = AccessLogger(lst.access_log)
                access_logs[lst.name] = listeners[lst.name].access_log = logger
                listeners[lst.name].access_sink = logger.sink
            pipeline = None
            if lst.tracing is not None:
                key = ExportSettings.of(lst.tracing)
                pipeline = pipelines.get(key) or self.pipelines.get(key) or Pipeline(key)
                pipelines[key] = pipeline
            hooks[lst.name] = (listeners[lst.name], ListenerHook(
                lst.name, pipeline, lst.tracing.sampling if lst.tracing else 0.0,
                config.metadata.version, self.taps))
        self._retire_access_logs(access_logs)
        self._retire_pipelines(pipelines)
        self.hooks = hooks
        self._apply_hooks()
        return BuiltConfig(config, listeners, tls)

    def _retire_access_logs(self, keep: dict[str, AccessLogger]) -> None:
        kept = {id(a) for a in keep.values()}
        old = [a for a in self.access_logs.values() if id(a) not in kept]
        self.access_logs = keep
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for logger in old:
            if loop is not None:  # requests in flight on the old listener state still log
                loop.call_later(ACCESS_LOG_RETIRE_DELAY, logger.close)
            else:
                logger.close()

    def _apply_hooks(self) -> None:
        # Tracing listeners always have their hook; the others only while a tap runs.
        tapping = bool(self.taps.taps)
        for state, hook in self.hooks.values():
            state.trace = hook if hook.pipeline is not None or tapping else None

    def _retire_pipelines(self, keep: dict[ExportSettings, Pipeline]) -> None:
        old = [p for k, p in self.pipelines.items() if keep.get(k) is not p]
        self.pipelines = keep
        for p in old:  # exports what it holds, off the loop (bounded by export_timeout)
            threading.Thread(target=p.shutdown, name="tracing-retire", daemon=True).start()

    def flush_traces(self, timeout: float) -> bool:
        """Export the spans queued so far (blocking, at most about `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        return all(p.flush(max(0.0, deadline - time.monotonic()))
                   for p in list(self.pipelines.values()))

    def close_tracing(self) -> None:
        """Export what is queued and stop the exporters (at shutdown; blocking, bounded by
        each pipeline's export_timeout)."""
        for p in self.pipelines.values():
            p.shutdown()
        self.pipelines = {}

    def close_access_logs(self) -> None:
        """Flush and close every access log (at shutdown)."""
        for logger in self.access_logs.values():
            logger.close()
        self.access_logs = {}

    def update_endpoints(self, cluster: str, endpoints: Sequence[Endpoint]) -> None:
        """Replace a live cluster's endpoints (from a discovery feed); pooled
        connections and health/ejection state of endpoints that stay are kept."""
        core = self.clusters[cluster]
        endpoints = tuple(endpoints)
        core.set_endpoints(_endpoint_specs(endpoints))
        self.discovered[cluster] = endpoints

    def sweep(self, now: float) -> None:
        for c in self.clusters.values():
            c.sweep(now)


def _l4_state(lst: Listener, clusters: dict[str, CoreCluster]) -> L4ListenerState:
    if lst.protocol == "tcp":
        assert lst.tcp is not None  # the decoder guarantees it
        return L4ListenerState(
            lst.name, "tcp", [(("*",), clusters[lst.tcp.cluster])],
            idle_timeout=lst.tcp.idle_timeout, buffer_limit=lst.buffer_limit)
    return L4ListenerState(
        lst.name, "tls_passthrough",
        [(r.server_names, clusters[r.cluster]) for r in lst.sni_routes],
        idle_timeout=lst.idle_timeout, buffer_limit=lst.buffer_limit,
        hello_timeout=CLIENT_HELLO_TIMEOUT)


def _retry_args(rp) -> dict:
    if rp is None:
        return {}
    return {"retry_on": rp.retry_on, "num_retries": rp.num_retries,
            "retriable_status_codes": rp.retriable_status_codes,
            "retry_base_interval": rp.base_interval, "retry_max_interval": rp.max_interval,
            "retry_budget_percent": rp.budget_percent,
            "retry_min_concurrency": rp.min_retry_concurrency}


def _endpoint_specs(endpoints: Sequence[Endpoint]) -> list[tuple]:
    return [(e.address, e.port, e.weight, e.priority, e.locality) for e in endpoints]


def _edits(spec: HeaderEditsSpec) -> HeaderEdits:
    return HeaderEdits(spec.remove, [(h.name, h.value) for h in spec.set],
                       [(h.name, h.value) for h in spec.add])


def _route_entry(r: Route, clusters: dict[str, CoreCluster], chain,
                 upstream_stats: dict[str, UpstreamStats]) -> RouteEntry:
    m = r.match
    if m.path_regex is not None:
        path, path_kind = m.path_regex, "regex"
    elif m.path_exact is not None:
        path, path_kind = m.path_exact, "exact"
    else:
        path, path_kind = m.path_prefix, "prefix"
    headers = []
    for h in m.headers:
        kind = "exact" if h.exact is not None else "regex" if h.regex is not None else "present"
        headers.append((h.name, kind, h.exact if h.exact is not None else h.regex, h.invert))
    query = []
    for q in m.query:
        kind = "exact" if q.exact is not None else "regex" if q.regex is not None else "present"
        query.append((q.name, kind, q.exact if q.exact is not None else q.regex))
    action: dict = {}
    if r.direct_response is not None:
        d = r.direct_response
        action["direct"] = (d.status, d.body.encode(), [(h.name, h.value) for h in d.headers])
    elif r.redirect is not None:
        rd = r.redirect
        action["redirect"] = {"code": rd.code, "scheme": rd.scheme, "host": rd.host,
                              "port": rd.port, "path": rd.path,
                              "prefix_rewrite": rd.prefix_rewrite, "strip_query": rd.strip_query}
    elif r.weighted_clusters:
        action["weighted"] = [(clusters[w.name], w.weight) for w in r.weighted_clusters
                              if w.weight > 0]
    else:
        action["cluster"] = clusters[r.cluster]
    rw = r.rewrite
    return RouteEntry(
        r.name, **action,
        timeout=r.timeout,
        per_try_timeout=r.per_try_timeout or 0.0,
        max_request_body=-1 if r.max_request_body is None else r.max_request_body,
        chain=chain,
        hosts=m.hosts, path=path, path_kind=path_kind, methods=m.methods,
        headers=headers, query=query,
        prefix_rewrite=rw.prefix if rw else None,
        regex_rewrite=rw.regex if rw else None,
        regex_substitution=rw.substitution if rw else None,
        host_rewrite=rw.host if rw else None,
        auto_host=bool(rw and rw.auto_host),
        request_edits=_edits(r.request_headers),
        response_edits=_edits(r.response_headers),
        mirrors=[(clusters[mi.cluster], mi.percent) for mi in r.mirrors],
        upstream_stats=upstream_stats,
        **_retry_args(r.retry_policy))
