"""Backpressure: a client that does not read must stall the upstream, not fill the
proxy's memory."""
from __future__ import annotations

import asyncio
import gc
import hashlib
import socket

import pytest
from harness import Client, RawServer, get, make_config, read_request, rss_bytes

import omnirelay

TOTAL = 64 << 20
CHUNK = 256 << 10
MAX_GROWTH = 32 << 20


def make_streamer(block: bytes):
    async def streamer(reader, writer, srv):
        await read_request(reader)
        writer.transport.set_write_buffer_limits(high=CHUNK)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n".encode())
        sent = 0
        while sent < TOTAL:
            writer.write(block)
            sent += len(block)
            srv.state["sent"] = sent
            drain = asyncio.ensure_future(writer.drain())
            done, _ = await asyncio.wait({drain}, timeout=0.5)
            if not done:
                # The proxy stopped reading from us: our writes are blocked.
                srv.state["blocked_at"] = sent
                srv.event.set()
                await drain
        await reader.read()
    return streamer


@pytest.mark.async_timeout(40)
async def test_slow_reader_blocks_upstream_and_bounds_memory():
    block = hashlib.sha256(b"bp").digest() * (CHUNK // 32)
    async with RawServer(make_streamer(block)) as srv, \
            omnirelay.Relay(make_config(srv.port)) as relay:
        c = await Client.open(relay.address(), limit=1 << 16)
        sock = c.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        gc.collect()
        before = rss_bytes()
        # Do not read: the client's StreamReader pauses its transport at its limit.
        await c.send(get("/big"))
        await asyncio.wait_for(srv.event.wait(), 15)
        blocked_at = srv.state["blocked_at"]
        during = rss_bytes()
        assert blocked_at < TOTAL // 2, f"upstream could write {blocked_at} bytes unread"
        growth = during - before
        assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB with a stalled client"
        # Now read everything: all bytes arrive, in order.
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert f"content-length: {TOTAL}".encode() in head.lower()
        got = 0
        digest = hashlib.sha256()
        expected = hashlib.sha256()
        for _ in range(TOTAL // len(block)):
            expected.update(block)

        async def drain_all():
            nonlocal got
            while got < TOTAL:
                data = await c.reader.read(1 << 20)
                assert data, f"connection closed after {got} of {TOTAL} bytes"
                digest.update(data)
                got += len(data)

        await asyncio.wait_for(drain_all(), 25)
        assert got == TOTAL
        assert digest.hexdigest() == expected.hexdigest()
        await c.close()


@pytest.mark.async_timeout(40)
async def test_slow_upstream_reader_blocks_client_upload_and_bounds_memory():
    total = 64 << 20
    release = asyncio.Event()
    block = hashlib.sha256(b"up").digest() * (CHUNK // 32)
    expected = hashlib.sha256()
    for _ in range(total // len(block)):
        expected.update(block)

    async def lazy_reader(reader, writer, srv):
        head = await reader.readuntil(b"\r\n\r\n")
        assert f"content-length: {total}".encode() in head.lower()
        srv.event.set()
        await release.wait()
        digest, got = hashlib.sha256(), 0
        while got < total:
            data = await reader.read(1 << 20)
            if not data:
                break
            digest.update(data)
            got += len(data)
        srv.state["got"] = got
        srv.state["sha"] = digest.hexdigest()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with RawServer(lazy_reader) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        c = await Client.open(relay.address())
        c.writer.transport.set_write_buffer_limits(high=CHUNK)
        gc.collect()
        before = rss_bytes()
        c.writer.write(f"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n".encode())
        await asyncio.wait_for(srv.event.wait(), 5)
        sent = 0
        blocked_at = None
        while sent < total:
            c.writer.write(block)
            sent += len(block)
            drain = asyncio.ensure_future(c.writer.drain())
            done, _ = await asyncio.wait({drain}, timeout=0.5)
            if not done:
                blocked_at = sent
                break
        assert blocked_at is not None, "the proxy accepted the whole body from the client"
        assert blocked_at < total // 2, f"client could send {blocked_at} bytes"
        growth = rss_bytes() - before
        assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB during a stalled upload"
        release.set()
        await asyncio.wait_for(drain, 20)
        while sent < total:
            c.writer.write(block)
            sent += len(block)
            await asyncio.wait_for(c.writer.drain(), 20)
        resp = await c.response(timeout=20)
        assert resp.status == 200 and resp.body == b"ok"
        assert srv.state["got"] == total
        assert srv.state["sha"] == expected.hexdigest()
        await c.close()


@pytest.mark.async_timeout(40)
async def test_tunnel_backpressure_both_directions():
    """CONNECT tunnel: a flood from the upstream to a client that does not read, and from
    the client to an upstream that does not read, both stall instead of buffering."""
    block = hashlib.sha256(b"tn").digest() * (CHUNK // 32)
    release = asyncio.Event()

    async def flood_and_ignore(reader, writer, srv):
        assert await reader.readexactly(2) == b"go"   # not server-first: wait for the client
        writer.transport.set_write_buffer_limits(high=CHUNK)
        sent = 0
        while sent < TOTAL:
            writer.write(block)
            sent += len(block)
            drain = asyncio.ensure_future(writer.drain())
            done, _ = await asyncio.wait({drain}, timeout=0.5)
            if not done:
                srv.state["blocked_at"] = sent
                srv.event.set()
                await release.wait()
                drain.cancel()
                return

    async with RawServer(flood_and_ignore) as srv, \
            omnirelay.Relay(make_config(srv.port)) as relay:
        c = await Client.open(relay.address(), limit=1 << 16)
        c.writer.transport.set_write_buffer_limits(high=CHUNK)
        gc.collect()
        before = rss_bytes()
        await c.send(b"CONNECT flood:1 HTTP/1.1\r\nHost: flood:1\r\n\r\n")
        assert (await c.response("CONNECT")).status == 200
        await c.send(b"go")
        await asyncio.wait_for(srv.event.wait(), 15)
        assert srv.state["blocked_at"] < TOTAL // 2
        # The other direction: the upstream never reads what the client sends.
        sent, blocked = 0, False
        while sent < TOTAL:
            c.writer.write(block)
            sent += len(block)
            drain = asyncio.ensure_future(c.writer.drain())
            done, _ = await asyncio.wait({drain}, timeout=0.5)
            if not done:
                blocked = True
                drain.cancel()
                break
        assert blocked, "the proxy accepted 64 MiB for an upstream that reads nothing"
        assert sent < TOTAL // 2
        growth = rss_bytes() - before
        assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB in a stalled tunnel"
        release.set()
        c.writer.transport.abort()
