"""gRPC through OmniRelay: grpcio client -> h2c listener -> `protocol: http2` cluster -> grpcio
server, all on 127.0.0.1 (peers in grpc_peers.py, proven without a proxy in
test_grpc_peers.py).

What a gRPC-aware proxy must do, as Envoy does it: forward all four kinds of RPC with their
metadata, `:authority` and `grpc-timeout`; pass trailers (grpc-status, grpc-message, custom and
`-bin` metadata) through untouched; propagate a client's cancellation (RST_STREAM) to the
upstream stream; answer requests it cannot forward with a gRPC response (HTTP 200,
`content-type: application/grpc`, `grpc-status: 14`) rather than a bare 503; retry on the
gRPC status of a trailers-only answer when the route's `retry_on` names it; route on the method
path `/pkg.Service/Method`; multiplex calls over one upstream connection.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import pytest
from grpc_peers import (
    AsyncEchoClient,
    EchoServer,
    RawH2,
    bidi_message,
    data_frame,
    digest,
    headers_frames,
    path,
    request_headers,
    stream_message,
)
from harness import cluster, free_port, make_config, pattern, sha256

import omnirelay

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_cluster(name: str, port: int, **extra) -> dict:
    return cluster(name, port, protocol="http2", **extra)


def grpc_config(port: int | None = None, *, routes: list[dict] | None = None,
                clusters: list[dict] | None = None, route: dict | None = None,
                listener: dict | None = None) -> dict:
    """One h2c-capable listener; by default everything under /test.Echo/ to cluster "g"."""
    if routes is None:
        r = {"name": "echo", "match": {"path": {"prefix": "/test.Echo/"}}, "cluster": "g"}
        r.update(route or {})
        routes = [r]
    if clusters is None:
        clusters = [grpc_cluster("g", port)]
    lst = {"http2": {"max_concurrent_streams": 100}}
    lst.update(listener or {})
    return make_config(listener=lst, routes=routes, clusters=clusters)


@contextlib.asynccontextmanager
async def proxied(cfg: dict, *, authority: str | None = None):
    """A Relay for ``cfg`` and a gRPC client channel to its listener."""
    relay = omnirelay.Relay(cfg)
    await relay.start()
    host, port = relay.address()
    client = AsyncEchoClient(f"{host}:{port}", authority=authority)
    try:
        yield relay, client
    finally:
        await client.close()
        await relay.stop(drain_timeout=0.5)


# --------------------------------------------------------------------------- the four kinds


async def test_unary_with_metadata_authority_and_trailers():
    async with EchoServer("alpha") as srv, \
            proxied(grpc_config(srv.port), authority="echo.test") as (_, c):
        r = (await c.unary(b"hello", metadata=[("x-echo-color", "blue"), ("x-plain", "1"),
                                                ("x-blob-bin", b"\x00\x01\xff")])).ok()
        assert r.message == b"hello"
        assert r.initial("x-server") == "alpha"
        assert r.initial("x-echo-color") == "blue"
        assert r.trailer("x-server-trailer") == "alpha"
        (call,) = srv.calls_to("Unary")
        assert call.authority == "echo.test"
        assert call.header("x-plain") == "1"
        assert call.header("x-blob-bin") == b"\x00\x01\xff"
        assert call.deadline is not None and 25 < call.deadline <= 31  # grpc-timeout forwarded


async def test_large_unary_messages_both_ways():
    """3 MiB each way: flow control on both HTTP/2 hops (windows far below 3 MiB)."""
    data = pattern(3 << 20, seed=11)
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = (await c.unary(data)).ok()
        assert sha256(r.message) == sha256(data)
        assert sha256(srv.calls_to("Unary")[0].request) == sha256(data)


async def test_server_stream():
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = (await c.server_stream(count=500, size=2000)).ok()
        assert len(r.messages) == 500
        assert r.messages == [stream_message(i, 2000) for i in range(500)]
        assert r.trailer("x-server-trailer") == "grpc"


async def test_client_stream_count_and_checksum():
    msgs = [bidi_message(i) for i in range(2000)]
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = (await c.client_stream(msgs)).ok()
        count, digest_hex = digest(msgs)
        assert r.json() == {"count": count, "bytes": sum(map(len, msgs)), "sha256": digest_hex}
        (call,) = srv.calls_to("ClientStream")
        assert (call.received, call.received_sha256) == (count, digest_hex)


@pytest.mark.async_timeout(90)
async def test_bidi_10000_messages_with_checksums():
    msgs = [bidi_message(i) for i in range(10_000)]
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = (await c.bidi(msgs, timeout=80)).ok()
        assert len(r.messages) == 10_000
        assert digest(r.messages) == digest(msgs)
        (call,) = srv.calls_to("Bidi")
        assert (call.received, call.received_sha256) == digest(msgs)
        assert call.sent == 10_000 and call.completed and not call.cancelled


@pytest.mark.async_timeout(40)
async def test_concurrent_calls_share_one_upstream_connection():
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (relay, c):
        payloads = [f"call {i}".encode() * (i + 1) for i in range(40)]
        replies = await asyncio.gather(*(c.unary(p) for p in payloads))
        assert [r.ok().message for r in replies] == payloads
        for i in range(20):  # and sequential ones after them
            assert (await c.unary(b"seq %d" % i)).ok().message == b"seq %d" % i
        peers = {call.peer for call in srv.calls}
        assert len(peers) <= 2, f"60 calls used {len(peers)} upstream connections"
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_server_stream_reaches_the_server():
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = await c.server_stream_cancel(after=3, interval=0.02)
        assert r.code is grpc.StatusCode.CANCELLED
        call = await srv.wait_cancelled("ServerStream", timeout=3)
        assert not call.completed


async def test_cancelled_unary_reaches_the_server():
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = await c.slow_cancel(seconds=20, after=0.3)
        assert r.code is grpc.StatusCode.CANCELLED
        call = await srv.wait_cancelled("Slow", timeout=3)  # long before Slow or its deadline
        assert not call.completed
        (await c.unary(b"still fine")).ok()


async def test_cancelled_bidi_reaches_the_server():
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = await c.bidi_cancel(after=10)
        assert r.code is grpc.StatusCode.CANCELLED
        assert len(r.messages) >= 10
        await srv.wait_cancelled("Bidi", timeout=3)


@pytest.mark.parametrize("headers_first", [False, True], ids=["no-headers", "headers-sent"])
async def test_deadline_shorter_than_the_call(headers_first):
    """The client's timeout travels as grpc-timeout; when it expires the client sees
    DEADLINE_EXCEEDED and the server's call is cancelled too. (The server's own deadline fires
    at about the same time: grpc-core then ends the stream with trailers grpc-status 4 and,
    the request side still being open, RST_STREAM(NO_ERROR); once response headers have gone
    out, that reset must not reach the client as an error of its own.)"""
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = await c.slow(5, timeout=0.3, headers_first=headers_first)
        assert r.code is grpc.StatusCode.DEADLINE_EXCEEDED
        call = await srv.wait_cancelled("Slow", timeout=3)
        assert call.deadline is not None and call.deadline <= 0.35


# --------------------------------------------------------------------------- status and trailers


@pytest.mark.parametrize("headers_first", [False, True], ids=["trailers-only", "headers-first"])
async def test_status_message_and_trailing_metadata_pass_through(headers_first):
    message = "no such thing: ünïcode, 100% \"quoted\"\nsecond line"
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (_, c):
        r = await c.status("NOT_FOUND", message, headers_first=headers_first,
                           trailers=[("x-custom", "v1"), ("x-blob-bin", b"\x00\xffbin")])
        assert r.code is grpc.StatusCode.NOT_FOUND
        assert r.details == message
        assert r.trailer("x-custom") == "v1"
        assert r.trailer("x-blob-bin") == b"\x00\xffbin"
        assert r.trailer("x-server-trailer") == "grpc"
        assert r.initial("x-server") == ("grpc" if headers_first else None)
        for code in ("INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "INTERNAL",
                     "UNIMPLEMENTED", "UNAUTHENTICATED"):
            r = await c.status(code, f"status {code}")
            assert (r.code, r.details) == (grpc.StatusCode[code], f"status {code}")
        r = (await c.status(0, trailers=[("x-custom", "fine")])).ok()
        assert r.message == b"status ok" and r.trailer("x-custom") == "fine"


async def test_unknown_method_is_unimplemented_from_the_server():
    async with EchoServer() as srv, \
            proxied(grpc_config(srv.port, route={"match": {"path": {"prefix": "/"}}})) as (_, c):
        chan = c.sync.channel
        call = chan.unary_unary("/test.Echo/NoSuchMethod", request_serializer=None,
                                response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            await c.run(call, b"x", timeout=5)
        assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------- local replies


def _no_upstream_clusters(kind: str) -> list[dict]:
    if kind == "refused":  # an endpoint with nothing listening
        return [grpc_cluster("g", free_port())]
    # no endpoint at all: endpoints come from the API and none were pushed
    return [{"name": "g", "protocol": "http2", "endpoints": [], "discovery": {"type": "api"}}]


@pytest.mark.parametrize("kind", ["refused", "no_endpoints"])
async def test_no_healthy_upstream_is_unavailable(kind):
    async with proxied(grpc_config(clusters=_no_upstream_clusters(kind))) as (_, c):
        r = await c.unary(b"x", timeout=5)
        assert r.code is grpc.StatusCode.UNAVAILABLE, (r.code, r.details)
        r = await c.server_stream(count=3, timeout=5)
        assert r.code is grpc.StatusCode.UNAVAILABLE, (r.code, r.details)


@pytest.mark.parametrize("kind", ["refused", "no_endpoints"])
async def test_local_reply_is_a_grpc_response(kind):
    """Like Envoy, the proxy's own answer to a gRPC request is a trailers-only gRPC response
    (:status 200, content-type application/grpc, grpc-status 14 + grpc-message), not an HTTP
    error page: clients then see the proxy's reason in the status details."""
    async with proxied(grpc_config(clusters=_no_upstream_clusters(kind))) as (relay, _), \
            await RawH2.open(relay.address()) as conn:
        await conn.handshake()
        await conn.send(headers_frames(1, request_headers("POST", path("Unary"), "raw.test",
                                                          GRPC_HEADERS), end_stream=False)
                        + data_frame(1, b"\0\0\0\0\x01x", end_stream=True))
        resp = await conn.response(1)
        assert resp.status == 200, resp
        assert resp.header("content-type").startswith("application/grpc"), resp
        status = resp.trailer("grpc-status") or resp.header("grpc-status")
        assert status == "14", resp
        assert resp.trailer("grpc-message") or resp.header("grpc-message"), resp


# --------------------------------------------------------------------------- retries


def _retry_route(**policy) -> dict:
    return {"retry_policy": {"retry_on": ["unavailable"], "num_retries": 2,
                             "base_interval": "5ms", "max_interval": "20ms", **policy}}


async def test_retry_on_unavailable():
    key = uuid.uuid4().hex
    async with EchoServer() as srv, \
            proxied(grpc_config(srv.port, route=_retry_route())) as (_, c):
        r = (await c.flaky(key, failures=2)).ok()
        assert r.message == b"ok after 3"
        assert srv.flaky[key] == 3  # two failures, retried twice by the proxy


async def test_retries_exhausted_return_the_last_status():
    key = uuid.uuid4().hex
    async with EchoServer() as srv, \
            proxied(grpc_config(srv.port, route=_retry_route())) as (_, c):
        r = await c.flaky(key, failures=5)
        assert r.code is grpc.StatusCode.UNAVAILABLE
        assert r.details == "flaky failure 3"
        assert srv.flaky[key] == 3  # 1 + num_retries


async def test_status_not_in_retry_on_is_not_retried():
    key = uuid.uuid4().hex
    async with EchoServer() as srv, \
            proxied(grpc_config(srv.port, route=_retry_route())) as (_, c):
        r = await c.flaky(key, failures=1, code="INTERNAL")
        assert r.code is grpc.StatusCode.INTERNAL
        assert srv.flaky[key] == 1


@pytest.mark.parametrize(("retry_on", "code"), [
    ("resource-exhausted", "RESOURCE_EXHAUSTED"), ("cancelled", "CANCELLED"),
    ("deadline-exceeded", "DEADLINE_EXCEEDED"), ("internal", "INTERNAL")])
async def test_other_retriable_grpc_statuses(retry_on, code):
    key = uuid.uuid4().hex
    async with EchoServer() as srv, proxied(grpc_config(
            srv.port, route=_retry_route(retry_on=[retry_on], num_retries=1))) as (_, c):
        r = (await c.flaky(key, failures=1, code=code)).ok()
        assert r.message == b"ok after 2"
        assert srv.flaky[key] == 2


# --------------------------------------------------------------------------- routing


async def test_per_method_routing_to_two_upstreams():
    async with EchoServer("a") as a, EchoServer("b") as b:
        cfg = grpc_config(
            routes=[{"name": "unary", "match": {"path": {"exact": path("Unary")}}, "cluster": "a"},
                    {"name": "rest", "match": {"path": {"prefix": "/test.Echo/"}}, "cluster": "b"}],
            clusters=[grpc_cluster("a", a.port), grpc_cluster("b", b.port)])
        async with proxied(cfg) as (_, c):
            assert (await c.unary(b"1")).ok().initial("x-server") == "a"
            assert (await c.server_stream(count=2)).ok().initial("x-server") == "b"
            assert (await c.client_stream([b"x"])).ok().initial("x-server") == "b"
            assert (await c.bidi([b"y"])).ok().initial("x-server") == "b"
            assert (await c.unary(b"2")).ok().initial("x-server") == "a"
        assert [call.method for call in a.calls] == ["Unary", "Unary"]
        assert [call.method for call in b.calls] == ["ServerStream", "ClientStream", "Bidi"]


async def test_unrouted_method_is_unimplemented():
    """No route matches: the proxy's 404 reaches a gRPC client as UNIMPLEMENTED (the gRPC
    mapping of HTTP 404, also what Envoy's gRPC local reply carries)."""
    async with EchoServer() as srv:
        cfg = grpc_config(routes=[{"name": "unary", "match": {"path": {"exact": path("Unary")}},
                                   "cluster": "g"}], clusters=[grpc_cluster("g", srv.port)])
        async with proxied(cfg) as (_, c):
            (await c.unary(b"routed")).ok()
            r = await c.server_stream(count=1, timeout=5)
            assert r.code is grpc.StatusCode.UNIMPLEMENTED, (r.code, r.details)
        assert [call.method for call in srv.calls] == ["Unary"]


async def test_two_client_connections():
    """Two client channels (two downstream h2 connections) through one Relay."""
    async with EchoServer() as srv, proxied(grpc_config(srv.port)) as (relay, c1):
        host, port = relay.address()
        async with AsyncEchoClient(f"{host}:{port}") as c2:
            r1, r2 = await c1.unary(b"one"), await c2.unary(b"two")
            assert (r1.ok().message, r2.ok().message) == (b"one", b"two")
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 2
