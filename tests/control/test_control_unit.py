"""The config client's pieces without processes: LKG file, backoff, snapshot handling."""
from __future__ import annotations

import json
import random
import time

import pytest

from omnirelay.config import canonical_json, load_config
from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import Keyring, Signer
from omnirelay.control import Backoff, ControlClient, Lkg, LkgError, load_lkg, save_lkg


def _doc(version: str, epoch: int) -> bytes:
    return canonical_json(load_config({
        "metadata": {"version": version, "epoch": epoch},
        "spec": {"listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
                 "routes": [{"name": "all", "match": {}, "cluster": "c"}],
                 "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1",
                                                           "port": 9}]}]}}))


def _snap(signer: Signer, version: str, epoch: int, nonce: str = "n") -> mesh_pb2.Snapshot:
    signed = signer.sign(_doc(version, epoch))
    return mesh_pb2.Snapshot(version=version, nonce=nonce, epoch=epoch, scope="global",
                             document=signed.document, sha256=signed.sha256,
                             key_id=signed.key_id, signature=signed.signature,
                             signature_algorithm="ed25519")


def test_lkg_round_trip_and_tamper(tmp_path):
    signer = Signer.generate()
    keyring = Keyring([signer.trusted_key()])
    signed = signer.sign(_doc("v1", 3))
    path = save_lkg(tmp_path, Lkg(signed, "v1", 3, "global", time.time()))
    lkg = load_lkg(tmp_path, keyring)
    assert lkg is not None and lkg.signed == signed and lkg.epoch == 3
    assert load_lkg(tmp_path / "none", keyring) is None

    data = json.loads(path.read_bytes())
    data["epoch"] = 4  # any edit breaks the integrity digest
    path.write_bytes(json.dumps(data).encode())
    with pytest.raises(LkgError, match="integrity"):
        load_lkg(tmp_path, keyring)

    path.write_bytes(b'{"format": 1')  # truncated
    with pytest.raises(LkgError, match="not a valid LKG"):
        load_lkg(tmp_path, keyring)

    save_lkg(tmp_path, Lkg(signed, "v1", 3, "global", time.time()))
    with pytest.raises(LkgError, match="unknown_key"):  # a bundle without the signing key
        load_lkg(tmp_path, Keyring([Signer.generate().trusted_key()]))


def test_backoff_full_jitter_honors_hints():
    b = Backoff(base=0.5, maximum=4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert delays[0] <= 0.5
    hint = mesh_pb2.RetryHint(retry_after_ms=2000, backoff_base_ms=10, backoff_max_ms=20)
    assert b.next(hint) == 2.0  # never sooner than retry_after
    b.reset()
    assert b.attempt == 0


def _client(signer: Signer, activated: list, lkg_dir=None) -> ControlClient:
    def activate(config):
        activated.append(config.metadata.version)
    return ControlClient(["127.0.0.1:1"], mesh_pb2.Node(id="n"),
                         Keyring([signer.trusted_key()]), activate=activate,
                         build_check=lambda c: c, lkg_dir=lkg_dir)


def test_handle_acks_nacks_and_keeps_epoch_order(tmp_path):
    signer = Signer.generate()
    activated: list[str] = []
    client = _client(signer, activated, tmp_path)

    reply = client.handle(_snap(signer, "v2", 2, "a"))
    assert reply.WhichOneof("kind") == "ack" and reply.ack.nonce == "a"
    assert activated == ["v2"]
    assert load_lkg(tmp_path, Keyring([signer.trusted_key()])).version == "v2"

    stale = client.handle(_snap(signer, "v1", 1, "b"))
    assert stale.nack.error.code == "stale_epoch" and stale.nack.nonce == "b"

    bad = _snap(signer, "v3", 3, "c")
    bad.signature = bytes(64)
    assert client.handle(bad).nack.error.code == "bad_signature"

    altered = _snap(signer, "v3", 3, "d")
    altered.document = altered.document.replace(b'"v3"', b'"v4"')
    assert client.handle(altered).nack.error.code == "hash_mismatch"

    other = Signer.generate()
    assert client.handle(_snap(other, "v3", 3, "e")).nack.error.code == "unknown_key"

    invalid = signer.sign(b'{"metadata": {"version": "x"}, "spec": {"bogus": 1}}')
    snap = mesh_pb2.Snapshot(version="x", nonce="f", epoch=5, document=invalid.document,
                             sha256=invalid.sha256, key_id=invalid.key_id,
                             signature=invalid.signature, signature_algorithm="ed25519")
    nack = client.handle(snap).nack
    assert nack.error.code == "invalid_config" and nack.error.details
    assert activated == ["v2"] and client.version == "v2"

    again = client.handle(_snap(signer, "v2", 2, "g"))  # the same config re-sent: no re-apply
    assert again.WhichOneof("kind") == "ack" and activated == ["v2"]


def test_activation_failure_is_nacked(tmp_path):
    signer = Signer.generate()
    client = ControlClient(["127.0.0.1:1"], mesh_pb2.Node(id="n"),
                           Keyring([signer.trusted_key()]),
                           activate=lambda c: "listener changes need a restart",
                           build_check=lambda c: c, lkg_dir=tmp_path)
    nack = client.handle(_snap(signer, "v1", 1)).nack
    assert nack.error.code == "apply_failed" and "restart" in nack.error.message
    assert load_lkg(tmp_path, Keyring([signer.trusted_key()])) is None
