"""SPIFFE X.509-SVID helpers: reading the SPIFFE ID out of a certificate or a CSR, checking
one, and PEM in and out."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from omnirelay.config.checks import spiffe_id as _check_spiffe_id


def check_spiffe_id(value: str, trust_domain: str | None = None) -> str:
    """`value` if it is a SPIFFE ID (in `trust_domain`, when given); ValueError says why."""
    text = _check_spiffe_id(value)
    if trust_domain is not None and trust_domain_of(text) != trust_domain:
        raise ValueError(f"{text!r} is not in the trust domain {trust_domain!r}")
    return text


def trust_domain_of(spiffe_id: str) -> str:
    return spiffe_id.partition("://")[2].partition("/")[0]


def check_trust_domain(value: str) -> str:
    """`value` if it is a SPIFFE trust domain (a lowercase DNS name, no port)."""
    try:
        check_spiffe_id(f"spiffe://{value}/x")
    except ValueError:
        raise ValueError(f"invalid trust domain {value!r}: use a lowercase DNS name such as "
                         "example.org (no scheme, port or path)") from None
    return value


def uri_sans(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    try:
        san = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(obj: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The one SPIFFE URI SAN; ValueError when there is none or more than one URI SAN."""
    uris = uri_sans(obj)
    if len(uris) != 1:
        raise ValueError(f"an X.509-SVID has exactly one URI SAN, this one has {len(uris)}")
    return check_spiffe_id(uris[0])


def serial_hex(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"


def to_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
