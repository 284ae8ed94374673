"""omnirelay.config.signing: Ed25519 detached signatures over canonical JSON, key ids, keyring
rotation with an overlap window, and verification errors that say why."""
from __future__ import annotations

import pickle

import pytest
from mkharness import document

from omnirelay.config import canonical_json, load_config
from omnirelay.config.signing import (
    BAD_SIGNATURE,
    EXPIRED_KEY,
    HASH_MISMATCH,
    NOT_YET_VALID,
    UNKNOWN_KEY,
    UNSUPPORTED_ALGORITHM,
    Keyring,
    Signer,
    TrustedKey,
    VerificationError,
    document_digest,
    key_id_for,
)

T0 = 1_700_000_000.0


@pytest.fixture
def signed():
    signer = Signer.generate()
    return signer, signer.sign_config(load_config(document()))


def refusal(keyring, signed, **kw) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        keyring.verify(signed.document, signed.signature, signed.key_id, sha256=signed.sha256,
                       **kw)
    return info.value


def test_signs_canonical_json_of_the_normalized_config(signed):
    signer, doc = signed
    config = load_config(document())
    assert doc.document == canonical_json(config)
    assert doc.sha256 == document_digest(doc.document)
    assert doc.key_id == signer.key_id == key_id_for(signer.public_key)
    assert len(doc.signature) == 64
    # Detached and standard: the public key alone verifies it.
    signer.public_key.verify(doc.signature, doc.document)
    assert Keyring([signer.trusted_key()]).verify_signed(doc).key_id == signer.key_id
    assert load_config(doc.document) == config


def test_tampered_document_is_a_hash_mismatch(signed):
    signer, doc = signed
    ring = Keyring([signer.trusted_key()])
    tampered = doc.document.replace(b'"port":9', b'"port":7')
    assert tampered != doc.document
    with pytest.raises(VerificationError) as info:
        ring.verify(tampered, doc.signature, doc.key_id, sha256=doc.sha256)
    assert info.value.reason == HASH_MISMATCH
    assert "altered" in str(info.value)


def test_tampered_document_with_a_matching_hash_is_a_bad_signature(signed):
    signer, doc = signed
    ring = Keyring([signer.trusted_key()])
    tampered = doc.document.replace(b'"port":9', b'"port":7')
    with pytest.raises(VerificationError) as info:
        ring.verify(tampered, doc.signature, doc.key_id, sha256=document_digest(tampered))
    assert info.value.reason == BAD_SIGNATURE
    flipped = bytes([doc.signature[0] ^ 1]) + doc.signature[1:]
    with pytest.raises(VerificationError) as info:
        ring.verify(doc.document, flipped, doc.key_id)
    assert info.value.reason == BAD_SIGNATURE
    with pytest.raises(VerificationError) as info:
        ring.verify(doc.document, doc.signature[:10], doc.key_id)
    assert info.value.reason == BAD_SIGNATURE and "10 bytes" in str(info.value)


def test_signature_by_another_key_under_a_trusted_id_is_bad(signed):
    signer, doc = signed
    impostor = Signer.generate(key_id=signer.key_id)
    forged = impostor.sign(doc.document)
    ring = Keyring([signer.trusted_key()])
    assert refusal(ring, forged).reason == BAD_SIGNATURE


def test_unknown_key_id_names_the_known_ones(signed):
    signer, doc = signed
    other = Signer.generate(key_id="other")
    e = refusal(Keyring([other.trusted_key()]), doc)
    assert e.reason == UNKNOWN_KEY
    assert signer.key_id in str(e) and "other" in str(e)
    assert refusal(Keyring(), doc).reason == UNKNOWN_KEY


def test_unsupported_algorithm(signed):
    signer, doc = signed
    e = refusal(Keyring([signer.trusted_key()]), doc, algorithm="rsa")
    assert e.reason == UNSUPPORTED_ALGORITHM


def test_rotation_overlap_then_expiry():
    old, new = Signer.generate(key_id="k-old"), Signer.generate(key_id="k-new")
    payload = canonical_json(document())
    by_old, by_new = old.sign(payload), new.sign(payload)

    ring = Keyring([old.trusted_key()])
    assert ring.verify_signed(by_old, now=T0)
    assert refusal(ring, by_new, now=T0).reason == UNKNOWN_KEY

    rotated = ring.rotate(new.trusted_key(), overlap=3600, now=T0)
    assert rotated.get("k-old").not_after == T0 + 3600
    assert rotated.get("k-new").not_after is None
    for now in (T0, T0 + 1800, T0 + 3599):  # the overlap: both keys verify
        assert rotated.verify_signed(by_old, now=now).key_id == "k-old"
        assert rotated.verify_signed(by_new, now=now).key_id == "k-new"
    e = refusal(rotated, by_old, now=T0 + 3600)  # then the old key is refused
    assert e.reason == EXPIRED_KEY and "k-old" in str(e) and "expired at" in str(e)
    assert rotated.verify_signed(by_new, now=T0 + 10**6)
    assert [k.key_id for k in rotated.prune(now=T0 + 3600)] == ["k-new"]
    # The original ring is unchanged (keyrings are immutable).
    assert ring.get("k-old").not_after is None


def test_rotation_keeps_an_earlier_end_and_pre_staged_keys():
    a, b = Signer.generate(key_id="a"), Signer.generate(key_id="b")
    ring = Keyring([a.trusted_key(not_after=T0 + 10)])
    rotated = ring.rotate(b.trusted_key(), overlap=3600, now=T0)
    assert rotated.get("a").not_after == T0 + 10
    staged = Keyring([a.trusted_key(not_before=T0 + 100)])
    e = refusal(staged, a.sign(b"{}"), now=T0)
    assert e.reason == NOT_YET_VALID
    assert staged.verify_signed(a.sign(b"{}"), now=T0 + 100)


def test_trust_bundle_roundtrip(tmp_path):
    a, b = Signer.generate(), Signer.generate(key_id="b")
    ring = Keyring([a.trusted_key(not_after=T0 + 0.25), b.trusted_key(not_before=T0)])
    path = tmp_path / "trust.json"
    ring.save(path)
    loaded = Keyring.load(path)
    assert {k.key_id: (k.not_before, k.not_after, k.raw) for k in loaded} == {
        k.key_id: (k.not_before, k.not_after, k.raw) for k in ring
    }
    assert b'"not_after":"2023-11-14T22:13:20.250000Z"' in path.read_bytes()
    with pytest.raises(ValueError, match="two different public keys"):
        Keyring([a.trusted_key(), TrustedKey(a.key_id, b.public_key)])
    with pytest.raises(ValueError, match="trust bundle"):
        Keyring.from_json(b"[]")


def test_signer_pem_roundtrip(tmp_path):
    signer = Signer.generate()
    path = tmp_path / "key.pem"
    signer.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = Signer.load(path)
    assert again.key_id == signer.key_id
    assert Keyring([signer.trusted_key()]).verify_signed(again.sign(b"x"))
    assert Signer.load(path, key_id="named").key_id == "named"
    (tmp_path / "bad.pem").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.pem"):
        Signer.load(tmp_path / "bad.pem")
    with pytest.raises(ValueError, match="key id"):
        Signer.generate(key_id="has space")


def test_verification_error_survives_pickling(signed):
    _signer, doc = signed
    e = refusal(Keyring(), doc)
    again = pickle.loads(pickle.dumps(e))
    assert (again.reason, str(again), again.key_id) == (e.reason, str(e), e.key_id)
