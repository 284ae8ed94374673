"""Embed OmniRelay in an asyncio program, with a Python filter that stamps responses.

    python examples/embed_relay.py

Starts a stand-in upstream service, puts a Relay in front of it on an ephemeral port,
sends one request through the relay, prints the response and exits. See docs/embedding.md.
"""
from __future__ import annotations

import asyncio
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import omnirelay


class StampFilter(omnirelay.HttpFilter):
    """Per-request filter: adds a response header. Only the hooks it overrides run."""

    def __init__(self, value: str):
        self.value = value

    def on_response_headers(self, stream, end_stream):
        stream.response_headers.set("x-stamped-by", self.value)
        return omnirelay.CONTINUE


@omnirelay.register("example.stamp")
class StampFactory(omnirelay.FilterFactory):
    """Built once per config load; validates the filter's config then."""

    filter_class = StampFilter

    def parse_config(self, config):
        value = config.get("value", "omnirelay")
        if not isinstance(value, str):
            raise TypeError("value must be a string")
        return value


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"hello from the upstream, you asked for {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def config_for(upstream_port: int) -> dict:
    return {
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
            "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "cluster": "app",
                        "filters": [{"name": "example.stamp", "config": {"value": "example"}}]}],
            "clusters": [{"name": "app",
                          "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}],
        },
    }


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, dict(resp.headers.items()), resp.read().decode()


async def main() -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        async with omnirelay.Relay(config_for(upstream.server_address[1])) as relay:
            # Blocking urllib runs in a thread so the relay keeps serving on this loop.
            status, headers, body = await asyncio.to_thread(fetch, relay.url() + "/greeting")
            print(f"GET {relay.url()}/greeting -> {status}")
            print(f"x-stamped-by: {headers.get('x-stamped-by')}")
            print(body, end="")
            print("requests served:", relay.stats()["listeners"]["edge"]["downstream_rq_total"])
    finally:
        upstream.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
