"""The `meshkit` command: keygen (with trust-bundle rotation), token add, serve's checks."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from mkharness import ROOT

from meshkit.api.auth import TokenAuthority
from omnirelay.config.signing import Keyring, Signer


def meshkit(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshkit", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_keygen_rotates_the_trust_bundle_and_tokens_are_stored_hashed(tmp_path):
    r = meshkit("keygen", "old.pem", "--bundle", "trust.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    old_id = r.stdout.strip()
    assert Signer.load(tmp_path / "old.pem").key_id == old_id
    assert meshkit("keygen", "old.pem", cwd=tmp_path).returncode != 0  # no silent overwrite

    before = time.time()
    r = meshkit("keygen", "new.pem", "--bundle", "trust.json", "--overlap", "1h", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.strip()
    ring = Keyring.load(tmp_path / "trust.json")
    assert ring.get(new_id).not_after is None
    assert before + 3600 <= ring.get(old_id).not_after <= time.time() + 3600
    signed = Signer.load(tmp_path / "old.pem").sign(b"{}")
    assert ring.verify_signed(signed, now=before + 60)

    r = meshkit("token", "add", "--tokens-file", "tokens.json", "--name", "ci",
                "--permission", "read", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    stored = (tmp_path / "tokens.json").read_text()
    assert token not in stored and json.loads(stored)["tokens"][0]["name"] == "ci"
    principal = TokenAuthority.load(tmp_path / "tokens.json").authenticate(f"Bearer {token}")
    assert (principal.name, principal.permission) == ("ci", "read")

    r = meshkit("serve", "--signing-key", "new.pem", cwd=tmp_path)
    assert r.returncode == 2 and "--tokens-file" in r.stderr  # no auth by accident
