"""Verifying a signed extension package, as a node does before every load of it (each
config build that uses it, and each new version the watcher sees): ZIP read, Ed25519
signature over the manifest, SHA-256 of the payload, ABI and capability checks.

`pytest bench/micro/test_bench_packages.py --benchmark-only -s` prints the medians; measured
here: a median of about 0.3 ms for a 4 KiB payload and 11 ms for 1 MiB (inflate + SHA-256).
"""
from __future__ import annotations

import os

import pytest

from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions.packages import build_package, verify_package
from omnirelay.extensions.support import support


@pytest.mark.parametrize("size", [4 << 10, 1 << 20])
def test_verify_package(benchmark, size):
    signer = Signer.generate()
    trust = Keyring([signer.trusted_key()])
    data = build_package(b"\0asm\1\0\0\0" + os.urandom(size), name="bench", version="1",
                         kind="wasm", signer=signer)
    support()  # computed once per process; not part of a verification
    pkg = benchmark(verify_package, data, trust, kind="wasm")
    assert pkg.manifest.size == size + 8
    print(f"\nverify {size} B payload: median {benchmark.stats['median'] * 1000:.2f} ms")
