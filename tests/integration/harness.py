"""Data-path test harness: real sockets on 127.0.0.1, real upstreams, real clients.

- ``LoopEnv``: a fresh uvloop loop that records anything reaching its exception handler.
- ``make_config``: the smallest valid config (one listener, one route, one cluster) with
  overrides.
- ``Origin``: a well-behaved aiohttp upstream that reports what it received.
- ``RawServer``: an asyncio socket server running a test-supplied handler, for upstreams
  that misbehave on purpose.
- ``read_response`` / ``read_request``: strict-enough HTTP/1.1 readers over StreamReaders
  (Content-Length, chunked with trailers, close-delimited).
- ``Client``: a raw client connection to the proxy.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import uvloop
from aiohttp import web

import omnirelay

HOST = "127.0.0.1"
IO_TIMEOUT = 5.0


# --------------------------------------------------------------------------- loop


class LoopEnv:
    """One uvloop loop; ``run`` drives a coroutine to completion with a time limit."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.errors: list[dict[str, Any]] = []
        loop = self.runner.get_loop()
        loop.set_exception_handler(self._on_error)

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(context)
        loop.default_exception_handler(context)

    def run(self, coro: Awaitable[Any], timeout: float = 20.0) -> Any:
        async def bounded() -> Any:
            cm = asyncio.timeout(timeout)
            try:
                async with cm:
                    return await coro
            except TimeoutError:
                if cm.expired():
                    raise AssertionError(
                        f"test coroutine did not finish within {timeout} s") from None
                raise

        return self.runner.run(bounded())

    def close(self) -> None:
        self.runner.close()

    def check_errors(self) -> None:
        if self.errors:
            lines = []
            for ctx in self.errors:
                exc = ctx.get("exception")
                lines.append(f"{ctx.get('message')}: {exc!r}")
            self.errors.clear()
            raise AssertionError("unhandled errors reached the event loop:\n  " + "\n  ".join(lines))


# --------------------------------------------------------------------------- config


def make_config(port: int | None = None, *, listener: dict | None = None,
                route: dict | None = None, cluster: dict | None = None,
                routes: list[dict] | None = None, clusters: list[dict] | None = None,
                metadata: dict | None = None) -> dict:
    """One listener on 127.0.0.1:0; by default one catch-all route "r" to cluster "c"
    with a single endpoint 127.0.0.1:port. ``listener``/``route``/``cluster`` are merged
    into the defaults; ``routes``/``clusters`` replace them."""
    lst = {"name": "edge", "address": HOST, "port": 0}
    lst.update(listener or {})
    if routes is None:
        r = {"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "c"}
        r.update(route or {})
        routes = [r]
    if clusters is None:
        c = {"name": "c", "endpoints": [{"address": HOST, "port": port}]}
        c.update(cluster or {})
        clusters = [c]
    doc = {"spec": {"listeners": [lst], "routes": copy.deepcopy(routes),
                    "clusters": copy.deepcopy(clusters)}}
    if metadata:
        doc["metadata"] = metadata
    return doc


def cluster(name: str, port: int, **extra: Any) -> dict:
    return {"name": name, "endpoints": [{"address": HOST, "port": port}], **extra}


def endpoint_stats(relay: omnirelay.Relay, cluster_name: str = "c") -> dict:
    (ep,) = relay.stats()["clusters"][cluster_name]["endpoints"]
    return ep


# --------------------------------------------------------------------------- HTTP messages


class Headers(list):
    """A list of (name, value) str pairs with case-insensitive lookups."""

    def get(self, name: str, default: str | None = None) -> str | None:
        n = name.lower()
        for k, v in self:
            if k.lower() == n:
                return v
        return default

    def getall(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self if k.lower() == n]

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self}

    def __contains__(self, name: object) -> bool:  # type: ignore[override]
        return isinstance(name, str) and name.lower() in self.names()


@dataclass
class Message:
    start_line: str
    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=Headers)
    chunked: bool = False

    # response views
    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def version(self) -> str:
        return self.start_line.split(" ", 1)[0]

    # request views
    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]

    def json(self) -> Any:
        return json.loads(self.body)


class ClosedBeforeMessage(Exception):
    """EOF before the first byte of a message."""


def _parse_head(head: bytes) -> tuple[str, Headers]:
    lines = head.decode("latin-1").split("\r\n")
    hdrs = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        assert sep, f"malformed header line {line!r}"
        hdrs.append((name, value.strip(" \t")))
    return lines[0], hdrs


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise ClosedBeforeMessage() from None
        raise
    return head[:-4]


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, Headers]:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line[:-2].split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n", "chunk not followed by CRLF"
    trailers = Headers()
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line[:-2].decode("latin-1").partition(":")
        trailers.append((name, value.strip()))
    return b"".join(parts), trailers


async def read_body(reader: asyncio.StreamReader, headers: Headers,
                    close_delimited: bool) -> tuple[bytes, Headers, bool]:
    te = headers.get("transfer-encoding")
    if te is not None and te.lower().endswith("chunked"):
        body, trailers = await _read_chunked(reader)
        return body, trailers, True
    cl = headers.getall("content-length")
    if cl:
        assert len(set(cl)) == 1, f"conflicting Content-Length values {cl}"
        return await reader.readexactly(int(cl[0])), Headers(), False
    if close_delimited:
        return await reader.read(), Headers(), False
    return b"", Headers(), False


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET",
                        skip_interim: bool = True, timeout: float = IO_TIMEOUT) -> Message:
    """Read one response; 1xx interim responses (other than 101) are skipped unless
    ``skip_interim`` is False, in which case the interim head is returned."""

    async def go() -> Message:
        while True:
            start, hdrs = _parse_head(await _read_head(reader))
            msg = Message(start, hdrs)
            assert start.startswith("HTTP/1."), f"bad status line {start!r}"
            status = msg.status
            if 100 <= status < 200:
                if status == 101 or not skip_interim:
                    return msg
                continue
            if method == "HEAD" or status in (204, 304):
                return msg
            if method == "CONNECT" and 200 <= status < 300:
                return msg
            msg.body, msg.trailers, msg.chunked = await read_body(reader, hdrs, True)
            return msg

    return await asyncio.wait_for(go(), timeout)


async def read_request(reader: asyncio.StreamReader) -> Message:
    """Read one request (raises ClosedBeforeMessage on a clean EOF between requests)."""
    start, hdrs = _parse_head(await _read_head(reader))
    msg = Message(start, hdrs)
    msg.body, msg.trailers, msg.chunked = await read_body(reader, hdrs, False)
    return msg


async def read_until_closed(reader: asyncio.StreamReader,
                            timeout: float = IO_TIMEOUT) -> tuple[bytes, str]:
    """Everything until the peer closes. Returns (data, how) where how is "eof" or "reset".
    Fails the test if the connection is still open after ``timeout``."""
    chunks = []

    async def go() -> str:
        while True:
            try:
                b = await reader.read(65536)
            except (ConnectionResetError, BrokenPipeError):
                return "reset"
            if not b:
                return "eof"
            chunks.append(b)

    try:
        how = await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"connection still open after {timeout} s (got {sum(map(len, chunks))} bytes)"
        ) from None
    return b"".join(chunks), how


def pattern(n: int, seed: int = 0) -> bytes:
    """n deterministic pseudo-random bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# --------------------------------------------------------------------------- clients


class Client:
    """A raw TCP client of the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, addr: tuple[str, int], *, limit: int = 1 << 20) -> Client:
        reader, writer = await asyncio.open_connection(addr[0], addr[1], limit=limit)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), IO_TIMEOUT)

    async def response(self, method: str = "GET", **kw: Any) -> Message:
        return await read_response(self.reader, method=method, **kw)

    async def request(self, data: bytes, method: str = "GET") -> Message:
        await self.send(data)
        return await self.response(method)

    async def closed(self, timeout: float = IO_TIMEOUT) -> tuple[bytes, str]:
        return await read_until_closed(self.reader, timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def one_shot(addr: tuple[str, int], data: bytes, method: str = "GET") -> Message:
    """Send one request on a new connection and return the response."""
    async with await Client.open(addr) as c:
        return await c.request(data, method)


def get(path: str = "/", host: str = "example.test", headers: str = "",
        version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{headers}\r\n".encode()


async def assert_healthy(addr: tuple[str, int], path: str = "/") -> Message:
    """A normal request on a new connection still gets a 2xx: the proxy survived."""
    resp = await one_shot(addr, get(path, headers="Connection: close\r\n"))
    assert 200 <= resp.status < 300, f"follow-up request got {resp.start_line!r}"
    return resp


# --------------------------------------------------------------------------- upstreams


@dataclass
class Seen:
    method: str
    path: str
    headers: Headers
    body: bytes
    peer_port: int
    version: str


class Origin:
    """A well-behaved aiohttp upstream.

    - ``/size/<n>``: n pattern bytes with Content-Length.
    - ``/chunked/<n>``: n pattern bytes, chunked, in 8 KiB writes.
    - anything else: JSON describing the request (method, path, headers, body sha256
      and length, peer port); the request is also appended to ``seen``.
    Every response carries ``x-origin: <name>``.
    """

    def __init__(self, name: str = "origin") -> None:
        self.name = name
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def connections(self) -> set[int]:
        return {s.peer_port for s in self.seen}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        raw = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        seen = Seen(request.method, request.path_qs, raw, body, peer[1] if peer else 0,
                    f"{request.version.major}.{request.version.minor}")
        self.seen.append(seen)
        parts = request.path.strip("/").split("/")
        extra = {"x-origin": self.name}
        if len(parts) == 2 and parts[0] == "size":
            return web.Response(body=pattern(int(parts[1])), headers=extra,
                                content_type="application/octet-stream")
        if len(parts) == 2 and parts[0] == "chunked":
            n = int(parts[1])
            resp = web.StreamResponse(headers=extra)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            data = pattern(n)
            for i in range(0, n, 8192):
                await resp.write(data[i:i + 8192])
            await resp.write_eof()
            return resp
        info = {"method": seen.method, "path": seen.path, "headers": list(raw),
                "body_len": len(body), "sha256": sha256(body), "peer_port": seen.peer_port,
                "version": seen.version, "origin": self.name}
        return web.json_response(info, headers=extra)

    async def start(self) -> Origin:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


class RawServer:
    """An asyncio socket server running ``handler(reader, writer, server)`` per connection.
    Connection errors inside the handler are swallowed (misbehaving on purpose is the
    point); anything else is re-raised into the loop's exception handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.accepted = 0
        self.requests: list[Message] = []
        self.state: dict[str, Any] = {}
        self.event = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, ClosedBeforeMessage,
                asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._on_client, HOST, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def raw_response(status: int = 200, body: bytes = b"ok", headers: str = "",
                 reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


async def keepalive_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            srv: RawServer) -> None:
    """A correct keep-alive upstream: records each request, answers 200 with its index."""
    while True:
        req = await read_request(reader)
        srv.requests.append(req)
        writer.write(raw_response(body=f"req {len(srv.requests)}".encode()))
        await writer.drain()


def free_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def linger_reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP reset, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()




async def eventually(predicate: Callable[[], bool], timeout: float = 2.0,
                     what: str = "condition") -> None:
    """Poll a condition on the proxy's state, for which there is no event to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


async def assert_quiescent(relay: omnirelay.Relay, timeout: float = 2.0) -> None:
    """Once every client is gone: no stream is active and no upstream connection is
    counted as in use (what is left is idle in the pools)."""

    def state() -> tuple:
        st = relay.stats()
        return (sum(lst["downstream_rq_active"] for lst in st["listeners"].values()),
                sum(lst["connections"] for lst in st["listeners"].values()),
                [(ep["address"], ep["active"]) for c in st["clusters"].values()
                 for ep in c["endpoints"] if ep["active"]])

    try:
        await eventually(lambda: state() == (0, 0, []), timeout, "quiescence")
    except AssertionError:
        rq, cx, eps = state()
        raise AssertionError(f"proxy not quiescent: {rq} active streams, {cx} open client "
                             f"connections, endpoints still active: {eps}") from None


@contextlib.asynccontextmanager
async def relay_short_drain(cfg: dict, drain: float = 0.5):
    """Like ``async with Relay(cfg)``, but stop() waits at most ``drain`` seconds for busy
    connections: for tests whose failure mode is a stream that never finishes."""
    relay = omnirelay.Relay(cfg)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop(drain_timeout=drain)
