"""TLS termination on `protocol: http` listeners: HTTP/1.1 over TLS to curl and Python
clients, ALPN negotiation in the configured order, certificate and key errors reported at
build time (and a bad reload keeping the running config), certificate rotation by reload,
and the ALPN result as the core's BufferedProtocol connections see it."""
from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import ssl
from typing import ClassVar

import pytest
import uvloop
from cryptography.hazmat.primitives import serialization
from harness import HOST, Origin, free_port, make_config, read_response
from test_l4 import client_context, common_name, der_of, make_cert

import omnirelay
from omnirelay._core import negotiated_alpn
from omnirelay.config import ConfigError, TlsContext
from omnirelay.runtime.tls import server_ssl_context


@pytest.fixture
def cert(tmp_path) -> tuple[str, str]:
    return make_cert(tmp_path, "localhost", "127.0.0.1")


def tls_config(upstream_port: int, cert_file: str, key_file: str,
               alpn: list[str] | None = None, **listener) -> dict:
    tls = {"cert_file": cert_file, "key_file": key_file}
    if alpn is not None:
        tls["alpn"] = alpn
    return make_config(upstream_port, listener={"tls": tls, **listener})


async def handshake(addr, alpn: list[str] | None, server_name: str = "localhost"):
    """(selected ALPN protocol, peer certificate DER) of a fresh TLS connection."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        addr[0], addr[1], ssl=client_context(alpn), server_hostname=server_name), 5)
    try:
        obj = writer.get_extra_info("ssl_object")
        return obj.selected_alpn_protocol(), obj.getpeercert(binary_form=True)
    finally:
        writer.close()


async def https_get(addr, path: str = "/", *, keep: bool = False):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        addr[0], addr[1], ssl=client_context(["http/1.1"]), server_hostname="localhost"), 5)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    resp = await read_response(reader)
    if keep:
        return resp, (reader, writer)
    writer.close()
    return resp


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
async def test_curl_http11_over_tls(cert):
    async with Origin() as origin, omnirelay.Relay(tls_config(origin.port, *cert)) as relay:
        assert relay.url().startswith("https://")
        host, port = relay.address()
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sk", "--http1.1", "-D", "-", "-w", "\n%{http_version} %{scheme}",
            f"https://{host}:{port}/over/tls?x=1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        head, _, rest = out.decode().partition("\r\n\r\n")
        body, _, meta = rest.rpartition("\n")
        assert head.startswith("HTTP/1.1 200"), head
        assert meta.split() == ["1.1", "HTTPS"]
        info = json.loads(body)
        assert info["path"] == "/over/tls?x=1"
        headers = {k.lower(): v for k, v in info["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        assert "x-origin: origin" in head.lower()


async def test_python_client_keep_alive_over_tls(cert):
    async with Origin() as origin, omnirelay.Relay(tls_config(origin.port, *cert)) as relay:
        resp, (reader, writer) = await https_get(relay.address(), "/one", keep=True)
        try:
            assert resp.status == 200 and resp.json()["path"] == "/one"
            writer.write(b"GET /size/300000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            big = await read_response(reader)
            assert big.status == 200 and len(big.body) == 300000
        finally:
            writer.close()
        assert len(origin.connections) == 1


@pytest.mark.parametrize(("configured", "offered", "selected"), [
    (None, ["h2", "http/1.1"], "h2"),             # the default offers h2 first
    (None, ["http/1.1", "h2"], "h2"),             # the server's order decides
    (None, ["http/1.1"], "http/1.1"),
    (["http/1.1", "h2"], ["h2", "http/1.1"], "http/1.1"),
    (["h2"], ["h2"], "h2"),
    (["http/1.1"], ["h2"], None),                 # no overlap: no ALPN, handshake still ok
    (None, None, None),                           # the client offers nothing
])
async def test_alpn_negotiation(cert, configured, offered, selected):
    async with Origin() as origin, \
            omnirelay.Relay(tls_config(origin.port, *cert, alpn=configured)) as relay:
        got, der = await handshake(relay.address(), offered)
        assert got == selected
        assert der == der_of(cert[0])


def test_server_context_settings(cert):
    ctx = server_ssl_context(TlsContext(*cert, alpn=("http/1.1",)))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER


def _issues(excinfo) -> list[str]:
    return [str(i) for i in excinfo.value.issues]


def test_missing_and_broken_files_are_config_errors(tmp_path, cert):
    cert_file, key_file = cert
    other_cert, other_key = make_cert(tmp_path, "other.test")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pathlib.Path(key_file).read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    missing = str(tmp_path / "missing.pem")

    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_config(1, missing, key_file))
    assert _issues(e) == [(f"spec.listeners[0].tls.cert_file: cannot read certificate file "
                          f"{missing}: No such file or directory")]
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_config(1, cert_file, missing))
    assert _issues(e) == [(f"spec.listeners[0].tls.key_file: cannot read private key file "
                          f"{missing}: No such file or directory")]
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_config(1, cert_file, other_key))
    assert _issues(e) == [(f"spec.listeners[0].tls.key_file: {other_key}: the private key "
                          f"does not match the certificate in {cert_file}")]
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_config(1, str(garbage), str(encrypted)))
    lines = _issues(e)
    assert len(lines) == 2
    assert lines[0].startswith(f"spec.listeners[0].tls.cert_file: {garbage}: not a PEM "
                               "certificate chain")
    assert lines[1].startswith(f"spec.listeners[0].tls.key_file: {encrypted}: the private "
                               "key is encrypted")
    # A key file holding a certificate, and a certificate file holding a key.
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_config(1, key_file, other_cert))
    lines = _issues(e)
    assert lines[0].startswith(f"spec.listeners[0].tls.cert_file: {key_file}: not a PEM")
    assert lines[1].startswith(f"spec.listeners[0].tls.key_file: {other_cert}: not a PEM "
                               "private key")


async def test_bad_reload_keeps_serving_and_good_reload_rotates_the_certificate(tmp_path, cert):
    new_cert, new_key = make_cert(tmp_path, "rotated.test", "localhost")
    async with Origin() as origin:
        cfg = tls_config(origin.port, *cert)
        cfg["metadata"] = {"version": "v1"}
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            resp, (reader, writer) = await https_get(addr, "/before", keep=True)
            assert resp.status == 200
            try:
                bad = json.loads(json.dumps(cfg))
                bad["metadata"]["version"] = "v2"
                bad["spec"]["listeners"][0]["tls"]["key_file"] = str(tmp_path / "nope.key")
                with pytest.raises(ConfigError) as e:
                    await relay.reload(bad)
                assert "tls.key_file: cannot read private key file" in str(e.value)
                assert relay.config_version == "v1"
                assert (await https_get(addr, "/still")).status == 200
                _, der = await handshake(addr, ["h2"])
                assert der == der_of(cert[0])

                good = json.loads(json.dumps(cfg))
                good["metadata"]["version"] = "v3"
                good["spec"]["listeners"][0]["tls"] = {
                    "cert_file": new_cert, "key_file": new_key, "alpn": ["http/1.1"]}
                await relay.reload(good)
                assert relay.config_version == "v3" and relay.address() == addr
                alpn, der = await handshake(addr, ["h2", "http/1.1"])
                assert common_name(der) == "rotated.test" and alpn == "http/1.1"
                # The connection opened before the reload keeps its session.
                writer.write(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
                again = await read_response(reader)
                assert again.status == 200 and again.json()["path"] == "/after"
                assert common_name(writer.get_extra_info("ssl_object").getpeercert(
                    binary_form=True)) == "localhost"
            finally:
                writer.close()


async def test_reload_between_plain_and_tls_on_the_same_port(cert):
    port = free_port()
    async with Origin() as origin:
        plain = make_config(origin.port, listener={"port": port})
        async with omnirelay.Relay(plain) as relay:
            assert relay.url() == f"http://{HOST}:{port}"
            await relay.reload(tls_config(origin.port, *cert, port=port))
            assert relay.url() == f"https://{HOST}:{port}"
            assert (await https_get((HOST, port), "/tls")).status == 200
            await relay.reload(plain)
            assert relay.url() == f"http://{HOST}:{port}"
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader)).status == 200
            writer.close()


class _AlpnProbe(asyncio.BufferedProtocol):
    """What a core server connection does in connection_made: read the ALPN result."""

    seen: ClassVar[list[str | None]] = []

    def connection_made(self, transport):
        self.seen.append(negotiated_alpn(transport))
        self.buf = bytearray(4096)
        transport.close()

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        pass


@pytest.mark.parametrize("loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_negotiated_alpn_is_known_in_connection_made(cert, loop_factory):
    ctx = server_ssl_context(TlsContext(*cert))

    async def go():
        loop = asyncio.get_running_loop()
        _AlpnProbe.seen = []
        server = await loop.create_server(_AlpnProbe, HOST, 0, ssl=ctx)
        addr = server.sockets[0].getsockname()[:2]
        for offered in (["h2", "http/1.1"], ["http/1.1"], None):
            _selected, _ = await handshake(addr, offered)
        server.close()
        plain = await loop.create_server(_AlpnProbe, HOST, 0)
        paddr = plain.sockets[0].getsockname()[:2]
        _, w = await asyncio.open_connection(*paddr)
        while len(_AlpnProbe.seen) < 4:
            await asyncio.sleep(0.01)
        w.close()
        plain.close()
        return _AlpnProbe.seen

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        seen = runner.run(asyncio.wait_for(go(), 10))
    assert seen == ["h2", "http/1.1", None, None]


def test_tls_listener_on_the_stdlib_loop(cert):
    async def go():
        assert "uvloop" not in type(asyncio.get_running_loop()).__module__
        async with Origin() as origin, \
                omnirelay.Relay(tls_config(origin.port, *cert)) as relay:
            resp = await https_get(relay.address(), "/size/200000")
            assert resp.status == 200 and len(resp.body) == 200000
            alpn, _ = await handshake(relay.address(), ["h2", "http/1.1"])
            assert alpn == "h2"

    asyncio.run(asyncio.wait_for(go(), 20))
