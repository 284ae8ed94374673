"""Signed config deltas on the watch stream, end to end: a `meshkit serve` process and nodes
built on the generated stubs. Nodes that announce `config_delta/1` and ACKed a document get the
next publish as a Delta; the node side is OmniRelay's own client code (`ControlClient.handle`
and `handle_delta`, not started: the test carries its replies over the stub stream), so a
tampered or mismatched delta is refused exactly as a proxy refuses it. Tests share one server
and so use distinct node scopes."""
from __future__ import annotations

import json
from typing import Any

import pytest
from mkharness import IO_TIMEOUT, WatchClient, verify_snapshot, wait_for

from omnirelay.config import canonical_json, load_config
from omnirelay.config.delta import BASE_MISMATCH, FEATURE, FORMAT, HASH_MISMATCH, apply_patch
from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import Signer, document_digest
from omnirelay.control.client import ControlClient

ROUTES = 40


def big(version: str, changed: int | None = None, cluster: str = "d") -> dict[str, Any]:
    """A config of ROUTES routes to cluster c; route `changed` goes to `cluster` instead."""
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
            "routes": [{"name": f"r{i}", "match": {"path": {"prefix": f"/r{i}"}},
                        "cluster": cluster if i == changed else "c"} for i in range(ROUTES)],
            "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}]}
                         for n, p in (("c", 9), ("d", 10))],
        },
    }


def delta_node(meshkit, node_id: str, current: str = "") -> WatchClient:
    node = mesh_pb2.Node(id=node_id, capabilities=mesh_pb2.Capabilities(features=[FEATURE]))
    hello = mesh_pb2.WatchRequest(hello=mesh_pb2.Hello(node=node, current_sha256=current))
    return WatchClient(meshkit.channel, node, hello=hello)


def relay(meshkit) -> ControlClient:
    """OmniRelay's config client, not started: it only turns responses into ACKs and NACKs."""
    return ControlClient(["127.0.0.1:1"], mesh_pb2.Node(id="unused"), meshkit.keyring(),
                         activate=lambda config: None, build_check=lambda config: config)


def answer(node: WatchClient, client: ControlClient, response: mesh_pb2.WatchResponse) -> str:
    """Let the client handle `response` and send its reply; the reply's kind."""
    kind = response.WhichOneof("kind")
    reply = client.handle(response.snapshot) if kind == "snapshot" else \
        client.handle_delta(response.delta)
    node.send(reply)
    return reply.WhichOneof("kind")


def test_second_publish_arrives_as_a_signed_delta_and_is_acked(meshkit):
    first = meshkit.publish(big("d1"), scope="node/delta-1")
    node = delta_node(meshkit, "delta-1")
    try:
        snap = node.snapshot()  # nothing ACKed yet: the whole snapshot
        assert snap.sha256 == first.sha256
        node.ack(snap)
        wait_for(lambda: meshkit.nodes()["delta-1"].acked_version == "d1")

        second = meshkit.publish(big("d2", changed=7), scope="node/delta-1")
        response = node.next()
        assert response.WhichOneof("kind") == "delta"
        delta = response.delta
        assert (delta.version, delta.epoch, delta.scope, delta.revision) == (
            "d2", 2, "node/delta-1", second.revision)
        assert (delta.base_version, delta.base_sha256) == ("d1", snap.sha256)
        assert delta.patch_format == FORMAT and delta.sha256 == second.sha256
        assert delta.key_id == meshkit.signer.key_id and delta.nonce != snap.nonce
        assert len(delta.patch) * 10 < len(snap.document)
        # The node's work: patch, canonical JSON, SHA-256, then the signature over the whole.
        document = apply_patch(snap.document, delta.patch, delta.sha256).document
        assert document_digest(document) == second.sha256
        rebuilt = mesh_pb2.Snapshot(document=document, sha256=delta.sha256, key_id=delta.key_id,
                                    signature=delta.signature,
                                    signature_algorithm=delta.signature_algorithm)
        config = verify_snapshot(rebuilt, meshkit.keyring())
        assert config.route("r7").cluster == "d" and config.route("r6").cluster == "c"
        node.send(mesh_pb2.WatchRequest(ack=mesh_pb2.Ack(
            version=delta.version, nonce=delta.nonce, epoch=delta.epoch, sha256=delta.sha256)))
        record = wait_for(lambda: (n := meshkit.nodes()["delta-1"]).acked_version == "d2" and n)
        assert not record.drift and record.nack_code == ""
        assert "feature:config_delta/1" in record.capabilities
    finally:
        node.close()


def test_tampered_delta_is_nacked_and_the_full_snapshot_follows(meshkit):
    meshkit.publish(big("t1"), scope="node/delta-2")
    node = delta_node(meshkit, "delta-2")
    client = relay(meshkit)
    try:
        assert answer(node, client, node.next()) == "ack"
        wait_for(lambda: meshkit.nodes()["delta-2"].acked_version == "t1")
        second = meshkit.publish(big("t2", changed=3), scope="node/delta-2")
        response = node.next()
        assert response.WhichOneof("kind") == "delta"
        patch = response.delta.patch
        assert b'"d"' in patch
        response.delta.patch = patch.replace(b'"d"', b'"c"')  # altered on the way
        reply = client.handle_delta(response.delta)
        assert reply.WhichOneof("kind") == "nack"
        assert reply.nack.error.code == HASH_MISMATCH and reply.nack.version == "t2"
        assert client.version == "t1"  # nothing applied
        node.send(reply)

        # MeshKit answers the NACK with the whole snapshot at once (not after a drift backoff).
        response = node.next(timeout=IO_TIMEOUT)
        assert response.WhichOneof("kind") == "snapshot"
        assert response.snapshot.sha256 == second.sha256
        assert answer(node, client, response) == "ack"
        assert client.version == "t2" and client.sha256 == second.sha256
        record = wait_for(lambda: (n := meshkit.nodes()["delta-2"]).acked_version == "t2" and n)
        assert not record.drift and record.nack_code == "" and record.repushes == 0
        assert any(e.action == "nack" and HASH_MISMATCH in e.detail
                   for e in meshkit.audit(scope="node/delta-2"))

        # Deltas resume once the node ACKed again.
        meshkit.publish(big("t3", changed=4), scope="node/delta-2")
        response = node.next()
        assert response.WhichOneof("kind") == "delta"
        assert answer(node, client, response) == "ack" and client.deltas == 1
        wait_for(lambda: meshkit.nodes()["delta-2"].acked_version == "t3")
    finally:
        node.close()


def test_node_without_the_capability_gets_snapshots(meshkit):
    meshkit.publish(big("o1"), scope="node/old-1")
    node = meshkit.watch("old-1")  # an older build: no config_delta/1 in its Hello
    try:
        snap = node.snapshot()
        node.ack(snap)
        wait_for(lambda: meshkit.nodes()["old-1"].acked_version == "o1")
        meshkit.publish(big("o2", changed=1), scope="node/old-1")
        snap = node.snapshot()
        assert snap.version == "o2"
        assert load_config(snap.document).route("r1").cluster == "d"
    finally:
        node.close()


def test_base_mismatch_gets_the_snapshot(meshkit):
    first = meshkit.publish(big("b1"), scope="node/delta-3")
    seed = delta_node(meshkit, "delta-3")
    try:
        seed.ack(seed.snapshot())  # MeshKit has served b1: a base it knows
        wait_for(lambda: meshkit.nodes()["delta-3"].acked_version == "b1")
    finally:
        seed.close()
    second = meshkit.publish(big("b2", changed=2), scope="node/delta-3")

    # A node whose Hello names b1 is sent a delta at once; this one does not run b1 after
    # all (say its LKG was lost): it refuses the base and is sent the snapshot.
    node = delta_node(meshkit, "delta-3", current=first.sha256)
    client = relay(meshkit)
    try:
        response = node.next()
        assert response.WhichOneof("kind") == "delta"
        assert response.delta.base_sha256 == first.sha256
        reply = client.handle_delta(response.delta)
        assert reply.nack.error.code == BASE_MISMATCH
        node.send(reply)
        response = node.next()
        assert response.WhichOneof("kind") == "snapshot"
        assert answer(node, client, response) == "ack" and client.sha256 == second.sha256
        wait_for(lambda: meshkit.nodes()["delta-3"].acked_version == "b2")
    finally:
        node.close()

    # A Hello naming a document MeshKit does not know: the snapshot.
    node = delta_node(meshkit, "delta-3", current="ab" * 32)
    try:
        assert node.snapshot().sha256 == second.sha256
    finally:
        node.close()


def test_a_delta_no_smaller_than_the_snapshot_is_not_sent(meshkit):
    small = {"metadata": {"version": "s1"}, "spec": {
        "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
        "routes": [{"name": "r", "match": {}, "cluster": "c"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}}
    other = {"metadata": {"version": "s2"}, "spec": {
        "listeners": [{"name": "edge2", "address": "127.0.0.2", "port": 1}],
        "routes": [{"name": "x", "match": {"path": {"exact": "/x"}}, "cluster": "e"}],
        "clusters": [{"name": "e", "endpoints": [{"address": "127.0.0.3", "port": 7}]}]}}
    meshkit.publish(small, scope="node/delta-4")
    node = delta_node(meshkit, "delta-4")
    try:
        node.ack(node.snapshot())
        wait_for(lambda: meshkit.nodes()["delta-4"].acked_version == "s1")
        meshkit.publish(other, scope="node/delta-4")
        assert node.snapshot().version == "s2"
    finally:
        node.close()


def test_many_nodes_on_one_base_share_one_delta(meshkit):
    """Every node on the same base gets the same patch bytes (made once per publish)."""
    meshkit.publish(big("m1"), scope="tenant/t-many")
    nodes = [WatchClient(meshkit.channel, n, hello=mesh_pb2.WatchRequest(hello=mesh_pb2.Hello(
        node=n))) for n in (mesh_pb2.Node(id=f"many-{i}", tenant="t-many",
                                          capabilities=mesh_pb2.Capabilities(features=[FEATURE]))
                            for i in range(3))]
    try:
        for node in nodes:
            node.ack(node.snapshot())
        wait_for(lambda: all(meshkit.nodes()[f"many-{i}"].acked_version == "m1"
                             for i in range(3)))
        reply = meshkit.publish(big("m2", changed=5), scope="tenant/t-many")
        deltas = [node.next().delta for node in nodes]
        assert len({d.patch for d in deltas}) == 1 and len({d.nonce for d in deltas}) == 3
        assert all(d.version == "m2" and d.revision == reply.revision for d in deltas)
        made = f"-> tenant/t-many revision {reply.revision}:"
        assert sum(made in line for line in meshkit.log().splitlines()) == 1
    finally:
        for node in nodes:
            node.close()


@pytest.mark.parametrize("nonce_size", [0, 16, 200])
def test_preserialized_delta_response_parses_as_the_message(nonce_size):
    from meshkit.cache import Snapshot
    from meshkit.delta import build_delta
    from meshkit.server.watch import delta_response
    from meshkit.store import StoredConfig

    def stored(version: str, revision: int, changed: int | None) -> StoredConfig:
        doc = canonical_json(load_config(json.dumps(big(version, changed)).encode()))
        return StoredConfig(scope="region/eu", revision=revision, version=version, epoch=revision,
                            document=doc, sha256=document_digest(doc), actor="t", updated_at=0.0)

    signer = Signer.generate()
    base = Snapshot.build(stored("w1", 1, None), signer)
    target = Snapshot.build(stored("w2", 2, 9), signer)
    delta = build_delta("w1", base.document, base.sha256, target)
    assert delta is not None and len(delta.wire) * 2 < len(target.wire)
    nonce = "n" * nonce_size
    parsed = mesh_pb2.WatchResponse.FromString(delta_response(delta, nonce))
    assert parsed.WhichOneof("kind") == "delta"
    assert parsed.delta == mesh_pb2.Delta(
        version="w2", nonce=nonce, epoch=2, scope="region/eu", revision=2,
        sha256=target.sha256, key_id=target.key_id, signature=target.signature,
        signature_algorithm="ed25519", base_version="w1", base_sha256=base.sha256,
        patch_format=FORMAT, patch=delta.patch)
    assert apply_patch(base.document, parsed.delta.patch, target.sha256).document == target.document


def test_delta_cache_shares_one_build_and_forgets_old_bases():
    import asyncio

    from meshkit.cache import Snapshot
    from meshkit.delta import DeltaCache
    from meshkit.store import StoredConfig

    signer = Signer.generate()

    def snap(version: str, revision: int, changed: int | None) -> Snapshot:
        doc = canonical_json(load_config(json.dumps(big(version, changed)).encode()))
        return Snapshot.build(StoredConfig(
            scope="global", revision=revision, version=version, epoch=revision, document=doc,
            sha256=document_digest(doc), actor="t", updated_at=0.0), signer)

    first, second, third = snap("c1", 1, None), snap("c2", 2, 1), snap("c3", 3, 2)
    cache = DeltaCache(document_bytes=2 * len(first.document))

    async def run():
        assert await cache.get(first.sha256, second) is None  # c1 never sent: unknown base
        cache.remember(first)
        deltas = await asyncio.gather(*(cache.get(first.sha256, second) for _ in range(5)))
        assert deltas[0] is not None and all(d is deltas[0] for d in deltas)
        assert deltas[0].base_version == "c1" and deltas[0].target is second
        assert await cache.get(second.sha256, second) is None  # the node runs it already
        cache.remember(second)
        cache.remember(third)  # past the byte budget: c1, the least recently sent, goes
        assert not cache.knows(first.sha256) and cache.knows(second.sha256)
        assert await cache.get(first.sha256, third) is None
        assert await cache.get(second.sha256, third) is not None

    asyncio.run(run())
