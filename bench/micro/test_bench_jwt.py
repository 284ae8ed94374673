"""One proxied request through the JWT filter (keys already loaded: an inline JWK Set, the same
path as cached remote keys) against the same request with an empty filter chain.

`pytest bench/micro/test_bench_jwt.py --benchmark-only`. The cases are `empty-chain`,
`jwt-<alg>` and `jwt-<alg>-nocache` for RS256 (RSA 2048), ES256 (P-256) and EdDSA (Ed25519).
Every round sends the same token, so `jwt-<alg>` is the verified-token cache hit (claims
checked, no decoding or signature check), and `-nocache` (`cache_size: 0`) decodes the
token and verifies its signature every time, as for a token seen for the first time.
"""
from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import omnirelay.filters.http.jwt_authn  # noqa: F401  (registers the filter)
from bench.micro.harness import ProxyHarness, config
from omnirelay.security.jwt import public_jwk, sign

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 13\r\n\r\nhello, world\n")
ISSUER = "https://idp.bench"

_KEYS = {
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}
JWKS = {"keys": [public_jwk(k.public_key(), kid=alg) for alg, k in _KEYS.items()]}


def jwt_filter(cache_size: int) -> dict:
    return {"name": "omnirelay.filters.http.jwt_authn", "config": {
        "cache_size": cache_size,
        "providers": {"idp": {"issuer": ISSUER, "audiences": ["api"],
                              "local_jwks": {"inline": json.dumps(JWKS)}}}}}


def request(alg: str | None) -> bytes:
    auth = b""
    if alg is not None:
        claims = {"iss": ISSUER, "aud": "api", "sub": "bench", "exp": int(time.time()) + 86400}
        auth = f"Authorization: Bearer {sign(claims, _KEYS[alg], alg, kid=alg)}\r\n".encode()
    return (b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: api.example.com\r\n"
            b"User-Agent: bench\r\nAccept: application/json\r\n" + auth + b"\r\n")


CASES = [(None, 0)] + [(alg, size) for alg in _KEYS for size in (1024, 0)]


@pytest.mark.parametrize("alg, cache_size", CASES, ids=[
    "empty-chain" if a is None else f"jwt-{a}" + ("" if n else "-nocache") for a, n in CASES])
def test_proxy_roundtrip_jwt(benchmark, alg, cache_size):
    h = ProxyHarness(config([jwt_filter(cache_size)] if alg else []))
    req = request(alg)
    out = benchmark(h.roundtrip, req, RESPONSE)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"hello, world\n")
