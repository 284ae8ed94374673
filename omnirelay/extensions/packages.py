"""Signed extension packages: one file holding a manifest, a payload and a signature.

Format (one ZIP archive, conventionally ``*.orpkg``; docs/extensions.md):

- ``manifest.json``: ``{"format": 1, "name", "version", "kind": "wasm"|"native"|"dsl",
  "abi": "proxy_wasm/0.2.1", "capabilities": [host features required], "sha256": payload
  digest, "size": payload bytes, "key_id": signing key}``
- ``payload``: the Wasm binary, the native shared library or the DSL source.
- ``signature.json``: ``{"algorithm": "ed25519", "signature": base64}``, an Ed25519
  signature over the canonical JSON (omnirelay.config.canonical_json) of the manifest.
  The manifest's sha256 binds the payload, its key_id names the signer.

Signing and trust are the config snapshots' own (omnirelay.config.signing): a ``Signer``
signs, a ``Keyring`` (trust bundle with key ids, validity periods and rotation) verifies.

``verify_package`` checks, in this order, and refuses with a ``PackageError`` whose
``reason`` says why: malformed (not a package), unsigned, unknown_key / expired_key /
key_not_yet_valid / bad_signature (the signing module's codes), hash_mismatch (payload),
wrong_kind (not the kind the loader expects), unsupported_kind / unsupported_abi (this
build cannot run it, per ``support``), missing_capability.

Trust in a running node comes from the config's ``extensions.trusted_keys``: the config
build calls ``use_trust(config.extensions)`` before it builds filters, and the loaders
(``load_verified``, ``loading``) use it. Every load and every refusal is recorded for the
admin's /extensions and the failure metrics.

A refused file never replaces a running version. The last version loaded from each path is
kept (a private copy, verified again on use), and a process starting (``last_good_fallback``,
used by the Relay's first build) that finds the file refused uses it instead: a worker
restarting while the file holds something refused runs what its siblings run rather than
failing to start.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import io
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from omnirelay.config import canonical_json
from omnirelay.config.signing import (
    ALGORITHM,
    BAD_SIGNATURE,
    HASH_MISMATCH,
    Keyring,
    Signer,
    TrustedKey,
    VerificationError,
    key_id_for,
)
from omnirelay.extensions.support import KINDS, Support, abi_compatible, parse_abi, support

log = logging.getLogger("omnirelay.extensions")

FORMAT = 1
SUFFIX = ".orpkg"
MANIFEST = "manifest.json"
PAYLOAD = "payload"
SIGNATURE = "signature.json"
MEMBERS = frozenset({MANIFEST, PAYLOAD, SIGNATURE})
MAX_PACKAGE = 256 << 20
MAX_PAYLOAD = 256 << 20
MAX_MANIFEST = 64 << 10

# PackageError.reason values besides the signing module's (unknown_key, bad_signature,
# expired_key, key_not_yet_valid, hash_mismatch).
UNREADABLE = "unreadable"
MALFORMED = "malformed"
UNSIGNED = "unsigned"
WRONG_KIND = "wrong_kind"
UNSUPPORTED_KIND = "unsupported_kind"
UNSUPPORTED_ABI = "unsupported_abi"
MISSING_CAPABILITY = "missing_capability"
UNTRUSTED = "no_trust"  # the trust setting itself is missing or unreadable
LOAD_FAILED = "load_failed"  # verified, but the host could not load the payload

_MANIFEST_KEYS = ("format", "name", "version", "kind", "abi", "capabilities", "sha256",
                  "size", "key_id")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_CAPABILITY = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: packing the same inputs gives the same bytes


class PackageError(ValueError):
    """A package that must not be loaded; the message names the package and the reason.
    A ValueError, so a filter factory reports it as a config error at its binding."""

    def __init__(self, package: str, reason: str, message: str,
                 manifest: Manifest | None = None) -> None:
        self.package = package
        self.reason = reason
        self.detail = message
        self.manifest = manifest
        what = f"{package} ({manifest.name} {manifest.version})" if manifest else package
        super().__init__(f"extension package {what} refused: {reason}: {message}")

    def __reduce__(self):
        return (type(self), (self.package, self.reason, self.detail, self.manifest))


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    kind: str
    abi: str
    sha256: str
    size: int
    key_id: str
    capabilities: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "version": self.version,
                "kind": self.kind, "abi": self.abi, "capabilities": list(self.capabilities),
                "sha256": self.sha256, "size": self.size, "key_id": self.key_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """A checked manifest; ValueError naming the field otherwise."""
        unknown = sorted(set(data) - set(_MANIFEST_KEYS))
        if unknown:
            raise ValueError(f"unknown manifest fields {unknown}")
        missing = [k for k in _MANIFEST_KEYS if k not in data]
        if missing:
            raise ValueError(f"manifest lacks {missing}")
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r} is not {FORMAT}")

        def text(key: str, pattern: re.Pattern) -> str:
            value = data[key]
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ValueError(f"{key}: invalid value {value!r}")
            return value

        kind = data["kind"]
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        try:
            parse_abi(data["abi"])
        except ValueError as e:
            raise ValueError(f"abi: {e}") from None
        caps = data["capabilities"]
        if not isinstance(caps, list) or not all(
                isinstance(c, str) and _CAPABILITY.fullmatch(c) for c in caps):
            raise ValueError(f"capabilities must be a list of feature names, got {caps!r}")
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_PAYLOAD:
            raise ValueError(f"size: invalid value {size!r}")
        key_id = data["key_id"]
        if not isinstance(key_id, str) or not key_id:
            raise ValueError("key_id must be a non-empty string")
        return cls(name=text("name", _NAME), version=text("version", _VERSION), kind=kind,
                   abi=data["abi"], sha256=text("sha256", _SHA256), size=size, key_id=key_id,
                   capabilities=tuple(caps))


@dataclass(frozen=True)
class VerifiedPackage:
    """A package that passed every check: its manifest, payload and signer."""

    path: str
    manifest: Manifest
    payload: bytes = field(repr=False)
    file_sha256: str  # of the whole package file (what the watcher compares)
    data: bytes = field(repr=False, compare=False, default=b"")  # the whole file

    @property
    def key_id(self) -> str:
        return self.manifest.key_id

    def payload_file(self, suffix: str = "") -> str:
        """The payload as a file of its own (for loaders that need a path, such as
        dlopen): written once per payload digest under a private directory, read-only."""
        target = _private_dir("payloads") / f"{self.manifest.name}-" \
            f"{self.manifest.sha256[:16]}{suffix}"
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == \
                self.manifest.sha256:
            return str(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(self.payload)
        os.chmod(tmp, 0o500)
        os.replace(tmp, target)
        return str(target)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {"path": self.path, "name": m.name, "version": m.version, "kind": m.kind,
                "abi": m.abi, "capabilities": list(m.capabilities), "sha256": m.sha256,
                "size": m.size, "key_id": m.key_id, "file_sha256": self.file_sha256}


# --------------------------------------------------------------------------- packing


def build_package(payload: bytes, *, name: str, version: str, kind: str,
                  signer: Signer | None, abi: str | None = None,
                  capabilities: Iterable[str] = ()) -> bytes:
    """The bytes of a package for `payload`, signed by `signer` (None: unsigned, which
    every node refuses; useful only to test that). `abi` defaults to this build's ABI for
    `kind`. Raises ValueError for a manifest that would not verify anywhere."""
    payload = bytes(payload)
    if abi is None:
        abi = support().abis.get(kind)
        if abi is None:
            raise ValueError(f"this build has no {kind} host: give the ABI explicitly")
    manifest = Manifest.from_dict({
        "format": FORMAT, "name": name, "version": version, "kind": kind, "abi": abi,
        "capabilities": sorted(set(capabilities)),
        "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
        "key_id": signer.key_id if signer is not None else "unsigned"})
    document = canonical_json(manifest.to_dict())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add(zf, MANIFEST, document, zipfile.ZIP_STORED)
        _add(zf, PAYLOAD, payload, zipfile.ZIP_DEFLATED)
        if signer is not None:
            signature = signer.sign(document).signature
            _add(zf, SIGNATURE, canonical_json(
                {"algorithm": ALGORITHM, "signature": base64.b64encode(signature).decode()}),
                zipfile.ZIP_STORED)
    return buf.getvalue()


def _add(zf: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, _ZIP_TIME)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def write_package(path: str | os.PathLike[str], data: bytes) -> None:
    """Write atomically (a watcher never sees half a package; concurrent writers, such as
    workers keeping their last good copy, each write their own temporary file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Parts:
    manifest: dict[str, Any]
    payload: bytes
    signature: dict[str, Any] | None


def _read_parts(data: bytes, origin: str) -> _Parts:
    def bad(message: str) -> PackageError:
        return PackageError(origin, MALFORMED, message)

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise bad(f"not an extension package (a ZIP archive): {e}") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(names) != len(set(names)):
            raise bad("an archive member appears twice")
        unexpected = sorted(set(names) - MEMBERS)
        if unexpected:
            raise bad(f"unexpected members {unexpected} (a package holds {sorted(MEMBERS)})")
        for needed in (MANIFEST, PAYLOAD):
            if needed not in names:
                raise bad(f"no {needed}")
        limits = {MANIFEST: MAX_MANIFEST, PAYLOAD: MAX_PAYLOAD, SIGNATURE: MAX_MANIFEST}
        parts: dict[str, bytes] = {}
        for info in infos:
            if info.file_size > limits[info.filename]:
                raise bad(f"{info.filename} is {info.file_size} bytes, more than "
                          f"{limits[info.filename]}")
            try:
                parts[info.filename] = zf.read(info)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
                raise bad(f"cannot read {info.filename}: {e}") from None
    manifest = _json_object(parts[MANIFEST], MANIFEST, bad)
    signature = _json_object(parts[SIGNATURE], SIGNATURE, bad) if SIGNATURE in parts else None
    return _Parts(manifest, parts[PAYLOAD], signature)


def _json_object(raw: bytes, name: str, bad) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise bad(f"{name} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise bad(f"{name} must be a JSON object")
    return value


def _signature_bytes(sig: Mapping[str, Any], origin: str) -> tuple[bytes, str]:
    algorithm = sig.get("algorithm", ALGORITHM)
    text = sig.get("signature")
    if not isinstance(text, str) or not text:
        raise PackageError(origin, UNSIGNED, f"{SIGNATURE} holds no signature")
    try:
        return base64.b64decode(text, validate=True), str(algorithm)
    except (binascii.Error, ValueError):
        raise PackageError(origin, BAD_SIGNATURE, "the signature is not base64") from None


def verify_package(data: bytes, trust: Keyring, *, origin: str = "<bytes>",
                   kind: str | None = None, support_: Support | None = None,
                   now: float | None = None) -> VerifiedPackage:
    """The verified package in `data`, or PackageError (see the module docstring for the
    order of the checks). `kind`: the kind the caller loads (None: any)."""
    if len(data) > MAX_PACKAGE:
        raise PackageError(origin, MALFORMED, f"{len(data)} bytes, more than {MAX_PACKAGE}")
    parts = _read_parts(data, origin)
    raw = parts.manifest
    key_id = raw.get("key_id")
    if parts.signature is None:
        raise PackageError(origin, UNSIGNED, "the package has no signature.json: it was "
                           "packed without a signing key")
    if not isinstance(key_id, str) or not key_id:
        raise PackageError(origin, MALFORMED, "the manifest names no key_id")
    signature, algorithm = _signature_bytes(parts.signature, origin)
    try:
        document = canonical_json(raw)
    except (TypeError, ValueError) as e:
        raise PackageError(origin, MALFORMED, f"manifest: {e}") from None
    try:
        trust.verify(document, signature, key_id, algorithm=algorithm, now=now)
    except VerificationError as e:
        hint = "" if len(trust) else " (no trusted keys: set extensions.trusted_keys)"
        raise PackageError(origin, e.reason, f"{e}{hint}") from None
    try:
        manifest = Manifest.from_dict(raw)
    except ValueError as e:
        raise PackageError(origin, MALFORMED, f"manifest: {e}") from None
    payload = parts.payload
    actual = hashlib.sha256(payload).hexdigest()
    if actual != manifest.sha256 or len(payload) != manifest.size:
        raise PackageError(origin, HASH_MISMATCH,
                           f"payload SHA-256 is {actual} ({len(payload)} bytes), the signed "
                           f"manifest says {manifest.sha256} ({manifest.size} bytes): the "
                           "payload was altered", manifest)
    if kind is not None and manifest.kind != kind:
        raise PackageError(origin, WRONG_KIND, f"a {manifest.kind} package where a {kind} "
                           "extension is configured", manifest)
    sup = support_ if support_ is not None else support()
    offered = sup.abis.get(manifest.kind)
    if offered is None:
        raise PackageError(origin, UNSUPPORTED_KIND,
                           f"this build has no {manifest.kind} extension host", manifest)
    if not abi_compatible(manifest.abi, offered):
        raise PackageError(origin, UNSUPPORTED_ABI,
                           f"built for ABI {manifest.abi}; this build offers {offered}",
                           manifest)
    missing = sorted(set(manifest.capabilities) - set(sup.features))
    if missing:
        raise PackageError(origin, MISSING_CAPABILITY,
                           f"requires {missing}, which this build does not offer", manifest)
    return VerifiedPackage(origin, manifest, payload, hashlib.sha256(data).hexdigest(), data)


def inspect_package(data: bytes, origin: str = "<bytes>") -> dict[str, Any]:
    """The manifest as stored, without verifying anything (for `omnirelay ext verify` to
    show what was refused). Raises PackageError(malformed)."""
    parts = _read_parts(data, origin)
    return {**parts.manifest, "signed": parts.signature is not None}


# --------------------------------------------------------------------------- trust


def load_trust(entries: Iterable[str | os.PathLike[str]]) -> Keyring:
    """The keys of the given files: trust bundles (JSON, `omnirelay ext keygen --bundle`,
    `meshkit keygen --bundle`) or PEM Ed25519 public keys (key id: the default
    `ed25519-<16 hex>`). Raises ValueError naming the file."""
    keyring = Keyring()
    for entry in entries:
        path = Path(entry)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read trusted key: {e.strerror or e}") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as e:
                raise ValueError(f"{path}: not a PEM public key: {e}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}: the key is {type(key).__name__}, not Ed25519")
            keys = [TrustedKey(key_id_for(key), key)]
        else:
            try:
                keys = list(Keyring.from_json(data))
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        for key in keys:
            keyring = keyring.with_key(key)
    return keyring


class _Trust:
    """The trust of one config build, its keyring loaded on first use."""

    def __init__(self, files: tuple[str, ...]) -> None:
        self.files = files
        self._keyring: Keyring | None = None
        self._error: str | None = None

    def keyring(self, origin: str) -> Keyring:
        if self._keyring is None and self._error is None:
            try:
                self._keyring = load_trust(self.files)
            except ValueError as e:
                self._error = f"extensions.trusted_keys: {e}"
        if self._error is not None:
            raise PackageError(origin, UNTRUSTED, self._error)
        return self._keyring


_TRUST: contextvars.ContextVar[_Trust | None] = contextvars.ContextVar(
    "omnirelay_extension_trust", default=None)


def use_trust(extensions: Any) -> None:
    """Make the trust of a config's `extensions` block (None: none) the one package loads
    use in this context, i.e. for the rest of this config build."""
    files = tuple(extensions.trusted_keys) if extensions is not None else ()
    _TRUST.set(_Trust(files))


# --------------------------------------------------------------------------- loading


def load_verified(path: str | os.PathLike[str], kind: str, trust: Keyring | None = None,
                  *, binding: str = "") -> VerifiedPackage:
    """Read and verify the package at `path` for a `kind` host (trust: the config's
    `extensions.trusted_keys` unless given). Records the outcome for /extensions under
    `binding` (the filter's place in the config). Raises PackageError.

    A host that still has work to do with the payload (compile, start) uses `loading`
    instead, so that a payload it cannot load is recorded as a failure, not as active."""
    verified = _verified(path, kind, trust, binding)
    REGISTRY.loaded(verified, binding)
    return verified


@contextlib.contextmanager
def loading(path: str | os.PathLike[str], kind: str, *, binding: str = "",
            trust: Keyring | None = None) -> Iterator[VerifiedPackage]:
    """``with loading(path, "wasm", binding=b) as pkg: <load pkg.payload>``: verify the
    package, then record it active if the block completes, or as a `load_failed` refusal
    (re-raised) if the block raises."""
    verified = _verified(path, kind, trust, binding)
    try:
        yield verified
    except Exception as e:
        report_load_failure(verified, f"{type(e).__name__}: {e}", binding)
        raise
    REGISTRY.loaded(verified, binding)


def _verified(path: str | os.PathLike[str], kind: str, trust: Keyring | None,
              binding: str) -> VerifiedPackage:
    origin = str(path)
    try:
        if trust is None:
            trust = (_TRUST.get() or _Trust(())).keyring(origin)
        verified = _read_and_verify(origin, trust, kind)
    except PackageError as e:
        REGISTRY.refused(e, kind, binding)
        fallback = _last_good(origin, kind, trust) if trust is not None and _FALLBACK.get() \
            else None
        if fallback is None:
            raise
        log.warning("extension package %s: using the last good version %s %s instead",
                    origin, fallback.manifest.name, fallback.manifest.version)
        return fallback
    return verified


# A copy of the last version of each package file this node loaded, so that a process that
# starts while the file holds something refused (a restarted worker, say) runs what its
# siblings run instead of failing. The copy is verified again on use. Only a process's
# first build uses it (Relay start); reloads and `omnirelay validate` refuse.

_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "omnirelay_extension_last_good", default=False)


@contextlib.contextmanager
def last_good_fallback() -> Iterator[None]:
    """Within the block, a refused package file loads the last good copy instead."""
    token = _FALLBACK.set(True)
    try:
        yield
    finally:
        _FALLBACK.reset(token)


def _private_dir(name: str) -> Path:
    """A directory only this user can write to (OSError if an existing one is not)."""
    base = Path(tempfile.gettempdir()) / f"omnirelay-ext-{os.getuid()}"
    for directory in (base, base / name):
        directory.mkdir(mode=0o700, exist_ok=True)
        st = directory.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise OSError(f"{directory} is not a private directory of this user")
    return base / name


def _last_good_file(path: str) -> Path:
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]
    return _private_dir("last-good") / f"{key}{SUFFIX}"


def _keep_last_good(pkg: VerifiedPackage) -> None:
    if not pkg.data:
        return
    try:
        target = _last_good_file(pkg.path)
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == \
                pkg.file_sha256:
            return
        write_package(target, pkg.data)
    except OSError as e:  # only the fallback is lost
        log.warning("cannot keep a copy of extension package %s: %s", pkg.path, e)


def _last_good(origin: str, kind: str, trust: Keyring) -> VerifiedPackage | None:
    try:
        data = _last_good_file(origin).read_bytes()
    except OSError:
        return None
    try:
        return verify_package(data, trust, origin=origin, kind=kind)
    except PackageError as e:
        log.error("extension package %s: the last good copy is refused too: %s", origin, e)
        return None


def precheck(path: str | os.PathLike[str], trusted_keys: Iterable[str]) -> PackageError | None:
    """Verify the file at `path` as a load would (any kind), with the trust of
    `trusted_keys` (the config's extensions.trusted_keys); None if it would load, else the
    refusal, recorded. The hot-reload watcher checks a changed file with it first, so a
    refused file never triggers a reload."""
    origin = str(path)
    try:
        try:
            keyring = load_trust(trusted_keys)
        except ValueError as e:
            raise PackageError(origin, UNTRUSTED, f"extensions.trusted_keys: {e}") from None
        _read_and_verify(origin, keyring, None)
    except PackageError as e:
        REGISTRY.refused(e, _stated_kind(origin), "")
        return e
    return None


def _read_and_verify(origin: str, trust: Keyring, kind: str | None) -> VerifiedPackage:
    try:
        data = Path(origin).read_bytes()
    except OSError as e:
        raise PackageError(origin, UNREADABLE, e.strerror or str(e)) from None
    return verify_package(data, trust, origin=origin, kind=kind)


def _stated_kind(path: str) -> str:
    """The kind a package file's manifest claims (unverified; for labels), or "unknown"."""
    try:
        kind = inspect_package(Path(path).read_bytes()).get("kind")
    except (OSError, PackageError):
        kind = None
    return kind if kind in KINDS else "unknown"


def report_load_failure(package: VerifiedPackage, message: str, binding: str = "") -> None:
    """A host could not load a verified package's payload (it does not compile, its
    start function failed): counted and shown like a refusal."""
    REGISTRY.refused(PackageError(package.path, LOAD_FAILED, message, package.manifest),
                     package.manifest.kind, binding)


def package_label(path: str, manifest: Manifest | None) -> str:
    return manifest.name if manifest is not None else Path(path).name.removesuffix(SUFFIX)


class Registry:
    """What this process loaded and refused, for /extensions and the failure metrics."""

    MAX_HISTORY = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.packages: dict[str, dict[str, Any]] = {}  # path -> state
        self.bindings: dict[str, dict[str, Any]] = {}  # binding -> package summary
        self.failures: dict[tuple[str, str, str], int] = {}  # (kind, name, reason) -> n
        self.history: list[dict[str, Any]] = []  # latest refusals, newest last

    def _entry(self, path: str) -> dict[str, Any]:
        return self.packages.setdefault(path, {"path": path, "active": None,
                                               "last_failure": None, "failures": 0})

    def loaded(self, pkg: VerifiedPackage, binding: str) -> None:
        _keep_last_good(pkg)
        with self._lock:
            entry = self._entry(pkg.path)
            summary = pkg.summary() | {"loaded_at": time.time()}
            previous = entry["active"]
            if previous is not None and previous["file_sha256"] == pkg.file_sha256:
                summary["loaded_at"] = previous["loaded_at"]
            entry["active"] = summary
            if binding:
                self.bindings[binding] = summary

    def refused(self, error: PackageError, kind: str, binding: str) -> None:
        m = error.manifest
        failure = {"path": error.package, "binding": binding or None, "reason": error.reason,
                   "message": str(error), "at": time.time(),
                   "name": m.name if m else None, "version": m.version if m else None}
        key = (m.kind if m else kind, package_label(error.package, m), error.reason)
        with self._lock:
            entry = self._entry(error.package)
            entry["last_failure"] = failure
            entry["failures"] += 1
            self.failures[key] = self.failures.get(key, 0) + 1
            self.history = [*self.history[-(self.MAX_HISTORY - 1):], failure]
        log.error("%s", error)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"packages": [dict(v) for _, v in sorted(self.packages.items())],
                    "bindings": dict(self.bindings),
                    "recent_failures": list(self.history)}

    def active_digest(self, path: str) -> str | None:
        """The file SHA-256 of the version of `path` last loaded, if any."""
        with self._lock:
            active = self.packages.get(str(path), {}).get("active")
            return active["file_sha256"] if active else None

    def failure_counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.failures)

    def clear(self) -> None:
        with self._lock:
            self.packages.clear()
            self.bindings.clear()
            self.failures.clear()
            self.history.clear()


REGISTRY = Registry()
