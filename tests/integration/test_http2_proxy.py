"""HTTP/2 through OmniRelay: real clients (curl, h2load, the ``h2`` package, raw frames) and
real upstreams (harness.Origin over HTTP/1.1, grpc_peers.H2Origin over h2c), all on 127.0.0.1.

Downstream, a `protocol: http` listener speaks h2c by prior knowledge (the connection starts
with the HTTP/2 preface) and h2 over TLS when ALPN picks it; upstream, a cluster with
`protocol: http2` is spoken to in h2c by prior knowledge. Every test is bounded in time; the
flood tests stop writing as soon as the proxy closes.

What is expected where the RFC leaves a choice is what Envoy does:
- a cleartext HTTP/1.1 request with `Upgrade: h2c` is served as HTTP/1.1: the upgrade is
  ignored and its headers (`Upgrade`, `HTTP2-Settings`, the `Connection` tokens) are not
  forwarded (Envoy strips them; it has no h2c upgrade);
- floods (rapid reset, SETTINGS, PING, empty DATA frames) end the connection with a GOAWAY
  carrying an error code (ENHANCE_YOUR_CALM is what Envoy/nghttp2 use for most), and the
  proxy keeps serving new connections;
- a request header list over the listener's `max_header_bytes` is a stream error (RST_STREAM)
  or a 431 answer, and the connection stays usable;
- a stream over the advertised SETTINGS_MAX_CONCURRENT_STREAMS is refused with
  RST_STREAM(REFUSED_STREAM), so the client may retry it.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import hashlib
import ipaddress
import json
import re
import shutil

import pytest
from grpc_peers import (
    ACK,
    CANCEL,
    GOAWAY,
    NO_ERROR,
    PROTOCOL_ERROR,
    SETTINGS,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    H2Origin,
    RawH2,
    data_frame,
    error_name,
    flood,
    headers_frames,
    ping_frame,
    request_headers,
    rst_stream_frame,
    settings_frame,
    slow_h2_download,
)
from harness import (
    Client,
    Origin,
    RawServer,
    assert_healthy,
    get,
    make_config,
    one_shot,
    pattern,
    read_request,
    relay_short_drain,
    rss_bytes,
    sha256,
)

import omnirelay

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None,
                                  reason="h2load is not installed (Debian: nghttp2-client)")

# Connection-specific header fields: never in an HTTP/2 message (RFC 9113 8.2.2).
CONNECTION_SPECIFIC = ("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                       "upgrade")


def h2_config(port: int, *, listener: dict | None = None, **kw) -> dict:
    lst = {"http2": {"max_concurrent_streams": 100}}
    lst.update(listener or {})
    return make_config(port, listener=lst, **kw)


def h2_upstream_config(port: int, **kw) -> dict:
    """Any client -> the listener -> an h2c upstream (cluster protocol http2)."""
    return h2_config(port, cluster={"protocol": "http2"}, **kw)


async def curl(*args: str, timeout: float = 15.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", str(int(timeout)), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    return proc.returncode, out, err


def split_dump(out: bytes) -> tuple[list[bytes], bytes]:
    """`curl -D -` output: every response head, then the body."""
    heads = []
    rest = out
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        heads.append(head)
    return heads, rest


def head_fields(head: bytes) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


# --------------------------------------------------------------------------- curl, prior knowledge


@needs_curl
async def test_curl_prior_knowledge_get_to_http11_upstream():
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay:
        rc, out, err = await curl("--http2-prior-knowledge", "-D", "-",
                                  "-H", "Host: h2.example.test", "-H", "x-h2-test: yes",
                                  relay.url() + "/h2/get?q=1")
        assert rc == 0, err
        (head,), body = split_dump(out)
        assert head.startswith(b"HTTP/2 200"), head
        fields = head_fields(head)
        assert fields["x-origin"] == ["origin"]
        assert fields["content-type"][0].startswith("application/json")
        assert not set(CONNECTION_SPECIFIC) & set(fields), head
        info = json.loads(body)
        assert (info["method"], info["path"], info["version"]) == ("GET", "/h2/get?q=1", "1.1")
        seen = origin.seen[0].headers
        assert seen.get("host") == "h2.example.test"  # :authority becomes Host
        assert seen.get("x-h2-test") == "yes"
        assert not any(k.startswith(":") for k in seen.names())
        st = relay.stats()["listeners"]["edge"]
        assert st["downstream_rq_2xx"] == 1


@needs_curl
async def test_curl_prior_knowledge_post_1mib(tmp_path):
    data = pattern(1 << 20, seed=21)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay:
        # with a content-length, then without one (the body ends with END_STREAM, so the
        # HTTP/1.1 upstream gets it chunked)
        for extra in ((), ("-H", "Content-Length:")):
            rc, out, err = await curl("--http2-prior-knowledge", "-D", "-", *extra,
                                      "--data-binary", f"@{f}",
                                      "-H", "Content-Type: application/octet-stream",
                                      relay.url() + "/h2/upload")
            assert rc == 0, err
            (head,), body = split_dump(out)
            assert head.startswith(b"HTTP/2 200"), head
            info = json.loads(body)
            assert info["method"] == "POST"
            assert (info["body_len"], info["sha256"]) == (len(data), sha256(data)), extra
        assert len(origin.seen) == 2


@needs_curl
async def test_curl_prior_knowledge_big_download():
    # One URL per curl: curl 7.88 (Debian 12) fails reusing a prior-knowledge connection for a
    # second URL ("Error in the HTTP2 framing layer", against any server); streams sharing a
    # connection are covered by the raw-client and h2load tests.
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay:
        for path_, body in ((f"/chunked/{5 << 20}", pattern(5 << 20)),
                            (f"/size/{3 << 20}", pattern(3 << 20))):
            rc, out, err = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}",
                                      relay.url() + path_)
            assert rc == 0, err
            got, _, version = out.rpartition(b"\n")
            assert version == b"2"
            assert got == body, path_


async def test_sequential_and_interleaved_streams_on_one_connection():
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay, \
            await RawH2.open(relay.address()) as conn:
        await conn.handshake()
        for sid in (1, 3, 5):
            await conn.request(sid, "GET", f"/seq/{sid}")
            resp = await conn.response(sid)
            assert resp.status == 200 and json.loads(resp.body)["path"] == f"/seq/{sid}"
        # three at once, answered in any order, one of them larger than the initial windows
        await conn.request(7, "GET", f"/size/{200_000}")
        await conn.request(9, "POST", "/post", body=b"x" * 50_000)
        await conn.request(11, "GET", "/last")
        resp = await conn.response(9)
        assert json.loads(resp.body)["sha256"] == sha256(b"x" * 50_000)
        assert (await conn.response(7)).body == pattern(200_000)
        assert json.loads((await conn.response(11)).body)["path"] == "/last"
        assert conn.goaway() is None
        assert relay.stats()["listeners"]["edge"]["downstream_cx_total"] == 1


@needs_curl
async def test_curl_http2_cleartext_upgrade_is_served_as_http11():
    """`curl --http2` on http:// sends HTTP/1.1 with `Upgrade: h2c` + `HTTP2-Settings`. The
    proxy does not do h2c upgrades: like Envoy it answers in HTTP/1.1 (no 101) and strips the
    upgrade headers, so an h2c-capable upstream is not asked to switch either."""
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay:
        rc, out, err = await curl("--http2", "-D", "-", "-w", "\n%{http_version}",
                                  relay.url() + "/upgrade")
        assert rc == 0, err
        heads, body = split_dump(out)
        assert [h.split(b" ", 2)[:2] for h in heads] == [[b"HTTP/1.1", b"200"]], heads
        body, _, version = body.rpartition(b"\n")
        assert version == b"1.1"
        assert json.loads(body)["path"] == "/upgrade"
        seen = origin.seen[0].headers
        assert "upgrade" not in seen and "http2-settings" not in seen, seen
        assert "upgrade" not in (seen.get("connection") or "").lower()


@needs_curl
async def test_curl_prior_knowledge_to_h2_upstream():
    """h2 on both hops."""
    async with H2Origin() as origin, omnirelay.Relay(h2_upstream_config(origin.port)) as relay:
        rc, out, err = await curl("--http2-prior-knowledge", "-D", "-", relay.url() + "/both/h2")
        assert rc == 0, err
        (head,), body = split_dump(out)
        assert head.startswith(b"HTTP/2 200"), head
        assert head_fields(head)["x-origin"] == ["h2origin"]
        info = json.loads(body)
        assert (info["http_version"], info["path"]) == ("2", "/both/h2")
        rc, out, err = await curl("--http2-prior-knowledge", relay.url() + f"/size/{3 << 20}")
        assert rc == 0, err
        assert out == pattern(3 << 20)


# --------------------------------------------------------------------------- TLS + ALPN


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@needs_curl
async def test_tls_listener_negotiates_h2_or_http11_by_alpn(tmp_path):
    cert, key = _self_signed(tmp_path)
    cfg = h2_config(0, listener={"tls": {"cert_file": cert, "key_file": key}})
    async with Origin() as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay:
            host, port = relay.address()
            url = f"https://{host}:{port}/tls"
            for flag, want in (("--http2", b"2"), ("--http1.1", b"1.1")):
                rc, out, err = await curl("-k", flag, "-w", "\n%{http_version}", url)
                assert rc == 0, (flag, err)
                body, _, version = out.rpartition(b"\n")
                assert version == want, (flag, out)
                info = json.loads(body)
                assert info["path"] == "/tls"
                assert dict(info["headers"]).get("x-forwarded-proto") in (None, "https")


# --------------------------------------------------------------------------- h2load


@needs_h2load
@pytest.mark.async_timeout(60)
async def test_h2load_2000_requests_50_streams_on_one_connection():
    async with Origin() as origin, omnirelay.Relay(h2_config(origin.port)) as relay:
        proc = await asyncio.create_subprocess_exec(
            "h2load", "-n", "2000", "-c", "1", "-m", "50", relay.url() + "/h2load",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 50)
        text = out.decode()
        assert proc.returncode == 0, text
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored", text)
        assert m, text
        assert [int(x) for x in m.groups()] == [2000, 2000, 2000, 2000, 0, 0], text
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        assert m and [int(x) for x in m.groups()] == [2000, 0, 0, 0], text
        assert len(origin.seen) == 2000
        st = relay.stats()["listeners"]["edge"]
        assert st["downstream_cx_total"] == 1
        assert st["downstream_rq_total"] == 2000


# --------------------------------------------------------------------------- HTTP/1.1 -> h2 upstream


async def test_http11_client_to_h2_upstream():
    data = pattern(1 << 20, seed=3)
    async with H2Origin() as origin, omnirelay.Relay(h2_upstream_config(origin.port)) as relay:
        addr = relay.address()
        resp = await one_shot(addr, get("/to/h2?x=1", host="h1.example.test"))
        assert resp.status == 200 and resp.version == "HTTP/1.1"
        assert resp.headers.get("x-origin") == "h2origin"
        info = resp.json()
        assert (info["http_version"], info["method"], info["path"]) == ("2", "GET", "/to/h2?x=1")
        hdrs = dict(info["headers"])
        assert hdrs.get("host") == "h1.example.test"  # Host became :authority
        assert not set(CONNECTION_SPECIFIC) & set(hdrs), hdrs

        # uploads: Content-Length and chunked
        async with await Client.open(addr) as c:
            resp = await c.request(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                                   % len(data) + data)
            assert resp.status == 200
            assert (resp.json()["body_len"], resp.json()["sha256"]) == (len(data), sha256(data))
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 100_000]), data[i:i + 100_000])
                              for i in range(0, len(data), 100_000)) + b"0\r\n\r\n"
            resp = await c.request(b"POST /up HTTP/1.1\r\nHost: a\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
            assert resp.status == 200
            assert (resp.json()["body_len"], resp.json()["sha256"]) == (len(data), sha256(data))
            # a download larger than any HTTP/2 window: the proxy must open them upstream
            resp = await c.request(get(f"/size/{4 << 20}"))
            assert resp.status == 200 and resp.body == pattern(4 << 20)
            for i in range(10):
                assert (await c.request(get(f"/seq/{i}"))).json()["path"] == f"/seq/{i}"
        assert len(origin.connections) == 1, "keep-alive requests should share one h2 connection"


@pytest.mark.async_timeout(30)
async def test_concurrent_http11_clients_multiplexed_upstream():
    async with H2Origin() as origin, omnirelay.Relay(h2_upstream_config(origin.port)) as relay:
        await assert_healthy(relay.address(), "/warm")

        async def one(i: int) -> None:
            resp = await one_shot(relay.address(), get(f"/c/{i}"))
            assert resp.status == 200 and resp.json()["path"] == f"/c/{i}"

        await asyncio.gather(*(one(i) for i in range(30)))
        assert len(origin.seen) == 31
        assert len(origin.connections) <= 2, (
            f"30 concurrent requests used {len(origin.connections)} upstream h2 connections")


# --------------------------------------------------------------------------- flow control


TOTAL = 16 << 20
BLOCK = pattern(1 << 16)  # pattern(TOTAL) == BLOCK * (TOTAL // len(BLOCK))
MAX_GROWTH = 8 << 20


async def _stream_16mib(reader, writer, srv: RawServer) -> None:
    """An HTTP/1.1 upstream answering one request per connection with 16 MiB, written as fast
    as the proxy takes it; notes when its writes stall (the proxy stopped reading it).

    One request per connection: a connection that already carried a fast 16 MiB download
    has had its receive buffer grown by the kernel's autotuning (tcp_rmem allows up to
    32 MiB here), which could swallow the whole body with the proxy reading nothing."""
    writer.transport.set_write_buffer_limits(high=len(BLOCK))
    await read_request(reader)
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n"
                 .encode())
    sent = 0
    while sent < TOTAL:
        writer.write(BLOCK)
        sent += len(BLOCK)
        srv.state["sent"] = sent
        drain = asyncio.ensure_future(writer.drain())
        done, _ = await asyncio.wait({drain}, timeout=0.5)
        if not done:
            srv.state.setdefault("blocked_at", sent)
            srv.event.set()
            await drain
    writer.close()


@pytest.mark.async_timeout(60)
async def test_slow_h2_reader_bounds_proxy_memory():
    """A 16 MiB download by an HTTP/2 client that stalls after 1 MiB, then reads at 8 MiB/s:
    the proxy must hold back the upstream (its writes stall) instead of buffering the body,
    and its memory must stay bounded; every byte arrives in order."""
    expect = hashlib.sha256()
    for _ in range(TOTAL // len(BLOCK)):
        expect.update(BLOCK)
    async with RawServer(_stream_16mib) as srv, \
            relay_short_drain(h2_config(srv.port)) as relay:
        # warm up the same path (pools, buffers) before the baseline
        warm = await slow_h2_download(relay.address(), "/warm", rate=1 << 30, timeout=20)
        assert warm.length == TOTAL
        srv.event.clear()
        srv.state.clear()
        gc.collect()
        before = rss_bytes()
        samples = []

        async def stalled() -> None:
            try:
                await asyncio.wait_for(srv.event.wait(), 15)
            except TimeoutError:
                raise AssertionError(
                    f"the upstream never stalled: it wrote {srv.state.get('sent')} bytes while "
                    f"the client read nothing") from None
            for _ in range(10):  # the stall lasts ~1 s; the proxy must stay bounded all along
                samples.append(rss_bytes())
                await asyncio.sleep(0.1)

        res = await slow_h2_download(relay.address(), "/big", rate=8 << 20,
                                     pause_at=1 << 20, pause=stalled, timeout=40)
        assert res.status == 200
        assert res.length == TOTAL and res.sha256 == expect.hexdigest()
        blocked_at = srv.state["blocked_at"]
        # kernel socket buffers on loopback hold a few MiB; the proxy itself may add ~1 MiB
        assert blocked_at < TOTAL * 3 // 4, f"upstream could write {blocked_at} bytes unread"
        growth = max(samples) - before
        assert growth < MAX_GROWTH, (f"RSS grew by {growth / 2**20:.1f} MiB while the client "
                                     f"read nothing")


# --------------------------------------------------------------------------- floods


def _assert_flood_goaway(res, what: str) -> None:
    assert res.goaway is not None, (
        f"{what}: no GOAWAY after {res.sent} frames (closed: {res.closed}, write error: "
        f"{res.write_error}); last frames {res.frames[-5:]}")
    code = res.goaway.error_code
    assert code != NO_ERROR, f"{what}: GOAWAY({error_name(code)}) is not an error"
    assert res.elapsed < 15, f"{what}: took {res.elapsed:.1f} s"


async def _still_serves_h2(addr: tuple[str, int]) -> None:
    async with await RawH2.open(addr) as conn:
        await conn.handshake()
        await conn.request(1, "GET", "/after-flood")
        resp = await conn.response(1)
        assert resp.status == 200, resp
    await assert_healthy(addr, "/after-flood-h1")


@pytest.mark.async_timeout(40)
async def test_rapid_reset_gets_goaway_and_proxy_stays_healthy():
    """CVE-2023-44487: open and immediately RST_STREAM 10,000 streams."""
    def unit(i: int) -> bytes:
        sid = 2 * i + 1
        return (headers_frames(sid, request_headers("GET", f"/rr/{i}"), end_stream=True)
                + rst_stream_frame(sid, CANCEL))

    async with Origin() as origin, relay_short_drain(h2_config(origin.port)) as relay:
        res = await flood(relay.address(), unit, 10_000, timeout=20)
        _assert_flood_goaway(res, "rapid reset")
        assert len(origin.seen) < 10_000
        await _still_serves_h2(relay.address())


@pytest.mark.async_timeout(40)
@pytest.mark.parametrize(("what", "unit", "prelude"), [
    ("SETTINGS", settings_frame(), b""),
    ("PING", ping_frame(b"floodpin"), b""),
    ("empty DATA", data_frame(1, b""),
     headers_frames(1, request_headers("POST", "/flood"), end_stream=False)),
], ids=["settings", "ping", "empty-data"])
async def test_control_frame_floods_get_goaway(what, unit, prelude):
    async with Origin() as origin, relay_short_drain(h2_config(origin.port)) as relay:
        res = await flood(relay.address(), unit, 100_000, prelude=prelude, timeout=20)
        _assert_flood_goaway(res, f"{what} flood")
        await _still_serves_h2(relay.address())


# --------------------------------------------------------------------------- limits


async def test_header_list_over_the_limit_is_a_stream_error():
    async with Origin() as origin, \
            relay_short_drain(h2_config(origin.port,
                                        listener={"max_header_bytes": 16384})) as relay, \
            await RawH2.open(relay.address()) as conn:
        await conn.handshake()
        # 32 KiB of header: HEADERS + CONTINUATION (frames are at most 16 KiB)
        await conn.send(headers_frames(1, request_headers(
            "GET", "/too-big", extra=[("x-big", "v" * (32 << 10))]), end_stream=True))
        resp = await conn.response(1)
        assert resp.reset is not None or resp.status == 431, resp
        assert conn.goaway() is None, "a stream error must not end the connection"
        # the connection (and its HPACK state) is still good
        await conn.request(3, "GET", "/after", extra=[("x-small", "v" * 1000)])
        resp = await conn.response(3)
        assert resp.status == 200, resp
        assert [s.path for s in origin.seen] == ["/after"]


async def test_max_concurrent_streams_exceeded_ends_the_connection():
    """A client that opens more streams than the limit it acknowledged is told so with
    GOAWAY(PROTOCOL_ERROR), libnghttp2's answer (RFC 9113 5.1.2 also allows a stream error,
    REFUSED_STREAM, which nghttp2 keeps for streams opened before the SETTINGS ACK). The
    excess stream never reaches the upstream and the proxy keeps serving new connections."""
    async with Origin() as origin, \
            relay_short_drain(h2_config(origin.port, listener={
                "http2": {"max_concurrent_streams": 2}})) as relay:
        async with await RawH2.open(relay.address()) as conn:
            settings = await conn.handshake()
            assert settings.get(SETTINGS_MAX_CONCURRENT_STREAMS) == 2
            await conn.read_until(lambda f: f.type == SETTINGS and f.flags & ACK)
            # two streams left open (request bodies not finished), then a third
            await conn.send(headers_frames(1, request_headers("POST", "/s1"), end_stream=False)
                            + headers_frames(3, request_headers("POST", "/s3"), end_stream=False)
                            + headers_frames(5, request_headers("POST", "/s5"), end_stream=False))
            goaway = await conn.read_until(lambda f: f.type == GOAWAY)
            assert goaway.error_code == PROTOCOL_ERROR, goaway
            assert await conn.until_closed() in ("eof", "reset")
        assert "/s5" not in [s.path for s in origin.seen]
        async with await RawH2.open(relay.address()) as fresh:
            await fresh.handshake()
            await fresh.request(1, "GET", "/after")
            assert (await fresh.response(1)).status == 200


async def test_drain_sends_goaway_and_lets_the_open_stream_finish():
    """Stopping a listener tells HTTP/2 clients with GOAWAY(NO_ERROR) naming the last
    stream it will process; that stream still completes, then the connection closes."""
    release = asyncio.Event()

    async def held(reader, writer, srv):
        srv.requests.append(await read_request(reader))
        srv.event.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()

    async with RawServer(held) as srv:
        await srv.start()
        relay = omnirelay.Relay(h2_config(srv.port))
        await relay.start()
        try:
            async with await RawH2.open(relay.address()) as conn:
                await conn.handshake()
                await conn.request(1, "GET", "/slow")
                await asyncio.wait_for(srv.event.wait(), 5)
                stopping = asyncio.ensure_future(relay.stop(drain_timeout=10))
                goaway = await conn.read_until(lambda f: f.type == GOAWAY)
                assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1), goaway
                release.set()
                resp = await conn.response(1)
                assert (resp.status, resp.body) == (200, b"done")
                assert await conn.until_closed() in ("eof", "reset")
                await asyncio.wait_for(stopping, 10)
        finally:
            release.set()
            await relay.stop(drain_timeout=0.1)
