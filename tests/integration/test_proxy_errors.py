"""Error handling observed by a raw client: malformed requests, size limits, routing and
upstream failures. Every rejection must come with the right status line, the proxy must
then close the connection, and a normal request afterwards must still work."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest
from harness import (
    Client,
    Origin,
    RawServer,
    assert_healthy,
    assert_quiescent,
    cluster,
    free_port,
    get,
    keepalive_handler,
    linger_reset,
    make_config,
    read_request,
)

import omnirelay

BAD_REQUESTS = {
    "request-line-trailing-junk": b"GET / HTTP/1.1 junk\r\nHost: a\r\n\r\n",
    "request-line-bad-method": b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "request-line-no-version": b"GET /\r\nHost: a\r\n\r\n",
    "request-line-binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "invalid-header-token": b"GET / HTTP/1.1\r\nHost: a\r\nX(Bad): 1\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"
                          b"0\r\n\r\n",
    "content-length-and-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                           b"Content-Length: 6\r\n\r\nhello!",
    "content-length-not-a-number": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n"
                                   b"hello",
    "transfer-encoding-not-chunked-last": b"POST / HTTP/1.1\r\nHost: a\r\n"
                                          b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "invalid-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    "nul-in-header-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\x00b\r\n\r\n",
    "bare-cr-in-header-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
    "bare-lf-line-ending-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX-Lf: a\nX-Other: b\r\n\r\n",
    "http11-without-host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-host-headers": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    "control-char-in-target": b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "content-length-plus-sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"
                                b"hello",
}


async def expect_reply_then_close(addr, data: bytes, status: int, *, method: str = "GET",
                                  allow_reset: bool = False):
    async with await Client.open(addr) as c:
        await c.send(data)
        resp = await c.response(method)
        assert resp.status == status, f"expected {status}, got {resp.start_line!r}"
        rest, how = await c.closed(timeout=2)
        assert rest == b"", f"bytes after the error response: {rest[:200]!r}"
        if not allow_reset:
            assert how == "eof", "connection was reset instead of closed"
        # A server that closes after a response must say so (RFC 9112 9.6).
        assert resp.headers.get("connection", "").lower() == "close", \
            f"connection closed after {status} without 'Connection: close': {resp.headers}"
        return resp


@pytest.mark.parametrize("raw", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_malformed_request_gets_400_and_close(raw):
    # A raw upstream: it records whatever the proxy forwards, without judging it.
    async with RawServer(keepalive_handler) as srv, \
            omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(raw)
            resp = await c.response()
            assert not srv.requests, \
                f"the malformed request was forwarded: {srv.requests[0].start_line!r} " \
                f"{srv.requests[0].headers}"
            assert resp.status == 400, f"expected 400, got {resp.start_line!r}"
            rest, how = await c.closed(timeout=2)
            assert rest == b"" and how == "eof"
            assert resp.headers.get("connection", "").lower() == "close"
        await assert_healthy(relay.address())
        stats = relay.stats()["listeners"]["edge"]
        assert stats["downstream_rq_protocol_error"] == 1, \
            f"a request rejected as malformed is not counted as a protocol error: {stats}"
        await assert_quiescent(relay)


async def test_malformed_second_pipelined_request_after_good_one():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/good") + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                        b"Content-Length: 2\r\n\r\nab")
            first = await c.response()
            assert first.status == 200 and first.json()["path"] == "/good"
            second = await c.response()
            assert second.status == 400
            rest, _ = await c.closed()
            assert rest == b""
        assert [s.path for s in origin.seen] == ["/good"]


async def test_headers_over_listener_limit_get_431():
    cfg = make_config(listener={"max_header_bytes": "1KiB"})
    async with Origin() as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay:
            big = get("/", headers=f"X-Big: {'a' * 4000}\r\n")
            await expect_reply_then_close(relay.address(), big, 431)
            many = get("/", headers="".join(f"X-H{i}: {'v' * 40}\r\n" for i in range(40)))
            await expect_reply_then_close(relay.address(), many, 431)
            # Just under the limit is fine.
            await assert_healthy(relay.address())
            ok = await expect_reply_then_close(
                relay.address(), get("/", headers=f"Connection: close\r\nX-Med: {'m' * 700}\r\n"),
                200)
            assert ok.json()["path"] == "/"
        assert len(origin.seen) == 2


async def test_body_over_route_limit_with_content_length_gets_413():
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, route={"max_request_body": 1000})) as relay:
        body = b"x" * 5000
        await expect_reply_then_close(
            relay.address(),
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body, 413)
        assert not origin.seen
        # At the limit is accepted.
        async with await Client.open(relay.address()) as c:
            r = await c.request(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
                                + b"y" * 1000)
            assert r.status == 200 and r.json()["body_len"] == 1000


async def test_expect_100_continue_with_oversized_body_gets_413_without_100():
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, route={"max_request_body": 1000})) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 5000\r\n\r\n")
            resp = await c.response(skip_interim=False)
            assert resp.status == 413, f"got {resp.start_line!r} before sending any body"
        assert not origin.seen


async def test_body_over_route_limit_chunked_gets_413():
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, route={"max_request_body": 1000})) as relay:
        chunks = b"".join(b"200\r\n" + b"z" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        await expect_reply_then_close(
            relay.address(),
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, 413)
        assert not origin.seen, "the upstream received a request whose body was over the limit"
        await assert_healthy(relay.address())
        await assert_quiescent(relay)


async def test_no_matching_route_gets_404_and_keeps_connection_usable():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port, route={
            "match": {"path": {"exact": "/only"}}})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/other"))
            assert r.status == 404
            assert r.headers.get("x-omnirelay-reason") == "no_route"
            r2 = await c.request(get("/only"))
            assert r2.status == 200
            r3 = await c.request(get("/nothing", headers="Connection: close\r\n"))
            assert r3.status == 404
            rest, how = await c.closed()
            assert rest == b"" and how == "eof"
        assert [s.path for s in origin.seen] == ["/only"]


async def test_nothing_listening_upstream_gets_503():
    async with omnirelay.Relay(make_config(free_port())) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/"))
            assert r.status == 503
            r2 = await c.request(get("/", headers="Connection: close\r\n"))
            assert r2.status == 503
            rest, how = await c.closed()
            assert rest == b"" and how == "eof"
        ep = relay.stats()["clusters"]["c"]["endpoints"][0]
        assert ep["connect_failures"] == 2
        assert ep["active"] == 0
        await assert_quiescent(relay)


async def test_silent_upstream_times_out_with_504():
    closed = asyncio.Event()

    async def silent(reader, writer, srv):
        await read_request(reader)
        await reader.read()         # never answer; returns when the proxy gives up
        closed.set()

    async with RawServer(silent) as srv, omnirelay.Relay(
            make_config(srv.port, route={"timeout": 0.3})) as relay:
        async with await Client.open(relay.address()) as c:
            t0 = time.monotonic()
            r = await c.request(get("/slow"))
            elapsed = time.monotonic() - t0
            assert r.status == 504
            assert 0.25 <= elapsed < 3.0, f"504 after {elapsed:.2f} s"
            await asyncio.wait_for(closed.wait(), 2.0)   # the upstream connection is dropped
            r2 = await c.request(get("/slow", headers="Connection: close\r\n"))
            assert r2.status == 504
            rest, _ = await c.closed()
            assert rest == b""
        ep = relay.stats()["clusters"]["c"]["endpoints"][0]
        assert ep["idle"] == 0 and ep["active"] == 0
        await assert_quiescent(relay)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_upstream_dies_mid_body_client_never_sees_complete_body(framing, how):
    async def dying(reader, writer, srv):
        await read_request(reader)
        if framing == "content-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 50000)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + (b"c350\r\n" + b"a" * 50000 + b"\r\n"))
        await writer.drain()
        srv.event.set()
        if how == "reset":
            linger_reset(writer)
        else:
            writer.close()

    async with RawServer(dying) as srv, Origin() as origin, omnirelay.Relay(make_config(
            routes=[{"name": "half", "match": {"path": {"exact": "/half"}}, "cluster": "dying"},
                    {"name": "rest", "match": {}, "cluster": "ok"}],
            clusters=[cluster("dying", srv.port), cluster("ok", origin.port)])) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/half"))
            data, _ = await c.closed()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data[:100]
        if framing == "content-length":
            assert b"content-length: 100000" in head.lower()
            assert len(body) < 100000
        else:
            assert not body.endswith(b"0\r\n\r\n"), "truncated chunked body was terminated"
        await assert_healthy(relay.address())
        await assert_quiescent(relay)


async def test_upstream_resets_before_response_gets_502():
    async def rude(reader, writer, srv):
        await read_request(reader)
        linger_reset(writer)

    async with RawServer(rude) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/", headers="Connection: close\r\n"))
            assert r.status == 502
            rest, _ = await c.closed()
            assert rest == b""
        await assert_quiescent(relay)


async def test_upstream_bad_framing_gets_502():
    async def bad(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with RawServer(bad) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/", headers="Connection: close\r\n"))
            assert r.status == 502
            rest, _ = await c.closed()
            assert rest == b""
        await assert_quiescent(relay)


async def test_unsolicited_101_from_upstream_gets_502():
    async def switcher(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                     b"Connection: Upgrade\r\n\r\nraw-bytes-after-switch")
        await writer.drain()
        await reader.read()

    async with (
        RawServer(switcher) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/", headers="Connection: close\r\n"))
        assert r.status == 502, f"client got {r.start_line!r} for a request without Upgrade"
        rest, _ = await c.closed()
        assert b"raw-bytes-after-switch" not in rest


async def test_upstream_connect_timeout_gets_503():
    # A listener whose accept queue is full and that never accepts: the kernel drops
    # further SYNs, so the proxy's connect hangs until the cluster's connect_timeout.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(lsock.getsockname())
            except BlockingIOError:
                pass
            fillers.append(s)
        port = lsock.getsockname()[1]
        async with omnirelay.Relay(make_config(port, cluster={"connect_timeout": 0.3})) as relay:
            t0 = time.monotonic()
            async with await Client.open(relay.address()) as c:
                r = await c.request(get("/", headers="Connection: close\r\n"))
            elapsed = time.monotonic() - t0
            assert r.status == 503, r.start_line
            assert r.headers.get("x-omnirelay-reason") == "upstream_connect_timeout"
            assert 0.25 <= elapsed < 3.0, elapsed
            await assert_quiescent(relay)
    finally:
        for s in fillers:
            s.close()
        lsock.close()
