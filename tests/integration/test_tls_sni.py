"""TLS termination policy: a certificate per server name (SNI, exact and '*.suffix'),
protocol versions and TLS 1.2 ciphers from config, and failing closed once material expires
while the listener runs (refused handshakes, a log line and metrics), with a reload
bringing it back."""
from __future__ import annotations

import asyncio
import datetime
import pathlib
import shutil
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from harness import Client, Origin, get, make_config
from pki import CA
from test_l4 import common_name

import omnirelay
from omnirelay.config import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def client(*, max_version: ssl.TLSVersion | None = None,
           ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


async def presented(addr, server_name: str | None, ctx: ssl.SSLContext | None = None) -> str:
    """Common name of the certificate the listener presents for `server_name`."""
    _, w = await asyncio.wait_for(asyncio.open_connection(
        addr[0], addr[1], ssl=ctx or client(), server_hostname=server_name), 5)
    try:
        return common_name(w.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        w.close()


def tls_listener(port: int, tls: dict) -> dict:
    return make_config(port, listener={"tls": tls})


@pytest.fixture
def ca(tmp_path) -> CA:
    return CA(tmp_path)


async def test_certificate_per_server_name(ca):
    default = ca.issue("default.test", "localhost")
    api = ca.issue("api.example.com", "api.example.com")
    shop = ca.issue("wild.shop.example", "*.shop.example")
    deep = ca.issue("eu.shop.example", "x.eu.shop.example")
    tls = {"cert_file": default[0], "key_file": default[1], "certificates": [
        {"server_names": ["api.example.com"], "cert_file": api[0], "key_file": api[1]},
        {"server_names": ["*.shop.example"], "cert_file": shop[0], "key_file": shop[1]},
        {"server_names": ["*.eu.shop.example"], "cert_file": deep[0], "key_file": deep[1]},
    ]}
    async with Origin() as origin, omnirelay.Relay(tls_listener(origin.port, tls)) as relay:
        addr = relay.address()
        assert await presented(addr, "api.example.com") == "api.example.com"
        assert await presented(addr, "API.Example.COM") == "api.example.com"
        assert await presented(addr, "a.shop.example") == "wild.shop.example"
        # The longest suffix wins, whatever the order in the list.
        assert await presented(addr, "x.eu.shop.example") == "eu.shop.example"
        assert await presented(addr, "shop.example") == "default.test"
        assert await presented(addr, "other.test") == "default.test"
        assert await presented(addr, None) == "default.test"
        # A real client: openssl s_client names the host and sees its certificate.
        out = await asyncio.to_thread(subprocess.run, [
            "openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}",
            "-servername", "api.example.com", "-brief"],
            input=b"", capture_output=True, timeout=10)
        text = (out.stdout + out.stderr).decode(errors="replace")
        assert "CN = api.example.com" in text or "CN=api.example.com" in text, text


async def test_min_version_and_ciphers(ca):
    cert = ca.issue("localhost", "localhost")
    tls13 = {"cert_file": cert[0], "key_file": cert[1], "min_version": "1.3"}
    async with Origin() as origin, omnirelay.Relay(tls_listener(origin.port, tls13)) as relay:
        addr = relay.address()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await presented(addr, "localhost", client(max_version=ssl.TLSVersion.TLSv1_2))
        assert await presented(addr, "localhost") == "localhost"
    only = "ECDHE-ECDSA-AES128-GCM-SHA256"
    tls12 = {"cert_file": cert[0], "key_file": cert[1], "max_version": "1.2", "ciphers": only}
    async with Origin() as origin, omnirelay.Relay(tls_listener(origin.port, tls12)) as relay:
        addr = relay.address()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await presented(addr, "localhost", client(ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"))
        _, w = await asyncio.wait_for(asyncio.open_connection(
            addr[0], addr[1], ssl=client(), server_hostname="localhost"), 5)
        obj = w.get_extra_info("ssl_object")
        assert (obj.version(), obj.cipher()[0]) == ("TLSv1.2", only)
        w.close()


def test_bad_settings_are_config_errors(ca):
    cert = ca.issue("localhost", "localhost")
    base = {"cert_file": cert[0], "key_file": cert[1]}
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_listener(1, {**base, "ciphers": "NOT-A-CIPHER"}))
    assert "spec.listeners[0].tls.ciphers" in str(e.value)
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_listener(1, {**base, "min_version": "1.3", "max_version": "1.2"}))
    assert "spec.listeners[0].tls.max_version" in str(e.value)
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_listener(1, {**base, "min_version": "1.1"}))
    assert "spec.listeners[0].tls.min_version" in str(e.value)
    twice = {"server_names": ["a.test"], "cert_file": cert[0], "key_file": cert[1]}
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_listener(1, {**base, "certificates": [twice, twice]}))
    assert "spec.listeners[0].tls.certificates[1].server_names[0]" in str(e.value)
    missing = {"server_names": ["b.test"], "cert_file": "/nonexistent.crt", "key_file": cert[1]}
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(tls_listener(1, {**base, "certificates": [missing]}))
    assert "spec.listeners[0].tls.certificates[0].cert_file" in str(e.value)


async def test_expiry_while_running_fails_closed_until_reload(ca, tmp_path, caplog):
    short = ca.issue("short", "localhost", lifetime=datetime.timedelta(seconds=3))
    async with Origin() as origin:
        cfg = tls_listener(origin.port, {"cert_file": short[0], "key_file": short[1]})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            assert await presented(addr, "localhost") == "short"
            # An established connection is not cut; new handshakes are refused once the
            # certificate is past its not-after.
            r, w = await asyncio.open_connection(addr[0], addr[1], ssl=client(),
                                                 server_hostname="localhost")
            async with Client(r, w) as c:
                assert (await c.request(get("/before"))).status == 200
                deadline = time.monotonic() + 15
                refused = False
                while time.monotonic() < deadline and not refused:
                    try:
                        await presented(addr, "localhost")
                        await asyncio.sleep(0.2)  # polling a wall-clock deadline
                    except (ssl.SSLError, ConnectionError):
                        refused = True
                assert refused, "handshakes still accepted after the certificate expired"
                assert (await c.request(get("/after"))).status == 200
            assert any("expired" in r.getMessage() and "refusing TLS handshakes" in
                       r.getMessage() for r in caplog.records)
            series = {(n, tuple(lb)): v for n, lb, v in relay.telemetry_snapshot()["series"]}
            assert series[("omnirelay_tls_handshakes_refused_total", ("edge", "expired"))] >= 1
            end = series[("omnirelay_tls_certificate_expiry_timestamp_seconds",
                          ("edge", short[0]))]
            not_after = x509.load_pem_x509_certificate(pathlib.Path(short[0]).read_bytes())
            assert end == not_after.not_valid_after_utc.timestamp()
            fresh = ca.issue("fresh", "localhost")
            await relay.reload(tls_listener(origin.port, {"cert_file": fresh[0],
                                                          "key_file": fresh[1]}))
            assert await presented(addr, "localhost") == "fresh"
