"""One proxied request through a Proxy-Wasm filter that adds a request header, against the
empty chain and the same edit as a Python filter (issue 5's boundary-crossing benchmark).

The Wasm plugin is WebAssembly text compiled by wasmtime at config load; per request it
costs proxy_on_context_create, proxy_on_request_headers (one proxy_add_header_map_value
host call) and the stream's end (the module exports no on_done / on_log / on_delete, so the
host calls none). The difference of the medians is the Wasm filter's cost per request.

    .venv/bin/python -m pytest bench/micro/test_bench_wasm.py --benchmark-only -q
"""
from __future__ import annotations

import pytest

import omnirelay.extensions.wasm.filter  # noqa: F401  (registers the filter)
from bench.micro.harness import ProxyHarness, config
from bench.micro.test_micro import REQUEST, RESPONSE

ADD_HEADER_WAT = """
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-bench")
  (data (i32.const 32) "1")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 1)))
    i32.const 0))
"""


@pytest.fixture(scope="module")
def wasm_filter(tmp_path_factory):
    path = tmp_path_factory.mktemp("wasm") / "add_header.wat"
    path.write_text(ADD_HEADER_WAT)
    return {"name": "omnirelay.filters.http.wasm", "config": {"path": str(path)}}


@pytest.mark.parametrize("kind", ["no-filter", "python-filter", "wasm-filter"])
def test_request_through_filter(benchmark, kind, wasm_filter):
    filters = {"no-filter": [], "python-filter": [{"name": "bench.tag"}],
               "wasm-filter": [wasm_filter]}[kind]
    h = ProxyHarness(config(filters))
    # One request by hand first: the filter's header reaches the upstream.
    head = h.upstream_head(REQUEST, RESPONSE)
    assert (b"x-bench: 1\r\n" in head) == (kind != "no-filter"), head
    out = benchmark(h.roundtrip, REQUEST, RESPONSE)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"hello, world\n")
