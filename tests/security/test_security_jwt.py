"""omnirelay.security.jwt: decoding, keys, signature verification and claim checks."""
from __future__ import annotations

import json
import time

import pytest
from jwt_keys import (
    ISSUER,
    forged,
    hs256_with_public_key,
    jwk,
    jwks,
    private_key,
    tampered,
    token,
    unsigned,
)

from omnirelay.security.jwt import (
    SUPPORTED_ALGORITHMS,
    JwkError,
    JwtError,
    b64url_decode,
    b64url_encode,
    check_algorithm,
    check_claims,
    decode,
    parse_jwk,
    parse_jwks,
    public_jwk,
    sign,
    verify_signature,
)

ALL = frozenset(SUPPORTED_ALGORITHMS)
KEYS = parse_jwks(jwks("rsa", "ec", "ed"))


def verify(raw: str, keys=KEYS, allowed=ALL):
    t = decode(raw)
    check_algorithm(t, allowed)
    return verify_signature(t, keys)


def code_of(raw: str, keys=KEYS, allowed=ALL) -> str:
    with pytest.raises(JwtError) as ei:
        verify(raw, keys, allowed)
    return ei.value.code


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_valid_signatures_verify_with_the_key_of_their_kid(kind):
    assert verify(token(kind)).kid == kind


def test_other_sizes_of_rsa_and_ec():
    from cryptography.hazmat.primitives.asymmetric import ec

    k384 = ec.generate_private_key(ec.SECP384R1())
    ks = parse_jwks({"keys": [public_jwk(k384.public_key(), kid="p384"), jwk("rsa")]})
    assert verify(sign({"iss": ISSUER}, k384, "ES384", kid="p384"), ks).kid == "p384"
    assert verify(sign({"iss": ISSUER}, private_key("rsa"), "RS512", kid="rsa"), ks).kid == "rsa"


def test_token_without_kid_tries_every_key_that_fits_the_algorithm():
    raw = sign({"iss": ISSUER}, private_key("ec"), "ES256")
    assert verify(raw).kid == "ec"


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_forged_and_tampered_signatures_are_refused(kind):
    assert code_of(forged(kind)) == "bad_signature"
    assert code_of(tampered(kind)) == "bad_signature"


def test_alg_none_is_refused_even_if_allowed():
    assert code_of(unsigned("none")) == "bad_algorithm"
    assert code_of(unsigned("none"), allowed=ALL | {"none"}) == "bad_algorithm"
    assert code_of(unsigned("None")) == "bad_algorithm"


def test_hs256_keyed_with_the_public_key_is_refused():
    raw = hs256_with_public_key("rsa")
    assert code_of(raw) == "bad_algorithm"
    # Even a caller passing HS256 in the allow list does not make it verifiable.
    assert code_of(raw, allowed=ALL | {"HS256"}) == "bad_algorithm"
    # And an oct key in the set is never loaded.
    ks = parse_jwks({"keys": [{"kty": "oct", "k": b64url_encode(b"secret"), "kid": "rsa"},
                              jwk("ec")]})
    assert len(ks) == 1 and ks.skipped == 1


def test_algorithm_outside_the_provider_allow_list():
    assert code_of(token("ec"), allowed=frozenset({"RS256"})) == "bad_algorithm"


def test_alg_and_key_type_must_agree():
    # An EC token claiming the RSA key's kid, and an RS256 header on an Ed25519 kid.
    assert code_of(token("ec", kid="rsa")) == "unknown_kid"
    assert code_of(token("rsa", kid="ed")) == "unknown_kid"
    # A JWK that names its own alg is only used with that alg.
    ks = parse_jwks({"keys": [jwk("rsa", alg="RS512")]})
    assert code_of(token("rsa"), ks) == "unknown_kid"


def test_unknown_kid():
    assert code_of(token("rsa", kid="nope")) == "unknown_kid"


def test_crit_header_is_refused():
    raw = sign({"iss": ISSUER}, private_key("ed"), "EdDSA", kid="ed",
               header={"crit": ["exp"], "exp": 1})
    assert code_of(raw) == "bad_algorithm"


@pytest.mark.parametrize("raw", [
    "", "abc", "a.b", "a.b.c.d", "....",
    "eyJhbGciOiJSUzI1NiJ9.e30",                      # two segments
    "eyJhbGciOiJSUzI1NiJ9=.e30.c2ln",                # padding
    "eyJhbGciOiJSUzI1NiJ9.e30.c2l+",                 # not base64url
    "bm90IGpzb24.e30.c2ln",                           # header not JSON
    "WzFd.e30.c2ln",                                  # header a JSON array
    "eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln",                # payload a JSON array
    "e30.e30.c2ln",                                   # no alg
    "eyJhbGciOjF9.e30.c2ln",                          # alg not a string
    "eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.c2ln",      # kid not a string
    "a" * 20000 + ".e30.c2ln",                        # too long
])
def test_malformed_tokens(raw):
    with pytest.raises(JwtError) as ei:
        decode(raw)
    assert ei.value.code == "malformed"
    assert ei.value.description == "malformed token"


def test_b64url_is_strict():
    assert b64url_decode("aGk") == b"hi"
    for bad in ("aGk=", "a", "aG+k", "aG/k", "a b"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


# --------------------------------------------------------------------------- claims

NOW = 1_700_000_000.0


def check(claims: dict, **kw) -> None:
    args = {"issuer": ISSUER, "audiences": frozenset({"api"}), "now": NOW, "clock_skew": 60.0}
    args.update(kw)
    check_claims(claims, **args)


def refused(claims: dict, **kw) -> str:
    with pytest.raises(JwtError) as ei:
        check(claims, **kw)
    return ei.value.code


def test_exp_and_nbf_with_clock_skew():
    base = {"iss": ISSUER, "aud": "api"}
    check({**base, "exp": NOW + 1})
    check({**base, "exp": NOW - 59})                     # within the skew
    assert refused({**base, "exp": NOW - 60}) == "expired"
    assert refused({**base, "exp": NOW - 1}, clock_skew=0) == "expired"
    assert refused({**base, "exp": NOW}, clock_skew=0) == "expired"
    check({**base, "exp": NOW + 100, "nbf": NOW + 59})
    assert refused({**base, "exp": NOW + 100, "nbf": NOW + 61}) == "not_yet_valid"
    assert refused({**base, "exp": "soon"}) == "bad_claims"
    assert refused({**base, "exp": True}) == "bad_claims"
    assert refused(base) == "bad_claims"                 # exp required by default
    check(base, require_exp=False)


def test_issuer_and_audience():
    exp = NOW + 100
    assert refused({"iss": "https://evil", "aud": "api", "exp": exp}) == "bad_issuer"
    assert refused({"aud": "api", "exp": exp}) == "bad_issuer"
    assert refused({"iss": ISSUER, "aud": "other", "exp": exp}) == "bad_audience"
    assert refused({"iss": ISSUER, "aud": ["a", "b"], "exp": exp}) == "bad_audience"
    assert refused({"iss": ISSUER, "exp": exp}) == "bad_audience"
    assert refused({"iss": ISSUER, "aud": 7, "exp": exp}) == "bad_audience"
    check({"iss": ISSUER, "aud": ["other", "api"], "exp": exp})
    check({"iss": ISSUER, "exp": exp}, audiences=frozenset())   # no audience configured


# --------------------------------------------------------------------------- keys


def test_jwk_rules():
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(JwkError, match="1024 bits"):
        parse_jwk(public_jwk(small.public_key()))
    assert parse_jwk({**jwk("rsa"), "use": "enc"}) is None
    assert parse_jwk({**jwk("ec"), "key_ops": ["encrypt"]}) is None
    assert parse_jwk({**jwk("ec"), "d": "AAAA"}) is None       # private material: refused
    assert parse_jwk({**jwk("rsa"), "alg": "PS256"}) is None
    assert parse_jwk({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}) is None
    bad_point = {**jwk("ec"), "y": b64url_encode(b"\x01" * 32)}
    with pytest.raises(JwkError):
        parse_jwk(bad_point)
    with pytest.raises(JwkError, match="32 bytes"):
        parse_jwk({**jwk("ed"), "x": b64url_encode(b"\x01" * 31)})


def test_jwks_documents():
    ks = parse_jwks(json.dumps({"keys": [jwk("rsa"), {"kty": "RSA", "kid": "broken"},
                                         jwk("ed")]}))
    assert sorted(k.kid for k in ks.keys) == ["ed", "rsa"]
    assert ks.errors and "keys[1]" in ks.errors[0]
    for bad in ("not json", "[]", '{"keys": {}}', '{"keys": []}',
                '{"keys": [{"kty": "oct", "k": "AAAA"}]}'):
        with pytest.raises(JwkError):
            parse_jwks(bad)


def test_sign_and_public_jwk_round_trip_for_all_supported_algorithms():
    t = token("ed", exp=int(time.time()) + 5)
    assert decode(t).claims["sub"] == "alice"
