"""Framing and lifecycle edge cases: HEAD, close-delimited upstream bodies, interim
responses, Connection: close with pipelining, aborted clients, stray upstream bytes,
listener timeouts."""
from __future__ import annotations

import asyncio
import time

from harness import (
    Client,
    Origin,
    RawServer,
    assert_quiescent,
    endpoint_stats,
    eventually,
    get,
    make_config,
    pattern,
    raw_response,
    read_request,
)

import omnirelay


async def test_head_response_has_no_body_and_connection_stays_in_sync():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            h = await c.request(b"HEAD /size/5000 HTTP/1.1\r\nHost: a\r\n\r\n", method="HEAD")
            assert h.status == 200
            assert h.headers.get("content-length") == "5000"
            g = await c.request(get("/size/10"))
            assert g.status == 200 and g.body == pattern(10)
        assert len(origin.connections) == 1


async def test_close_delimited_upstream_body_is_reframed():
    async def old_style(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + pattern(70000))
        await writer.drain()
        writer.close()

    async with RawServer(old_style) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/old"))
            assert r.status == 200
            assert r.body == pattern(70000)
            assert r.chunked or (r.headers.get("connection") or "").lower() == "close"
            if r.chunked:   # properly delimited: the connection is reusable
                r2 = await c.request(get("/old2"))
                assert r2.body == pattern(70000)
        assert endpoint_stats(relay)["idle"] == 0


async def test_upstream_interim_100_not_forwarded_to_client_that_did_not_expect_it():
    async def with_interim(reader, writer, srv):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                         + raw_response(body=b"final"))
            await writer.drain()

    async with (
        RawServer(with_interim) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        for _ in range(2):
            await c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
            r = await c.response(skip_interim=False)
            assert r.status == 200 and r.body == b"final"


async def test_connection_close_request_stops_pipeline():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/first", headers="Connection: close\r\n") + get("/second"))
            r = await c.response()
            assert r.status == 200 and r.json()["path"] == "/first"
            assert r.headers.get("connection", "").lower() == "close"
            rest, _ = await c.closed()
            assert rest == b""
        assert [s.path for s in origin.seen] == ["/first"]


async def test_client_abort_mid_response_does_not_poison_pool():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        c = await Client.open(relay.address(), limit=1 << 16)
        await c.send(get("/size/20000000"))
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await c.reader.readexactly(100_000)
        c.writer.transport.abort()
        await eventually(lambda: endpoint_stats(relay)["active"] == 0,
                         what="upstream connection released after the client left")
        async with await Client.open(relay.address()) as c2:
            for path in ("/size/1234", "/p"):
                r = await c2.request(get(path))
                assert r.status == 200
            assert r.json()["path"] == "/p"
        assert len(origin.seen) == 3
        assert relay.stats()["listeners"]["edge"]["downstream_rq_active"] == 0


async def test_stray_bytes_after_upstream_response_never_reach_next_request():
    async def chatty(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            writer.write(raw_response(body=f"real {req.target}".encode())
                         + raw_response(body=b"POISON"))
            await writer.drain()

    async with (
        RawServer(chatty) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        for i in range(4):
            r = await c.request(get(f"/{i}"))
            assert r.status == 200
            assert r.body == f"real /{i}".encode(), f"request {i} got {r.body!r}"


async def test_slow_request_headers_get_408_and_close():
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, listener={"request_timeout": 0.3})) as relay:
        async with await Client.open(relay.address()) as c:
            t0 = time.monotonic()
            await c.send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Trickle: ")
            r = await c.response(timeout=5)
            assert r.status == 408
            rest, how = await c.closed()
            assert rest == b"" and how == "eof"
            assert time.monotonic() - t0 < 3.0
        assert not origin.seen
        r = await Client.open(relay.address())
        async with r:
            ok = await r.request(get("/"))
            assert ok.status == 200


async def test_idle_keepalive_connection_closed_after_idle_timeout():
    async with (
        Origin() as origin,
        omnirelay.Relay(
            make_config(origin.port, listener={"idle_timeout": 0.3})) as relay,
        await Client.open(relay.address()) as c,
    ):
        assert (await c.request(get("/"))).status == 200
        t0 = time.monotonic()
        rest, how = await c.closed(timeout=4)
        assert rest == b"" and how == "eof"
        assert time.monotonic() - t0 < 3.0


async def test_oversized_upstream_response_headers_get_502():
    async def huge(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with (
        RawServer(huge) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/", headers="Connection: close\r\n"))
        assert r.status == 502


async def test_client_fin_while_request_in_flight_abandons_it():
    """As in Envoy and nginx (499): a client that closes its sending side while its
    request is in flight abandons it; nothing is answered, the upstream connection
    is aborted and no stream is left behind."""

    async def hold(reader, writer, srv):
        srv.requests.append(await read_request(reader))
        try:
            await reader.read()             # until the proxy drops the connection
        finally:
            srv.event.set()

    async with RawServer(hold) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"POST /hc HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            await eventually(lambda: len(srv.requests) == 1, what="request upstream")
            c.writer.write_eof()
            rest, _ = await c.closed()
        assert rest == b""
        await asyncio.wait_for(srv.event.wait(), 5)
        await assert_quiescent(relay)
