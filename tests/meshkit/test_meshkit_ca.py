"""MeshKit's CA: SVID issuance for a node's CSR (checked against its registration), refusals
with reasons, revocation, expiry, CA rotation with bundle overlap (certificates of the old and
the new CA both verify meanwhile), an external-signer key store; then the same over gRPC and
`omnirctl ca` against a real `meshkit serve --ca-dir` process."""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import stat

import grpc
import pytest
from caharness import TRUST_DOMAIN, CaMeshKit, key_pem, make_csr, new_key
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from mkharness import omnirctl

from meshkit.ca import CaError, CertificateAuthority, KeyStore, SoftwareKeyStore, SoftwareSigner
from meshkit.ca.signer import ECDSA_P256, Signer
from meshkit.store import SqliteStore
from omnirelay.config.protos import ca_pb2

NODE = "edge-1"
SID = f"spiffe://{TRUST_DOMAIN}/ns/prod/edge-1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def authority(tmp_path):
    store = SqliteStore(tmp_path / "ca.db")
    clock = Clock()
    ca = CertificateAuthority(store, SoftwareKeyStore(tmp_path / "keys"), TRUST_DOMAIN,
                              default_ttl=3600, clock=clock)
    ca.test_clock = clock  # type: ignore[attr-defined]
    try:
        yield ca
    finally:
        asyncio.run(store.close())


def verify_client(cert: x509.Certificate, bundle: list[x509.Certificate], at: float) -> list:
    """Chain verification as a TLS server does it for a client certificate (cryptography's
    RFC 5280 verifier): returns the verified chain, raises VerificationError."""
    verifier = (verification.PolicyBuilder().store(verification.Store(bundle))
                .time(datetime.datetime.fromtimestamp(at, datetime.UTC))
                .build_client_verifier())
    return verifier.verify(cert, []).chain


async def _register_and_sign(ca: CertificateAuthority, node=NODE, sid=SID, ttl=None):
    token = await ca.register_node(node, sid, actor="test")
    spiffe_id = await ca.authenticate(node, token=token)
    key = new_key()
    issued = await ca.sign_csr(node, make_csr(key, sid), spiffe_id=spiffe_id,
                               actor=f"node:{node}", ttl=ttl)
    return token, key, issued


async def test_issue_an_svid_for_a_registered_node(authority, tmp_path):
    ca = authority
    with pytest.raises(CaError, match="not initialized"):
        ca.active  # noqa: B018
    await ca.init(actor="test")
    key_files = list((tmp_path / "keys").glob("*.key"))
    assert len(key_files) == 1 and stat.S_IMODE(key_files[0].stat().st_mode) == 0o600

    _, key, issued = await _register_and_sign(ca)
    cert = issued.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SID]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc.timestamp() - ca.test_clock.now
    assert 3590 <= lifetime <= 3600
    chain = verify_client(cert, ca.bundle(), ca.test_clock.now)
    assert chain[-1] == ca.active.cert
    # The issuance is recorded (and audited) in the store.
    [record] = await ca.issued()
    assert record["serial"] == issued.serial and record["node_id"] == NODE
    audit = await ca.store.audit_log()
    assert [e.action for e in audit if e.action.startswith("ca-")] == [
        "ca-authority", "ca-node", "ca-issued"]
    # Another process on the same store sees the same CA.
    other = CertificateAuthority(ca.store, SoftwareKeyStore(tmp_path / "keys"), TRUST_DOMAIN)
    assert await other.load() and other.bundle() == ca.bundle()
    with pytest.raises(CaError, match="initialized already"):
        await other.init(actor="test")


async def test_refusals_say_why(authority):
    ca = authority
    await ca.init(actor="test")
    token = await ca.register_node(NODE, SID, actor="test")
    key = new_key()

    with pytest.raises(CaError, match="asks for spiffe://example.org/ns/prod/admin, but node "
                                      "'edge-1' is registered as") as info:
        await ca.sign_csr(NODE, make_csr(key, f"spiffe://{TRUST_DOMAIN}/ns/prod/admin"),
                          spiffe_id=SID, actor="t")
    assert info.value.code == "denied"
    with pytest.raises(CaError, match="exactly one URI SAN, this one has 2"):
        await ca.sign_csr(NODE, make_csr(key, SID, "spiffe://example.org/other"),
                          spiffe_id=SID, actor="t")
    with pytest.raises(CaError, match="exactly one URI SAN, this one has 0"):
        await ca.sign_csr(NODE, make_csr(key, dns=("edge.example.org",)), spiffe_id=SID,
                          actor="t")
    with pytest.raises(CaError, match="not a PEM certificate signing request"):
        await ca.sign_csr(NODE, b"garbage", spiffe_id=SID, actor="t")
    # A CSR whose signature does not match its public key (tampered in transit).
    csr = x509.load_pem_x509_csr(make_csr(key, SID))
    tampered = bytearray(csr.public_bytes(serialization.Encoding.DER))
    tampered[-5] ^= 0xFF
    tampered_pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(
        serialization.Encoding.PEM)
    with pytest.raises(CaError, match="signature does not verify"):
        await ca.sign_csr(NODE, tampered_pem, spiffe_id=SID, actor="t")
    with pytest.raises(CaError, match="unsupported curve"):
        await ca.sign_csr(NODE, make_csr(ec.generate_private_key(ec.SECP521R1()), SID),
                          spiffe_id=SID, actor="t")

    with pytest.raises(CaError, match="bootstrap token is wrong"):
        await ca.authenticate(NODE, token=token + "x")
    with pytest.raises(CaError, match="not registered"):
        await ca.authenticate("ghost", token=token)
    with pytest.raises(CaError, match="neither a bootstrap token nor a client certificate"):
        await ca.authenticate(NODE)
    with pytest.raises(CaError, match="not in the trust domain 'example.org'"):
        await ca.register_node("n2", "spiffe://other.org/x", actor="t")
    with pytest.raises(CaError, match="invalid SPIFFE ID"):
        await ca.register_node("n2", "https://example.org/x", actor="t")
    with pytest.raises(CaError, match="registered as .* already"):
        await ca.register_node(NODE, SID, actor="t")
    new_token = await ca.register_node(NODE, SID, actor="t", rotate_token=True)
    assert await ca.authenticate(NODE, token=new_token) == SID
    with pytest.raises(CaError, match="bootstrap token is wrong"):
        await ca.authenticate(NODE, token=token)  # the old token no longer works


async def test_renewal_by_certificate_refuses_revoked_expired_and_foreign(authority, tmp_path):
    ca = authority
    await ca.init(actor="test")
    _, _, issued = await _register_and_sign(ca, ttl=600)
    cert = issued.certificate
    assert await ca.authenticate(NODE, peer=cert) == SID  # renewal with the current SVID

    # A certificate for another registered node does not authenticate this one.
    _, _, other = await _register_and_sign(ca, node="edge-2", sid=f"{SID}-2")
    with pytest.raises(CaError, match="is for spiffe://example.org/ns/prod/edge-1-2, not"):
        await ca.authenticate(NODE, peer=other.certificate)

    # Expired: the clock moves past its end.
    ca.test_clock.now += 601
    with pytest.raises(CaError, match="outside its validity period"):
        await ca.authenticate(NODE, peer=cert)
    ca.test_clock.now -= 601

    # Another CA's certificate (same SPIFFE ID) is refused.
    store2 = SqliteStore(tmp_path / "other.db")
    try:
        foreign_ca = CertificateAuthority(store2, SoftwareKeyStore(tmp_path / "k2"), TRUST_DOMAIN)
        await foreign_ca.init(actor="t")
        foreign = foreign_ca.issue_for_key(new_key().public_key(), SID)
    finally:
        await store2.close()
    with pytest.raises(CaError, match="not issued by this CA"):
        await ca.authenticate(NODE, peer=foreign.certificate)

    # Revoked.
    await ca.revoke(issued.serial, actor="ops", reason="key compromise")
    with pytest.raises(CaError, match=f"serial {issued.serial}\\) is revoked"):
        await ca.authenticate(NODE, peer=cert)
    assert set(await ca.revoked()) == {issued.serial}
    listed = {r["serial"]: r for r in await ca.issued()}
    assert listed[issued.serial]["revoked"] and listed[issued.serial]["revoke_reason"] == \
        "key compromise"
    with pytest.raises(CaError, match="no certificate with serial ffff"):
        await ca.revoke("ffff", actor="ops")


async def test_rotation_keeps_the_old_ca_in_the_bundle_until_the_overlap_ends(authority):
    ca = authority
    first = await ca.init(actor="test")
    replica = CertificateAuthority(ca.store, ca.keys, TRUST_DOMAIN, clock=ca.test_clock)
    await replica.load()  # another MeshKit replica on the same store
    _, _, old = await _register_and_sign(ca, ttl=3600)
    second = await ca.rotate(actor="test", overlap=7200, prepare=0)
    assert ca.active.id == second.id != first.id
    _, _, new = await _register_and_sign(ca, node="edge-2", sid=f"{SID}-2", ttl=3600)
    assert new.certificate.issuer == second.cert.subject
    assert old.certificate.issuer == first.cert.subject

    # During the overlap both CAs are in the bundle and both certificates verify.
    now = ca.test_clock.now
    assert ca.bundle() == [second.cert, first.cert]
    assert verify_client(old.certificate, ca.bundle(), now)[-1] == first.cert
    assert verify_client(new.certificate, ca.bundle(), now)[-1] == second.cert
    assert await ca.authenticate(NODE, peer=old.certificate) == SID  # renewal across rotation
    # The replica follows the rotation at its next authentication, and issues from the new CA.
    assert replica.active.id == first.id
    assert await replica.authenticate(NODE, peer=old.certificate) == SID
    assert replica.bundle() == [second.cert, first.cert]
    assert replica.issue_for_key(new_key().public_key(), SID).certificate.issuer == \
        second.cert.subject

    # After the overlap only the new CA is trusted.
    ca.test_clock.now += 7201
    assert ca.bundle() == [second.cert]
    with pytest.raises(verification.VerificationError):
        verify_client(old.certificate, ca.bundle(), now)

    # By default a new CA is first only trusted (the bundle reaches every node with its next
    # renewal, within half a lifetime), then signs; the overlap is never shorter than the
    # certificate lifetime (3600 s here).
    third = await ca.rotate(actor="test", overlap=1)
    assert third.active_from - ca.test_clock.now == 1800
    assert ca.active.id == second.id and ca.pending.id == third.id
    assert ca.bundle() == [third.cert, second.cert]
    _, _, during = await _register_and_sign(ca, node="edge-3", sid=f"{SID}-3")
    assert during.certificate.issuer == second.cert.subject
    with pytest.raises(CaError, match="a rotation is under way"):
        await ca.rotate(actor="test")
    retired = next(a for a in ca.authorities if a.id == second.id)
    assert retired.overlap_until - third.active_from == 3600
    ca.test_clock.now += 1800
    assert ca.active.id == third.id and ca.pending is None
    assert ca.issue_for_key(new_key().public_key(), SID).certificate.issuer == third.cert.subject
    assert verify_client(during.certificate, ca.bundle(), ca.test_clock.now)
    ca.test_clock.now += 3601
    assert ca.bundle() == [third.cert]


class ExternalKeyStore(KeyStore):
    """What an HSM adapter implements: keys created and used by reference, the private key
    never handed to the CA (here it lives in this object's dict, the "device")."""

    def __init__(self) -> None:
        self.device: dict[str, SoftwareSigner] = {}
        self.signatures = 0

    def create(self, ref: str, algorithm: str = ECDSA_P256) -> Signer:
        self.device[ref] = SoftwareSigner.generate(algorithm)
        return self.load(ref)

    def load(self, ref: str) -> Signer:
        store = self

        class DeviceSigner(Signer):
            algorithm = ECDSA_P256

            def public_key(self):
                return store.device[ref].public_key()

            def sign(self, data: bytes) -> bytes:
                store.signatures += 1
                return store.device[ref].sign(data)

        return DeviceSigner()


async def test_an_external_signer_issues_through_the_signer_interface(tmp_path):
    store = SqliteStore(tmp_path / "hsm.db")
    keys = ExternalKeyStore()
    try:
        ca = CertificateAuthority(store, keys, TRUST_DOMAIN)
        await ca.init(actor="test")
        _, _, issued = await _register_and_sign(ca)
        assert keys.signatures == 2  # the CA certificate, then the SVID
        assert verify_client(issued.certificate, ca.bundle(), Clock()())
        with pytest.raises(Exception, match="does not leave its signer"):
            ca.active.signer.as_private_key().private_numbers()
    finally:
        await store.close()


# -- over gRPC and omnirctl, against a real meshkit serve --ca-dir process ----------------------


@pytest.fixture(scope="module")
def ca_meshkit(tmp_path_factory):
    server = CaMeshKit(tmp_path_factory.mktemp("camk"), svid_ttl="1h").start()
    try:
        yield server
    finally:
        server.stop()


def test_omnirctl_ca_and_grpc_sign(ca_meshkit):
    mk = ca_meshkit
    r = omnirctl(mk, "ca", "status", token="read")
    assert r.returncode == 0 and "no CA yet" in r.stdout, r.stderr
    with pytest.raises(grpc.RpcError) as info:
        mk.sign(ca_pb2.SignRequest(node_id=NODE, csr_pem=make_csr(new_key(), SID)), token="x")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not registered

    r = omnirctl(mk, "ca", "init", token="read")
    assert r.returncode == 4 and "read-only" in r.stderr
    r = omnirctl(mk, "ca", "init")
    assert r.returncode == 0 and "active" in r.stdout, r.stderr
    assert mk.bundle_file.is_file()
    r = omnirctl(mk, "ca", "register-node", NODE, SID)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("mk_") and token not in (mk.db_path.read_bytes().decode("latin-1"))

    # A node signs with its bootstrap token.
    key = new_key()
    reply = mk.sign(ca_pb2.SignRequest(node_id=NODE, csr_pem=make_csr(key, SID)), token=token)
    chain = x509.load_pem_x509_certificates(reply.certificate_pem)
    assert len(chain) == 2 and reply.spiffe_id == SID
    assert 3500 < reply.not_after_unix - reply.not_before_unix <= 3660
    bundle = x509.load_pem_x509_certificates(reply.bundle_pem)
    assert verify_client(chain[0], bundle, Clock()())

    # The wrong SPIFFE ID is refused, with the reason.
    with pytest.raises(grpc.RpcError) as info:
        mk.sign(ca_pb2.SignRequest(node_id=NODE, csr_pem=make_csr(
            key, f"spiffe://{TRUST_DOMAIN}/ns/prod/admin")), token=token)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "registered as" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        mk.sign(ca_pb2.SignRequest(node_id=NODE, csr_pem=b"nope"), token=token)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # omnirctl: bundle, list, revoke, issue.
    r = omnirctl(mk, "ca", "bundle", token="read")
    assert r.returncode == 0 and r.stdout.encode() == mk.bundle_file.read_bytes()
    r = omnirctl(mk, "ca", "list", "--json", token="read")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"node_id": NODE, "spiffe_id": SID} in rows
    assert any(row.get("serial") == reply.serial and not row["revoked"] for row in rows)
    r = omnirctl(mk, "ca", "revoke", reply.serial, "--reason", "test")
    assert r.returncode == 0 and SID in r.stdout, r.stderr
    r = omnirctl(mk, "ca", "list", token="read")
    assert "REVOKED (test)" in r.stdout
    r = omnirctl(mk, "ca", "revoke", "abc123")
    assert r.returncode == 6 and "no certificate with serial abc123" in r.stderr

    csr_file = mk.workdir / "workload.csr"
    csr_file.write_bytes(make_csr(new_key(), f"spiffe://{TRUST_DOMAIN}/workload/batch"))
    out = mk.workdir / "workload.pem"
    r = omnirctl(mk, "ca", "issue", "--csr", str(csr_file), "--spiffe-id",
                 f"spiffe://{TRUST_DOMAIN}/workload/batch", "--ttl", "10m", "-o", str(out))
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificates(out.read_bytes())[0]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(minutes=11)
    r = omnirctl(mk, "ca", "issue", "--csr", str(csr_file), "--spiffe-id",
                 "spiffe://other.org/x")
    assert r.returncode == 1 and "not in the trust domain" in r.stderr

    # Rotation through omnirctl: the status shows both CAs, the bundle file both too.
    r = omnirctl(mk, "ca", "rotate", "--overlap", "2h")
    assert r.returncode == 0 and "pending (in the bundle), signs from" in r.stdout, r.stderr
    r = omnirctl(mk, "ca", "rotate", "--prepare", "0s")
    assert r.returncode == 1 and "a rotation is under way" in r.stderr
    assert len(x509.load_pem_x509_certificates(mk.bundle_file.read_bytes())) == 2
    audit = [e.action for e in mk.audit()]
    assert {"ca-authority", "ca-node", "ca-issued", "ca-revoked", "ca-refused"} <= set(audit)



# -- CRLs, pruning, concurrent init ------------------------------------------------------------


def _crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    blocks = pem.split(b"-----END X509 CRL-----")
    return [x509.load_pem_x509_crl(b + b"-----END X509 CRL-----\n") for b in blocks if b.strip()]


async def test_crls_one_per_ca_signed_anew_on_revocation_rotation_and_half_life(authority,
                                                                                tmp_path):
    ca = authority
    ca.crl_file = tmp_path / "crl.pem"
    ca.crl_validity = 1400  # half of it: past the 600 s certificate, within the 1200 s one
    first = await ca.init(actor="test")
    _, _, a = await _register_and_sign(ca, ttl=600)
    _, _, b = await _register_and_sign(ca, node="edge-2", sid=f"{SID}-2", ttl=1200)
    empty = await ca.crls()
    [crl] = _crls(empty.pem)
    assert crl.issuer == first.cert.subject and len(crl) == 0
    assert crl.is_signature_valid(first.cert.public_key())
    assert crl.next_update_utc.timestamp() == pytest.approx(ca.test_clock.now + ca.crl_validity)
    # Backdated like certificates: a peer whose clock is a little behind still accepts it.
    assert crl.last_update_utc.timestamp() == pytest.approx(ca.test_clock.now - 60, abs=1)
    assert await ca.crls() is empty  # unchanged: not signed again

    await ca.revoke(a.serial, actor="ops", reason="lost")  # writes crl.pem too
    await ca.revoke(b.serial, actor="ops")
    revoked = await ca.crls()
    [crl] = _crls(revoked.pem)
    assert {r.serial_number for r in crl} == {a.certificate.serial_number,
                                             b.certificate.serial_number}
    assert crl.get_revoked_certificate_by_serial_number(a.certificate.serial_number)
    assert ca.crl_file.read_bytes() == revoked.pem
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    # Past half its validity a CRL is signed again, with a higher number; an expired revoked
    # certificate (a, 600 s) leaves it.
    ca.test_clock.now += ca.crl_validity / 2 + 1
    later = await ca.crls()
    [crl] = _crls(later.pem)
    assert later is not revoked
    assert {r.serial_number for r in crl} == {b.certificate.serial_number}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    ca.test_clock.now -= ca.crl_validity / 2 + 1

    # During a rotation: one CRL per CA of the bundle, each signed by its CA.
    second = await ca.rotate(actor="test", prepare=60)
    crls = _crls((await ca.crls()).pem)
    assert [c.issuer for c in crls] == [second.cert.subject, first.cert.subject]
    assert crls[0].is_signature_valid(second.cert.public_key()) and len(crls[0]) == 0
    assert crls[1].is_signature_valid(first.cert.public_key()) and len(crls[1]) == 2


async def test_prune_deletes_records_expired_past_the_retention(authority):
    ca = authority
    await ca.init(actor="test")
    _, _, short = await _register_and_sign(ca, ttl=100)
    _, _, revoked = await _register_and_sign(ca, node="edge-2", sid=f"{SID}-2", ttl=200)
    _, _, long = await _register_and_sign(ca, node="edge-3", sid=f"{SID}-3", ttl=3600)
    await ca.revoke(revoked.serial, actor="ops")
    assert await ca.prune(retention=50, actor="meshkit") == 0  # nothing expired yet

    ca.test_clock.now += 160  # `short` expired 60 s ago (> 50), `revoked` not yet
    assert await ca.prune(retention=50, actor="meshkit") == 1
    records = {r["serial"] for r in await ca.issued(include_expired=True)}
    assert records == {revoked.serial, long.serial}
    assert revoked.serial in {s for s, _ in await ca.store.ca_list("revoked")}

    ca.test_clock.now += 100  # the revoked one expired 60 s ago: record and CRL entry go
    assert await ca.prune(retention=50, actor="meshkit") == 1
    assert {r["serial"] for r in await ca.issued(include_expired=True)} == {long.serial}
    assert await ca.store.ca_list("revoked") == []
    assert len(_crls((await ca.crls()).pem)[0]) == 0
    deleted = [e for e in await ca.store.audit_log() if e.action.endswith("-deleted")]
    assert sorted((e.action, e.scope) for e in deleted) == sorted([
        ("ca-issued-deleted", f"ca/issued/{short.serial}"),
        ("ca-issued-deleted", f"ca/issued/{revoked.serial}"),
        ("ca-revoked-deleted", f"ca/revoked/{revoked.serial}")])
    assert all("past the retention of 50s" in e.detail for e in deleted)


async def test_concurrent_init_on_etcd_makes_one_ca(etcd, tmp_path):
    import uuid

    from meshkit.store.etcd import EtcdStore

    prefix = f"/ca-init/{uuid.uuid4().hex}"
    keys = SoftwareKeyStore(tmp_path / "keys")  # replicas share the CA key files
    stores = [EtcdStore([etcd.endpoint], prefix), EtcdStore([etcd.endpoint], prefix)]
    try:
        replicas = [CertificateAuthority(s, keys, TRUST_DOMAIN) for s in stores]
        # Both read "no CA" before either writes (the same as `ca init` on two replicas).
        results = await asyncio.gather(*(r.init(actor=f"r{i}") for i, r in enumerate(replicas)),
                                       return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1, results
        # The loser got as far as its own key and lost the create-if-absent write.
        assert isinstance(lost[0], CaError) and "by another replica" in str(lost[0])
        assert [p.name for p in (tmp_path / "keys").iterdir()] == [f"{won[0].key_ref}.key"]
        assert [a.id for a in replicas[0].authorities] == [a.id for a in replicas[1].authorities]
        assert replicas[0].active.id == won[0].id
        # And starting two `--mtls` replicas at once (exist_ok): one CA, both serve it.
        prefix2 = f"{prefix}-serve"
        more = [CertificateAuthority(EtcdStore([etcd.endpoint], prefix2), keys, TRUST_DOMAIN)
                for _ in range(2)]
        stores += [r.store for r in more]
        ids = await asyncio.gather(*(r.init(actor="meshkit", exist_ok=True) for r in more))
        assert ids[0].id == ids[1].id and more[0].active.id == more[1].active.id
        assert more[1].issue_for_key(new_key().public_key(), SID).chain[1] == ids[0].cert
        assert len(await more[0].store.ca_list("authority")) == 1
        cas = [e for e in await more[0].store.audit_log() if e.action == "ca-authority"]
        assert len(cas) == 1
    finally:
        for s in stores:
            await s.close()


def test_omnirctl_client_certificate_on_the_mtls_port_and_ca_crl(tmp_path, monkeypatch):
    mk = CaMeshKit(tmp_path, mtls=True).start()
    try:
        bundle = str(mk.bundle_file)
        # An operator certificate from MeshKit's CA (issued over the bootstrap port).
        key = new_key()
        (tmp_path / "op.key").write_bytes(key_pem(key))
        (tmp_path / "op.csr").write_bytes(make_csr(key, f"spiffe://{TRUST_DOMAIN}/ops/alice"))
        boot = ("--server", mk.bootstrap, "--cacert", bundle)
        r = omnirctl(mk, *boot, "ca", "issue", "--csr", str(tmp_path / "op.csr"),
                     "--spiffe-id", f"spiffe://{TRUST_DOMAIN}/ops/alice",
                     "-o", str(tmp_path / "op.pem"))
        assert r.returncode == 0, r.stderr

        # The mTLS port (mk.address): served with the client certificate ...
        r = omnirctl(mk, "--cacert", bundle, "--cert", str(tmp_path / "op.pem"),
                     "--key", str(tmp_path / "op.key"), "ca", "status", token="read")
        assert r.returncode == 0 and "active" in r.stdout, r.stderr
        # ... also given by environment variables, for any command (config, audit) ...
        monkeypatch.setenv("OMNIRCTL_CACERT", bundle)
        monkeypatch.setenv("OMNIRCTL_CERT", str(tmp_path / "op.pem"))
        monkeypatch.setenv("OMNIRCTL_KEY", str(tmp_path / "op.key"))
        r = omnirctl(mk, "audit", "tail", "--limit", "5", token="read")
        assert r.returncode == 0 and "ca-issued" in r.stdout, r.stderr
        # ... refused without one (the handshake fails: MeshKit unreachable, exit 5).
        monkeypatch.delenv("OMNIRCTL_CERT")
        monkeypatch.delenv("OMNIRCTL_KEY")
        r = omnirctl(mk, "--timeout", "3", "ca", "status", token="read")
        assert r.returncode == 5, (r.stdout, r.stderr)
        r = omnirctl(mk, "--cert", str(tmp_path / "op.pem"), "ca", "status", token="read")
        assert r.returncode == 2 and "--cert and --key go together" in r.stderr

        # `ca crl`: one CRL for the one CA, the revoked serial in it after `ca revoke`.
        out = tmp_path / "crl.pem"
        r = omnirctl(mk, *boot, "ca", "crl", "-o", str(out), token="read")
        assert r.returncode == 0 and "0 revoked" in r.stderr, r.stderr
        [crl] = _crls(out.read_bytes())
        assert len(crl) == 0
        serial = x509.load_pem_x509_certificates((tmp_path / "op.pem").read_bytes())[0]
        r = omnirctl(mk, *boot, "ca", "revoke", f"{serial.serial_number:x}", "--reason", "left")
        assert r.returncode == 0, r.stderr
        r = omnirctl(mk, *boot, "ca", "crl", "-o", str(out), token="read")
        [crl] = _crls(out.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial.serial_number) is not None
        assert (mk.ca_dir / "crl.pem").read_bytes() == out.read_bytes()  # kept beside bundle
        bundle_certs = x509.load_pem_x509_certificates(mk.bundle_file.read_bytes())
        assert crl.is_signature_valid(bundle_certs[0].public_key())
    finally:
        mk.stop()


async def test_maintenance_refreshes_the_crl_file_and_prunes_only_when_leading(authority,
                                                                               tmp_path):
    from meshkit.server.ca_service import maintain

    ca = authority
    ca.crl_file = tmp_path / "crl.pem"
    await ca.init(actor="test")
    _, _, old = await _register_and_sign(ca, ttl=100)
    ca.test_clock.now += 200  # expired 100 s ago
    leading = False
    task = asyncio.create_task(maintain(ca, leading=lambda: leading, actor="meshkit",
                                        retention=10, interval=0.02))
    try:
        for _ in range(500):  # a round ran: the CRL file is there
            if ca.crl_file.exists():
                break
            await asyncio.sleep(0.01)
        # The round that wrote it asked leading() right after, without yielding: a follower's
        # round prunes nothing.
        assert ca.crl_file.exists()
        assert [r["serial"] for r in await ca.issued(include_expired=True)] == [old.serial]
        assert "ca-prune" not in [e.action for e in await ca.store.audit_log()]
        leading = True
        for _ in range(500):
            if not await ca.issued(include_expired=True):
                break
            await asyncio.sleep(0.01)
        assert await ca.issued(include_expired=True) == []
        actions = [e.action for e in await ca.store.audit_log()]
        assert "ca-issued-deleted" in actions and "ca-prune" in actions
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
async def test_store_create_if_absent_and_delete(backend, request, tmp_path):
    if backend == "etcd":
        import uuid

        from meshkit.store.etcd import EtcdStore

        store = EtcdStore([request.getfixturevalue("etcd").endpoint],
                          f"/ca-store/{uuid.uuid4().hex}")
    else:
        store = SqliteStore(tmp_path / "s.db")
    try:
        assert await store.ca_create("issued", "ab", b"1", actor="a", detail="first")
        assert not await store.ca_create("issued", "ab", b"2", actor="b", detail="second")
        assert await store.ca_get("issued", "ab") == b"1"
        assert await store.ca_delete("issued", "ab", actor="c", detail="gone")
        assert not await store.ca_delete("issued", "ab", actor="d")
        assert await store.ca_get("issued", "ab") is None
        audit = [(e.actor, e.action, e.scope, e.detail) for e in await store.audit_log()]
        assert audit == [("a", "ca-issued", "ca/issued/ab", "first"),
                         ("c", "ca-issued-deleted", "ca/issued/ab", "gone")]
    finally:
        await store.close()
