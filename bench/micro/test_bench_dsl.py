"""One proxied request through a rule-language filter (omnirelay.filters.http.dsl) whose
one rule adds a request header, against the empty chain and the same edit as a Python
filter (issue 5). Two rule sets: the unconditional edit, and the same edit behind a typical
condition (method, path regex and a header in a list), to show what conditions cost.

The difference of the medians against ``no-filter`` is the filter's cost per request.

    .venv/bin/python -m pytest bench/micro/test_bench_dsl.py --benchmark-only -q
"""
from __future__ import annotations

import pytest

import omnirelay.extensions.dsl.filter  # noqa: F401  (registers the filter)
from bench.micro.harness import ProxyHarness, config
from bench.micro.test_micro import REQUEST, RESPONSE

ADD = 'when true { set request header "x-bench" = "1" }'
CONDITIONAL = ('when method == "GET" and path ~ "^/api/" and header("accept") in '
               '["application/json", "text/html"] { set request header "x-bench" = "1" }')

FILTERS = {
    "no-filter": [],
    "python-filter": [{"name": "bench.tag"}],
    "dsl-add-header": [{"name": "omnirelay.filters.http.dsl", "config": {"rules": ADD}}],
    "dsl-conditional": [{"name": "omnirelay.filters.http.dsl",
                         "config": {"rules": CONDITIONAL}}],
}


@pytest.mark.parametrize("kind", list(FILTERS))
def test_request_through_dsl_filter(benchmark, kind):
    h = ProxyHarness(config(FILTERS[kind]))
    # One request by hand first: the rule's header reaches the upstream.
    head = h.upstream_head(REQUEST, RESPONSE)
    assert (b"x-bench: 1\r\n" in head) == (kind != "no-filter"), head
    out = benchmark(h.roundtrip, REQUEST, RESPONSE)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"hello, world\n")
