"""Property tests of the HTTP/1.1 parser glue, through a real Relay over real sockets:

- the same request stream cut at random points reaches the upstream unchanged;
- random garbage never crashes the proxy: the client gets a 4xx or a close, and the next
  normal request on a new connection is served.

One Relay and one upstream serve every example (module-scoped, on ``loop_env``).
"""
from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest
from harness import (
    Client,
    RawServer,
    cluster,
    get,
    keepalive_handler,
    make_config,
    read_request,
    read_response,
    read_until_closed,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import omnirelay

PROXY_ADDED = {"x-forwarded-for", "x-forwarded-proto", "via", "x-request-id"}
FRAMING = {"content-length", "transfer-encoding"}
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 -_.,;=/", min_size=0,
                max_size=40).map(str.strip)


async def scripted_responses(reader, writer, srv):
    """Answers GET /resp/<key> with the pieces stored in srv.state[key], written one by
    one with a short pause so that each arrives as its own read at the proxy."""
    while True:
        req = await read_request(reader)
        srv.requests.append(req)
        missing = [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
        for piece in srv.state.get(req.target.rsplit("/", 1)[1], missing):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)


@pytest.fixture(scope="module")
def proxy(loop_env):
    async def start():
        srv = await RawServer(keepalive_handler).start()
        scripted = await RawServer(scripted_responses).start()
        relay = omnirelay.Relay(make_config(
            listener={"max_header_bytes": "16KiB"},
            routes=[{"name": "resp", "match": {"path": {"prefix": "/resp/"}}, "cluster": "resp"},
                    {"name": "req", "match": {}, "cluster": "req"}],
            clusters=[cluster("req", srv.port), cluster("resp", scripted.port)]))
        await relay.start()
        return srv, scripted, relay

    srv, scripted, relay = loop_env.run(start())
    yield SimpleNamespace(srv=srv, scripted=scripted, relay=relay, env=loop_env)

    async def stop():
        await relay.stop(drain_timeout=1)
        await srv.stop()
        await scripted.stop()

    loop_env.run(stop())


@st.composite
def requests(draw):
    """(wire bytes, expected upstream view) for one request."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = "/" + "/".join(draw(st.lists(TOKEN, max_size=3)))
    if draw(st.booleans()):
        path += "?" + draw(TOKEN) + "=" + draw(TOKEN)
    headers = [("Host", "split.test")]
    for name in draw(st.lists(TOKEN, max_size=6)):
        headers.append(("X-" + name, draw(VALUE)))
    framing = "none" if method in ("GET", "DELETE") else draw(
        st.sampled_from(["length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=3000))
    trailers = []
    if framing == "length":
        wire_body = body
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        wire_body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n"
        for name in draw(st.lists(TOKEN, max_size=2, unique=True)):
            trailers.append(("X-Trailer-" + name, draw(VALUE)))
        wire_body += b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    else:
        wire_body = b""
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    expected = (method, path, [(k.lower(), v) for k, v in headers if k.lower() not in FRAMING],
                body, [(k.lower(), v) for k, v in trailers])
    return head.encode() + wire_body, expected


def upstream_view(msg):
    return (msg.method, msg.target,
            [(k.lower(), v) for k, v in msg.headers
             if k.lower() not in PROXY_ADDED and k.lower() not in FRAMING],
            msg.body, [(k.lower(), v) for k, v in msg.trailers])


async def send_and_collect(proxy, stream: bytes, cuts: list[int], n: int):
    """Send ``stream`` in pieces cut at ``cuts``; return the n responses and the n requests
    the upstream received."""
    seen_before = len(proxy.srv.requests)
    c = await Client.open(proxy.relay.address())
    try:
        for a, b in zip([0] + cuts, cuts + [len(stream)]):
            if b > a:
                c.writer.write(stream[a:b])
                await c.writer.drain()
                await asyncio.sleep(0.001)   # let each piece arrive as its own read
        responses = [await read_response(c.reader, timeout=5) for _ in range(n)]
    finally:
        await c.close()
    return responses, proxy.srv.requests[seen_before:seen_before + n]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(requests(), min_size=1, max_size=3), st.data())
def test_split_request_stream_reaches_upstream_unchanged(proxy, reqs, data):
    stream = b"".join(wire for wire, _ in reqs)
    expected = [exp for _, exp in reqs]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=25),
                                label="cuts")))
    whole_resp, whole_seen = proxy.env.run(send_and_collect(proxy, stream, [], len(reqs)))
    split_resp, split_seen = proxy.env.run(send_and_collect(proxy, stream, cuts, len(reqs)))
    assert [r.status for r in whole_resp] == [200] * len(reqs)
    assert [r.status for r in split_resp] == [200] * len(reqs)
    assert [upstream_view(m) for m in whole_seen] == expected
    assert [upstream_view(m) for m in split_seen] == expected
    proxy.env.check_errors()


@st.composite
def responses(draw):
    """(wire bytes, expected client view) for one upstream response."""
    status = draw(st.sampled_from([200, 201, 202, 203, 206, 299, 404, 410, 418, 500, 503]))
    headers = [(f"X-{name}", draw(VALUE)) for name in draw(st.lists(TOKEN, max_size=6))]
    body = draw(st.binary(max_size=5000))
    framing = draw(st.sampled_from(["length", "chunked"]))
    trailers = []
    if framing == "length":
        hdrs = headers + [("Content-Length", str(len(body)))]
        wire_body = body
    else:
        hdrs = headers + [("Transfer-Encoding", "chunked")]
        cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        wire_body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n"
        for name in draw(st.lists(TOKEN, max_size=2, unique=True)):
            trailers.append(("X-Trailer-" + name, draw(VALUE)))
        wire_body += b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n"
    expected = (status, [(k.lower(), v) for k, v in headers], body,
                [(k.lower(), v) for k, v in trailers] if framing == "chunked" else [])
    return head.encode() + wire_body, expected


def client_view(msg):
    return (msg.status,
            [(k.lower(), v) for k, v in msg.headers
             if k.lower() not in PROXY_ADDED and k.lower() not in FRAMING],
            msg.body, [(k.lower(), v) for k, v in msg.trailers])


async def fetch_scripted(proxy, keys):
    c = await Client.open(proxy.relay.address())
    try:
        out = []
        for key in keys:
            out.append(await c.request(get(f"/resp/{key}", host="split.test",
                                           headers="TE: trailers\r\n")))
        return out
    finally:
        await c.close()


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(responses(), min_size=1, max_size=3), st.data())
def test_split_response_stream_reaches_client_unchanged(proxy, resps, data):
    keys = []
    for n, (wire, _) in enumerate(resps):
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=20),
                                    label=f"cuts{n}")))
        key = f"k{len(proxy.scripted.state)}"
        proxy.scripted.state[key] = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
        keys.append(key)
    got = proxy.env.run(fetch_scripted(proxy, keys))
    assert [client_view(m) for m in got] == [exp for _, exp in resps]
    proxy.env.check_errors()


VALID = (b"POST /g HTTP/1.1\r\nHost: garbage.test\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
         + b"GET /g2 HTTP/1.1\r\nHost: garbage.test\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"3\r\nabc\r\n0\r\n\r\n")


@st.composite
def mutated(draw):
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        else:
            j = draw(st.integers(i, min(len(data), i + 64)))
            data[i:i] = data[i:j]
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


async def throw_garbage(proxy, garbage: bytes):
    c = await Client.open(proxy.relay.address())
    try:
        c.writer.write(garbage)
        try:
            await c.writer.drain()
            c.writer.write_eof()
        except (ConnectionError, OSError):
            pass
        data, _ = await read_until_closed(c.reader, timeout=5)
    finally:
        await c.close()
    return data


async def follow_up(proxy):
    c = await Client.open(proxy.relay.address())
    try:
        return await c.request(get("/after-garbage", host="garbage.test"))
    finally:
        await c.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(min_size=1, max_size=4096), mutated(),
                 st.builds(lambda a, b: a + b,
                           st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: x\r\n",
                                            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"]),
                           st.binary(max_size=512))))
def test_garbage_never_crashes_the_proxy(proxy, garbage):
    before = len(proxy.srv.requests)
    data = proxy.env.run(throw_garbage(proxy, garbage))
    forwarded = len(proxy.srv.requests) - before
    if data:
        statuses = [int(m.group(1)) for m in STATUS_LINE.finditer(data)
                    if m.start() == 0 or data[m.start() - 2:m.start()] == b"\r\n"]
        assert statuses, f"reply is not HTTP: {data[:120]!r}"
        final = [s for s in statuses if s >= 200]
        assert final, f"no final response: {data[:200]!r}"
        for s in final:
            assert s < 500 or s in (502, 503, 504), f"proxy answered {s} to {garbage[:80]!r}"
            assert 400 <= s < 500 or forwarded, \
                f"{s} without the upstream seeing a request: {data[:200]!r}"
    resp = proxy.env.run(follow_up(proxy))
    assert resp.status == 200, f"follow-up after {garbage[:80]!r} got {resp.start_line}"
    proxy.env.check_errors()

