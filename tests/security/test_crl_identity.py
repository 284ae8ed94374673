"""Revocation end to end: MeshKit's CA revokes a peer's certificate, the node identity client
(`omnirelay run --identity`'s) fetches the new CRLs with the bundle and writes them next to
it, its update hook reloads the Relay, and the mTLS listener that points `client_crl_file` at
the identity directory refuses that peer from then on, without a restart."""
from __future__ import annotations

import asyncio
import ssl
import time

import pytest
from caharness import TRUST_DOMAIN, CaMeshKit, key_pem, make_csr, new_key
from cryptography import x509
from harness import HOST, Origin, make_config, read_response

import omnirelay
from omnirelay.config.protos import ca_pb2
from omnirelay.control.identity import IdentityOptions, NodeIdentity

NODE = "edge-1"
SID = f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-1"
PEER = f"spiffe://{TRUST_DOMAIN}/ns/prod/peer"


@pytest.fixture
def meshkit(tmp_path):
    (tmp_path / "mk").mkdir()
    server = CaMeshKit(tmp_path / "mk", svid_ttl="1h", mtls=True).start()
    try:
        yield server
    finally:
        server.stop()


def _crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    blocks = pem.split(b"-----END X509 CRL-----")
    return [x509.load_pem_x509_crl(b + b"-----END X509 CRL-----\n") for b in blocks if b.strip()]


@pytest.mark.async_timeout(60)
async def test_a_revocation_reaches_the_listener_through_the_identity_client(meshkit, tmp_path):
    mk = meshkit
    token = mk.ca_admin("RegisterNode", ca_pb2.RegisterNodeRequest(
        node_id=NODE, spiffe_id=SID)).bootstrap_token
    identity = NodeIdentity(IdentityOptions(
        node_id=NODE, spiffe_id=SID, directory=str(tmp_path / "id"), endpoints=[mk.address],
        bootstrap_endpoints=[mk.bootstrap], token=token, ca_bundle=str(mk.bundle_file),
        crl_interval=0.2))
    identity.obtain()
    ident = tmp_path / "id"
    [crl] = _crls((ident / "crl.pem").read_bytes())
    assert len(crl) == 0 and (ident / "bundle.pem").read_bytes() == mk.bundle_file.read_bytes()

    # A peer workload with a certificate of the same CA.
    key = new_key()
    issued = mk.ca_admin("Issue", ca_pb2.IssueRequest(csr_pem=make_csr(key, PEER),
                                                      spiffe_id=PEER))
    (tmp_path / "peer.pem").write_bytes(issued.certificate_pem)
    (tmp_path / "peer.key").write_bytes(key_pem(key))
    peer = ssl.create_default_context(cadata=mk.bundle_file.read_text())
    peer.check_hostname = False  # SPIFFE: the node's identity is its URI SAN
    peer.load_cert_chain(tmp_path / "peer.pem", tmp_path / "peer.key")

    async with Origin() as origin:
        cfg = make_config(origin.port, listener={"tls": {
            "cert_file": str(ident / "cert.pem"), "key_file": str(ident / "key.pem"),
            "alpn": ["http/1.1"], "client_ca_file": str(ident / "bundle.pem"),
            "require_client_certificate": True, "client_crl_file": str(ident / "crl.pem")}})
        async with omnirelay.Relay(cfg) as relay:
            loop = asyncio.get_running_loop()
            reloads: list[asyncio.Task] = []
            # What IdentityReload does for `omnirelay run`: rebuild the config from the files.
            identity.on_renewed = lambda: loop.call_soon_threadsafe(
                lambda: reloads.append(loop.create_task(relay.reload(cfg))))
            identity.start()
            try:
                async def served() -> bool:
                    try:
                        reader, writer = await asyncio.wait_for(asyncio.open_connection(
                            HOST, relay.address()[1], ssl=peer, server_hostname="localhost"), 5)
                    except (ssl.SSLError, ConnectionError):
                        return False
                    try:
                        writer.write(b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        return (await asyncio.wait_for(read_response(reader), 5)).status == 200
                    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
                        return False
                    finally:
                        writer.close()

                assert await served()
                await loop.run_in_executor(None, lambda: mk.ca_admin("Revoke", ca_pb2.RevokeRequest(
                    serial=issued.serial, reason="compromised")))
                deadline = time.monotonic() + 15
                while await served():
                    assert time.monotonic() < deadline, "the revoked peer is still served"
                    await asyncio.sleep(0.1)
                [crl] = _crls((ident / "crl.pem").read_bytes())
                assert crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16))
                assert identity.crl_updates >= 2 and reloads
                assert all(t.done() and t.exception() is None for t in reloads[:-1])
            finally:
                await loop.run_in_executor(None, identity.stop)
                await asyncio.gather(*reloads, return_exceptions=True)
