"""The HTTP/2 and gRPC peers of grpc_peers.py against each other, with no proxy in between.

These pin down what the peers do on their own, so that when the same clients fail through
OmniRelay (test_grpc_proxy.py, test_http2_proxy.py) the proxy is to blame, not the peer.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import grpc
import pytest
from grpc_peers import (
    CANCEL,
    DATA,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    AsyncEchoClient,
    EchoServer,
    H2Origin,
    RawH2,
    bidi_message,
    data_frame,
    digest,
    flood,
    headers_frames,
    path,
    ping_frame,
    request_headers,
    rst_stream_frame,
    slow_h2_download,
    stream_message,
)
from harness import HOST, free_port, pattern, sha256

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_frame(msg: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\0" + len(msg).to_bytes(4, "big") + msg


# --------------------------------------------------------------------------- gRPC


async def test_unary_echo_metadata_and_authority():
    async with EchoServer("alpha") as srv, AsyncEchoClient(srv.target) as c:
        r = (await c.unary(b"hello", metadata=[("x-echo-color", "blue"), ("x-plain", "1")])).ok()
        assert r.message == b"hello"
        assert r.initial("x-server") == "alpha"
        assert r.initial("x-echo-color") == "blue"
        assert r.trailer("x-server-trailer") == "alpha"
        (call,) = srv.calls_to("Unary")
        assert call.authority == srv.target
        assert call.header("x-plain") == "1"
        assert call.request == b"hello"
        assert 0 < call.deadline <= 31  # every helper sends a deadline (rounded up)
        assert call.completed and not call.cancelled
    async with EchoServer() as srv, AsyncEchoClient(srv.target, authority="echo.test") as c:
        (await c.unary(b"x")).ok()
        assert srv.calls_to("Unary")[0].authority == "echo.test"


async def test_unary_large_message():
    data = pattern(3 << 20, seed=5)
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = (await c.unary(data)).ok()
        assert sha256(r.message) == sha256(data)


async def test_server_stream():
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = (await c.server_stream(count=200, size=1000)).ok()
        assert r.messages == [stream_message(i, 1000) for i in range(200)]
        assert r.trailer("x-server-trailer") == "grpc"
        assert srv.calls_to("ServerStream")[0].sent == 200


async def test_client_stream_count_and_checksum():
    msgs = [bidi_message(i) for i in range(1000)]
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = (await c.client_stream(msgs)).ok()
        count, digest_hex = digest(msgs)
        assert r.json() == {"count": count, "bytes": sum(map(len, msgs)), "sha256": digest_hex}
        (call,) = srv.calls_to("ClientStream")
        assert (call.received, call.received_sha256) == (count, digest_hex)


@pytest.mark.async_timeout(60)
async def test_bidi_10000_messages():
    msgs = [bidi_message(i) for i in range(10_000)]
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = (await c.bidi(msgs)).ok()
        assert digest(r.messages) == digest(msgs)
        (call,) = srv.calls_to("Bidi")
        assert (call.received, call.received_sha256) == digest(msgs)
        assert call.sent == 10_000 and call.completed


async def test_cancelled_calls_are_seen_by_the_server():
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = await c.server_stream_cancel(after=3)
        assert r.code is grpc.StatusCode.CANCELLED and len(r.messages) >= 3
        call = await srv.wait_cancelled("ServerStream", timeout=2)
        assert not call.completed

        r = await c.slow_cancel(seconds=10, after=0.2)
        assert r.code is grpc.StatusCode.CANCELLED
        call = await srv.wait_cancelled("Slow", timeout=2)
        assert not call.completed

        r = await c.bidi_cancel(after=5)
        assert r.code is grpc.StatusCode.CANCELLED and len(r.messages) >= 5
        await srv.wait_cancelled("Bidi", timeout=2)


@pytest.mark.parametrize("headers_first", [False, True], ids=["trailers-only", "headers-first"])
async def test_status_message_and_trailing_metadata(headers_first):
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = await c.status("NOT_FOUND", "no such thing: ünïcode 100% ok",
                           trailers=[("x-custom", "v1"), ("x-blob-bin", b"\x00\xffbin")],
                           headers_first=headers_first)
        assert r.code is grpc.StatusCode.NOT_FOUND
        assert r.details == "no such thing: ünïcode 100% ok"
        assert r.trailer("x-custom") == "v1"
        assert r.trailer("x-blob-bin") == b"\x00\xffbin"
        assert r.trailer("x-server-trailer") == "grpc"
        assert r.initial("x-server") == ("grpc" if headers_first else None)
        r = (await c.status(0, trailers=[("x-custom", "fine")])).ok()
        assert r.message == b"status ok" and r.trailer("x-custom") == "fine"


@pytest.mark.parametrize("headers_first", [False, True], ids=["no-headers", "headers-sent"])
async def test_deadline_exceeded_and_server_sees_it(headers_first):
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        r = await c.slow(5, timeout=0.3, headers_first=headers_first)
        assert r.code is grpc.StatusCode.DEADLINE_EXCEEDED
        call = await srv.wait_cancelled("Slow", timeout=2)
        assert call.deadline is not None and call.deadline <= 0.35  # grpc-timeout rounds up


async def test_flaky_fails_then_succeeds():
    async with EchoServer() as srv, AsyncEchoClient(srv.target) as c:
        codes = [(await c.flaky("k", failures=2)).code for _ in range(3)]
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 2 + [grpc.StatusCode.OK]
        assert srv.flaky["k"] == 3


async def test_no_server_is_unavailable():
    async with AsyncEchoClient(f"{HOST}:{free_port()}") as c:
        r = await c.unary(b"x", timeout=5)
        assert r.code is grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- raw HTTP/2


async def test_raw_client_speaks_grpc_over_h2c():
    async with EchoServer() as srv, await RawH2.open((HOST, srv.port)) as conn:
        await conn.handshake()
        await conn.send(headers_frames(1, request_headers(
            "POST", path("Unary"), "raw.test", GRPC_HEADERS), end_stream=False)
            + data_frame(1, grpc_frame(b"ping"), end_stream=True))
        resp = await conn.response(1)
        assert resp.status == 200 and resp.header("content-type") == "application/grpc"
        assert resp.body == grpc_frame(b"ping")
        assert resp.trailer("grpc-status") == "0"
        assert srv.calls_to("Unary")[0].authority == "raw.test"


async def test_failed_call_is_trailers_only_on_the_wire():
    """What a proxy sees when a call fails before any message: one HEADERS frame with
    :status 200, grpc-status and END_STREAM (a trailers-only response), which a proxy can
    still retry, as Envoy does, since nothing has gone to the client yet."""
    async with EchoServer() as srv, await RawH2.open((HOST, srv.port)) as conn:
        await conn.handshake()
        spec = json.dumps({"key": "raw", "failures": 1, "code": 14}).encode()
        await conn.send(headers_frames(1, request_headers(
            "POST", path("Flaky"), "raw.test", GRPC_HEADERS), end_stream=False)
            + data_frame(1, grpc_frame(spec), end_stream=True))
        resp = await conn.response(1)
        frames = [f for f in conn.frames if f.stream_id == 1 and f.type in (HEADERS, DATA)]
        assert [(f.type, bool(f.flags & 0x1)) for f in frames] == [(HEADERS, True)], frames
        assert resp.status == 200 and resp.header("grpc-status") == "14"
        assert resp.header("grpc-message") == "flaky failure 1"


async def test_raw_client_sees_refused_stream():
    """A third stream over SETTINGS_MAX_CONCURRENT_STREAMS=2 is refused; the connection
    stays usable (the check test_http2_proxy.py runs against the proxy)."""
    async with EchoServer(options=[("grpc.max_concurrent_streams", 2)]) as srv, \
            await RawH2.open((HOST, srv.port)) as conn:
        settings = await conn.handshake()
        assert settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 2
        open_stream = request_headers("POST", path("ClientStream"), "raw.test", GRPC_HEADERS)
        await conn.send(headers_frames(1, open_stream, end_stream=False)
                        + headers_frames(3, open_stream, end_stream=False)
                        + headers_frames(5, open_stream, end_stream=False))
        refused = await conn.read_until(lambda f: f.type == RST_STREAM and f.stream_id == 5)
        assert refused.error_code == REFUSED_STREAM
        await conn.send(data_frame(1, b"", end_stream=True) + data_frame(3, b"", end_stream=True))
        for sid in (1, 3):
            resp = await conn.response(sid)
            assert resp.trailer("grpc-status") == "0", resp
        await conn.send(headers_frames(7, open_stream, end_stream=False)
                        + data_frame(7, grpc_frame(b"x"), end_stream=True))
        resp = await conn.response(7)
        assert json.loads(resp.body[5:])["count"] == 1


async def test_flood_helper_sees_goaway_from_grpc_ping_abuse():
    """grpc-core answers a PING flood with GOAWAY(ENHANCE_YOUR_CALM) and closes: the flood
    helper reports both within its time bound."""
    async with EchoServer() as srv:
        res = await flood((HOST, srv.port), ping_frame(), 20_000, timeout=10)
        assert res.goaway is not None, res.frames[-5:]
        assert res.goaway.error_code == ENHANCE_YOUR_CALM
        assert res.elapsed < 10


async def test_rapid_reset_frames_are_well_formed():
    """The rapid-reset unit (HEADERS + RST_STREAM(CANCEL)) is accepted by a real server:
    streams are opened and cancelled without a connection error."""
    async with EchoServer() as srv, await RawH2.open((HOST, srv.port)) as conn:
        await conn.handshake()
        unit = [headers_frames(s, request_headers("POST", path("Slow"), "raw.test",
                                                  GRPC_HEADERS), end_stream=False)
                + rst_stream_frame(s, CANCEL) for s in range(1, 41, 2)]
        await conn.send(b"".join(unit))
        await conn.send(headers_frames(41, request_headers("POST", path("Unary"), "raw.test",
                                                           GRPC_HEADERS), end_stream=False)
                        + data_frame(41, grpc_frame(b"after"), end_stream=True))
        resp = await conn.response(41)
        assert resp.body == grpc_frame(b"after")
        assert not any(f.type == GOAWAY for f in conn.frames)
        assert not any(f.type == HEADERS and f.stream_id < 41 and f.header(":status")
                       for f in conn.frames if f.stream_id % 2)  # cancelled ones never answered


# --------------------------------------------------------------------------- h2c origin


async def curl(*args: str, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", str(int(timeout)), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    return proc.returncode, out, err


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_h2_origin_speaks_h2c_and_http11(tmp_path):
    data = pattern(1 << 20, seed=9)
    (tmp_path / "up").write_bytes(data)
    async with H2Origin() as origin:
        url = f"http://{HOST}:{origin.port}"
        rc, out, err = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}",
                                  url + "/echo?q=1")
        assert rc == 0, err
        body, _, version = out.rpartition(b"\n")
        assert version == b"2"
        info = json.loads(body)
        assert info["http_version"] == "2" and info["path"] == "/echo?q=1"
        rc, out, err = await curl("--http2-prior-knowledge", "--data-binary",
                                  f"@{tmp_path / 'up'}", url + "/post")
        assert rc == 0, err
        info = json.loads(out)
        assert (info["body_len"], info["sha256"]) == (len(data), sha256(data))
        rc, out, err = await curl("--http1.1", url + "/size/100000")
        assert rc == 0, err
        assert out == pattern(100000)


async def test_raw_client_against_h2_origin():
    async with H2Origin() as origin, await RawH2.open((HOST, origin.port)) as conn:
        await conn.handshake()
        await conn.request(1, "GET", "/raw", "raw.test")
        resp = await conn.response(1)
        assert resp.status == 200 and resp.header("x-origin") == "h2origin"
        info = json.loads(resp.body)
        assert info["http_version"] == "2"
        assert ["host", "raw.test"] in info["headers"] or info["path"] == "/raw"
        await conn.request(3, "GET", f"/size/{300_000}")  # > the 64 KiB initial window
        resp = await conn.response(3)
        assert resp.body == pattern(300_000)


@pytest.mark.async_timeout(30)
async def test_slow_h2_download_from_h2_origin():
    n = 2 << 20
    async with H2Origin() as origin:
        res = await slow_h2_download((HOST, origin.port), f"/size/{n}", rate=8 << 20)
        assert res.status == 200
        assert res.length == n
        assert res.sha256 == hashlib.sha256(pattern(n)).hexdigest()
        assert res.elapsed >= n / (8 << 20) * 0.9  # it really was throttled
