"""The control-plane channels over mTLS (`meshkit serve --mtls`): the node port refuses a
caller without a client certificate (plaintext, or TLS without one), the bootstrap port
serves first certificates for bootstrap tokens but refuses the node services to a caller
without an SVID, a node's SVID opens the config watch, renewal works by certificate alone,
and a revoked SVID is refused."""
from __future__ import annotations

import socket
import ssl

import grpc
import pytest
from caharness import TRUST_DOMAIN, CaMeshKit, key_pem, make_csr, new_key
from cryptography import x509
from mkharness import WatchClient, document

from omnirelay.config.protos import ca_pb2, ca_pb2_grpc, mesh_pb2, mesh_pb2_grpc

NODE = "edge-7"
SID = f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-7"


@pytest.fixture(scope="module")
def meshkit(tmp_path_factory):
    server = CaMeshKit(tmp_path_factory.mktemp("mtls"), svid_ttl="1h", mtls=True).start()
    try:
        yield server
    finally:
        server.stop()


def _mtls(mk: CaMeshKit, key, chain: bytes, address: str | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(mk.bundle_file.read_bytes(), key_pem(key), chain)
    return grpc.secure_channel(address or mk.address, creds)


def _watch_error(channel: grpc.Channel, node: str = NODE) -> grpc.RpcError:
    stream = WatchClient(channel, mesh_pb2.Node(id=node))
    try:
        with pytest.raises(grpc.RpcError) as info:
            stream.next()
        return info.value
    finally:
        stream.close()


def _bootstrap(mk: CaMeshKit, node=NODE, sid=SID):
    token = mk.ca_admin("RegisterNode", ca_pb2.RegisterNodeRequest(
        node_id=node, spiffe_id=sid)).bootstrap_token
    key = new_key()
    reply = mk.sign(ca_pb2.SignRequest(node_id=node, csr_pem=make_csr(key, sid)), token=token)
    return key, reply


def test_node_port_requires_a_client_certificate(meshkit):
    mk = meshkit
    mk.publish(document("m1"), scope=f"node/{NODE}")
    with grpc.insecure_channel(mk.address) as plaintext:
        assert _watch_error(plaintext).code() == grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(mk.bundle_file.read_bytes())
    with grpc.secure_channel(mk.address, creds) as no_cert:
        assert _watch_error(no_cert).code() == grpc.StatusCode.UNAVAILABLE
    # The bootstrap port takes callers without a certificate, but not for the node services.
    with grpc.secure_channel(mk.bootstrap, creds) as bootstrap:
        error = _watch_error(bootstrap)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate (the node's SVID) is required" in error.details()

    # With its SVID the node watches its config.
    key, reply = _bootstrap(mk)
    with _mtls(mk, key, reply.certificate_pem) as channel:
        stream = WatchClient(channel, mesh_pb2.Node(id=NODE))
        try:
            snapshot = stream.snapshot()
            assert snapshot.version == "m1"
        finally:
            stream.close()

    # MeshKit's own server certificate is an SVID of the same CA.
    san = _server_certificate(mk).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TRUST_DOMAIN}/meshkit"]


def test_renewal_by_certificate_and_revocation(meshkit):
    mk = meshkit
    node, sid = "edge-8", f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-8"
    key, reply = _bootstrap(mk, node, sid)

    # Renewal over mTLS with the current SVID, no token.
    new = new_key()
    with _mtls(mk, key, reply.certificate_pem) as channel:
        renewed = mk.sign(ca_pb2.SignRequest(node_id=node, csr_pem=make_csr(new, sid)),
                          channel=channel)
        assert renewed.spiffe_id == sid and renewed.serial != reply.serial
        # Its certificate does not let it act as another node.
        with pytest.raises(grpc.RpcError) as info:
            mk.sign(ca_pb2.SignRequest(node_id=NODE, csr_pem=make_csr(new, SID)),
                    channel=channel)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"is for {sid}, not {SID}" in info.value.details()
        error = _watch_error(channel, NODE)  # nor watch another node's config
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"is for {sid}, not {SID}" in error.details()
        mk.publish(document("m8"), scope=f"node/{node}")
        stream = WatchClient(channel, mesh_pb2.Node(id=node))  # as itself it may
        try:
            assert stream.snapshot().version == "m8"
        finally:
            stream.close()

    # Revoked: the node services and renewal refuse it.
    mk.ca_admin("Revoke", ca_pb2.RevokeRequest(serial=renewed.serial, reason="test"))
    with _mtls(mk, new, renewed.certificate_pem) as channel:
        error = _watch_error(channel, node)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "is revoked" in error.details()
        with pytest.raises(grpc.RpcError) as info:
            mk.sign(ca_pb2.SignRequest(node_id=node, csr_pem=make_csr(new_key(), sid)),
                    channel=channel)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = mesh_pb2_grpc.NodeStatusStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            status.Report(mesh_pb2.StatusReport(node=mesh_pb2.Node(id=node)), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The bundle lists the revoked serial for relying parties.
    bundle = ca_pb2_grpc.CertificateAuthorityStub(mk.channel).GetBundle(
        ca_pb2.GetBundleRequest(), timeout=5)
    assert renewed.serial in bundle.revoked_serials and reply.serial not in bundle.revoked_serials
    assert bundle.bundle_pem == mk.bundle_file.read_bytes()


def _server_certificate(mk: CaMeshKit) -> x509.Certificate:
    ctx = ssl.create_default_context(cadata=mk.bundle_file.read_text())
    ctx.check_hostname = False
    host, port = mk.bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_ca_rotation_under_mtls(meshkit):
    """Runs last in this module: it rotates the shared MeshKit's CA."""
    mk = meshkit
    node, sid = "edge-9", f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-9"
    key, before = _bootstrap(mk, node, sid)
    old_issuer = x509.load_pem_x509_certificates(before.certificate_pem)[0].issuer
    assert _server_certificate(mk).issuer == old_issuer

    status = mk.ca_admin("Rotate", ca_pb2.CaRotateRequest(prepare_seconds=0))
    [new_ca] = [a for a in status.authorities if a.active]
    assert len(x509.load_pem_x509_certificates(mk.bundle_file.read_bytes())) == 2
    # MeshKit's own certificate moves to the new CA at the next handshake, no restart.
    assert _server_certificate(mk).issuer.rfc4514_string() == new_ca.subject
    # During the overlap the old SVID still opens the node services and renews, and the
    # renewed one comes from the new CA.
    mk.publish(document("m9"), scope=f"node/{node}")
    with _mtls(mk, key, before.certificate_pem) as channel:
        stream = WatchClient(channel, mesh_pb2.Node(id=node))
        try:
            assert stream.snapshot().version == "m9"
        finally:
            stream.close()
        renewed = mk.sign(ca_pb2.SignRequest(node_id=node, csr_pem=make_csr(new_key(), sid)),
                          channel=channel)
    leaf = x509.load_pem_x509_certificates(renewed.certificate_pem)[0]
    assert leaf.issuer.rfc4514_string() == new_ca.subject
    assert len(x509.load_pem_x509_certificates(renewed.bundle_pem)) == 2
