"""MeshKit's certificate authority: X.509-SVIDs for registered nodes (see authority.py)."""

from .authority import DEFAULT_TTL, CaError, CertificateAuthority, Issued
from .signer import KeyStore, Signer, SignerError, SoftwareKeyStore, SoftwareSigner

__all__ = ["DEFAULT_TTL", "CaError", "CertificateAuthority", "Issued", "KeyStore", "Signer",
           "SignerError", "SoftwareKeyStore", "SoftwareSigner"]
