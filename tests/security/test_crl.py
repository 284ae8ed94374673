"""Revocation on the data plane: a listener's `client_crl_file` and a cluster's `crl_file`.

Real clients (curl, `ssl` sockets) against an mTLS listener: a revoked client certificate is
refused, a good one served; a CRL rewritten on disk takes effect at the next reload without a
restart while an established connection keeps working; a CRL whose nextUpdate passes makes the
listener refuse handshakes (fail closed, counted). A cluster whose upstream shows a revoked
server certificate answers 503 `upstream_tls_failure`. Bad CRL files are config errors naming
the field and the reason."""
from __future__ import annotations

import asyncio
import datetime
import os
import pathlib
import shutil
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import HOST, Client, Origin, get, make_config, read_response
from pki import CA
from test_upstream_tls import tls_cluster, tls_origin

import omnirelay
from omnirelay.config import ConfigError, load_config


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def serial(cert_file: str) -> int:
    return x509.load_pem_x509_certificate(pathlib.Path(cert_file).read_bytes()).serial_number


def write_crl(ca: CA, path: pathlib.Path, *revoked: str, next_update: float = 3600.0,
              last_update: float = -60.0, key=None) -> str:
    """A CRL of `ca` revoking the certificates in files `revoked`, valid `next_update`
    seconds from now, written atomically (as the node identity client does)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now + datetime.timedelta(seconds=last_update))
               .next_update(now + datetime.timedelta(seconds=next_update)))
    for cert_file in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial(cert_file))
            .revocation_date(now).build())
    crl = builder.sign(key or ca.key, hashes.SHA256())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)
    return str(path)


def mtls_listener(ca: CA, server: tuple[str, str], crl: str) -> dict:
    return {"listener": {"tls": {
        "cert_file": server[0], "key_file": server[1], "alpn": ["http/1.1"],
        "client_ca_file": ca.cert_file, "require_client_certificate": True,
        "client_crl_file": crl}}}


async def curl(port: int, ca: CA, client: tuple[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
        "--resolve", f"localhost:{port}:{HOST}", "--cacert", ca.cert_file,
        "--cert", client[0], "--key", client[1], f"https://localhost:{port}/crl",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode, (out + err).decode(errors="replace")


def client_context(ca: CA, client: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    ctx.load_cert_chain(*client)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def keepalive_get(reader, writer) -> int:
    writer.write(b"GET /k HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return (await asyncio.wait_for(read_response(reader), 5)).status


# ---- config errors ------------------------------------------------------------------------

def _issues(excinfo) -> list[str]:
    return [str(i) for i in excinfo.value.issues]


def test_crl_fields_are_checked_with_the_path(ca, tmp_path):
    server = ca.issue("srv", "localhost")
    listener = {"tls": {"cert_file": server[0], "key_file": server[1],
                        "client_crl_file": "crl.pem"}}
    with pytest.raises(ConfigError) as e:
        load_config(make_config(1, listener=listener))
    assert _issues(e) == [("spec.listeners[0].tls.client_crl_file: needs client_ca_file (the "
                          "CRLs revoke certificates of those CAs)")]
    with pytest.raises(ConfigError) as e:
        load_config(make_config(cluster=tls_cluster(1, verify=False, crl_file="crl.pem")))
    assert _issues(e) == [("spec.clusters[0].tls.crl_file: needs verify: true (revocation is "
                          "checked while verifying)")]


def test_unusable_crl_files_reject_the_config(ca, tmp_path):
    server = ca.issue("srv", "localhost")
    expired = write_crl(ca, tmp_path / "expired.pem", next_update=-60)
    forged = write_crl(ca, tmp_path / "forged.pem", key=ec.generate_private_key(ec.SECP256R1()))
    future = write_crl(ca, tmp_path / "future.pem", last_update=600)
    cases = {
        ca.cert_file: "no PEM CRL (-----BEGIN X509 CRL-----) in the file",
        str(tmp_path / "missing.pem"): "cannot read CRL file",
        expired: "the CRL of CN=test-ca expired (nextUpdate) on",
        forged: f"the CRL of CN=test-ca is not signed by that CA of {ca.cert_file}",
        future: "the CRL of CN=test-ca is not valid before ",
    }
    for crl, reason in cases.items():
        with pytest.raises(ConfigError) as e:
            omnirelay.Relay(make_config(1, **mtls_listener(ca, server, crl)))
        [line] = _issues(e)
        assert line.startswith("spec.listeners[0].tls.client_crl_file: ") and reason in line, \
            line
        with pytest.raises(ConfigError) as e:
            omnirelay.Relay(make_config(cluster=tls_cluster(1, ca_file=ca.cert_file,
                                                            crl_file=crl)))
        [line] = _issues(e)
        assert line.startswith("spec.clusters[0].tls.crl_file: ") and reason in line, line


# ---- listener: client certificates ----------------------------------------------------------

@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
@pytest.mark.async_timeout(40)
async def test_revoked_client_certificate_is_refused_and_a_new_crl_applies_by_reload(
        ca, tmp_path):
    server = ca.issue("srv", "localhost")
    good, bad = ca.issue("good", client=True), ca.issue("bad", client=True)
    crl = write_crl(ca, tmp_path / "crl.pem", bad[0])
    async with Origin() as origin:
        cfg = make_config(origin.port, **mtls_listener(ca, server, crl))
        async with omnirelay.Relay(cfg) as relay:
            port = relay.address()[1]
            code, out = await curl(port, ca, good)
            assert (code, out) == (0, "200"), out
            code, out = await curl(port, ca, bad)
            assert code != 0 and "revoked" in out, (code, out)

            # Mid-traffic: a kept-alive connection of `good`, then `good` is revoked too.
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                HOST, port, ssl=client_context(ca, good), server_hostname="localhost"), 5)
            try:
                assert await keepalive_get(reader, writer) == 200
                write_crl(ca, tmp_path / "crl.pem", bad[0], good[0])
                await relay.reload(cfg)  # what SIGHUP / an identity update does; no restart
                assert await keepalive_get(reader, writer) == 200  # established: kept
                code, out = await curl(port, ca, good)
                assert code != 0 and "revoked" in out, (code, out)
                # Un-revoked again (a CRL without it): served again.
                write_crl(ca, tmp_path / "crl.pem", bad[0])
                await relay.reload(cfg)
                code, out = await curl(port, ca, good)
                assert (code, out) == (0, "200"), out
            finally:
                writer.close()


async def test_a_crl_past_its_next_update_fails_closed(ca, tmp_path):
    server = ca.issue("srv", "localhost")
    good = ca.issue("good", client=True)
    crl = write_crl(ca, tmp_path / "crl.pem", next_update=1.5)
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, **mtls_listener(ca, server, crl))) as relay:
        port = relay.address()[1]
        ctx = client_context(ca, good)

        async def handshake_ok() -> bool:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    HOST, port, ssl=ctx, server_hostname="localhost"), 5)
            except (ssl.SSLError, ConnectionError):
                return False
            try:
                return await keepalive_get(reader, writer) == 200
            except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
                return False
            finally:
                writer.close()

        assert await handshake_ok()
        series = {(name, labels): value for name, labels, value in relay._tls_series()}
        end = series[("omnirelay_tls_certificate_expiry_timestamp_seconds", ("edge", crl))]
        assert end == pytest.approx(time.time() + 1.5, abs=60)  # the CRL's nextUpdate
        deadline = time.monotonic() + 10
        while await handshake_ok():
            assert time.monotonic() < deadline, "still served past the CRL's nextUpdate"
            await asyncio.sleep(0.1)
        assert time.time() >= end
        series = {(name, labels): value for name, labels, value in relay._tls_series()}
        assert series[("omnirelay_tls_handshakes_refused_total", ("edge", "expired"))] >= 1
        # A fresh CRL and a reload: served again.
        write_crl(ca, tmp_path / "crl.pem")
        await relay.reload(make_config(origin.port, **mtls_listener(ca, server, crl)))
        assert await handshake_ok()


# ---- cluster: server certificates ------------------------------------------------------------

async def test_upstream_with_a_revoked_server_certificate_is_refused(ca, tmp_path):
    revoked = ca.issue("revoked-upstream", "upstream.internal")
    fine = ca.issue("fine-upstream", "upstream.internal")
    crl = write_crl(ca, tmp_path / "crl.pem", revoked[0])
    for cert, status in ((revoked, 503), (fine, 200)):
        async with tls_origin(*cert) as (port, _):
            cfg = make_config(cluster=tls_cluster(port, sni="upstream.internal",
                                                  ca_file=ca.cert_file, crl_file=crl))
            async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
                r = await c.request(get("/x"))
        assert r.status == status, r.body
        if status == 503:
            assert r.headers.get("x-omnirelay-reason") == "upstream_tls_failure"
            assert b"certificate revoked" in r.body, r.body
