"""Who holds a CA's private key: the `Signer` interface and its software implementation.

A `Signer` signs bytes and shows its public key; the CA never sees the private key itself, so
an HSM or cloud-KMS adapter implements `Signer` (and `KeyStore`, which creates and finds keys
by reference) and nothing else changes. `SoftwareKeyStore` keeps ECDSA P-256 (default, what
every TLS stack accepts) or Ed25519 keys as PEM files of mode 0600 in one directory.
"""

from __future__ import annotations

import abc
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ECDSA_P256 = "ecdsa-p256"
ED25519 = "ed25519"
ALGORITHMS = (ECDSA_P256, ED25519)
_KEY_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class SignerError(Exception):
    """A key cannot be created, found or used."""


class Signer(abc.ABC):
    """A private key that signs on request (software, HSM, KMS)."""

    @property
    @abc.abstractmethod
    def algorithm(self) -> str:
        """ECDSA_P256 or ED25519."""

    @abc.abstractmethod
    def public_key(self) -> PublicKey: ...

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """The signature of `data`: DER ECDSA over SHA-256, or raw Ed25519."""

    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        """What certificate builders pass along with this key (None for Ed25519)."""
        return hashes.SHA256() if self.algorithm == ECDSA_P256 else None

    def as_private_key(self) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        """A `cryptography` private-key object whose `sign` calls this signer, for the X.509
        builders (they only ever call `sign` and `public_key`)."""
        if self.algorithm == ECDSA_P256:
            return _EcKey(self)
        return _Ed25519Key(self)


class KeyStore(abc.ABC):
    """Creates and finds CA keys by reference (a file name, an HSM label)."""

    @abc.abstractmethod
    def create(self, ref: str, algorithm: str = ECDSA_P256) -> Signer: ...

    @abc.abstractmethod
    def load(self, ref: str) -> Signer: ...

    def discard(self, ref: str) -> None:  # optional: an adapter may keep the key
        """Delete a key that was never used (a replica lost the race to create the CA)."""


class SoftwareSigner(Signer):
    def __init__(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise SignerError(f"unsupported curve {key.curve.name}: use P-256")
            self._algorithm = ECDSA_P256
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self._algorithm = ED25519
        else:
            raise SignerError(f"unsupported CA key type {type(key).__name__}")
        self._key = key

    @classmethod
    def generate(cls, algorithm: str = ECDSA_P256) -> SoftwareSigner:
        if algorithm == ECDSA_P256:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if algorithm == ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        raise SignerError(f"unknown key algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data)

    def pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())


class SoftwareKeyStore(KeyStore):
    """Keys as `<directory>/<ref>.key` (PEM, mode 0600; the directory 0700 when created)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, ref: str) -> Path:
        if not _KEY_REF.match(ref):
            raise SignerError(f"bad key reference {ref!r}")
        return self.directory / f"{ref}.key"

    def create(self, ref: str, algorithm: str = ECDSA_P256) -> Signer:
        signer = SoftwareSigner.generate(algorithm)
        path = self.path(ref)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SignerError(f"{path}: a CA key with this reference exists already") from None
        except OSError as exc:
            raise SignerError(f"{path}: cannot create the CA key: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(signer.pem())
            f.flush()
            os.fsync(f.fileno())
        return signer

    def discard(self, ref: str) -> None:
        self.path(ref).unlink(missing_ok=True)

    def load(self, ref: str) -> Signer:
        path = self.path(ref)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignerError(f"{path}: cannot read the CA key: {exc.strerror or exc}") from None
        if path.stat().st_mode & 0o077:
            raise SignerError(f"{path}: the CA key is readable by others; chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError) as exc:
            raise SignerError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        return SoftwareSigner(key)  # type: ignore[arg-type]


class _EcKey(ec.EllipticCurvePrivateKey):
    """Adapter: what the X.509 builders need from a private key, backed by a Signer."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def sign(self, data, signature_algorithm):
        return self._signer.sign(bytes(data))

    def public_key(self):
        return self._signer.public_key()

    @property
    def curve(self):
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def exchange(self, algorithm, peer_public_key):
        raise SignerError("a CA key does not do key exchange")

    def private_numbers(self):
        raise SignerError("the CA key does not leave its signer")

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise SignerError("the CA key does not leave its signer")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class _Ed25519Key(ed25519.Ed25519PrivateKey):
    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def sign(self, data):
        return self._signer.sign(bytes(data))

    def public_key(self):
        return self._signer.public_key()

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise SignerError("the CA key does not leave its signer")

    def private_bytes_raw(self):
        raise SignerError("the CA key does not leave its signer")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self
