"""MeshKit's own TLS identity: a server SVID (`spiffe://<trust-domain>/meshkit`) its CA issues
to itself, and gRPC server credentials built from it that follow renewal and CA rotation.

gRPC asks `_fetch` before every new TLS handshake; it re-issues the certificate once half its
lifetime has passed and hands over the current trust bundle (the client CAs), so neither a
renewal nor a CA rotation needs a restart. The key is generated in memory and never written.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .authority import CertificateAuthority, Issued
from .svid import to_pem

log = logging.getLogger("meshkit.ca")


class ServerIdentity:
    def __init__(self, ca: CertificateAuthority, names: Sequence[str] = ()) -> None:
        self.ca = ca
        self.spiffe_id = f"spiffe://{ca.trust_domain}/meshkit"
        self.dns, self.ips = ["localhost"], ["127.0.0.1", "::1"]
        for name in names:
            try:
                ip = str(ipaddress.ip_address(name))
            except ValueError:
                if name and name not in self.dns:
                    self.dns.append(name)
            else:
                if ip not in self.ips and not ipaddress.ip_address(ip).is_unspecified:
                    self.ips.append(ip)
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._issued: Issued | None = None
        self._renew_at = 0.0
        self._bundle = b""
        self._served: dict[bool, tuple[bytes, bytes]] = {}  # per credentials object

    def _renew(self) -> None:
        issued = self.ca.issue_for_key(self._key.public_key(), self.spiffe_id,
                                       dns=self.dns, ips=self.ips)
        cert = issued.certificate
        start = self.ca.clock()
        self._renew_at = start + (cert.not_valid_after_utc.timestamp() - start) / 2
        self._issued = issued
        log.info("server certificate %s (serial %s) until %s", self.spiffe_id, issued.serial,
                 cert.not_valid_after_utc.isoformat())

    def current(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain PEM, key PEM, bundle PEM), renewed when due."""
        with self._lock:
            if self._issued is None or self.ca.clock() >= self._renew_at or \
                    self._issued.chain[1] != self.ca.active.cert:
                self._renew()
            assert self._issued is not None
            key = self._key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
            return to_pem(*self._issued.chain), key, self.ca.bundle_pem()

    def credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        def config() -> grpc.ServerCertificateConfiguration:
            chain, key, bundle = self.current()
            self._served[require_client_certificate] = (chain, bundle)
            return grpc.ssl_server_certificate_configuration([(key, chain)],
                                                             root_certificates=bundle)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            try:
                chain, _, bundle = self.current()
                if self._served.get(require_client_certificate) == (chain, bundle):
                    return None
                return config()
            except Exception:
                log.exception("cannot renew the server certificate; keeping the current one")
                return None

        return grpc.dynamic_ssl_server_credentials(
            config(), fetch, require_client_authentication=require_client_certificate)
