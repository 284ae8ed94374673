"""`CertificateAuthority`: MeshKit's CA, issuing short-lived X.509-SVIDs to registered nodes.

State lives in the store (kind "authority": the CA certificates and their key references;
"node": which node id may hold which SPIFFE ID, with the SHA-256 of its bootstrap token;
"issued" and "revoked": one record per serial), keys in a `KeyStore` (files by default, an
HSM through an adapter). One CA is active and signs; after `rotate()` the previous one stays
in the trust bundle until its overlap ends, so certificates from both verify meanwhile.
Every CA of the bundle publishes a CRL of its revoked certificates (crl.py). `prune()`
deletes the records of certificates expired longer than a retention period ago.

A CSR is signed only if its signature is valid, it carries exactly one URI SAN, and that SAN
is the SPIFFE ID registered for the authenticated node; everything else in the CSR (subject,
extensions) is ignored: the CA sets the certificate's contents itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..api.auth import new_token, token_digest
from ..store import Store
from .crl import DEFAULT_CRL_VALIDITY, CrlSet, Revoked, build_set
from .signer import ECDSA_P256, KeyStore, Signer, SignerError
from .svid import check_spiffe_id, check_trust_domain, serial_hex, spiffe_id_of, to_pem

log = logging.getLogger("meshkit.ca")

DEFAULT_TTL = 24 * 3600.0
CA_VALIDITY = 365 * 24 * 3600.0
CLOCK_SKEW = 60.0  # certificates start this long before issuance (peers' clocks differ)
MIN_TTL = 1.0
DEFAULT_RETENTION = 7 * 24 * 3600.0  # expired certificates' records are kept this long
_STATE = ("authority", "state")

# CaError codes, mapped to gRPC statuses by the service.
UNAUTHENTICATED = "unauthenticated"
DENIED = "denied"
INVALID = "invalid"
NOT_INITIALIZED = "not_initialized"
NOT_FOUND = "not_found"


class CaError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Authority:
    id: str
    key_ref: str
    cert: x509.Certificate
    signer: Signer | None  # loaded when it is (or is about to be) the one that signs
    active_from: float = 0.0  # signs from then on (after a rotation's prepare phase)
    overlap_until: float | None = None  # set once superseded: in the bundle until then


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the leaf, then its issuer
    bundle: tuple[x509.Certificate, ...]
    spiffe_id: str

    @property
    def serial(self) -> str:
        return serial_hex(self.certificate)


class CertificateAuthority:
    def __init__(self, store: Store, keys: KeyStore, trust_domain: str, *,
                 default_ttl: float = DEFAULT_TTL, max_ttl: float | None = None,
                 algorithm: str = ECDSA_P256, clock: Callable[[], float] = time.time,
                 bundle_file: str | os.PathLike[str] | None = None,
                 crl_file: str | os.PathLike[str] | None = None,
                 crl_validity: float = DEFAULT_CRL_VALIDITY) -> None:
        self.store = store
        self.keys = keys
        self.trust_domain = check_trust_domain(trust_domain)
        self.default_ttl = default_ttl
        self.max_ttl = max(max_ttl or default_ttl, default_ttl)
        self.algorithm = algorithm
        self.clock = clock
        self.authorities: list[Authority] = []  # the active one first
        self.bundle_file = bundle_file  # kept up to date for operators (omnirctl --cacert)
        self.crl_file = crl_file  # the CRLs, kept up to date like the bundle
        self.crl_validity = crl_validity
        self._loaded: bytes | None = None  # the state record as last read
        self._crls: CrlSet | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return bool(self.authorities)

    @property
    def active(self) -> Authority:
        """The CA that signs now: the newest whose `active_from` has come."""
        if not self.authorities:
            raise CaError(NOT_INITIALIZED, "the CA is not initialized: run `omnirctl ca init`")
        now = self.clock()
        started = [a for a in self.authorities if a.active_from <= now] or self.authorities
        authority = max(started, key=lambda a: a.active_from)
        if authority.signer is None:
            try:
                authority.signer = self.keys.load(authority.key_ref)
            except SignerError as exc:
                raise CaError(INVALID, f"the active CA {authority.id}: {exc}") from None
        return authority

    @property
    def pending(self) -> Authority | None:
        """A CA from a rotation still in its prepare phase (in the bundle, not signing yet)."""
        now = self.clock()
        return next((a for a in self.authorities if a.active_from > now), None)

    async def load(self) -> bool:
        """Read the CA state from the store (and its keys, when it changed); False when there
        is none yet. Cheap when unchanged: every issuance calls it, so a rotation by another
        replica sharing the store is followed."""
        raw = await self.store.ca_get(*_STATE)
        if raw is None:
            self.authorities = []
            return False
        if raw == self._loaded:
            return True
        state = json.loads(raw)
        if state["trust_domain"] != self.trust_domain:
            raise CaError(INVALID, f"the store's CA is for trust domain {state['trust_domain']!r}"
                                   f", not {self.trust_domain!r}")
        self.authorities = [
            Authority(entry["id"], entry["key_ref"],
                      x509.load_pem_x509_certificate(entry["cert"].encode()), None,
                      entry.get("active_from", 0.0), entry["overlap_until"])
            for entry in state["authorities"]]
        self._loaded = raw
        self.active  # noqa: B018 - load the signing key now: a missing key is an error here
        return True

    def _state(self, authorities: Sequence[Authority]) -> bytes:
        return json.dumps({"trust_domain": self.trust_domain, "authorities": [
            {"id": a.id, "key_ref": a.key_ref, "cert": to_pem(a.cert).decode(),
             "active_from": a.active_from, "overlap_until": a.overlap_until}
            for a in authorities]}).encode()

    async def _save(self, actor: str, detail: str) -> None:
        raw = self._state(self.authorities)
        await self.store.ca_put(*_STATE, raw, actor=actor, detail=detail)
        self._loaded = raw
        self.write_bundle()

    def write_bundle(self) -> None:
        if self.bundle_file is not None and self.authorities:
            _replace(Path(self.bundle_file), self.bundle_pem(), "the trust bundle")

    async def write_crl(self) -> None:
        """Refresh the CRL file (when one is configured) if the CRLs changed."""
        if self.crl_file is None or not self.authorities:
            return
        before = self._crls
        crls = await self.crls()
        path = Path(self.crl_file)
        if crls is not before or not path.exists():
            _replace(path, crls.pem, "the CRL file")

    def _new_authority(self) -> Authority:
        now = self.clock()
        ca_id = f"ca-{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        signer = self.keys.create(ca_id, self.algorithm)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"MeshKit CA {ca_id}"),
        ])
        public = signer.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW)).not_valid_after(_utc(now + CA_VALIDITY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(signer.as_private_key(), signer.hash_algorithm())
        )
        return Authority(ca_id, ca_id, cert, signer)

    async def init(self, *, actor: str, exist_ok: bool = False) -> Authority:
        """Create the first CA; CaError if there is one already (unless `exist_ok`: then the
        existing one). Replicas sharing a store may race here: the state record is created
        only if absent, so exactly one CA results and the others load it."""
        if await self.load():
            if exist_ok:
                return self.active
            raise CaError(INVALID, f"the CA is initialized already (active {self.active.id}); "
                                   "use `omnirctl ca rotate` for a new key")
        try:
            authority = self._new_authority()
        except SignerError as exc:
            raise CaError(INVALID, str(exc)) from None
        raw = self._state([authority])
        if not await self.store.ca_create(*_STATE, raw, actor=actor,
                                          detail=f"init {authority.id} for {self.trust_domain}"):
            # Another replica created the CA first: its CA is the one, ours is discarded.
            log.info("CA init: another replica created the CA first; discarding %s",
                     authority.id)
            try:
                self.keys.discard(authority.key_ref)
            except (OSError, SignerError) as exc:
                log.warning("cannot delete the unused CA key %s: %s", authority.key_ref, exc)
            await self.load()
            if exist_ok:
                return self.active
            raise CaError(INVALID, f"the CA is initialized already (active {self.active.id}, "
                                   "by another replica); use `omnirctl ca rotate` for a new key")
        self.authorities = [authority]
        self._loaded = raw
        self.write_bundle()
        log.info("CA %s created for trust domain %s", authority.id, self.trust_domain)
        return authority

    async def rotate(self, *, actor: str, overlap: float | None = None,
                     prepare: float | None = None) -> Authority:
        """A new CA. It enters the bundle now and signs after `prepare` seconds (default half
        the longest SVID lifetime: every node renews, and so fetches the new bundle, before
        any peer shows it a certificate of the new CA). The previous CA stays in the bundle
        until `overlap` seconds after that (at least the longest SVID lifetime, so every
        certificate it issued expires first)."""
        await self.load()
        if (pending := self.pending) is not None:
            raise CaError(INVALID, f"a rotation is under way: {pending.id} signs from "
                                   f"{_utc(pending.active_from):%Y-%m-%dT%H:%M:%SZ}")
        previous = self.active
        now = self.clock()
        prepare = self.max_ttl / 2 if prepare is None else max(prepare, 0.0)
        overlap = max(overlap or 0.0, self.max_ttl)
        try:
            authority = self._new_authority()
        except SignerError as exc:
            raise CaError(INVALID, str(exc)) from None
        authority.active_from = now + prepare
        previous.overlap_until = authority.active_from + overlap
        self.authorities = [authority] + [a for a in self.authorities
                                          if a.overlap_until is not None and a.overlap_until > now]
        await self._save(actor, f"rotate {previous.id} -> {authority.id}: signs in "
                                f"{prepare:g}s, the old one trusted {overlap:g}s longer")
        log.info("CA rotation: %s enters the bundle and signs in %gs; %s stays trusted until "
                 "%gs after that", authority.id, prepare, previous.id, overlap)
        return authority

    def bundle(self) -> list[x509.Certificate]:
        """What to trust now: the newest CA first (pending during a rotation's prepare
        phase), then the active one and retired ones whose overlap has not ended."""
        now = self.clock()
        return [a.cert for a in self.authorities
                if a.overlap_until is None or a.overlap_until > now]

    def bundle_pem(self) -> bytes:
        return to_pem(*self.bundle())

    # -- nodes -------------------------------------------------------------------------------

    async def register_node(self, node_id: str, spiffe_id: str, *, actor: str,
                            rotate_token: bool = False) -> str:
        """Allow `node_id` to hold `spiffe_id`; returns its bootstrap token (kept only as a
        digest). Re-registering a node with another SPIFFE ID or `rotate_token` replaces the
        token; re-registering unchanged is refused (the token cannot be shown again)."""
        if not node_id or len(node_id) > 253 or any(c.isspace() for c in node_id):
            raise CaError(INVALID, f"bad node id {node_id!r}")
        try:
            spiffe_id = check_spiffe_id(spiffe_id, self.trust_domain)
        except ValueError as exc:
            raise CaError(INVALID, str(exc)) from None
        existing = await self.registration(node_id)
        if existing is not None and existing["spiffe_id"] == spiffe_id and not rotate_token:
            raise CaError(INVALID, f"node {node_id!r} is registered as {spiffe_id} already "
                                   "(give --rotate-token for a new bootstrap token)")
        token = new_token()
        record = {"spiffe_id": spiffe_id, "token_sha256": token_digest(token),
                  "registered_at": self.clock()}
        await self.store.ca_put("node", node_id, json.dumps(record).encode(), actor=actor,
                                detail=f"{node_id} -> {spiffe_id}")
        return token

    async def registration(self, node_id: str) -> dict | None:
        raw = await self.store.ca_get("node", node_id)
        return None if raw is None else json.loads(raw)

    async def nodes(self) -> list[tuple[str, str]]:
        return [(name, json.loads(raw)["spiffe_id"]) for name, raw in await self.store.ca_list("node")]

    async def authenticate(self, node_id: str, *, token: str | None = None,
                           peer: x509.Certificate | None = None) -> str:
        """The SPIFFE ID `node_id` is registered for, if the caller proves to be that node by
        its bootstrap token or by its current SVID (verified here: our CA, in validity, not
        revoked, the registered SPIFFE ID). CaError otherwise."""
        await self.load()  # another replica may have rotated the CA (a read, parsed on change)
        record = await self.registration(node_id)
        if record is None:
            raise CaError(UNAUTHENTICATED, f"node {node_id!r} is not registered with the CA "
                                           "(omnirctl ca register-node)")
        spiffe_id = record["spiffe_id"]
        if token is not None and secrets.compare_digest(token_digest(token),
                                                        record["token_sha256"]):
            return spiffe_id
        if peer is not None:
            problem = await self.check_peer(peer)
            if problem is None and spiffe_id_of(peer) == spiffe_id:
                return spiffe_id
            if problem is None:
                problem = f"its certificate is for {spiffe_id_of(peer)}, not {spiffe_id}"
            raise CaError(UNAUTHENTICATED, f"node {node_id!r}: {problem}")
        why = "the bootstrap token is wrong" if token is not None else \
            "neither a bootstrap token nor a client certificate was presented"
        raise CaError(UNAUTHENTICATED, f"node {node_id!r}: {why}")

    async def check_peer(self, cert: x509.Certificate) -> str | None:
        """Why `cert` is not a current SVID of this CA, or None."""
        now = _utc(self.clock())
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "its certificate is outside its validity period"
        if not any(_issued_by(cert, ca) for ca in self.bundle()):
            return "its certificate is not issued by this CA"
        try:
            spiffe_id_of(cert)
        except ValueError as exc:
            return str(exc)
        revoked = await self.store.ca_get("revoked", serial_hex(cert))
        if revoked is not None:
            return f"its certificate (serial {serial_hex(cert)}) is revoked"
        return None

    # -- issuance ----------------------------------------------------------------------------

    async def sign_csr(self, node_id: str, csr_pem: bytes, *, spiffe_id: str, actor: str,
                       ttl: float | None = None) -> Issued:
        """Issue an SVID for an authenticated node's CSR (see the module docstring)."""
        csr = _load_csr(csr_pem)
        try:
            requested = spiffe_id_of(csr)
        except ValueError as exc:
            raise CaError(INVALID, f"the CSR: {exc}") from None
        if requested != spiffe_id:
            raise CaError(DENIED, f"the CSR asks for {requested}, but node {node_id!r} is "
                                  f"registered as {spiffe_id}")
        return await self._issue(csr.public_key(), spiffe_id, ttl, actor=actor, node_id=node_id)

    async def issue(self, csr_pem: bytes, spiffe_id: str, *, actor: str,
                    ttl: float | None = None) -> Issued:
        """An operator's issuance: any SPIFFE ID of the trust domain, matching the CSR."""
        try:
            spiffe_id = check_spiffe_id(spiffe_id, self.trust_domain)
        except ValueError as exc:
            raise CaError(INVALID, str(exc)) from None
        await self.load()
        return await self.sign_csr("", csr_pem, spiffe_id=spiffe_id, actor=actor, ttl=ttl)

    async def _issue(self, public_key, spiffe_id: str, ttl: float | None, *, actor: str,
                     node_id: str = "", dns: Sequence[str] = (),
                     ips: Sequence[str] = ()) -> Issued:
        issued = self.issue_for_key(public_key, spiffe_id, ttl, dns=dns, ips=ips)
        cert = issued.certificate
        record = {"spiffe_id": spiffe_id, "node_id": node_id, "authority": self.active.id,
                  "not_before": cert.not_valid_before_utc.timestamp(),
                  "not_after": cert.not_valid_after_utc.timestamp(), "actor": actor}
        await self.store.ca_put("issued", issued.serial, json.dumps(record).encode(),
                                actor=actor, detail=f"{spiffe_id} until "
                                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
        return issued

    def issue_for_key(self, public_key, spiffe_id: str, ttl: float | None = None, *,
                      dns: Sequence[str] = (), ips: Sequence[str] = ()) -> Issued:
        """Sign an SVID for `public_key` (not recorded: MeshKit's own server certificate)."""
        authority = self.active
        assert authority.signer is not None  # `active` loads it
        _check_public_key(public_key)
        ttl = self.default_ttl if not ttl else min(max(ttl, MIN_TTL), self.max_ttl)
        now = self.clock()
        # Backdated for peers' clock skew, by less for very short lifetimes (renewal at half
        # life must stay about half of what was asked for).
        not_before = max(_utc(now - min(CLOCK_SKEW, ttl / 4)),
                         authority.cert.not_valid_before_utc)
        not_after = min(_utc(now + ttl), authority.cert.not_valid_after_utc)
        if not_after <= _utc(now):
            raise CaError(INVALID, f"the active CA {authority.id} has expired: rotate it")
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(authority.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(rsa_key=isinstance(public_key, rsa.RSAPublicKey)),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            # No subject: the SAN carries the identity and must then be critical (RFC 5280).
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.signer.public_key()), critical=False)
            .sign(authority.signer.as_private_key(), authority.signer.hash_algorithm())
        )
        return Issued(cert, (cert, authority.cert), tuple(self.bundle()), spiffe_id)

    # -- revocation --------------------------------------------------------------------------

    async def revoke(self, serial: str, *, actor: str, reason: str = "") -> dict:
        serial = serial.lower().removeprefix("0x")
        raw = await self.store.ca_get("issued", serial)
        if raw is None:
            raise CaError(NOT_FOUND, f"no certificate with serial {serial} was issued here")
        record = json.loads(raw)
        entry = {"reason": reason, "at": self.clock(), "not_after": record["not_after"],
                 "authority": record.get("authority", "")}
        await self.store.ca_put("revoked", serial, json.dumps(entry).encode(), actor=actor,
                                detail=f"{record['spiffe_id']}: {reason or 'no reason given'}")
        log.info("certificate %s (%s) revoked by %s", serial, record["spiffe_id"], actor)
        await self.write_crl()
        return record

    async def crls(self) -> CrlSet:
        """A CRL per CA of the bundle (crl.py), signed anew when the bundle or the revoked
        set changed, or half of the CRLs' validity has passed."""
        await self.load()
        if not self.authorities:
            raise CaError(NOT_INITIALIZED, "the CA is not initialized: run `omnirctl ca init`")
        now = self.clock()
        bundle = [a for a in self.authorities if a.cert in self.bundle()]
        by_authority: dict[str, list[Revoked]] = {}
        for serial, entry in (await self.revoked()).items():
            ca_id = entry.get("authority") or await self._issuer_of(serial)
            by_authority.setdefault(ca_id, []).append(
                Revoked(serial, entry["at"], entry["not_after"]))
        key = tuple((a.id, tuple(sorted(r.serial for r in by_authority.get(a.id, []))))
                    for a in bundle)
        cached = self._crls
        if cached is not None and cached.key == key and \
                now < cached.this_update + (cached.next_update - cached.this_update) / 2:
            return cached
        signers = []
        for a in bundle:
            try:
                signers.append((a.id, a.cert, a.signer or self.keys.load(a.key_ref)))
            except SignerError as exc:
                raise CaError(INVALID, f"the CRL of CA {a.id}: {exc}") from None
        self._crls = build_set(signers, by_authority, now=now, validity=self.crl_validity)
        log.info("CRLs signed for %d CAs (%d revoked certificates), valid until %s",
                 len(signers), sum(len(v) for v in by_authority.values()),
                 f"{_utc(self._crls.next_update):%Y-%m-%dT%H:%M:%SZ}")
        return self._crls

    async def _issuer_of(self, serial: str) -> str:
        raw = await self.store.ca_get("issued", serial)
        return json.loads(raw).get("authority", "") if raw is not None else ""

    async def prune(self, *, retention: float = DEFAULT_RETENTION, actor: str) -> int:
        """Delete the issued and revoked records of certificates that expired more than
        `retention` seconds ago (each deletion audited); returns how many certificates.
        A revoked certificate leaves the CRL when it expires (a peer refuses it anyway), so
        its record is no longer needed then either."""
        cutoff = self.clock() - retention
        pruned = 0
        for kind in ("revoked", "issued"):
            for serial, raw in await self.store.ca_list(kind):
                try:
                    not_after = float(json.loads(raw)["not_after"])
                except (ValueError, KeyError, TypeError):
                    log.warning("CA record %s/%s is not readable; left as is", kind, serial)
                    continue
                if not_after < cutoff and await self.store.ca_delete(
                        kind, serial, actor=actor,
                        detail=f"expired {_utc(not_after):%Y-%m-%dT%H:%M:%SZ}, past the "
                               f"retention of {retention:g}s"):
                    pruned += kind == "issued"
        if pruned:
            log.info("pruned the records of %d certificates expired before %s", pruned,
                     f"{_utc(cutoff):%Y-%m-%dT%H:%M:%SZ}")
        return pruned

    async def revoked(self) -> dict[str, dict]:
        """Revoked serials of certificates that have not expired yet."""
        now = self.clock()
        out = {}
        for serial, raw in await self.store.ca_list("revoked"):
            entry = json.loads(raw)
            if entry["not_after"] > now:
                out[serial] = entry
        return out

    async def issued(self, *, include_expired: bool = False) -> list[dict]:
        now = self.clock()
        revoked = {s: json.loads(r) for s, r in await self.store.ca_list("revoked")}
        out = []
        for serial, raw in await self.store.ca_list("issued"):
            record = json.loads(raw)
            if record["not_after"] <= now and not include_expired:
                continue
            record["serial"] = serial
            record["revoked"] = serial in revoked
            record["revoke_reason"] = revoked.get(serial, {}).get("reason", "")
            out.append(record)
        out.sort(key=lambda r: r["not_before"])
        return out


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _replace(path: Path, data: bytes, what: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write %s %s: %s", what, path, exc)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_usage(*, ca: bool = False, rsa_key: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(bytes(csr_pem))
    except ValueError as exc:
        raise CaError(INVALID, f"not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise CaError(INVALID, "the CSR's signature does not verify with its public key")
    return csr


def _check_public_key(key) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CaError(INVALID, f"unsupported curve {key.curve.name} (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CaError(INVALID, f"RSA key of {key.key_size} bits is too small (2048 or more)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CaError(INVALID, f"unsupported key type {type(key).__name__}")
