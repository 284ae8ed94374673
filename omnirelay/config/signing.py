"""Signed config documents: Ed25519 detached signatures over canonical JSON, with key ids.

Shared by both planes. MeshKit signs with a `Signer` (one active private key); a node verifies
with a `Keyring` (its trust bundle: public keys by key id, each valid from `not_before` to
`not_after`). What is signed is exactly the document bytes (`canonical_json` of the normalized
config), so anyone holding the bytes, the signature and the public key can check it with any
Ed25519 implementation. The SHA-256 of the document travels beside it; `Keyring.verify`
checks it first so a corrupted or swapped document is reported as such.

Rotation: `Keyring.rotate(new_key, overlap)` adds the new key and gives every other key still
valid an end `overlap` seconds from now. During the overlap, documents signed by either key
verify (nodes that have not yet been re-sent a snapshot keep working); after it, the old key is
refused as expired. Every refusal is a `VerificationError` whose `reason` says why, with the
same codes a node sends back in a NACK (`ErrorDetail.code` in protos/mesh.proto).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import canonical_json

ALGORITHM = "ed25519"
SIGNATURE_SIZE = 64

# VerificationError.reason values (also the NACK codes of a refused snapshot).
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
EXPIRED_KEY = "expired_key"
NOT_YET_VALID = "key_not_yet_valid"
HASH_MISMATCH = "hash_mismatch"
UNSUPPORTED_ALGORITHM = "unsupported_algorithm"


class VerificationError(Exception):
    """A document that must not be used. `reason` is one of the codes above; the message says
    which key, which times or which digests were involved."""

    def __init__(self, reason: str, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_id = key_id

    def __reduce__(self):
        return (type(self), (self.reason, str(self), self.key_id))


def document_digest(document: bytes) -> str:
    """Lowercase hex SHA-256 of the document bytes."""
    return hashlib.sha256(document).hexdigest()


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The default key id: `ed25519-` and 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALGORITHM}-{hashlib.sha256(raw).hexdigest()[:16]}"


def format_time(timestamp: float | None) -> str | None:
    """RFC 3339 UTC (`2024-05-01T12:00:00Z`, microseconds when not whole), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A document with its detached signature; what a snapshot carries."""

    document: bytes
    sha256: str
    key_id: str
    signature: bytes
    algorithm: str = ALGORITHM


class Signer:
    """One Ed25519 private key and its key id."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"an Ed25519 private key is required, got {type(private_key).__name__}")
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id or key_id_for(self.public_key)
        _check_key_id(self.key_id)

    @classmethod
    def generate(cls, key_id: str | None = None) -> Signer:
        return cls(Ed25519PrivateKey.generate(), key_id)

    @classmethod
    def from_pem(cls, data: bytes, key_id: str | None = None) -> Signer:
        """A signer from an unencrypted PKCS#8 PEM private key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(  # noqa: TRY004 - a bad key file, like any other unreadable one
                f"the key is {type(key).__name__}, not Ed25519"
            )
        return cls(key, key_id)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key_id: str | None = None) -> Signer:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read signing key: {exc.strerror or exc}") from None
        try:
            return cls.from_pem(data, key_id)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def private_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key as PEM, readable by the owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.private_pem())

    def sign(self, document: bytes) -> SignedDocument:
        """Sign `document` as given (it should already be canonical JSON)."""
        document = bytes(document)
        return SignedDocument(
            document=document,
            sha256=document_digest(document),
            key_id=self.key_id,
            signature=self._private_key.sign(document),
        )

    def sign_config(self, config: Any) -> SignedDocument:
        """Sign `canonical_json(config)`: a `Config` or JSON-compatible data."""
        return self.sign(canonical_json(config))

    def trusted_key(
        self, *, not_before: float | None = None, not_after: float | None = None
    ) -> TrustedKey:
        """The public half, as a trust-bundle entry."""
        return TrustedKey(self.key_id, self.public_key, not_before, not_after)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key a node accepts signatures from, between `not_before` and `not_after`
    (Unix seconds; None = unbounded)."""

    key_id: str
    public_key: Ed25519PublicKey = field(compare=False)
    not_before: float | None = None
    not_after: float | None = None

    def __post_init__(self) -> None:
        _check_key_id(self.key_id)
        if not isinstance(self.public_key, Ed25519PublicKey):
            raise TypeError("an Ed25519 public key is required")
        if (
            self.not_before is not None
            and self.not_after is not None
            and self.not_after <= self.not_before
        ):
            raise ValueError(f"key {self.key_id!r}: not_after must be later than not_before")

    @property
    def raw(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def valid_at(self, now: float) -> bool:
        return self.problem_at(now) is None

    def problem_at(self, now: float) -> VerificationError | None:
        if self.not_before is not None and now < self.not_before:
            return VerificationError(
                NOT_YET_VALID,
                f"key {self.key_id!r} is not valid before {format_time(self.not_before)} "
                f"(now {format_time(now)})",
                self.key_id,
            )
        if self.not_after is not None and now >= self.not_after:
            return VerificationError(
                EXPIRED_KEY,
                f"key {self.key_id!r} expired at {format_time(self.not_after)} "
                f"(now {format_time(now)})",
                self.key_id,
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
            "public_key": base64.b64encode(self.raw).decode("ascii"),
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustedKey:
        unknown = set(data) - {"key_id", "algorithm", "public_key", "not_before", "not_after"}
        if unknown:
            raise ValueError(f"unknown trusted-key fields: {sorted(unknown)}")
        algorithm = data.get("algorithm", ALGORITHM)
        if algorithm != ALGORITHM:
            raise ValueError(f"key {data.get('key_id')!r}: unsupported algorithm {algorithm!r}")
        try:
            raw = base64.b64decode(data["public_key"], validate=True)
            public_key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"key {data.get('key_id')!r}: bad public_key: {exc}") from None
        return cls(
            key_id=data["key_id"],
            public_key=public_key,
            not_before=parse_time(data.get("not_before")),
            not_after=parse_time(data.get("not_after")),
        )


class Keyring:
    """Trusted public keys by key id: a node's trust bundle. Immutable: the rotation methods
    return a new keyring."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            existing = self._keys.get(key.key_id)
            if existing is not None and existing.raw != key.raw:
                raise ValueError(f"key id {key.key_id!r} names two different public keys")
            self._keys[key.key_id] = key

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring({sorted(self._keys)})"

    def get(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    def with_key(self, key: TrustedKey) -> Keyring:
        """A keyring that also trusts `key` (replacing an entry with the same id and key)."""
        return Keyring([*(k for k in self if k.key_id != key.key_id), key])

    def retire(self, key_id: str, at: float) -> Keyring:
        """A keyring in which `key_id` stops being valid at `at` (Unix seconds)."""
        key = self._keys.get(key_id)
        if key is None:
            raise KeyError(f"no key {key_id!r} in the keyring")
        return self.with_key(replace(key, not_after=at))

    def rotate(self, new_key: TrustedKey, overlap: float, now: float | None = None) -> Keyring:
        """Trust `new_key` and end every other key valid now `overlap` seconds from now
        (keys that already end sooner keep their end)."""
        if overlap < 0:
            raise ValueError("overlap must be >= 0")
        now = time.time() if now is None else now
        end = now + overlap
        keys = []
        for key in self:
            if key.key_id == new_key.key_id:
                continue
            if key.valid_at(now) and (key.not_after is None or key.not_after > end):
                key = replace(key, not_after=end)
            keys.append(key)
        return Keyring([*keys, new_key])

    def prune(self, now: float | None = None) -> Keyring:
        """A keyring without the keys that have expired."""
        now = time.time() if now is None else now
        return Keyring(k for k in self if k.not_after is None or now < k.not_after)

    def verify(
        self,
        document: bytes,
        signature: bytes,
        key_id: str,
        *,
        sha256: str | None = None,
        algorithm: str = ALGORITHM,
        now: float | None = None,
    ) -> TrustedKey:
        """The key that validly signed `document`; VerificationError otherwise.

        Checked in this order: the stated `sha256` against the document, the algorithm, the
        key id, the key's validity period at `now` (default: the current time), the signature.
        """
        document = bytes(document)
        if sha256 is not None:
            actual = document_digest(document)
            if actual != sha256.lower():
                raise VerificationError(
                    HASH_MISMATCH,
                    f"document SHA-256 is {actual}, but {sha256} was stated: "
                    "the document was altered or truncated",
                    key_id,
                )
        if algorithm != ALGORITHM:
            raise VerificationError(
                UNSUPPORTED_ALGORITHM, f"signature algorithm {algorithm!r} is not {ALGORITHM}",
                key_id,
            )
        key = self._keys.get(key_id)
        if key is None:
            known = ", ".join(sorted(self._keys)) or "none"
            raise VerificationError(
                UNKNOWN_KEY, f"key id {key_id!r} is not in the trust bundle (known: {known})",
                key_id,
            )
        problem = key.problem_at(time.time() if now is None else now)
        if problem is not None:
            raise problem
        if len(signature) != SIGNATURE_SIZE:
            raise VerificationError(
                BAD_SIGNATURE,
                f"signature by {key_id!r} is {len(signature)} bytes, not {SIGNATURE_SIZE}",
                key_id,
            )
        try:
            key.public_key.verify(bytes(signature), document)
        except InvalidSignature:
            raise VerificationError(
                BAD_SIGNATURE,
                f"signature does not match the document for key {key_id!r}",
                key_id,
            ) from None
        return key

    def verify_signed(self, signed: SignedDocument, *, now: float | None = None) -> TrustedKey:
        return self.verify(
            signed.document,
            signed.signature,
            signed.key_id,
            sha256=signed.sha256,
            algorithm=signed.algorithm,
            now=now,
        )

    # -- trust bundle files -------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The trust bundle as canonical JSON: `{"keys": [TrustedKey.to_dict(), ...]}`."""
        keys = sorted(self, key=lambda k: k.key_id)
        return canonical_json({"keys": [k.to_dict() for k in keys]})

    @classmethod
    def from_json(cls, data: bytes | str) -> Keyring:
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"trust bundle is not JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(  # noqa: TRY004 - a bad file, like any other unreadable one
                'a trust bundle is a JSON object {"keys": [...]}'
            )
        return cls(TrustedKey.from_dict(item) for item in document["keys"])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read trust bundle: {exc.strerror or exc}") from None
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bundle atomically (a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self.to_json() + b"\n")
        os.replace(tmp, path)


def _check_key_id(key_id: object) -> None:
    if (
        not isinstance(key_id, str)
        or not key_id
        or len(key_id) > 128
        or not key_id.isascii()
        or not key_id.isprintable()
        or " " in key_id
    ):
        raise ValueError(f"key id must be 1-128 printable ASCII characters without spaces: {key_id!r}")
