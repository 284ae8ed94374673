"""Certificate revocation lists for data-plane peers: one X.509 CRL per CA of the trust
bundle, signed by that CA, listing the serials it issued that are revoked and not expired.

Peers (OmniRelay listeners verifying client certificates, clusters verifying servers) load
the CRLs beside the bundle; OpenSSL then needs one CRL per CA a peer's certificate comes
from, so a CA without revocations still gets an (empty) CRL. A CRL is valid `validity`
seconds (its nextUpdate); `CertificateAuthority.crls` signs new ones when the revoked set or the bundle
changes and once half that time has passed, so a peer that refreshes regularly never holds
one past its nextUpdate.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .signer import Signer

DEFAULT_CRL_VALIDITY = 24 * 3600.0
# lastUpdate is backdated by this much: OpenSSL refuses a CRL "not yet valid", and a peer's
# clock may be behind MeshKit's (certificates are backdated the same way).
CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class Revoked:
    serial: str  # hex
    revoked_at: float  # Unix seconds
    not_after: float  # the certificate's; once past, the entry is dropped


@dataclass(frozen=True)
class CrlSet:
    """The CRLs of every CA of the bundle, as one PEM file's content."""

    pem: bytes
    this_update: float
    next_update: float
    key: tuple  # what they were built from (authorities and revoked serials)


def build_crl(ca_cert: x509.Certificate, signer: Signer, revoked: Iterable[Revoked], *,
              now: float, validity: float) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_utc(now - CLOCK_SKEW))
        .next_update(_utc(now + validity))
        # Increasing across replicas as well (RFC 5280 5.2.3): the signing time in ms.
        .add_extension(x509.CRLNumber(int(now * 1000)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer.public_key()), critical=False)
    )
    for entry in sorted(revoked, key=lambda r: r.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(entry.serial, 16))
            .revocation_date(_utc(entry.revoked_at)).build())
    return builder.sign(signer.as_private_key(), signer.hash_algorithm())


def build_set(authorities: Iterable[tuple[str, x509.Certificate, Signer]],
              revoked: Mapping[str, list[Revoked]], *, now: float,
              validity: float) -> CrlSet:
    """One CRL per (id, CA certificate, signer), with the entries `revoked` holds for that
    id, concatenated in PEM."""
    pem = b""
    key = []
    for ca_id, cert, signer in authorities:
        entries = revoked.get(ca_id, [])
        crl = build_crl(cert, signer, entries, now=now, validity=validity)
        pem += crl.public_bytes(serialization.Encoding.PEM)
        key.append((ca_id, tuple(sorted(e.serial for e in entries))))
    return CrlSet(pem, now, now + validity, tuple(key))


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
