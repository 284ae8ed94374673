"""A `meshkit serve` process with its CA enabled (optionally mTLS), and CSR helpers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mkharness import HOST, IO_TIMEOUT, START_TIMEOUT, MeshKitProcess, _env, _readline

from omnirelay.config.protos import ca_pb2_grpc

TRUST_DOMAIN = "example.org"


class CaMeshKit(MeshKitProcess):
    """MeshKit with `--ca-dir`; with `mtls`, `address` is the mTLS port and `bootstrap` the
    server-only TLS port, which `channel` (admin calls) uses."""

    def __init__(self, workdir: Path, *, svid_ttl: str = "24h", mtls: bool = False) -> None:
        super().__init__(workdir)
        self.svid_ttl = svid_ttl
        self.mtls = mtls
        self.ca_dir = workdir / "ca"
        self.bootstrap = ""

    def start(self) -> CaMeshKit:
        args = [sys.executable, "-m", "meshkit", "serve", "--db", str(self.db_path),
                "--signing-key", str(self.key_path), "--tokens-file", str(self.tokens_path),
                "--listen", f"{HOST}:0", "--log-level", "debug", "--ca-dir", str(self.ca_dir),
                "--trust-domain", TRUST_DOMAIN, "--svid-ttl", self.svid_ttl]
        if self.mtls:
            args += ["--mtls", "--bootstrap-listen", f"{HOST}:0"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=_env(),
                                         cwd=self.workdir)
        line = _readline(self.proc, START_TIMEOUT)
        if "listening on" not in line:
            self.kill()
            raise AssertionError(f"meshkit did not start: {line!r}\n{self.log()}")
        self.address = line.split("listening on ", 1)[1].split()[0]
        if self.mtls:
            self.bootstrap = line.split(" bootstrap ", 1)[1].split()[0]
        return self

    @property
    def bundle_file(self) -> Path:
        return self.ca_dir / "bundle.pem"

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if self.mtls:
                creds = grpc.ssl_channel_credentials(self.bundle_file.read_bytes())
                self._channel = grpc.secure_channel(self.bootstrap, creds)
            else:
                self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def ca_admin(self, method: str, request, token: str | None = "mutate"):
        token = {"mutate": self.mutate_token, "read": self.read_token}.get(token, token)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return getattr(ca_pb2_grpc.CaAdminStub(self.channel), method)(
            request, timeout=IO_TIMEOUT, metadata=metadata)

    def sign(self, request, token: str | None = None, channel: grpc.Channel | None = None):
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return ca_pb2_grpc.CertificateAuthorityStub(channel or self.channel).Sign(
            request, timeout=IO_TIMEOUT, metadata=metadata)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key, *uris: str, dns: tuple[str, ...] = ()) -> bytes:
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
