"""Keys and tokens for the security tests (generated once per process; RSA is slow-ish)."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from omnirelay.security.jwt import b64url_encode, public_jwk, sign

ISSUER = "https://idp.test"
AUDIENCE = "api.test"


@functools.cache
def private_key(kind: str) -> Any:
    """kind: rsa, rsa2 (another RSA key), ec, ec2, ed, ed2."""
    base = kind.rstrip("2")
    if base == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if base == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if base == "ed":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


ALG = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA"}


def jwk(kind: str, kid: str | None = None, **extra: Any) -> dict:
    out = public_jwk(private_key(kind).public_key(), kid=kid if kid is not None else kind)
    out.update(extra)
    return out


def jwks(*kinds: str) -> dict:
    return {"keys": [jwk(k) for k in kinds]}


def claims(**over: Any) -> dict:
    now = int(time.time())
    out = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def token(kind: str = "rsa", kid: str | None = None, alg: str | None = None,
          **claim_over: Any) -> str:
    """A token signed by key ``kind`` with kid ``kid`` (default: the kind's name)."""
    base = kind.rstrip("2")
    return sign(claims(**claim_over), private_key(kind), alg or ALG[base],
                kid=kid if kid is not None else kind)


def unsigned(alg: str = "none", kid: str | None = "rsa", **claim_over: Any) -> str:
    hdr = {"alg": alg, "typ": "JWT"}
    if kid:
        hdr["kid"] = kid
    h = b64url_encode(json.dumps(hdr).encode())
    p = b64url_encode(json.dumps(claims(**claim_over)).encode())
    return f"{h}.{p}."


def hs256_with_public_key(kind: str = "rsa", **claim_over: Any) -> str:
    """The algorithm-confusion attack: HMAC-SHA256 keyed with the verifier's public key."""
    pem = private_key(kind).public_key().public_bytes(Encoding.PEM,
                                                      PublicFormat.SubjectPublicKeyInfo)
    h = b64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kind}).encode())
    p = b64url_encode(json.dumps(claims(**claim_over)).encode())
    sig = hmac.new(pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url_encode(sig)}"


def forged(kind: str = "rsa", **claim_over: Any) -> str:
    """Header and claims of a valid token, signature of another key of the same type."""
    real = token(kind, **claim_over)
    other = token(kind + "2", kid=kind, **claim_over)
    return real.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]


def tampered(kind: str = "rsa") -> str:
    """A valid token whose payload was changed after signing (sub: alice -> admin)."""
    h, p, s = token(kind).split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    body["sub"] = "admin"
    return f"{h}.{b64url_encode(json.dumps(body).encode())}.{s}"
