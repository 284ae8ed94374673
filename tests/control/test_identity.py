"""Node identity end to end: `omnirelay run --control-plane ... --identity` against a real
`meshkit serve --ca-dir --mtls` process. The node bootstraps an X.509-SVID with its token,
takes its config over the mTLS control channel with it, serves HTTPS with it (the presented
certificate carries the SPIFFE URI SAN and verifies against the CA bundle), and renews it at
half life (4 s certificates) while an established connection keeps working, also across a CA
rotation; with MeshKit gone the certificate expires and no TLS session is made with it
(fail closed)."""
from __future__ import annotations

import http.client
import ssl
import time

import mkharness
import pytest
from caharness import TRUST_DOMAIN, CaMeshKit, key_pem, new_key
from cryptography import x509
from runtime_harness import RelayProcess, Upstream, poll

from omnirelay.config.protos import ca_pb2
from omnirelay.config.signing import Keyring
from omnirelay.control.identity import IdentityError, IdentityOptions, NodeIdentity

NODE = "edge-1"
SID = f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-1"


@pytest.fixture
def upstream():
    server = Upstream("A")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def meshkit(tmp_path):
    (tmp_path / "mk").mkdir()
    server = CaMeshKit(tmp_path / "mk", svid_ttl="4s", mtls=True).start()
    try:
        yield server
    finally:
        server.stop()


def _document(identity_dir, upstream_port: int, version: str = "v1") -> dict:
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0, "tls": {
                "cert_file": str(identity_dir / "cert.pem"),
                "key_file": str(identity_dir / "key.pem"), "alpn": ["http/1.1"]}}],
            "routes": [{"name": "all", "match": {}, "cluster": "a"}],
            "clusters": [{"name": "a", "endpoints": [
                {"address": "127.0.0.1", "port": upstream_port}]}],
        },
    }


def _client_context(bundle: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=bundle.decode())
    ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN, checked below
    return ctx


def _connect(port: int, bundle: bytes) -> tuple[http.client.HTTPSConnection, x509.Certificate]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                       context=_client_context(bundle))
    conn.connect()
    der = conn.sock.getpeercert(binary_form=True)
    return conn, x509.load_der_x509_certificate(der)


def _presented(port: int, bundle: bytes) -> x509.Certificate | None:
    """The certificate a new connection is shown, or None if the handshake failed (a loaded
    machine may renew late: a listener refuses to present an expired certificate)."""
    try:
        conn, cert = _connect(port, bundle)
    except (ssl.SSLError, ConnectionError):
        return None
    conn.close()
    return cert


def _get(conn: http.client.HTTPSConnection) -> tuple[int, str]:
    conn.request("GET", "/")
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def test_node_bootstraps_serves_and_renews_its_svid(tmp_path, meshkit, upstream):
    mk = meshkit
    identity_dir = tmp_path / "identity"
    token = mkharness.omnirctl(mk, "--cacert", str(mk.bundle_file), "--server", mk.bootstrap,
                               "ca", "register-node", NODE, SID)
    assert token.returncode == 0, token.stderr
    trust = tmp_path / "trust.json"
    Keyring([mk.signer.trusted_key()]).save(trust)
    mk.publish(_document(identity_dir, upstream.port))

    proxy = RelayProcess(
        "run", "--control-plane", mk.address, "--node-id", NODE, "--trust-key", str(trust),
        "--identity", SID, "--identity-dir", str(identity_dir),
        "--bootstrap-token", token.stdout.strip(), "--ca-bundle", str(mk.bundle_file),
        "--bootstrap-endpoint", mk.bootstrap, "--bootstrap-timeout", "20s",
        "--drain-timeout", "1s")
    try:
        port = int(proxy.wait_for(r"^omnirelay: listener edge on https://127\.0\.0\.1:(\d+) ",
                                  "stdout", timeout=30)[1])
        # The config came over the mTLS channel, authenticated by the SVID: ACKed.
        poll(lambda: mk.nodes().get(NODE) and mk.nodes()[NODE].acked_version == "v1",
             what="ACK of v1 over mTLS")
        assert (identity_dir / "key.pem").stat().st_mode & 0o777 == 0o600

        bundle = mk.bundle_file.read_bytes()
        kept, first = _connect(port, bundle)
        assert _uris(first) == [SID]
        assert _get(kept) == (200, "A")
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime.total_seconds() <= 6

        # Renewal at half life: new connections get a new certificate (a new serial) with
        # the same SPIFFE ID, while the connection opened before keeps serving requests.
        def renewed():
            cert = _presented(port, bundle)
            return cert if cert is not None and cert.serial_number != first.serial_number \
                else None

        second = poll(renewed, timeout=15, interval=0.1, what="a renewed certificate")
        assert _uris(second) == [SID]
        assert second.not_valid_after_utc > first.not_valid_after_utc
        assert _get(kept) == (200, "A")
        proxy.wait_for(r"renewed certificate: reloading config v1")

        # The renewals keep coming (by certificate over mTLS), and the first one has expired
        # by now: nothing serves it any more.
        poll(lambda: time.time() > first.not_valid_after_utc.timestamp(), timeout=10,
             interval=0.1, what="the first certificate's expiry")
        def renewed_again():
            cert = _presented(port, bundle)
            return cert if cert is not None and cert.serial_number not in (
                first.serial_number, second.serial_number) else None

        third = poll(renewed_again, timeout=15, interval=0.1, what="a third certificate")
        assert third.not_valid_after_utc > second.not_valid_after_utc
        conn, _ = _connect(port, bundle)
        assert _get(conn) == (200, "A")
        conn.close()
        issued = mkharness.omnirctl(mk, "--cacert", str(mk.bundle_file), "--server",
                                    mk.bootstrap, "ca", "list", "--json", token="read")
        assert issued.stdout.count(f'"node_id": "{NODE}"') >= 3
        assert "refused a certificate" not in mk.log()

        # CA rotation under a running node: the new CA is trusted first (half a lifetime,
        # 2 s here), then signs; the node renews across it over mTLS (MeshKit's own server
        # certificate moves to the new CA too) and serves a certificate of the new CA.
        status = mk.ca_admin("Rotate", ca_pb2.CaRotateRequest())
        new_ca = next(a for a in status.authorities if a.active_from_unix > time.time() - 1
                      and not a.active)
        bundle = mk.bundle_file.read_bytes()  # both CAs

        def from_new_ca():
            cert = _presented(port, bundle)
            return cert is not None and cert.issuer.rfc4514_string() == new_ca.subject

        poll(from_new_ca, timeout=15, interval=0.1, what="a certificate of the new CA")
        assert _get(kept) == (200, "A")  # opened under the old CA, still served
        kept.close()
        poll(lambda: mk.nodes()[NODE].connected, what="the watch stream over mTLS")

        # MeshKit goes away: renewals fail (retried with backoff), the certificate expires,
        # and no TLS session is made with it any more: fail closed.
        mark = proxy.mark()
        mk.stop()
        proxy.wait_for(r"renewal failed .*retrying in", start=mark, timeout=10)
        proxy.wait_for(r"the certificate has EXPIRED and cannot be renewed", start=mark,
                       timeout=15)
        # (A verifying client refuses the expired certificate; a listener that checks expiry
        # at the handshake already refuses to serve it. Either way no TLS session.)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _connect(port, bundle)
    finally:
        assert proxy.stop() == 0, proxy.output()


def test_unregistered_identity_fails_the_start_with_the_reason(tmp_path, meshkit):
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    proxy = RelayProcess(
        "run", "--control-plane", meshkit.address, "--node-id", "ghost", "--trust-key",
        str(trust), "--identity", f"spiffe://{TRUST_DOMAIN}/ghost", "--identity-dir",
        str(tmp_path / "id"), "--bootstrap-token", "mk_wrong", "--ca-bundle",
        str(meshkit.bundle_file), "--bootstrap-endpoint", meshkit.bootstrap,
        "--bootstrap-timeout", "3s")
    try:
        assert proxy.wait(30) == 1
        proxy.wait_for(r"no certificate for spiffe://example.org/ghost within 3s: .*"
                       r"UNAUTHENTICATED: node 'ghost' is not registered")
        assert "listener" not in proxy.output()
    finally:
        if proxy.proc.poll() is None:
            proxy.kill()


def test_identity_api_plaintext_dev_mode_and_restart_reuse(tmp_path):
    """The NodeIdentity API against a MeshKit without --mtls (local development): the token
    gets a certificate over plaintext; a restarted node reuses the valid one on disk."""
    (tmp_path / "mk").mkdir()
    mk = CaMeshKit(tmp_path / "mk", svid_ttl="1h").start()
    try:
        mk.ca_admin("Init", ca_pb2.CaInitRequest())
        token = mk.ca_admin("RegisterNode", ca_pb2.RegisterNodeRequest(
            node_id=NODE, spiffe_id=SID)).bootstrap_token
        opts = IdentityOptions(node_id=NODE, spiffe_id=SID, directory=str(tmp_path / "id"),
                               endpoints=[mk.address], token=token, ttl=600)
        renewed = []
        identity = NodeIdentity(opts, on_renewed=lambda: renewed.append(1))
        cert = identity.obtain(timeout=10)
        assert _uris(cert) == [SID] and identity.renewals == 1
        assert 590 <= cert.not_valid_after_utc.timestamp() - time.time() <= 600  # asked 10 min
        assert 250 < identity.renew_at - time.time() <= 300  # half of what is left
        assert identity.channel_credentials() is None  # plaintext mode
        assert (tmp_path / "id" / "key.pem").stat().st_mode & 0o777 == 0o600

        again = NodeIdentity(opts)  # a restart: the certificate on disk is still good
        assert again.obtain(timeout=10).serial_number == cert.serial_number
        assert again.renewals == 0
        (tmp_path / "id" / "key.pem").write_bytes(key_pem(new_key()))  # not its key any more
        third = NodeIdentity(opts)
        assert third.obtain(timeout=10).serial_number != cert.serial_number
        assert third.renewals == 1

        wrong = NodeIdentity(IdentityOptions(
            node_id=NODE, spiffe_id=f"spiffe://{TRUST_DOMAIN}/ns/prod/admin",
            directory=str(tmp_path / "id2"), endpoints=[mk.address], token=token))
        with pytest.raises(IdentityError, match="PERMISSION_DENIED: the CSR asks for "
                                                "spiffe://example.org/ns/prod/admin"):
            wrong.obtain(timeout=1)
    finally:
        mk.stop()
