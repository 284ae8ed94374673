"""Micro benchmarks (pytest-benchmark): `make bench` or
`pytest bench/micro --benchmark-only`. Not part of the default test run."""
from __future__ import annotations

import pytest
from omnirelay_core.http1 import Http1Events, Http1Parser

from bench.micro.harness import ProxyHarness, config
from omnirelay import CONTINUE, FilterFactory, HttpFilter, register

REQUEST = (b"GET /api/v1/items?page=2 HTTP/1.1\r\n"
           b"Host: api.example.com\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\n"
           b"Accept: application/json\r\n"
           b"Accept-Encoding: gzip, deflate, br\r\n"
           b"Accept-Language: en-US,en;q=0.9\r\n"
           b"Cookie: session=0123456789abcdef; theme=dark\r\n"
           b"X-Forwarded-For: 10.0.0.1\r\n"
           b"\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 13\r\n\r\nhello, world\n")


class _Tag(HttpFilter):
    def __init__(self, cfg):
        pass

    def on_request_headers(self, stream, end_stream):
        stream.request_headers.set("x-bench", "1")
        return CONTINUE


@register("bench.tag")
class _TagFactory(FilterFactory):
    filter_class = _Tag


def test_parse_typical_request(benchmark):
    parser = Http1Parser(Http1Events(), True)
    consumed, err = benchmark(parser.feed, REQUEST)
    assert (consumed, err) == (len(REQUEST), 0)


@pytest.mark.parametrize("filters", [[], [{"name": "bench.tag"}]], ids=["no-filter", "one-python-filter"])
def test_proxy_roundtrip(benchmark, filters):
    h = ProxyHarness(config(filters))
    out = benchmark(h.roundtrip, REQUEST, RESPONSE)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"hello, world\n")
