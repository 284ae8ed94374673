"""The last-known-good snapshot on disk.

One file, `<dir>/lkg.json`, written atomically (temp file, fsync, rename, fsync of the
directory) after every activation. It holds the signed document exactly as received (bytes,
SHA-256, key id, signature) and an `integrity` digest over all of it, so a truncated or edited
file is refused before anything is parsed; the signature is then verified again with the trust
bundle, as for a snapshot off the wire.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omnirelay.config.canonical import canonical_json
from omnirelay.config.signing import ALGORITHM, Keyring, SignedDocument, VerificationError

FILENAME = "lkg.json"
FORMAT = 1


class LkgError(Exception):
    """An LKG file that must not be used (tampered, truncated, untrusted)."""


@dataclass(frozen=True, slots=True)
class Lkg:
    signed: SignedDocument
    version: str
    epoch: int
    scope: str
    saved_at: float


def lkg_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / FILENAME


def _integrity(body: dict) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def save_lkg(directory: str | os.PathLike[str], lkg: Lkg) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        "format": FORMAT,
        "version": lkg.version,
        "epoch": lkg.epoch,
        "scope": lkg.scope,
        "saved_at": lkg.saved_at,
        "document": base64.b64encode(lkg.signed.document).decode("ascii"),
        "sha256": lkg.signed.sha256,
        "key_id": lkg.signed.key_id,
        "signature": base64.b64encode(lkg.signed.signature).decode("ascii"),
        "algorithm": lkg.signed.algorithm,
    }
    data = canonical_json({**body, "integrity": _integrity(body)})
    path = directory / FILENAME
    tmp = directory / f".{FILENAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def load_lkg(directory: str | os.PathLike[str], keyring: Keyring,
             now: float | None = None) -> Lkg | None:
    """The LKG in `directory`, checked (integrity digest, then hash and signature); None when
    there is no file. Raises LkgError naming what is wrong."""
    path = lkg_path(directory)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LkgError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        stated = data.pop("integrity")
        if data.get("format") != FORMAT:
            raise LkgError(f"{path}: unknown LKG format {data.get('format')!r}")
        actual = _integrity(data)
        if actual != stated:
            raise LkgError(f"{path}: integrity digest mismatch (stated {stated}, actual "
                           f"{actual}): the file was altered or truncated")
        signed = SignedDocument(
            document=base64.b64decode(data["document"], validate=True),
            sha256=data["sha256"], key_id=data["key_id"],
            signature=base64.b64decode(data["signature"], validate=True),
            algorithm=data.get("algorithm", ALGORITHM))
        lkg = Lkg(signed, str(data["version"]), int(data["epoch"]), str(data.get("scope", "")),
                  float(data.get("saved_at", 0.0)))
    except LkgError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise LkgError(f"{path}: not a valid LKG file: {type(exc).__name__}: {exc}") from None
    try:
        keyring.verify_signed(signed, now=time.time() if now is None else now)
    except VerificationError as exc:
        raise LkgError(f"{path}: {exc.reason}: {exc}") from None
    return lkg
