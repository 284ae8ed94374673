"""Validating a 10,000-route config snapshot, as MeshKit does before every publish and as a
node does before applying it.

- `test_meshkit_validate`: `meshkit.publish.validate` on the document bytes (JSON): schema and
  graph checks (`omnirelay.config.load_config`), then the canonical JSON and its SHA-256, i.e.
  the whole of the pipeline's validate step.
- `test_node_verify_and_load`: what a node does with the signed snapshot before its build
  check: SHA-256 and Ed25519 signature (`Keyring.verify`), then `load_config`.

Target (issue 6): under 1 s per validation on this machine. Each case asserts its result and
prints its median against the target (not asserted: a timing on a shared machine is not a
test); `pytest bench/micro/test_bench_validate.py --benchmark-only -s`.
"""
from __future__ import annotations

import json

import pytest

from meshkit.publish import validate
from omnirelay.config import canonical_json, load_config
from omnirelay.config.signing import Keyring, Signer

ROUTES = 10_000
CLUSTERS = 100
TARGET_SECONDS = 1.0


def big_document(routes: int = ROUTES, clusters: int = CLUSTERS) -> bytes:
    """A listener, `routes` routes (path prefixes on 100 virtual hosts, some with header
    matches, retries and header edits) over `clusters` clusters."""
    spec_routes = []
    for i in range(routes):
        route = {
            "name": f"route-{i}",
            "match": {"path": {"prefix": f"/svc{i % 100}/r{i}"},
                      "headers": [{"name": "x-tenant", "exact": f"t{i % 7}"}] if i % 5 == 0
                      else []},
            "cluster": f"cluster-{i % clusters}",
        }
        if i % 10 == 0:
            route["retry_policy"] = {"retry_on": ["connect-failure", "5xx"], "num_retries": 2}
            route["request_headers"] = {"set": [{"name": "x-route", "value": f"r{i}"}]}
        spec_routes.append(route)
    return json.dumps({
        "metadata": {"version": "bench-10k", "epoch": 1},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
            "routes": spec_routes,
            "clusters": [{"name": f"cluster-{c}",
                          "endpoints": [{"address": "127.0.0.1", "port": 10_000 + c}]}
                         for c in range(clusters)],
        },
    }).encode()


@pytest.fixture(scope="module")
def document() -> bytes:
    return big_document()


def _report(benchmark, what: str) -> None:
    median = benchmark.stats.stats.median
    verdict = "meets" if median < TARGET_SECONDS else "MISSES"
    print(f"\n{what}: median {median * 1000:.0f} ms, {verdict} the target of "
          f"{TARGET_SECONDS:g} s")


def test_meshkit_validate(benchmark, document):
    validated = benchmark.pedantic(validate, args=(document,), rounds=5, iterations=1,
                                   warmup_rounds=1)
    assert len(validated.config.spec.routes) == ROUTES
    assert len(validated.sha256) == 64
    _report(benchmark, f"meshkit validate, {ROUTES} routes ({len(document) >> 10} KiB)")


def test_node_verify_and_load(benchmark, document):
    signer = Signer.generate()
    canonical = canonical_json(load_config(document))
    signed = signer.sign(canonical)
    keyring = Keyring([signer.trusted_key()])

    def node_check():
        keyring.verify(signed.document, signed.signature, signed.key_id, sha256=signed.sha256)
        return load_config(signed.document)

    config = benchmark.pedantic(node_check, rounds=5, iterations=1, warmup_rounds=1)
    assert len(config.spec.routes) == ROUTES
    _report(benchmark, f"node verify + load, {ROUTES} routes ({len(canonical) >> 10} KiB)")
