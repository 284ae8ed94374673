"""TLS terminated in the compiled core (omnirelay_core/tls.pyx: OpenSSL through memory BIOs)
and its fallback, the event loop's TLS (OMNIRELAY_CORE_TLS=0): the edges of the record
layer that the other TLS tests do not reach (pipelined requests waiting inside OpenSSL, large
bodies both ways under flow control, close_notify, resets, garbage and silent clients) and
the peer certificate as filters see it, against real clients on loopback."""
from __future__ import annotations

import asyncio
import pathlib
import shutil
import socket
import ssl
import struct

import pytest
from harness import Origin, eventually, make_config, pattern, read_response
from pki import CA
from test_l4 import client_context
from test_upstream_tls import curl_https, tls_cluster, tls_origin

import omnirelay
import omnirelay.relay

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")


@pytest.fixture
def ca(tmp_path) -> CA:
    return CA(tmp_path)


@pytest.fixture(params=["core", "loop"])
def mode(request, monkeypatch) -> str:
    if request.param == "loop":
        monkeypatch.setenv("OMNIRELAY_CORE_TLS", "0")
    return request.param


def tls_listener(ca: CA, **tls) -> dict:
    cert, key = ca.issue("edge", "localhost", "127.0.0.1")
    return {"tls": {"cert_file": cert, "key_file": key, **tls}}


def runtime(relay: omnirelay.Relay):
    (rt,) = relay._listeners.values()
    return rt


async def open_tls(relay: omnirelay.Relay, alpn=("http/1.1",)):
    host, port = relay.address()
    return await asyncio.wait_for(asyncio.open_connection(
        host, port, ssl=client_context(list(alpn)), server_hostname="localhost"), 5)


def blocking_get(host: str, port: int, path: str) -> tuple[ssl.SSLSocket, bytes]:
    """A blocking TLS socket that sent GET `path` and the first bytes of the answer."""
    raw = socket.create_connection((host, port), timeout=5)
    tls = client_context(["http/1.1"]).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return tls, tls.recv(65536)


async def test_the_core_terminates_tls_unless_asked_not_to(ca, mode):
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca, alpn=["h2", "http/1.1"]))) as relay:
        rt = runtime(relay)
        if mode == "core":
            assert rt.tls is not None and rt.ssl is None
        else:
            assert rt.tls is None and rt.ssl is not None
        for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
            rc, out = await curl_https(relay.url() + "/x", flag, "-o", "/dev/null",
                                 "-w", "%{http_code} %{http_version}")
            assert (rc, out) == (0, f"200 {version}"), out
        if mode == "core":
            assert rt.tls.handshakes == 2 and rt.tls.handshake_failures == 0


async def test_pipelined_requests_in_one_record_are_all_answered_in_order(ca, mode):
    # One TLS record carries 30 requests: the connection takes one at a time, so the rest
    # waits as plaintext inside OpenSSL until each response is done.
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca))) as relay:
        reader, writer = await open_tls(relay)
        writer.write(b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
                              for i in range(30)))
        paths = []
        for _ in range(30):
            resp = await read_response(reader)
            assert resp.status == 200
            paths.append(resp.json()["path"])
        assert paths == [f"/p/{i}" for i in range(30)]
        writer.close()


async def test_large_bodies_both_ways(ca, mode):
    body = pattern(6 * 1024 * 1024, seed=7)
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca))) as relay:
        reader, writer = await open_tls(relay)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        resp = await read_response(reader, timeout=30)
        assert resp.status == 200
        assert resp.json()["body_len"] == len(body)
        writer.write(b"GET /size/8388608 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        resp = await read_response(reader, timeout=30)
        assert resp.status == 200 and resp.body == pattern(8 * 1024 * 1024)
        writer.close()


async def test_close_notify_from_the_client_closes_the_connection(ca, mode):
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca))) as relay:
        host, port = relay.address()
        loop = asyncio.get_running_loop()

        def exchange() -> bytes:
            tls, first = blocking_get(host, port, "/a")
            with tls.unwrap() as plain:         # our close_notify, then the server's
                assert plain.recv(1) == b""     # and the TCP connection ends
            return first

        first = await loop.run_in_executor(None, exchange)
        assert first.startswith(b"HTTP/1.1 200")
        await eventually(lambda: not runtime(relay).connections, 5, "connection closed")


async def test_a_reset_mid_response_leaves_the_listener_serving(ca, mode):
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca))) as relay:
        host, port = relay.address()
        loop = asyncio.get_running_loop()

        def reset_mid_download() -> None:
            tls, first = blocking_get(host, port, "/size/33554432")
            assert first.startswith(b"HTTP/1.1 200")
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()  # RST while the proxy is still writing

        await loop.run_in_executor(None, reset_mid_download)
        rc, out = await curl_https(relay.url() + "/after", "-o", "/dev/null", "-w", "%{http_code}")
        assert (rc, out) == (0, "200"), out


async def test_garbage_and_silent_clients_are_dropped(ca, monkeypatch):
    monkeypatch.setattr(omnirelay.relay, "HANDSHAKE_TIMEOUT", 0.3)
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=tls_listener(ca))) as relay:
        server = runtime(relay).tls
        host, port = relay.address()
        # Plain HTTP on the TLS port: the handshake fails and the connection is closed.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert not rest.startswith(b"HTTP/")  # at most a TLS alert, then EOF
        writer.close()
        assert server.handshake_failures == 1
        # A client that never speaks is cut at the handshake timeout.
        reader, writer = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.handshake_timeouts == 1
        rc, out = await curl_https(relay.url() + "/ok", "-o", "/dev/null", "-w", "%{http_code}")
        assert (rc, out) == (0, "200"), out
        assert server.handshakes == 1
        (name,) = relay._listeners
        series = {(n, tuple(lb)): v for n, lb, v in relay.telemetry_snapshot()["series"]}
        assert series[("omnirelay_tls_handshakes_total", (name,))] == 1
        assert series[("omnirelay_tls_handshake_errors_total", (name, "failed"))] == 1
        assert series[("omnirelay_tls_handshake_errors_total", (name, "timeout"))] == 1


def test_peer_certificate_reads_as_the_ssl_module_decodes_it(ca):
    from omnirelay_core.tls import _decode_certificate

    cert_file, _ = ca.issue("peer", "spiffe://example.org/ns/a/sa/b", "peer.example.org",
                            "10.1.2.3", "2001:db8::1", client=True)
    der = ssl.PEM_cert_to_DER_cert(pathlib.Path(cert_file).read_text())
    assert _decode_certificate(der) == ssl._ssl._test_decode_cert(cert_file)


async def test_filters_see_the_mtls_peer_identity(ca, mode):
    spiffe = "spiffe://example.org/ns/web/sa/frontend"
    client_cert, client_key = ca.issue("frontend", spiffe, client=True)
    listener = tls_listener(ca, client_ca_file=ca.cert_file, require_client_certificate=True)
    listener["filters"] = [{"name": "omnirelay.filters.http.rbac", "config": {
        "action": "ALLOW", "policies": {"web": {
            "permissions": [{"any": True}],
            "principals": [{"spiffe_id": {"exact": spiffe}}]}}}}]
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=listener)) as relay:
        rc, out = await curl_https(relay.url() + "/id", "--cert", client_cert, "--key", client_key,
                             "-o", "/dev/null", "-w", "%{http_code}")
        assert (rc, out) == (0, "200"), out
        rc, _ = await curl_https(relay.url() + "/id")  # no certificate: the handshake fails
        assert rc != 0
        assert [s.path for s in origin.seen] == ["/id"]


async def test_upstream_tls_is_driven_by_the_core_and_checks_ip_addresses(ca, mode):
    # No `sni`: the endpoint's IP address is what the certificate must name (and no SNI is
    # sent, as for the ssl module).
    good_cert, good_key = ca.issue("by-ip", "127.0.0.1")
    bad_cert, bad_key = ca.issue("other-ip", "10.9.9.9")
    for cert, key, status in ((good_cert, good_key, 200), (bad_cert, bad_key, 503)):
        async with tls_origin(cert, key) as (port, seen), omnirelay.Relay(make_config(
                cluster=tls_cluster(port, ca_file=ca.cert_file))) as relay:
            core = relay._builder.clusters["c"]
            assert (core.tls_client is not None) == (mode == "core")
            rc, out = await curl_https(relay.url() + "/ip", "-o", "/dev/null",
                                       "-w", "%{http_code}")
            assert (rc, out) == (0, str(status)), out
            assert seen["sni"] and set(seen["sni"]) == {None}
    # The refusal says why, as the ssl module would.
    async with tls_origin(bad_cert, bad_key) as (port, _), omnirelay.Relay(make_config(
            cluster=tls_cluster(port, ca_file=ca.cert_file))) as relay:
        rc, out = await curl_https(relay.url() + "/ip")
        assert rc == 0 and "IP address mismatch" in out, out


async def test_an_upstream_that_never_finishes_the_handshake_times_out(ca, mode, caplog):
    async def silent(reader, writer):
        await reader.read()         # takes the ClientHello, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with omnirelay.Relay(make_config(cluster=tls_cluster(
                port, ca_file=ca.cert_file) | {"connect_timeout": "300ms"})) as relay:
            rc, out = await curl_https(relay.url() + "/slow", "-D", "-", "-o", "/dev/null")
            assert rc == 0 and " 503" in out.splitlines()[0], out
            assert "x-omnirelay-reason: upstream_connect_timeout" in out.lower(), out
    finally:
        server.close()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
