"""OmniRelay's config client takes signed deltas from a real MeshKit: a real `omnirelay run
--control-plane` routes per a config that arrived as a delta, and once restarted from its LKG
gets the next config as a delta at connect; the client thread applies deltas, keeps its LKG the
signed whole document, and a client built without deltas is never sent one. The delta format
itself (omnirelay.config.delta) is checked at the end."""
from __future__ import annotations

import json

import mkharness
import pytest
from runtime_harness import RelayProcess, body_or_status, free_port, poll

from omnirelay.config import canonical_json, load_config
from omnirelay.config.delta import (
    FEATURE,
    HASH_MISMATCH,
    PATCH_FAILED,
    DeltaError,
    apply_patch,
    make_patch,
)
from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import Keyring, document_digest
from omnirelay.control.client import Backoff, ControlClient
from omnirelay.control.lkg import load_lkg

ROUTES = 40


def _doc(version: str, cluster: str, port: int, upstreams: dict[str, int]) -> dict:
    """ROUTES prefix routes to cluster a, then a catch-all route to `cluster`."""
    routes = [{"name": f"r{i}", "match": {"path": {"prefix": f"/only-{i}"}}, "cluster": "a"}
              for i in range(ROUTES)]
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": [*routes, {"name": "all", "match": {}, "cluster": cluster}],
            "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}]}
                         for n, p in upstreams.items()],
        },
    }


def test_proxy_routes_per_a_config_that_arrived_as_a_delta(tmp_path, meshkit, upstreams):
    port = free_port()
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    meshkit.publish(_doc("v1", "a", port, upstreams))
    proxy = RelayProcess("run", "--control-plane", meshkit.address, "--node-id", "edge-d",
                         "--trust-key", str(trust), "--lkg-dir", str(tmp_path / "lkg"),
                         "--bootstrap-timeout", "20s", "--drain-timeout", "1s")
    try:
        url = proxy.listeners(timeout=30)["edge"]
        assert body_or_status(url) == "A"
        poll(lambda: meshkit.nodes()["edge-d"].acked_version == "v1", what="ACK of v1")
        assert f"feature:{FEATURE}" in meshkit.nodes()["edge-d"].capabilities

        mark = proxy.mark()
        reply = meshkit.publish(_doc("v2", "b", port, upstreams))
        poll(lambda: body_or_status(url) == "B", what="routing per v2")
        poll(lambda: meshkit.nodes()["edge-d"].acked_version == "v2", what="ACK of v2")
        proxy.wait_for(r"config v2 applied from a delta of \d+ bytes", start=mark)
        assert not meshkit.nodes()["edge-d"].drift
        saved = json.loads((tmp_path / "lkg" / "lkg.json").read_bytes())
        assert (saved["version"], saved["sha256"]) == ("v2", reply.sha256)
    finally:
        assert proxy.stop() == 0, proxy.output()

    # Restarted from its LKG (v2), the node's Hello names v2: v3 comes as a delta at connect.
    meshkit.publish(_doc("v3", "a", port, upstreams))
    proxy = RelayProcess("run", "--control-plane", meshkit.address, "--node-id", "edge-d",
                         "--trust-key", str(trust), "--lkg-dir", str(tmp_path / "lkg"),
                         "--bootstrap-timeout", "20s", "--drain-timeout", "1s")
    try:
        url = proxy.listeners(timeout=30)["edge"]
        proxy.wait_for(r"config v3 applied from a delta")
        poll(lambda: body_or_status(url) == "A", what="routing per v3")
        poll(lambda: meshkit.nodes()["edge-d"].acked_version == "v3", what="ACK of v3")
    finally:
        assert proxy.stop() == 0, proxy.output()


def _client(meshkit, node_id: str, lkg_dir=None, **kw) -> tuple[ControlClient, list[str]]:
    applied: list[str] = []
    client = ControlClient([meshkit.address], mesh_pb2.Node(id=node_id), meshkit.keyring(),
                           activate=lambda config: applied.append(config.metadata.version),
                           build_check=lambda config: config, lkg_dir=lkg_dir,
                           backoff=Backoff(base=0.05, maximum=0.2), **kw)
    return client, applied


def test_client_applies_deltas_and_keeps_the_whole_signed_document(tmp_path, meshkit):
    upstreams = {"a": 9, "b": 10}
    meshkit.publish(_doc("c1", "a", 0, upstreams))
    client, applied = _client(meshkit, "delta-client", lkg_dir=str(tmp_path / "lkg"))
    client.start()
    try:
        mkharness.wait_for(lambda: client.acks >= 1)
        for n, cluster in enumerate(("b", "a", "b"), start=2):
            reply = meshkit.publish(_doc(f"c{n}", cluster, 0, upstreams))
            mkharness.wait_for(lambda r=reply: client.sha256 == r.sha256)
            # MeshKit learns the next base from the ACK.
            mkharness.wait_for(lambda v=f"c{n}": meshkit.nodes()["delta-client"].acked_version
                               == v)
        assert applied == ["c1", "c2", "c3", "c4"] and client.deltas == 3
        assert document_digest(client.document) == client.sha256
        lkg = load_lkg(tmp_path / "lkg", meshkit.keyring())
        assert lkg is not None and lkg.version == "c4" and lkg.signed.document == client.document
    finally:
        client.stop()


def test_client_without_deltas_gets_snapshots(meshkit):
    upstreams = {"a": 9, "b": 10}
    meshkit.publish(_doc("s1", "a", 0, upstreams))
    client, applied = _client(meshkit, "plain-client", deltas=False)
    client.start()
    try:
        mkharness.wait_for(lambda: client.acks >= 1)
        reply = meshkit.publish(_doc("s2", "b", 0, upstreams))
        mkharness.wait_for(lambda: client.sha256 == reply.sha256)
        assert applied == ["s1", "s2"] and client.deltas == 0
        assert f"feature:{FEATURE}" not in meshkit.nodes()["plain-client"].capabilities
    finally:
        client.stop()


# ------------------------------------------------------------------------ the delta format
def _canonical(doc: dict) -> bytes:
    return canonical_json(load_config(json.dumps(doc).encode()))


def test_patch_reproduces_the_target_bytes_and_list_edits_stay_small():
    upstreams = {"a": 9, "b": 10}
    base = _canonical(_doc("p1", "a", 0, upstreams))
    moved = _doc("p2", "a", 0, upstreams)
    routes = moved["spec"]["routes"]
    routes.insert(3, {"name": "new", "match": {"path": {"prefix": "/new"}}, "cluster": "b"})
    del routes[20]
    target = _canonical(moved)
    patch = make_patch(base, target)
    assert patch is not None and len(patch) * 5 < len(target)
    patched = apply_patch(base, patch, document_digest(target))
    assert patched.document == target and patched.value == json.loads(target)
    assert canonical_json(patched.value) == target  # the encoding is canonical_json's


def test_patch_refusals_have_their_codes():
    base = _canonical(_doc("p1", "a", 0, {"a": 9}))
    target = _canonical(_doc("p2", "a", 0, {"a": 9}))
    patch = make_patch(base, target)
    assert make_patch(base, json.dumps(json.loads(target), indent=1).encode()) is None
    with pytest.raises(DeltaError) as info:
        apply_patch(base, patch, document_digest(base))
    assert info.value.code == HASH_MISMATCH and "altered" in str(info.value)
    for bad, why in ((b"{]", "not JSON"), (b'{"op": "add"}', "not a JSON array"),
                     (b'[{"op": "remove", "path": "/nope"}]', "does not apply"),
                     (b'[{"op": "add", "path": "/x", "value": NaN}]', "not JSON"),
                     (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
                     (b'[{"op": "add", "path": "/x", "value": "\\ud800"}]',
                      "no canonical JSON")):
        with pytest.raises(DeltaError) as info:
            apply_patch(base, bad, document_digest(target))
        assert info.value.code == PATCH_FAILED and why in str(info.value)
