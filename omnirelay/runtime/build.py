"""Compile a validated Config into the core's immutable tables.

Clusters are the only long-lived objects: a reload keeps the core Cluster (and
the pools of endpoints that stay) so in-flight and idle connections survive.
Everything that can fail (filter factories) is built before anything is touched.
"""
from __future__ import annotations

from dataclasses import dataclass

from omnirelay._core import Cluster as CoreCluster
from omnirelay._core import ListenerState, RouteEntry, RouteTable
from omnirelay.config import Config
from omnirelay.filters.registry import build_chain, build_factory


@dataclass(frozen=True)
class BuiltConfig:
    config: Config
    listeners: dict[str, ListenerState]


class TableBuilder:
    def __init__(self) -> None:
        self.clusters: dict[str, CoreCluster] = {}

    def build(self, config: Config) -> BuiltConfig:
        spec = config.spec
        route_filters = {
            r.name: [build_factory(f, f"spec.routes[{i}].filters[{j}]")
                     for j, f in enumerate(r.filters)]
            for i, r in enumerate(spec.routes)}
        listener_filters = {
            lst.name: [build_factory(f, f"spec.listeners[{i}].filters[{j}]")
                       for j, f in enumerate(lst.filters)]
            for i, lst in enumerate(spec.listeners)}
        # Nothing below can fail on a validated config: commit cluster changes.
        clusters = {}
        for c in spec.clusters:
            core = self.clusters.get(c.name) or CoreCluster(c.name)
            core.connect_timeout = c.connect_timeout
            core.idle_timeout = c.idle_timeout if c.idle_timeout > 0 else 1e12
            core.max_idle = c.max_idle_per_endpoint
            core.buffer_limit = c.buffer_limit
            core.set_endpoints([(e.address, e.port, e.weight) for e in c.endpoints])
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
                                           od.max_ejection_percent)
            clusters[c.name] = core
        for name, old in self.clusters.items():
            if name not in clusters:
                old.close_idle()
        self.clusters = clusters
        listeners = {}
        for lst in spec.listeners:
            entries = []
            for r in config.routes_for(lst):
                factories = listener_filters[lst.name] + route_filters[r.name]
                m = r.match
                entries.append(RouteEntry(
                    r.name, clusters[r.cluster],
                    timeout=r.timeout,
                    per_try_timeout=r.per_try_timeout or 0.0,
                    max_request_body=-1 if r.max_request_body is None else r.max_request_body,
                    chain=build_chain(factories) if factories else None,
                    hosts=m.hosts,
                    path=(m.path_exact if m.path_exact is not None else m.path_prefix).encode(),
                    path_exact=m.path_exact is not None,
                    headers=[(h.name, h.equals) for h in m.headers],
                    **_retry_args(r.retry_policy)))
            listeners[lst.name] = ListenerState(
                lst.name, RouteTable(entries), via=lst.via,
                xff_trusted_hops=lst.xff_trusted_hops, max_header_bytes=lst.max_header_bytes,
                idle_timeout=lst.idle_timeout if lst.idle_timeout > 0 else 1e12,
                request_timeout=lst.request_timeout if lst.request_timeout > 0 else 1e12,
                buffer_limit=lst.buffer_limit)
        return BuiltConfig(config, listeners)

    def sweep(self, now: float) -> None:
        for c in self.clusters.values():
            c.sweep(now)


def _retry_args(rp) -> dict:
    if rp is None:
        return {}
    return {"retry_on": rp.retry_on, "num_retries": rp.num_retries,
            "retriable_status_codes": rp.retriable_status_codes,
            "retry_base_interval": rp.base_interval, "retry_max_interval": rp.max_interval,
            "retry_budget_percent": rp.budget_percent,
            "retry_min_concurrency": rp.min_retry_concurrency}
