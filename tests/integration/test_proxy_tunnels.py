"""Tunnels: Upgrade (WebSocket-style 101) and CONNECT, bytes both ways."""
from __future__ import annotations

import asyncio

from harness import (
    Client,
    RawServer,
    get,
    make_config,
    read_request,
    read_response,
    relay_short_drain,
)

import omnirelay

WS_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")


async def echo_after_101(reader, writer, srv):
    req = await read_request(reader)
    srv.requests.append(req)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                 b"hello-from-upstream")
    await writer.drain()
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    srv.event.set()   # the proxy passed the client's EOF on
    writer.close()


async def read_exactly(reader, n):
    return await asyncio.wait_for(reader.readexactly(n), 5)


async def test_websocket_upgrade_tunnels_bytes_both_ways():
    async with RawServer(echo_after_101) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(WS_REQUEST)
            resp = await c.response()
            assert resp.status == 101
            assert resp.headers.get("upgrade", "").lower() == "websocket"
            assert "upgrade" in resp.headers.get("connection", "").lower()
            assert resp.headers.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            assert await read_exactly(c.reader, 19) == b"hello-from-upstream"
            for msg in (b"ping", b"\x81\x05hello", bytes(range(256)) * 40):
                await c.send(msg)
                assert await read_exactly(c.reader, len(msg)) == msg.upper()
            # Client half-closes: the upstream sees EOF and closes, the client sees EOF.
            c.writer.write_eof()
            await asyncio.wait_for(srv.event.wait(), 5)
            rest, how = await c.closed()
            assert rest == b"" and how == "eof"
        (req,) = srv.requests
        assert req.headers.get("upgrade") == "websocket"
        assert "upgrade" in req.headers.get("connection", "").lower()
        assert req.headers.get("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="


async def test_websocket_client_bytes_sent_with_handshake_are_not_lost():
    """Bytes the client pipelines right after the upgrade request reach the upstream once
    the tunnel is up."""
    async with (
        RawServer(echo_after_101) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(WS_REQUEST + b"early-bytes")
        resp = await c.response()
        assert resp.status == 101
        got = await read_exactly(c.reader, 19 + 11)
        assert got == b"hello-from-upstream" + b"EARLY-BYTES"


async def test_upgrade_rejected_by_upstream_is_a_normal_response():
    async def refuse(reader, writer, srv):
        req = await read_request(reader)
        srv.requests.append(req)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
                     b"nope")
        await writer.drain()
        writer.close()

    async with (
        RawServer(refuse) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(WS_REQUEST)
        resp = await c.response()
        assert resp.status == 400
        assert resp.body == b"nope"
        rest, _ = await c.closed()
        assert rest == b""


async def echo_server(reader, writer, srv):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    srv.event.set()
    writer.close()


async def test_connect_tunnels_to_echo_cluster():
    async with RawServer(echo_server) as srv, omnirelay.Relay(make_config(
            srv.port, route={"match": {"hosts": ["tunnel.example:443"]}})) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
            resp = await c.response("CONNECT")
            assert resp.status == 200
            assert "content-length" not in resp.headers
            assert "transfer-encoding" not in resp.headers
            for msg in (b"\x16\x03\x01 tls-ish bytes", b"x" * 200_000):
                await c.send(msg)
                assert await read_exactly(c.reader, len(msg)) == msg
            c.writer.write_eof()
            await asyncio.wait_for(srv.event.wait(), 5)
            rest, _ = await c.closed()
            assert rest == b""
        assert srv.accepted == 1


async def test_connect_to_unmatched_authority_is_404():
    async with RawServer(echo_server) as srv, omnirelay.Relay(make_config(
            srv.port, route={"match": {"hosts": ["tunnel.example:443"]}})) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n")
            resp = await read_response(c.reader, method="CONNECT")
            assert resp.status == 404
        assert srv.accepted == 0


async def test_upstream_closing_tunnel_first_reaches_client_as_eof():
    async def greet_and_leave(reader, writer, srv):
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\nbye-from-upstream")
        await writer.drain()
        writer.close()

    async with RawServer(greet_and_leave) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(WS_REQUEST)
            resp = await c.response()
            assert resp.status == 101
            rest, _ = await c.closed()
            assert rest == b"bye-from-upstream"
        from harness import assert_quiescent
        await assert_quiescent(relay)


async def test_connect_to_unreachable_cluster_gets_503_and_close():
    from harness import free_port

    async with (
        omnirelay.Relay(make_config(free_port())) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        resp = await read_response(c.reader, method="CONNECT")
        assert resp.status == 503
        rest, _ = await c.closed()
        assert rest == b""


async def test_connect_bytes_sent_before_the_200_are_delivered():
    async with (
        RawServer(echo_server) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(b"CONNECT t.example:443 HTTP/1.1\r\nHost: t.example:443\r\n\r\n"
                     b"client-hello")
        resp = await c.response("CONNECT")
        assert resp.status == 200
        assert await read_exactly(c.reader, 12) == b"client-hello"


async def banner_then_echo(reader, writer, srv):
    """A server-first protocol (SSH, SMTP, MySQL...): it talks as soon as it accepts."""
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def test_connect_to_server_first_protocol_gets_banner():
    async with (
        RawServer(banner_then_echo) as srv,
        relay_short_drain(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(b"CONNECT git.example:22 HTTP/1.1\r\nHost: git.example:22\r\n\r\n")
        resp = await c.response("CONNECT")
        assert resp.status == 200
        assert await read_exactly(c.reader, 21) == b"SSH-2.0-OpenSSH_9.6\r\n"
        await c.send(b"SSH-2.0-client\r\n")
        assert await read_exactly(c.reader, 16) == b"SSH-2.0-client\r\n"


async def test_upstream_talking_before_the_request_gets_502_not_a_hang():
    async def premature(reader, writer, srv):
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(premature) as srv, relay_short_drain(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/", headers="Connection: close\r\n"))
            r = await c.response(timeout=3)
            assert 500 <= r.status < 600 or r.status == 408, r.start_line
        from harness import assert_quiescent
        await assert_quiescent(relay)


async def test_connect_to_banner_then_close_upstream():
    async def busy(reader, writer, srv):
        writer.write(b"421 too busy\r\n")
        await writer.drain()
        writer.close()

    async with (
        RawServer(busy) as srv,
        relay_short_drain(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(b"CONNECT ftp.example:21 HTTP/1.1\r\nHost: ftp.example:21\r\n\r\n")
        resp = await c.response("CONNECT")
        assert resp.status == 200
        rest, _ = await c.closed()
        assert rest == b"421 too busy\r\n"


async def test_upgrade_to_silent_upstream_times_out():
    async def silent(reader, writer, srv):
        srv.requests.append(await read_request(reader))
        await reader.read()

    async with (
        RawServer(silent) as srv,
        relay_short_drain(make_config(srv.port, route={"timeout": 0.3})) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(WS_REQUEST)
        try:
            resp = await c.response(timeout=3)
        except TimeoutError:
            raise AssertionError("an upgrade request to an upstream that never answers got "
                                 "nothing within 3 s (route timeout 0.3 s)") from None
        assert resp.status == 504
