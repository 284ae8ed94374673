"""TLS material over time: expired and not-yet-valid certificates and CA bundle entries fail
closed at build time (a first start fails, a reload is rejected and the running config keeps
serving), near-expiry is logged, certificates rotate by reload under continuous traffic with
no failed request (downstream and toward a cluster), and real `openssl s_client` handshakes
against an mTLS listener (refused without a client certificate, accepted with one, ALPN h2)."""
from __future__ import annotations

import asyncio
import datetime
import logging
import pathlib
import shutil
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import HOST, Client, Origin, get, make_config, read_response
from pki import CA, _write_key
from test_upstream_tls import tls_cluster, tls_origin

import omnirelay
from omnirelay.config import ConfigError

TRAFFIC_SECONDS = 3.0


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def issue(ca: CA, name: str, *dns: str, client: bool = False,
          valid_from: datetime.timedelta = datetime.timedelta(hours=-1),
          valid_for: datetime.timedelta = datetime.timedelta(days=1)) -> tuple[str, str]:
    """(cert_file, key_file) signed by `ca`, valid from now + valid_from for valid_for."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.now(datetime.UTC) + valid_from
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + valid_for)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.CLIENT_AUTH if client
                    else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(d) for d in dns]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_file = ca.dir / f"{name}.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_file), _write_key(key, ca.dir / f"{name}.key")


def expired_ca(directory: pathlib.Path, name: str = "expired-ca") -> str:
    """A self-signed CA certificate file whose validity ended yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def bundle(directory: pathlib.Path, name: str, *files: str) -> str:
    path = directory / name
    path.write_bytes(b"".join(pathlib.Path(f).read_bytes() for f in files))
    return str(path)


def serial_of(cert_file: str) -> int:
    return x509.load_pem_x509_certificate(pathlib.Path(cert_file).read_bytes()).serial_number


def listener_tls(cert: tuple[str, str], **extra) -> dict:
    return {"listener": {"tls": {"cert_file": cert[0], "key_file": cert[1], **extra}}}


def _issues(excinfo) -> list[str]:
    return [str(i) for i in excinfo.value.issues]


# ---- fail closed on expired material ------------------------------------------------------

def test_expired_listener_certificate_fails_the_start(ca):
    cert = issue(ca, "old", "localhost", valid_from=datetime.timedelta(days=-3),
                 valid_for=datetime.timedelta(days=2))
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(make_config(1, **listener_tls(cert)))
    [line] = _issues(e)
    assert line.startswith(f"spec.listeners[0].tls.cert_file: {cert[0]}: the certificate "
                           "(CN=old) expired on ")
    end = x509.load_pem_x509_certificate(pathlib.Path(cert[0]).read_bytes()).not_valid_after_utc
    assert end.strftime("%Y-%m-%d %H:%M:%S UTC") in line


def test_not_yet_valid_listener_certificate_fails_the_start(ca):
    cert = issue(ca, "future", "localhost", valid_from=datetime.timedelta(days=1))
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(make_config(1, **listener_tls(cert)))
    [line] = _issues(e)
    assert line.startswith(f"spec.listeners[0].tls.cert_file: {cert[0]}: the certificate "
                           "(CN=future) is not valid before ")


def test_expired_client_ca_bundle_entry_fails(ca, tmp_path):
    cert = issue(ca, "srv", "localhost")
    ca_bundle = bundle(tmp_path, "clients.pem", ca.cert_file, expired_ca(tmp_path))
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(make_config(1, **listener_tls(cert, client_ca_file=ca_bundle)))
    [line] = _issues(e)
    assert line.startswith(f"spec.listeners[0].tls.client_ca_file: {ca_bundle}: a certificate "
                           "of the client CA bundle (CN=expired-ca) expired on ")


def test_expired_cluster_client_certificate_and_trust_bundle_fail(ca, tmp_path):
    client = issue(ca, "edge", client=True, valid_from=datetime.timedelta(days=-3),
                   valid_for=datetime.timedelta(days=1))
    trust = bundle(tmp_path, "trust.pem", expired_ca(tmp_path), ca.cert_file)
    with pytest.raises(ConfigError) as e:
        omnirelay.Relay(make_config(cluster=tls_cluster(
            1, ca_file=trust, cert_file=client[0], key_file=client[1])))
    lines = sorted(_issues(e))
    assert len(lines) == 2
    assert lines[0].startswith(f"spec.clusters[0].tls.ca_file: {trust}: a certificate of the "
                               "trust bundle (CN=expired-ca) expired on ")
    assert lines[1].startswith(f"spec.clusters[0].tls.cert_file: {client[0]}: the certificate "
                               "(CN=edge) expired on ")


async def test_reload_with_an_expired_certificate_is_rejected_and_the_old_one_serves(ca):
    good = issue(ca, "good", "localhost")
    expired = issue(ca, "expired", "localhost", valid_from=datetime.timedelta(days=-3),
                    valid_for=datetime.timedelta(days=1))
    async with Origin() as origin:
        cfg = make_config(origin.port, metadata={"version": "v1"}, **listener_tls(good))
        async with omnirelay.Relay(cfg) as relay:
            bad = make_config(origin.port, metadata={"version": "v2"}, **listener_tls(expired))
            with pytest.raises(ConfigError, match="expired on"):
                await relay.reload(bad)
            assert relay.config_version == "v1"
            status, serial = await https_request(relay.address(), trust=ca.cert_file)
            assert (status, serial) == (200, serial_of(good[0]))


def test_near_expiry_is_a_warning(ca, caplog):
    # A 90-day certificate with 3 days left warns (within 7 days of the end) ...
    cert = issue(ca, "soon", "localhost", valid_from=datetime.timedelta(days=-87),
                 valid_for=datetime.timedelta(days=90))
    caplog.set_level(logging.WARNING, logger="omnirelay.tls")
    omnirelay.Relay(make_config(1, **listener_tls(cert)))
    [msg] = [r.getMessage() for r in caplog.records if r.name == "omnirelay.tls"]
    assert msg.startswith(f"spec.listeners[0].tls.cert_file: {cert[0]}: the certificate "
                          "(CN=soon) expires on ")
    assert "in 3 d" in msg or "in 2 d" in msg
    # ... a fresh day-long SVID does not (only in the last quarter of its lifetime).
    caplog.clear()
    svid = issue(ca, "svid", "localhost", valid_from=datetime.timedelta(minutes=-1),
                 valid_for=datetime.timedelta(hours=24))
    omnirelay.Relay(make_config(1, **listener_tls(svid)))
    assert not [r for r in caplog.records if r.name == "omnirelay.tls"]


# ---- rotation under traffic ---------------------------------------------------------------

def trusting(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def https_request(addr, *, trust: str, conn=None):
    """(status, server certificate serial) of one GET, on `conn` or a new connection."""
    if conn is None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            addr[0], addr[1], ssl=trusting(trust), server_hostname="localhost"), 5)
    else:
        reader, writer = conn
    try:
        writer.write(b"GET /r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        resp = await read_response(reader)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return resp.status, x509.load_der_x509_certificate(der).serial_number
    finally:
        if conn is None:
            writer.close()


class Traffic:
    """Keep-alive and new-connection clients hammering a TLS listener until stopped; every
    response is recorded as (phase, kind, status or error, server serial)."""

    def __init__(self, addr, trust: str, keepalive: int = 4, fresh: int = 4) -> None:
        self.addr, self.trust = addr, trust
        self.phase = "before"
        self.results: list[tuple[str, str, object, int | None]] = []
        self._stop = False
        self._tasks = [asyncio.create_task(self._keepalive()) for _ in range(keepalive)]
        self._tasks += [asyncio.create_task(self._fresh()) for _ in range(fresh)]

    async def _keepalive(self) -> None:
        try:
            conn = await asyncio.wait_for(asyncio.open_connection(
                self.addr[0], self.addr[1], ssl=trusting(self.trust),
                server_hostname="localhost"), 5)
        except Exception as e:  # noqa: BLE001 - recorded as a failure
            self.results.append((self.phase, "keepalive", repr(e), None))
            return
        try:
            while not self._stop:
                phase = self.phase
                try:
                    status, serial = await https_request(self.addr, trust=self.trust, conn=conn)
                    self.results.append((phase, "keepalive", status, serial))
                except Exception as e:  # noqa: BLE001
                    self.results.append((phase, "keepalive", repr(e), None))
                    return
        finally:
            conn[1].close()

    async def _fresh(self) -> None:
        while not self._stop:
            phase = self.phase
            try:
                status, serial = await https_request(self.addr, trust=self.trust)
                self.results.append((phase, "fresh", status, serial))
            except Exception as e:  # noqa: BLE001
                self.results.append((phase, "fresh", repr(e), None))

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def failures(self) -> list:
        return [r for r in self.results if r[2] != 200]

    def serials(self, phase: str, kind: str) -> set:
        return {r[3] for r in self.results if r[0] == phase and r[1] == kind}


async def test_listener_rotation_mid_traffic_fails_no_request(ca):
    old = issue(ca, "srv-1", "localhost")
    new = issue(ca, "srv-2", "localhost")
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, metadata={"version": "v1"}, **listener_tls(old))) as relay:
        traffic = Traffic(relay.address(), ca.cert_file)
        await asyncio.sleep(TRAFFIC_SECONDS / 3)
        await relay.reload(make_config(origin.port, metadata={"version": "v2"},
                                       **listener_tls(new)))
        traffic.phase = "after"
        await asyncio.sleep(TRAFFIC_SECONDS * 2 / 3)
        await traffic.stop()
        assert relay.config_version == "v2"
    assert traffic.failures() == []
    assert len(traffic.results) > 50, len(traffic.results)
    old_serial, new_serial = serial_of(old[0]), serial_of(new[0])
    # Connections opened before the reload keep their session (and the old certificate).
    assert traffic.serials("after", "keepalive") == {old_serial}
    # (A new connection started just before the reload may handshake just after it.)
    assert old_serial in traffic.serials("before", "fresh")
    assert traffic.serials("before", "fresh") <= {old_serial, new_serial}
    # New connections made after the reload see the new certificate. (One opened just
    # before the phase flip may still complete its handshake with the old one.)
    after_fresh = [r[3] for r in traffic.results if r[0] == "after" and r[1] == "fresh"]
    assert after_fresh.count(new_serial) >= len(after_fresh) - 4 and new_serial in after_fresh


async def test_upstream_client_certificate_and_bundle_rotation_mid_traffic(ca, tmp_path):
    server = issue(ca, "upstream", "upstream.internal")
    client_1 = issue(ca, "edge-1", client=True)
    client_2 = issue(ca, "edge-2", client=True)
    # The new trust bundle adds the next CA ahead of the current one (bundle overlap).
    next_ca = CA(tmp_path, "next-ca")
    trust_2 = bundle(tmp_path, "trust-2.pem", next_ca.cert_file, ca.cert_file)

    def cfg(port, version, client, trust):
        return make_config(metadata={"version": version}, cluster=tls_cluster(
            port, sni="upstream.internal", ca_file=trust,
            cert_file=client[0], key_file=client[1]))

    async with tls_origin(*server, client_ca=ca.cert_file) as (port, seen), \
            omnirelay.Relay(cfg(port, "v1", client_1, ca.cert_file)) as relay:
        addr = relay.address()
        failures: list = []
        count = 0
        stop = False

        async def drive():
            nonlocal count
            c = await Client.open(addr)
            try:
                while not stop:
                    r = await c.request(get("/x"))
                    count += 1
                    if r.status != 200:
                        failures.append((r.status, r.headers.get("x-omnirelay-reason")))
            finally:
                await c.close()

        tasks = [asyncio.create_task(drive()) for _ in range(6)]
        await asyncio.sleep(TRAFFIC_SECONDS / 3)
        before = len(seen["client_cn"])
        await relay.reload(cfg(port, "v2", client_2, trust_2))
        await asyncio.sleep(TRAFFIC_SECONDS * 2 / 3)
        # Force new upstream connections: a burst wider than the pool.
        burst = [asyncio.create_task(drive()) for _ in range(10)]
        await asyncio.sleep(0.3)
        stop = True
        await asyncio.gather(*tasks, *burst)
    assert failures == []
    assert count > 50
    assert set(seen["client_cn"][:before]) == {"edge-1"}
    # New upstream connections present the new client certificate (and were verified
    # against the new bundle).
    assert "edge-2" in seen["client_cn"][before:]
    # Pooled connections made before the reload keep serving requests after it.
    assert "edge-1" in seen["client_cn"][before:]


# ---- openssl s_client against an mTLS listener --------------------------------------------

async def s_client(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    request = b"GET /mtls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    # Wait before sending so the TLS 1.3 server's verdict on the client certificate (sent
    # after the client's Finished) has arrived; s_client exits when the server closes.
    out, _ = await asyncio.wait_for(proc.communicate(request), 20)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
async def test_openssl_s_client_mtls_refused_and_accepted_and_alpn_h2(ca):
    server = issue(ca, "srv", "localhost")
    client = issue(ca, "client", client=True)
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port, **listener_tls(
            server, client_ca_file=ca.cert_file, require_client_certificate=True))) as relay:
        port = relay.address()[1]
        for version in ("-tls1_2", "-tls1_3"):
            code, out = await s_client(port, version, "-CAfile", ca.cert_file, "-ign_eof")
            assert "HTTP/1.1 200" not in out, out
            assert code != 0 or "alert" in out.lower(), out
            code, out = await s_client(port, version, "-CAfile", ca.cert_file, "-ign_eof",
                                       "-cert", client[0], "-key", client[1],
                                       "-verify_return_error")
            assert code == 0, out
            assert "Verify return code: 0 (ok)" in out, out
            assert "HTTP/1.1 200" in out, out
        code, out = await s_client(port, "-CAfile", ca.cert_file, "-cert", client[0],
                                   "-key", client[1], "-alpn", "h2")
        assert "ALPN protocol: h2" in out, out
        code, out = await s_client(port, "-CAfile", ca.cert_file, "-cert", client[0],
                                   "-key", client[1], "-alpn", "http/1.1")
        assert "ALPN protocol: http/1.1" in out, out
