"""Signed extension packages: pack -> verify round trip, and every refusal with its reason
(unsigned, unknown key, bad signature, expired key, tampered payload or manifest, wrong kind,
unsupported kind or ABI, missing capability, malformed); trust files; the `omnirelay ext`
commands run as real processes."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
import wasmtime
from cryptography.hazmat.primitives import serialization
from extension_packages import members, rezip, tampered

from omnirelay.config import load_config
from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions import packages
from omnirelay.extensions.packages import (
    PackageError,
    build_package,
    inspect_package,
    load_trust,
    verify_package,
)
from omnirelay.extensions.support import Support, abi_compatible, support
from omnirelay.extensions.watch import package_paths

WAT = '(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))'
PAYLOAD = wasmtime.wat2wasm(WAT)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def trust(signer) -> Keyring:
    return Keyring([signer.trusted_key()])


def pack(signer, payload=PAYLOAD, **kw) -> bytes:
    args = {"name": "auth", "version": "1.2.0", "kind": "wasm"} | kw
    return build_package(payload, signer=signer, **args)


def refused(data: bytes, trust: Keyring, **kw) -> PackageError:
    with pytest.raises(PackageError) as e:
        verify_package(data, trust, origin="pkg.orpkg", **kw)
    assert "pkg.orpkg" in str(e.value)
    return e.value


def test_round_trip(signer, trust):
    data = pack(signer, capabilities=["wasm.headers"])
    pkg = verify_package(data, trust, origin="auth.orpkg", kind="wasm")
    m = pkg.manifest
    assert (m.name, m.version, m.kind, m.capabilities) == ("auth", "1.2.0", "wasm",
                                                          ("wasm.headers",))
    assert m.abi == support().abis["wasm"] == "proxy_wasm/0.2.1"
    assert pkg.payload == PAYLOAD and m.size == len(PAYLOAD)
    assert pkg.key_id == signer.key_id
    assert pack(signer, capabilities=["wasm.headers"]) == data  # deterministic bytes
    assert sorted(members(data)) == ["manifest.json", "payload", "signature.json"]


def test_unsigned_is_refused(trust):
    e = refused(pack(None), trust)
    assert e.reason == "unsigned"
    assert "no signature" in str(e)


def test_unknown_key_is_refused(signer):
    other = Keyring([Signer.generate().trusted_key()])
    e = refused(pack(signer), other)
    assert e.reason == "unknown_key" and signer.key_id in str(e)
    assert refused(pack(signer), Keyring()).reason == "unknown_key"
    assert "extensions.trusted_keys" in str(refused(pack(signer), Keyring()))


def test_key_under_the_right_id_but_wrong_public_key_is_bad_signature(signer):
    impostor = Signer.generate(key_id=signer.key_id)
    e = refused(pack(impostor), Keyring([signer.trusted_key()]))
    assert e.reason == "bad_signature"


def test_expired_key_is_refused(signer):
    ring = Keyring([signer.trusted_key(not_after=time.time() - 10)])
    assert refused(pack(signer), ring).reason == "expired_key"


def test_tampered_payload_is_refused(signer, trust):
    e = refused(tampered(pack(signer)), trust)
    assert e.reason == "hash_mismatch" and "altered" in str(e)
    assert "(auth 1.2.0)" in str(e)


def test_tampered_manifest_is_refused(signer, trust):
    parts = members(pack(signer))
    manifest = json.loads(parts["manifest.json"])
    manifest["version"] = "9.9.9"
    parts["manifest.json"] = json.dumps(manifest, indent=2).encode()
    assert refused(rezip(parts), trust).reason == "bad_signature"
    # Re-serializing the same manifest differently is not tampering: it is canonicalized.
    parts = members(pack(signer))
    parts["manifest.json"] = json.dumps(json.loads(parts["manifest.json"]), indent=2).encode()
    assert verify_package(rezip(parts), trust).manifest.version == "1.2.0"


def test_payload_swapped_with_its_manifest_hash_is_refused(signer, trust):
    parts = members(pack(signer))
    manifest = json.loads(parts["manifest.json"])
    other = wasmtime.wat2wasm('(module (memory (export "memory") 2))')
    manifest.update(sha256=hashlib.sha256(other).hexdigest(), size=len(other))
    parts["manifest.json"], parts["payload"] = json.dumps(manifest).encode(), other
    assert refused(rezip(parts), trust).reason == "bad_signature"


def test_wrong_kind_unsupported_abi_and_missing_capability(signer, trust):
    assert refused(pack(signer), trust, kind="dsl").reason == "wrong_kind"
    e = refused(pack(signer, abi="proxy_wasm/0.3.0"), trust)
    assert e.reason == "unsupported_abi" and "proxy_wasm/0.2.1" in str(e)
    assert refused(pack(signer, abi="proxy_wasm/0.2.9"), trust).reason == "unsupported_abi"
    assert refused(pack(signer, abi="other_abi/0.2.1"), trust).reason == "unsupported_abi"
    e = refused(pack(signer, capabilities=["wasm.network_filters", "wasm.headers"]), trust)
    assert e.reason == "missing_capability" and "wasm.network_filters" in str(e)
    no_native = Support(abis={"wasm": "proxy_wasm/0.2.1", "native": None, "dsl": None},
                        features=())
    data = pack(signer, kind="native", abi="omnirelay_native/1.0", payload=b"\x7fELF")
    assert refused(data, trust, support_=no_native).reason == "unsupported_kind"


def test_abi_rules():
    assert abi_compatible("proxy_wasm/0.2.0", "proxy_wasm/0.2.1")
    assert not abi_compatible("proxy_wasm/0.2.2", "proxy_wasm/0.2.1")
    assert not abi_compatible("proxy_wasm/0.1.0", "proxy_wasm/0.2.1")
    assert abi_compatible("omnirelay_native/1.0", "omnirelay_native/1.3")
    assert not abi_compatible("omnirelay_native/2.0", "omnirelay_native/1.3")
    assert abi_compatible("dsl/1", "dsl/1")
    assert not abi_compatible("dsl", "dsl/1")


@pytest.mark.parametrize("damage, words", [
    (lambda p: b"not a zip at all", "not an extension package"),
    (lambda p: rezip({k: v for k, v in members(p).items() if k != "payload"}), "no payload"),
    (lambda p: rezip(members(p) | {"extra.txt": b"x"}), "unexpected members"),
    (lambda p: rezip(members(p) | {"manifest.json": b"[1]"}), "JSON object"),
])
def test_malformed_packages(signer, trust, damage, words):
    e = refused(damage(pack(signer)), trust)
    assert e.reason == "malformed" and words in str(e)


def test_trust_files_bundle_and_pem(tmp_path, signer):
    bundle = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(bundle)
    other = Signer.generate()
    pem = tmp_path / "other.pub.pem"
    pem.write_bytes(other.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ring = load_trust([bundle, pem])
    assert signer.key_id in ring and other.key_id in ring
    assert verify_package(pack(other), ring).key_id == other.key_id
    with pytest.raises(ValueError, match="cannot read trusted key"):
        load_trust([tmp_path / "missing.json"])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="junk.json"):
        load_trust([tmp_path / "junk.json"])


def test_load_verified_records_refusals_and_loads(tmp_path, signer, trust):
    packages.REGISTRY.clear()
    path = tmp_path / "auth.orpkg"
    packages.write_package(path, pack(signer))
    pkg = packages.load_verified(path, "wasm", trust, binding="spec.routes[0].filters[0]")
    assert pkg.manifest.name == "auth"
    with pytest.raises(PackageError) as e:
        packages.load_verified(tmp_path / "absent.orpkg", "wasm", trust)
    assert e.value.reason == "unreadable"
    # A refused file is refused (a reload, `omnirelay validate`) ...
    packages.write_package(path, pack(None))
    with pytest.raises(PackageError) as e:
        packages.load_verified(path, "wasm", trust)
    assert e.value.reason == "unsigned"
    # ... but a process starting falls back to the last version loaded from that path
    # (kept on disk, verified again): it runs what the others run ...
    with packages.last_good_fallback():
        again = packages.load_verified(path, "wasm", trust)
        assert again.manifest.version == "1.2.0" and again.payload == PAYLOAD
        # ... unless that copy is no longer trusted either.
        with pytest.raises(PackageError) as e:
            packages.load_verified(path, "wasm", Keyring([Signer.generate().trusted_key()]))
        assert e.value.reason == "unsigned"
    snap = packages.REGISTRY.snapshot()
    entry = next(p for p in snap["packages"] if p["path"] == str(path))
    assert entry["active"]["version"] == "1.2.0"  # the refused file did not replace it
    assert entry["last_failure"]["reason"] == "unsigned" and entry["failures"] == 3
    assert snap["bindings"]["spec.routes[0].filters[0]"]["name"] == "auth"
    counts = packages.REGISTRY.failure_counts()
    assert counts[("wasm", "auth", "unsigned")] == 3
    assert counts[("wasm", "absent", "unreadable")] == 1


# --------------------------------------------------------------------------- the CLI


def ext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnirelay.cli.main", "ext", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_keygen_pack_verify(tmp_path):
    key, bundle = tmp_path / "ext.key", tmp_path / "trust.json"
    r = ext("keygen", str(key), "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    key_id = r.stdout.strip()
    assert key_id in Keyring.load(bundle)
    wat = tmp_path / "plugin.wat"
    wat.write_text(WAT)
    out = tmp_path / "auth.orpkg"
    r = ext("pack", "--kind", "wasm", "--name", "auth", "--version", "2.0.0", "--key", str(key),
            "--capability", "wasm.headers", str(wat), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "auth 2.0.0" in r.stdout
    assert inspect_package(out.read_bytes())["signed"] is True
    pkg = verify_package(out.read_bytes(), Keyring.load(bundle), kind="wasm")
    assert pkg.payload.startswith(b"\0asm")  # .wat is packed as a Wasm binary
    r = ext("verify", str(out), "--trust", str(bundle))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and key_id in r.stdout and "proxy_wasm/0.2.1" in r.stdout

    stranger = tmp_path / "stranger.json"
    Keyring([Signer.generate().trusted_key()]).save(stranger)
    r = ext("verify", str(out), "--trust", str(stranger))
    assert r.returncode == 1
    assert "unknown_key" in r.stdout + r.stderr and "auth" in r.stdout + r.stderr
    r = ext("verify", str(tmp_path / "nope.orpkg"), "--trust", str(bundle))
    assert r.returncode == 1 and "unreadable" in r.stdout + r.stderr


def test_watched_paths_come_from_every_filter_config():
    wasm = "omnirelay.filters.http.wasm"
    config = load_config({
        "spec": {
            "listeners": [{"name": "l", "address": "127.0.0.1", "port": 0,
                           "filters": [{"name": wasm, "config": {"package": "a.orpkg"}}]}],
            "routes": [{"name": "r", "match": {}, "cluster": "c", "filters": [
                {"name": wasm, "config": {"package": "b.orpkg"}},
                {"name": wasm, "config": {"package": "a.orpkg"}},
                {"name": wasm, "config": {"path": "c.wasm"}},
                {"name": "x.custom", "config": {"plugins": [{"package": "d.orpkg"}]}}]}],
            "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]}})
    assert package_paths(config) == ["a.orpkg", "b.orpkg", "d.orpkg"]
