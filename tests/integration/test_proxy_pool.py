"""Upstream connection pool correctness: a connection the upstream closed is never
handed to the next request."""
from __future__ import annotations

import asyncio

from harness import (
    Client,
    RawServer,
    endpoint_stats,
    eventually,
    get,
    keepalive_handler,
    make_config,
    raw_response,
    read_request,
)

import omnirelay


async def close_after_each_response(reader, writer, srv):
    """Answers one request, then closes without having said `Connection: close`."""
    req = await read_request(reader)
    srv.requests.append(req)
    writer.write(raw_response(body=f"conn {srv.accepted}".encode()))
    await writer.drain()
    writer.close()


async def test_upstream_closing_after_each_response_never_gives_502():
    async with RawServer(close_after_each_response) as srv, \
            omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(8):
                if i % 2:
                    req = (b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
                else:
                    req = get(f"/g/{i}")
                resp = await c.request(req)
                assert resp.status == 200, f"request {i}: {resp.start_line} {resp.body!r}"
        assert len(srv.requests) == 8
        assert srv.accepted == 8
        assert [r.body for r in srv.requests if r.method == "POST"] == [b"body"] * 4


async def test_upstream_closing_after_each_response_back_to_back():
    """Requests sent the moment the previous response arrives (the upstream's FIN may
    still be in flight)."""
    async with RawServer(close_after_each_response) as srv, \
            omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/a") + get("/b") + get("/c") + get("/d"))
            statuses = [(await c.response()).status for _ in range(4)]
        assert statuses == [200, 200, 200, 200]
        assert [r.target for r in srv.requests] == ["/a", "/b", "/c", "/d"]


async def test_upstream_closing_idle_connections_after_delay():
    closed = asyncio.Queue()

    async def idle_closer(reader, writer, srv):
        # Keep-alive, but drop a connection idle for 100 ms.
        while True:
            try:
                req = await asyncio.wait_for(read_request(reader), 0.1)
            except TimeoutError:
                writer.close()
                await writer.wait_closed()
                closed.put_nowait(True)
                return
            srv.requests.append(req)
            writer.write(raw_response(body=b"fine"))
            await writer.drain()

    async with RawServer(idle_closer) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                resp = await c.request(get(f"/x/{i}"))
                assert resp.status == 200 and resp.body == b"fine"
                # The upstream has closed the pooled connection; ask again right away.
                await asyncio.wait_for(closed.get(), 2)
            # And with a body, once the proxy had a moment to see the close.
            for i in range(3):
                resp = await c.request(b"PUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
                assert resp.status == 200, resp.body
                await asyncio.wait_for(closed.get(), 2)
                for _ in range(100):
                    if endpoint_stats(relay)["idle"] == 0:
                        break
                    await asyncio.sleep(0.01)
        assert len(srv.requests) == 6
        assert srv.accepted == 6
        ep = endpoint_stats(relay)
        assert ep["idle"] == 0


async def test_pooled_connection_reused_when_upstream_keeps_it():
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        for i in range(4):   # separate client connections share the upstream connection
            async with await Client.open(relay.address()) as c:
                resp = await c.request(get(f"/{i}"))
                assert resp.body == f"req {i + 1}".encode()
        assert srv.accepted == 1
        ep = endpoint_stats(relay)
        assert ep["connects"] == 1 and ep["reuses"] == 3 and ep["idle"] == 1


async def test_upstream_connection_close_header_is_honoured():
    async def says_close(reader, writer, srv):
        req = await read_request(reader)
        srv.requests.append(req)
        writer.write(raw_response(body=b"bye", headers="Connection: close\r\n"))
        await writer.drain()
        await reader.read()    # lets the proxy be the one to close

    async with RawServer(says_close) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                resp = await c.request(get(f"/{i}"))
                assert resp.status == 200 and resp.body == b"bye"
                assert resp.headers.get("connection") is None   # hop-by-hop, not forwarded
        assert srv.accepted == 3
        assert endpoint_stats(relay)["idle"] == 0


async def test_idle_upstream_connections_expire_after_cluster_idle_timeout():
    gone = asyncio.Event()

    async def watch_close(reader, writer, srv):
        try:
            await keepalive_handler(reader, writer, srv)
        finally:
            gone.set()

    async with RawServer(watch_close) as srv, omnirelay.Relay(
            make_config(srv.port, cluster={"idle_timeout": 0.2})) as relay:
        async with await Client.open(relay.address()) as c:
            assert (await c.request(get("/1"))).status == 200
            assert endpoint_stats(relay)["idle"] == 1
            await asyncio.wait_for(gone.wait(), 3)     # the proxy closed its idle connection
            assert endpoint_stats(relay)["idle"] == 0
            assert (await c.request(get("/2"))).status == 200
        assert srv.accepted == 2


async def test_no_pooling_when_max_idle_is_zero():
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(
            make_config(srv.port, cluster={"max_idle_per_endpoint": 0})) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                assert (await c.request(get(f"/{i}"))).status == 200
        assert srv.accepted == 3
        ep = endpoint_stats(relay)
        assert ep["idle"] == 0 and ep["reuses"] == 0


async def test_reload_dropping_an_endpoint_closes_its_idle_connections():
    gone = asyncio.Event()

    async def watch_close(reader, writer, srv):
        try:
            await keepalive_handler(reader, writer, srv)
        finally:
            gone.set()

    async with RawServer(watch_close) as old, RawServer(keepalive_handler) as new:
        async with (
            omnirelay.Relay(make_config(old.port)) as relay,
            await Client.open(relay.address()) as c,
        ):
            assert (await c.request(get("/"))).status == 200
            await relay.reload(make_config(new.port))
            await asyncio.wait_for(gone.wait(), 2)
            assert (await c.request(get("/"))).status == 200
        assert old.accepted == 1 and new.accepted == 1


async def test_connection_pooled_while_reads_paused_still_notices_upstream_close():
    """A slow client makes the proxy pause and resume reading the upstream (backpressure)
    while a large response streams; the connection then goes back to the pool and must
    still notice the upstream closing it, or the next request (with a body, so it cannot
    be retried) fails."""
    size = 8 << 20
    closed = asyncio.Queue()

    async def big_then_idle_close(reader, writer, srv):
        while True:
            try:
                req = await asyncio.wait_for(read_request(reader), 0.1)
            except TimeoutError:
                writer.close()
                closed.put_nowait(True)
                return
            srv.requests.append(req)
            if req.target == "/big":
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                for _ in range(size // 65536):
                    writer.write(b"b" * 65536)
                    await writer.drain()
            else:
                writer.write(raw_response(body=b"small"))
            await writer.drain()

    # A one-byte downstream buffer limit: any write the kernel does not take at once
    # pauses the upstream.
    async with (
        RawServer(big_then_idle_close) as srv,
        omnirelay.Relay(make_config(srv.port, listener={"buffer_limit": 1})) as relay,
        await Client.open(relay.address(), limit=1 << 16) as c,
    ):
        for _ in range(3):
            await c.send(get("/big"))
            head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            got = 0
            while got < size:   # a slow reader: small reads, yielding in between
                got += len(await asyncio.wait_for(c.reader.read(16384), 5))
                await asyncio.sleep(0)
            assert got == size
            await asyncio.wait_for(closed.get(), 2)   # upstream dropped the idle conn
            await eventually(lambda: endpoint_stats(relay)["idle"] == 0, 1.0,
                             "the proxy noticing the upstream closed its idle connection")
            r = await c.request(b"POST /after HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                b"\r\nbody")
            assert r.status == 200 and r.body == b"small"
            await asyncio.wait_for(closed.get(), 2)


async def test_http10_upstream_connections_are_not_reused():
    async def http10(reader, writer, srv):
        req = await read_request(reader)
        srv.requests.append(req)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nv1.0")
        await writer.drain()
        # An HTTP/1.0 server without keep-alive closes after the response; this one
        # lingers instead, so a proxy that pooled the connection would hang on it.
        await reader.read()

    async with RawServer(http10) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                r = await c.request(get(f"/{i}"))
                assert r.status == 200 and r.body == b"v1.0"
        assert srv.accepted == 3
        assert endpoint_stats(relay)["idle"] == 0


async def test_http10_upstream_with_keepalive_is_reused():
    async def http10_ka(reader, writer, srv):
        while True:
            srv.requests.append(await read_request(reader))
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nka")
            await writer.drain()

    async with RawServer(http10_ka) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                r = await c.request(get(f"/{i}"))
                assert r.status == 200 and r.body == b"ka"
        assert srv.accepted == 1
