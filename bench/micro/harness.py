"""Drive the core's full HTTP/1.1 proxy path with in-memory transports.

Both sides are the real connection classes; only the kernel is left out, so a
benchmark measures the CPU cost of one proxied request: parse the request,
route, run filters, serialize the upstream head, parse the upstream response,
serialize the downstream response.
"""
from __future__ import annotations

from omnirelay import Relay


class MemoryTransport:
    """The asyncio transport surface the core uses, writing into a list."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        self.out.append(bytes(data))

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


def feed(protocol, data: bytes) -> None:
    """Deliver bytes the way a BufferedProtocol transport does."""
    while data:
        buf = protocol.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        protocol.buffer_updated(n)
        data = data[n:]


def config(filters=()) -> dict:
    return {"spec": {
        "listeners": [{"name": "bench", "address": "127.0.0.1", "port": 0}],
        "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "cluster": "up",
                    "timeout": 0, "filters": list(filters)}],
        "clusters": [{"name": "up", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
    }}


class ProxyHarness:
    """One downstream connection and one pooled upstream connection, in memory."""

    def __init__(self, cfg: dict) -> None:
        self.relay = Relay(cfg)
        listener = self.relay._built.listeners["bench"]
        from omnirelay._core import ListenerRuntime
        self.runtime = ListenerRuntime(listener)
        endpoint = self.relay._builder.clusters["up"].endpoints[0]
        self.up_transport = MemoryTransport()
        self.upstream = endpoint.adopt(self.up_transport)
        self.down_transport = MemoryTransport()
        self.downstream = self.runtime.protocol_factory()
        self.downstream.connection_made(self.down_transport)

    def upstream_head(self, request: bytes, response: bytes) -> bytes:
        """One exchange by hand (before timing): the request head the upstream got."""
        feed(self.downstream, request)
        head = self.up_transport.take()
        feed(self.upstream, response)
        self.down_transport.take()
        return head

    def roundtrip(self, request: bytes, response: bytes) -> bytes:
        feed(self.downstream, request)
        self.up_transport.out.clear()
        feed(self.upstream, response)
        return self.down_transport.take()
