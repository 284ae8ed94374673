"""JWT (RFC 7519) in JWS compact form (RFC 7515) with public keys from a JWK Set (RFC 7517).

Only asymmetric signatures are verified, with the ``cryptography`` package:

==========  ====================  =============================
``alg``     key (``kty``/``crv``)  verification
==========  ====================  =============================
RS256/384/512  RSA, >= 2048 bits    RSASSA-PKCS1-v1_5 + SHA-2
ES256       EC P-256              ECDSA + SHA-256 (raw r||s, 64 bytes)
ES384       EC P-384              ECDSA + SHA-384 (raw r||s, 96 bytes)
EdDSA       OKP Ed25519 / Ed448   Ed25519 / Ed448
==========  ====================  =============================

What is never accepted, whatever the configuration says: ``alg: none``, the HMAC algorithms
(HS256/384/512: a verifier holding only public keys must never treat one as an HMAC secret,
the classic algorithm-confusion attack), symmetric (``oct``) keys in a JWK Set, a key whose
type or curve does not fit the token's ``alg``, a JWK whose own ``alg`` differs from the
token's, a JWK with ``use`` other than ``sig``, and tokens with a ``crit`` header (no
extension is understood, RFC 7515 4.1.11). The algorithm is never taken from the token
alone: it must be in the provider's allow list *and* match the key.

Everything here is synchronous and pure (no I/O): the filter decides when to call it.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# stream.metadata[JWT_METADATA_KEY] of a request whose token was verified:
#   {"provider": <provider name>, "issuer": <iss>, "claims": <payload dict>}
JWT_METADATA_KEY = "omnirelay.jwt_authn"

MAX_TOKEN_BYTES = 16384
MIN_RSA_BITS = 2048

# alg -> (kty, allowed curves, hash); "EdDSA" picks the curve from the key.
_ALGS: dict[str, tuple[str, frozenset[str], Any]] = {
    "RS256": ("RSA", frozenset(), hashes.SHA256),
    "RS384": ("RSA", frozenset(), hashes.SHA384),
    "RS512": ("RSA", frozenset(), hashes.SHA512),
    "ES256": ("EC", frozenset({"P-256"}), hashes.SHA256),
    "ES384": ("EC", frozenset({"P-384"}), hashes.SHA384),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"}), None),
}
SUPPORTED_ALGORITHMS = tuple(_ALGS)
# Refused even if listed in a config: named so the config error can say why.
FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})

_EC_CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48)}
_OKP_CURVES = {"Ed25519": (ed25519.Ed25519PublicKey, 32), "Ed448": (ed448.Ed448PublicKey, 57)}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwtError(Exception):
    """A token was refused. ``description`` is a fixed text (never token content), fit
    for ``error_description`` in WWW-Authenticate; ``code`` is a short stats key."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class JwkError(ValueError):
    """A JWK or JWK Set cannot be used."""


def b64url_decode(segment: str | bytes) -> bytes:
    """Strict base64url without padding (RFC 7515 2): anything else raises ValueError."""
    if isinstance(segment, bytes):
        segment = segment.decode("ascii")
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class Jwk:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None          # the JWK's own "alg", if it names one
    key: Any                 # a cryptography public key

    def fits(self, alg: str) -> bool:
        kty, curves, _ = _ALGS[alg]
        if self.kty != kty or (self.alg is not None and self.alg != alg):
            return False
        return not curves or self.crv in curves


def _b64_int(jwk: Mapping, name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkError(f"{name} missing")
    return int.from_bytes(b64url_decode(value), "big")


def _b64_fixed(jwk: Mapping, name: str, size: int) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise JwkError(f"{name} missing")
    raw = b64url_decode(value)
    if len(raw) != size:
        raise JwkError(f"{name} must be {size} bytes, got {len(raw)}")
    return raw


def parse_jwk(jwk: Mapping) -> Jwk | None:
    """A public verification key, or None for a key that is not for us (another use, a
    symmetric or unsupported key type). Raises JwkError for a malformed supported key."""
    if not isinstance(jwk, Mapping):
        raise JwkError("a key must be a JSON object")
    kty = jwk.get("kty")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwkError("kid must be a string")
    alg = jwk.get("alg")
    if alg is not None and alg not in _ALGS:
        return None                  # a key meant for an algorithm we never accept
    if any(p in jwk for p in ("d", "p", "q", "k")):
        # Private or symmetric material in a verification key set: refuse the key rather
        # than risk treating a secret as public.
        return None
    try:
        if kty == "RSA":
            n, e = _b64_int(jwk, "n"), _b64_int(jwk, "e")
            if n.bit_length() < MIN_RSA_BITS:
                raise JwkError(f"RSA key of {n.bit_length()} bits (at least {MIN_RSA_BITS})")
            if e < 3 or e % 2 == 0:
                raise JwkError("bad RSA public exponent")
            return Jwk(kid, kty, None, alg, rsa.RSAPublicNumbers(e, n).public_key())
        if kty == "EC":
            crv = jwk.get("crv")
            if crv not in _EC_CURVES:
                return None
            curve, size = _EC_CURVES[crv]
            x = int.from_bytes(_b64_fixed(jwk, "x", size), "big")
            y = int.from_bytes(_b64_fixed(jwk, "y", size), "big")
            # public_key() checks that the point is on the curve.
            return Jwk(kid, kty, crv, alg, ec.EllipticCurvePublicNumbers(x, y, curve()).public_key())
        if kty == "OKP":
            crv = jwk.get("crv")
            if crv not in _OKP_CURVES:
                return None
            cls, size = _OKP_CURVES[crv]
            return Jwk(kid, kty, crv, alg, cls.from_public_bytes(_b64_fixed(jwk, "x", size)))
    except ValueError as e:
        if isinstance(e, JwkError):
            raise
        raise JwkError(str(e)) from None
    return None                      # oct and anything unknown: never used


@dataclass(frozen=True)
class KeySet:
    """The usable keys of one JWK Set. ``skipped`` counts keys that were left out (other
    use, unsupported or symmetric type); ``errors`` describes malformed ones."""

    keys: tuple[Jwk, ...]
    skipped: int = 0
    errors: tuple[str, ...] = ()
    by_kid: dict[str, tuple[Jwk, ...]] = field(default_factory=dict, compare=False)

    def candidates(self, kid: str | None, alg: str) -> list[Jwk]:
        pool = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return [k for k in pool if k.fits(alg)]

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(document: bytes | str | Mapping) -> KeySet:
    """A KeySet from a JWK Set document (``{"keys": [...]}``). Malformed keys are left out
    and reported in ``errors``; a set with no usable key at all raises JwkError."""
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except (ValueError, UnicodeDecodeError) as e:
            raise JwkError(f"not JSON: {e}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwkError('not a JWK Set: expected {"keys": [...]}')
    keys: list[Jwk] = []
    skipped = 0
    errors = []
    for i, raw in enumerate(document["keys"]):
        try:
            k = parse_jwk(raw)
        except JwkError as e:
            errors.append(f"keys[{i}]: {e}")
            continue
        if k is None:
            skipped += 1
        else:
            keys.append(k)
    if not keys:
        detail = "; ".join(errors) if errors else f"{skipped} keys, none usable"
        raise JwkError(f"no usable signing key ({detail})")
    by_kid: dict[str, list[Jwk]] = {}
    for k in keys:
        if k.kid is not None:
            by_kid.setdefault(k.kid, []).append(k)
    return KeySet(tuple(keys), skipped, tuple(errors),
                  {kid: tuple(v) for kid, v in by_kid.items()})


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Token:
    """A token split and decoded, not yet verified."""

    raw: str
    header: dict
    claims: dict
    payload_segment: str
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header.get("alg")  # type: ignore[return-value]

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")


_MALFORMED = ("malformed", "malformed token")


def _json_object(segment: str) -> dict:
    value = json.loads(b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - decode() maps ValueError
    return value


def decode(raw: str) -> Token:
    """Split and decode a compact JWS. Raises JwtError("malformed") for anything that is not
    three base64url segments with JSON object header and payload."""
    if len(raw) > MAX_TOKEN_BYTES:
        raise JwtError(*_MALFORMED)
    parts = raw.split(".")
    if len(parts) != 3:
        raise JwtError(*_MALFORMED)
    h, p, s = parts
    try:
        header = _json_object(h)
        claims = _json_object(p)
        signature = b64url_decode(s)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JwtError(*_MALFORMED) from None
    kid = header.get("kid")
    if not isinstance(header.get("alg"), str) or (kid is not None and not isinstance(kid, str)):
        raise JwtError(*_MALFORMED)
    return Token(raw, header, claims, p, f"{h}.{p}".encode("ascii"), signature)


def check_algorithm(token: Token, allowed: frozenset[str]) -> None:
    alg = token.alg
    if alg not in allowed or alg not in _ALGS:
        raise JwtError("bad_algorithm", "unsupported algorithm")
    if "crit" in token.header:
        raise JwtError("bad_algorithm", "unsupported critical header")


def _verify_one(jwk: Jwk, alg: str, data: bytes, sig: bytes) -> bool:
    key = jwk.key
    try:
        if jwk.kty == "RSA":
            key.verify(sig, data, padding.PKCS1v15(), _ALGS[alg][2]())
        elif jwk.kty == "EC":
            size = _EC_CURVES[jwk.crv][1]  # type: ignore[index]
            if len(sig) != 2 * size:
                return False
            r = int.from_bytes(sig[:size], "big")
            s = int.from_bytes(sig[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_ALGS[alg][2]()))
        else:
            key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def verify_signature(token: Token, keys: KeySet) -> Jwk:
    """The key that verifies the token's signature. The algorithm must already have passed
    ``check_algorithm``. Raises JwtError("unknown_kid") when no key fits the token's kid and
    alg, JwtError("bad_signature") when none of those that fit verifies it."""
    alg = token.alg
    candidates = keys.candidates(token.kid, alg)
    if not candidates:
        raise JwtError("unknown_kid", "unknown key id" if token.kid is not None
                       else "no key for the algorithm")
    for jwk in candidates:
        if _verify_one(jwk, alg, token.signing_input, token.signature):
            return jwk
    raise JwtError("bad_signature", "signature verification failed")


def _number(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JwtError("bad_claims", f"invalid {name} claim")
    return float(value)


def check_claims(claims: dict, *, issuer: str, audiences: Iterable[str] | frozenset[str],
                 now: float, clock_skew: float, require_exp: bool = True) -> None:
    """iss exact; aud (string or list) sharing one value with ``audiences`` when that is not
    empty; exp and nbf with ``clock_skew`` seconds of tolerance (a token is expired once
    ``now >= exp + skew``, not yet valid while ``now + skew < nbf``)."""
    if claims.get("iss") != issuer:
        raise JwtError("bad_issuer", "issuer not allowed")
    exp = _number(claims, "exp")
    if exp is None:
        if require_exp:
            raise JwtError("bad_claims", "missing exp claim")
    elif now >= exp + clock_skew:
        raise JwtError("expired", "token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + clock_skew < nbf:
        raise JwtError("not_yet_valid", "token not yet valid")
    if audiences:
        aud = claims.get("aud")
        if isinstance(aud, str):
            aud = (aud,)
        if not isinstance(aud, list | tuple) or not any(
                isinstance(a, str) and a in audiences for a in aud):
            raise JwtError("bad_audience", "audience not allowed")


# --------------------------------------------------------------------------- helpers for
# tests and tools: sign with a private key (the proxy itself never signs).


def public_jwk(public_key: Any, kid: str | None = None, alg: str | None = None) -> dict:
    """The JWK of a cryptography public key (RSA, EC P-256/P-384, Ed25519/Ed448)."""
    out: dict[str, Any]
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        out = {"kty": "RSA", "n": b64url_encode(nums.n.to_bytes((nums.n.bit_length() + 7) // 8,
                                                                 "big")),
               "e": b64url_encode(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))}
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[public_key.curve.name]
        size = _EC_CURVES[crv][1]
        nums = public_key.public_numbers()
        out = {"kty": "EC", "crv": crv, "x": b64url_encode(nums.x.to_bytes(size, "big")),
               "y": b64url_encode(nums.y.to_bytes(size, "big"))}
    elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        crv = "Ed25519" if isinstance(public_key, ed25519.Ed25519PublicKey) else "Ed448"
        out = {"kty": "OKP", "crv": crv,
               "x": b64url_encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    else:
        raise TypeError(f"unsupported key {type(public_key).__name__}")
    if kid is not None:
        out["kid"] = kid
    if alg is not None:
        out["alg"] = alg
    out["use"] = "sig"
    return out


def sign(claims: Mapping, private_key: Any, alg: str, kid: str | None = None,
         header: Mapping | None = None) -> str:
    """A compact JWS of ``claims`` signed with ``private_key`` (for tests and tools)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    hdr = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        hdr["kid"] = kid
    hdr.update(header or {})
    h = b64url_encode(json.dumps(hdr, separators=(",", ":")).encode())
    p = b64url_encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    data = f"{h}.{p}".encode()
    if alg.startswith("RS"):
        sig = private_key.sign(data, padding.PKCS1v15(), _ALGS[alg][2]())
    elif alg.startswith("ES"):
        der = private_key.sign(data, ec.ECDSA(_ALGS[alg][2]()))
        r, s = decode_dss_signature(der)
        size = _EC_CURVES[{"ES256": "P-256", "ES384": "P-384"}[alg]][1]
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        sig = private_key.sign(data)
    else:
        raise ValueError(f"cannot sign with {alg}")
    return f"{h}.{p}.{b64url_encode(sig)}"
