"""Route lookup on a 1-route table against the 1,000-route table of bench/e2e/routes.py.

`RouteTable.match_request(host, path, headers)` on the table the runtime builds (load_config ->
TableBuilder) for the listener, with the requests the e2e `routes` scenario sends. The headers
are a prebuilt HeaderMap, so the timing is the lookup, not building the map.
`make bench-micro` or `pytest bench/micro/test_bench_routes.py --benchmark-only`.
"""
from __future__ import annotations

import pytest

from bench.e2e import routes
from bench.e2e.run import omnirelay_config
from omnirelay._core import HeaderMap
from omnirelay.config import load_config
from omnirelay.runtime.build import TableBuilder

ORIGIN_PORT = 9  # never contacted: nothing here opens a connection
HEADERS = [("user-agent", "wrk"), ("accept", "*/*")]


def route_table(config):
    built = TableBuilder().build(config)
    return built.listeners[routes.LISTENER].routes


def check_large_table(config, table) -> None:
    """The table benchmarked is the one described in routes.py (checked here rather than in a
    test of its own, which --benchmark-only would skip)."""
    n = routes.VHOSTS * routes.ROUTES_PER_VHOST
    assert len(config.spec.routes) == n + 1 and len(config.spec.clusters) == routes.CLUSTERS
    assert config.spec.routes[-1].name == "default"
    assert config.spec.routes[n - 1].name == routes.REQUESTS["last_vhost"][2]
    with_headers = any(r.match.headers for r in config.spec.routes)
    assert routes.mismatches(table, with_headers) == []


@pytest.fixture(scope="module")
def tables():
    large = load_config(routes.large_config(0, ORIGIN_PORT))
    small = load_config(omnirelay_config(0, ORIGIN_PORT))  # the e2e `omnirelay` peer's config
    out = {"1-route": route_table(small), "1000-routes": route_table(large)}
    check_large_table(large, out["1000-routes"])
    return out


@pytest.mark.parametrize("request_name", list(routes.REQUESTS))
@pytest.mark.parametrize("table", ["1-route", "1000-routes"])
def test_match_request(benchmark, tables, table, request_name):
    host, path, want = routes.REQUESTS[request_name]
    headers = HeaderMap.from_items(HEADERS)
    entry = benchmark(tables[table].match_request, host, path, headers)
    assert entry is not None and entry.name == (want if table == "1000-routes" else "all")

