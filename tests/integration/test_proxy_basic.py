"""Plain proxying: keep-alive on both sides, pipelining, request/response body framing,
trailers, HTTP/1.0 clients and Expect: 100-continue."""
from __future__ import annotations

import asyncio
import random

import aiohttp
from harness import (
    Client,
    Origin,
    RawServer,
    assert_quiescent,
    endpoint_stats,
    get,
    make_config,
    pattern,
    read_request,
    sha256,
)

import omnirelay


async def test_keepalive_get_and_post_reuse_one_upstream_connection():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(6):
                if i % 2:
                    body = f"payload-{i}".encode()
                    req = (f"POST /kv/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n"
                           f"\r\n").encode() + body
                else:
                    body = b""
                    req = get(f"/kv/{i}")
                resp = await c.request(req)
                assert resp.status == 200
                info = resp.json()
                assert info["method"] == ("POST" if i % 2 else "GET")
                assert info["path"] == f"/kv/{i}"
                assert info["sha256"] == sha256(body)
                assert resp.headers.get("connection") is None  # keep-alive is the default
        assert len(origin.seen) == 6
        assert len(origin.connections) == 1, f"upstream saw {len(origin.connections)} connections"
        ep = endpoint_stats(relay)
        assert ep["connects"] == 1
        assert ep["reuses"] == 5
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


async def test_aiohttp_client_session_keepalive_through_proxy():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(relay.url(), connector=conn) as session:
            for i in range(4):
                async with session.post(f"/s/{i}", data=b"x" * (i * 1000)) as resp:
                    assert resp.status == 200
                    info = await resp.json()
                    assert info["path"] == f"/s/{i}"
                    assert info["body_len"] == i * 1000
        assert len(origin.connections) == 1
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


async def test_pipelined_requests_answered_in_order():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            body = b"second-body"
            await c.send(get("/p/1")
                         + b"POST /p/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n" + body
                         + get("/p/3"))
            responses = [await c.response() for _ in range(3)]
        assert [r.status for r in responses] == [200, 200, 200]
        assert [r.json()["path"] for r in responses] == ["/p/1", "/p/2", "/p/3"]
        assert responses[1].json()["sha256"] == sha256(body)
        assert [s.path for s in origin.seen] == ["/p/1", "/p/2", "/p/3"]


async def test_pipelined_requests_reuse_one_upstream_connection():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/q/1") + get("/q/2") + get("/q/3") + get("/q/4"))
            responses = [await c.response() for _ in range(4)]
        assert [r.json()["path"] for r in responses] == ["/q/1", "/q/2", "/q/3", "/q/4"]
        assert len(origin.connections) == 1, \
            f"4 sequentially answered requests used {len(origin.connections)} upstream connections"
        assert endpoint_stats(relay)["connects"] == 1


async def test_many_pipelined_requests_larger_than_a_read_slab():
    """200 requests (~330 KiB, several 64 KiB read slabs) in one write: every one is
    answered once, in order, with its own body."""
    reqs, expected = [], []
    for i in range(200):
        if i % 3 == 0:
            body = (f"body-{i}-" * 100).encode()
            reqs.append(f"POST /m/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n"
                        f"X-Pad: {'p' * 500}\r\n\r\n".encode() + body)
        elif i % 3 == 1:
            body = f"chunky-{i}".encode()
            reqs.append(f"PUT /m/{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                        f"X-Pad: {'q' * 1000}\r\n\r\n".encode()
                        + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        else:
            body = b""
            reqs.append(get(f"/m/{i}", headers=f"X-Pad: {'r' * 1500}\r\n"))
        expected.append((f"/m/{i}", sha256(body)))
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"".join(reqs))
            got = []
            for _ in range(200):
                info = (await c.response()).json()
                got.append((info["path"], info["sha256"]))
        assert got == expected
        await assert_quiescent(relay)


async def test_content_length_request_body_streamed_intact():
    payload = random.Random(1).randbytes(1 << 20)
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {len(payload)}\r\n"
                         f"\r\n".encode())
            for i in range(0, len(payload), 65536):
                await c.send(payload[i:i + 65536])
            resp = await c.response()
        assert resp.status == 200
        info = resp.json()
        assert info["body_len"] == len(payload)
        assert info["sha256"] == sha256(payload)
        assert origin.seen[0].headers.get("content-length") == str(len(payload))


async def test_chunked_request_body_streamed_intact():
    rnd = random.Random(2)
    payload = rnd.randbytes(1 << 20)
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            i = 0
            while i < len(payload):
                n = min(rnd.randint(1, 100_000), len(payload) - i)
                await c.send(b"%x\r\n" % n + payload[i:i + n] + b"\r\n")
                i += n
            await c.send(b"0\r\n\r\n")
            resp = await c.response()
        assert resp.status == 200
        info = resp.json()
        assert info["body_len"] == len(payload)
        assert info["sha256"] == sha256(payload)
        seen = origin.seen[0].headers
        assert seen.get("transfer-encoding", "").lower() == "chunked" or \
            seen.get("content-length") == str(len(payload))


async def test_chunked_response_reframed_for_http11_client():
    n = 300_000
    async with (
        Origin() as origin,
        omnirelay.Relay(make_config(origin.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        resp = await c.request(get(f"/chunked/{n}"))
        assert resp.status == 200
        assert resp.headers.getall("transfer-encoding") == ["chunked"]
        assert "content-length" not in resp.headers
        assert resp.body == pattern(n)
        # The connection is still usable after the re-framed response.
        resp2 = await c.request(get("/size/1000"))
        assert resp2.body == pattern(1000)
        assert resp2.headers.get("content-length") == "1000"
        assert "transfer-encoding" not in resp2.headers


async def test_chunked_response_close_delimited_for_http10_client():
    n = 200_000
    async with (
        Origin() as origin,
        omnirelay.Relay(make_config(origin.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(get(f"/chunked/{n}", version="1.0"))
        resp = await c.response()
        assert resp.status == 200
        assert "transfer-encoding" not in resp.headers  # HTTP/1.0 has no chunked coding
        assert resp.body == pattern(n)
        rest, _ = await c.closed()
        assert rest == b""


async def test_response_trailers_reach_client_that_accepts_them():
    async def upstream(reader, writer, srv):
        req = await read_request(reader)
        srv.requests.append(req)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\nx-more: 1\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection open until the proxy closes it

    async with RawServer(upstream) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            resp = await c.request(get("/t", headers="TE: trailers\r\n"))
        assert resp.status == 200
        assert resp.body == b"hello world"
        assert resp.chunked
        assert resp.trailers.get("x-checksum") == "abc123"
        assert resp.trailers.get("x-more") == "1"


async def test_http10_client_without_keepalive_gets_response_then_close():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"GET /ten HTTP/1.0\r\nHost: a\r\n\r\n")
            resp = await c.response()
            assert resp.status == 200
            assert resp.json()["path"] == "/ten"
            assert (resp.headers.get("connection") or "close").lower() == "close"
            rest, how = await c.closed()
            assert rest == b"" and how == "eof"
        via = origin.seen[0].headers.get("via")
        assert via == "1.0 omnirelay"


async def test_http10_client_with_keepalive_keeps_connection():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                resp = await c.request(
                    f"GET /ka/{i} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n".encode())
                assert resp.status == 200
                assert resp.json()["path"] == f"/ka/{i}"
                assert resp.headers.get("connection", "").lower() == "keep-alive"
                assert resp.headers.get("content-length") is not None
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


async def test_expect_100_continue():
    body = b"the body after 100"
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(f"POST /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            interim = await c.response(skip_interim=False)
            assert interim.start_line == "HTTP/1.1 100 Continue"
            await c.send(body)
            final = await c.response()
            assert final.status == 200
            info = final.json()
            assert info["sha256"] == sha256(body)
            # Nothing else (a second 100, stray bytes) follows the final response.
            await c.send(get("/after"))
            after = await c.response()
            assert after.json()["path"] == "/after"
        assert "expect" not in origin.seen[0].headers
        assert origin.seen[0].body == body


async def test_expect_100_continue_answers_before_any_body_byte():
    """The 100 must come while the client is still waiting (it never sends the body
    unless told to)."""
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 3\r\n\r\n")
            interim = await asyncio.wait_for(c.response(skip_interim=False), 2.0)
            assert interim.status == 100
            await c.send(b"abc")
            final = await c.response()
        assert final.status == 200
        assert origin.seen[0].body == b"abc"


async def test_response_trailers_dropped_cleanly_for_http10_client():
    async def upstream(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                     b"5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with (
        RawServer(upstream) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(get("/t", version="1.0"))
        data, how = await c.closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"hello", body
    assert how == "eof"
