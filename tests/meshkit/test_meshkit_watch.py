"""The watch protocol end to end: a `meshkit serve` process on 127.0.0.1 and test nodes built
on the generated stubs. Tests share one server (module fixture) and so use distinct node ids
and scopes; the ones that signal or stop the server get their own."""
from __future__ import annotations

import json
import signal
import time

import grpc
import pytest
from mkharness import document, verify_snapshot, wait_for

from omnirelay.config.protos import admin_pb2, mesh_pb2
from omnirelay.config.signing import (
    BAD_SIGNATURE,
    EXPIRED_KEY,
    HASH_MISMATCH,
    UNKNOWN_KEY,
    Keyring,
    Signer,
    VerificationError,
    document_digest,
)


def test_publish_reaches_a_watching_node_signed_and_ack_is_recorded(meshkit):
    node = meshkit.watch("edge-1", tenant="t-watch", locality=mesh_pb2.Locality(region="r1"))
    try:
        node.expect_quiet(0.3)  # nothing published for its scopes yet
        reply = meshkit.publish(document("w1"), scope="tenant/t-watch")
        assert reply.watchers == 1 and reply.key_id == meshkit.signer.key_id
        snap = node.snapshot()
        assert (snap.scope, snap.version, snap.epoch, snap.revision) == (
            "tenant/t-watch", "w1", 1, reply.revision)
        assert snap.signature_algorithm == "ed25519" and snap.nonce
        config = verify_snapshot(snap, meshkit.keyring())
        assert config.route("r").cluster == "c" and config.metadata.version == "w1"

        node.ack(snap)
        record = wait_for(lambda: (n := meshkit.nodes()["edge-1"]).acked_version and n)
        assert (record.acked_version, record.acked_epoch, record.sent_nonce) == ("w1", 1,
                                                                                 snap.nonce)
        assert record.connected and record.scope == "tenant/t-watch" and not record.drift
        assert (record.tenant, record.locality) == ("t-watch", "r1")

        # Every publish is pushed with a new nonce; the node runs the old one until it ACKs.
        meshkit.publish(document("w2", routes=("r", "s")), scope="tenant/t-watch")
        snap2 = node.snapshot()
        assert snap2.version == "w2" and snap2.epoch == 2 and snap2.nonce != snap.nonce
        verify_snapshot(snap2, meshkit.keyring())
        assert wait_for(lambda: meshkit.nodes()["edge-1"].drift)  # sent, not yet ACKed
        node.ack(snap, nonce=snap.nonce)  # a stale ACK is ignored
        time.sleep(0.1)
        assert meshkit.nodes()["edge-1"].acked_version == "w1"
        node.ack(snap2)
        wait_for(lambda: meshkit.nodes()["edge-1"].acked_version == "w2")
        assert not meshkit.nodes()["edge-1"].drift
    finally:
        node.close()
    wait_for(lambda: not meshkit.nodes()["edge-1"].connected)


def test_reconnecting_node_gets_the_current_snapshot_at_once(meshkit):
    meshkit.publish(document("c1"), scope="node/late-1")
    node = meshkit.watch("late-1")
    try:
        snap = node.snapshot()
        assert snap.scope == "node/late-1" and snap.version == "c1"
    finally:
        node.close()


def test_most_specific_scope_wins(meshkit):
    meshkit.publish(document("g"), scope="global")
    meshkit.publish(document("region"), scope="region/r-spec")
    plain = meshkit.watch("plain-1")
    regional = meshkit.watch("reg-1", locality=mesh_pb2.Locality(region="r-spec", zone="z"))
    try:
        assert plain.snapshot().version == "g"
        assert regional.snapshot().version == "region"
        meshkit.publish(document("mine"), scope="node/reg-1")
        assert regional.snapshot().scope == "node/reg-1"
        plain.expect_quiet(0.2)
    finally:
        plain.close()
        regional.close()


def test_nack_is_recorded_and_audited(meshkit):
    meshkit.publish(document("n1"), scope="tenant/t-nack")
    node = meshkit.watch("nacker-1", tenant="t-nack")
    try:
        snap = node.snapshot()
        node.nack(snap, BAD_SIGNATURE, "signature does not match the document")
        record = wait_for(lambda: (n := meshkit.nodes()["nacker-1"]).nack_code and n)
        assert (record.nack_version, record.nack_code) == ("n1", BAD_SIGNATURE)
        assert "does not match" in record.nack_message and not record.acked_version
        assert record.drift
        entries = [e for e in meshkit.audit(scope="tenant/t-nack") if e.action == "nack"]
        assert len(entries) == 1
        assert entries[0].actor == "node:nacker-1" and entries[0].revision == snap.revision
        assert BAD_SIGNATURE in entries[0].detail
        # A later ACK clears it.
        node.ack(snap)
        wait_for(lambda: meshkit.nodes()["nacker-1"].acked_version == "n1")
        assert meshkit.nodes()["nacker-1"].nack_code == ""
    finally:
        node.close()


def test_tampered_snapshots_are_refused_by_the_node(meshkit):
    meshkit.publish(document("tamper"), scope="node/tamper-1")
    node = meshkit.watch("tamper-1")
    try:
        snap = node.snapshot()
    finally:
        node.close()
    ring = meshkit.keyring()
    verify_snapshot(snap, ring)

    def refused(**changes) -> str:
        bad = mesh_pb2.Snapshot()
        bad.CopyFrom(snap)
        for key, value in changes.items():
            setattr(bad, key, value)
        with pytest.raises(VerificationError) as info:
            verify_snapshot(bad, ring)
        return info.value.reason

    altered = snap.document.replace(b'"port":9', b'"port":1')
    assert refused(document=altered) == HASH_MISMATCH
    assert refused(document=altered, sha256=document_digest(altered)) == BAD_SIGNATURE
    assert refused(signature=bytes(64)) == BAD_SIGNATURE
    assert refused(key_id="ed25519-0000000000000000") == UNKNOWN_KEY
    stranger = Keyring([Signer.generate(key_id=snap.key_id).trusted_key()])
    with pytest.raises(VerificationError) as info:
        verify_snapshot(snap, stranger)
    assert info.value.reason == BAD_SIGNATURE


def test_status_reports_show_drift(meshkit):
    reply = meshkit.publish(document("s1"), scope="node/status-1")
    from omnirelay.config.protos import mesh_pb2_grpc

    stub = mesh_pb2_grpc.NodeStatusStub(meshkit.channel)
    node = mesh_pb2.Node(id="status-1")
    status = stub.Report(mesh_pb2.StatusReport(node=node, config_version="old",
                                               config_sha256="00" * 32,
                                               health=mesh_pb2.NODE_HEALTH_SERVING), timeout=5)
    assert status.config_drift and status.desired_version == "s1"
    assert status.desired_sha256 == reply.sha256
    assert meshkit.nodes()["status-1"].drift
    assert meshkit.nodes()["status-1"].health == "serving"
    status = stub.Report(mesh_pb2.StatusReport(node=node, config_version="s1",
                                               config_sha256=reply.sha256,
                                               discovery_generation=status.discovery_generation),
                         timeout=5)
    assert not status.config_drift and not status.discovery_drift
    assert not meshkit.nodes()["status-1"].drift


def test_discovery_feed_snapshot_then_deltas(meshkit):
    from omnirelay.config.protos import mesh_pb2_grpc

    meshkit.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
        cluster="disc-a", endpoints=b'[{"address": "127.0.0.1", "port": 9001}]'))
    stub = mesh_pb2_grpc.EndpointDiscoveryStub(meshkit.channel)
    call = stub.Watch(mesh_pb2.DiscoveryRequest(node=mesh_pb2.Node(id="disc-1"),
                                                clusters=["disc-a", "disc-b"]), timeout=10)
    try:
        first = next(call)
        assert first.WhichOneof("kind") == "snapshot"
        (cluster,) = first.snapshot.clusters
        assert cluster.cluster == "disc-a" and cluster.endpoints[0].port == 9001
        reply = meshkit.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
            cluster="disc-b", endpoints=b"- {address: 127.0.0.2, port: 9002, weight: 3}"))
        delta = next(call)
        assert delta.generation == reply.generation
        assert delta.delta.base_generation == first.generation
        assert [c.cluster for c in delta.delta.updated] == ["disc-b"]
        assert delta.delta.updated[0].endpoints[0].weight == 3
        meshkit.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(cluster="unrelated",
                                                                    endpoints=b"[]"))
        empty = next(call)  # moves the node to the current generation, nothing to apply
        assert not empty.delta.updated and empty.delta.base_generation == delta.generation
    finally:
        call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        meshkit.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
            cluster="disc-a", endpoints=b'[{"address": "127.0.0.1", "port": 0}]'))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "port" in info.value.details()


def test_bad_hello_is_refused_with_a_reason(meshkit):
    node = meshkit.watch("")
    try:
        response = node.next()
        assert response.error.code == "invalid_hello" and "node.id" in response.error.message
        with pytest.raises(grpc.RpcError) as info:
            node.next()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        node.close()


def test_a_newer_stream_supersedes_an_older_one(meshkit):
    meshkit.publish(document("dup"), scope="node/dup-1")
    old = meshkit.watch("dup-1")
    try:
        old.snapshot()
        new = meshkit.watch("dup-1")
        try:
            new.snapshot()
            response = old.next()
            assert response.error.code == "superseded" and not response.error.retryable
            wait_for(lambda: meshkit.nodes()["dup-1"].connected)
        finally:
            new.close()
    finally:
        old.close()


def test_key_rotation_on_sighup_resigns_within_the_overlap(fresh_meshkit):
    mk = fresh_meshkit
    mk.publish(document("rot"), scope="global")
    node = mk.watch("rot-1")
    try:
        before = node.snapshot()
        old_ring = mk.keyring()
        verify_snapshot(before, old_ring)

        new_signer = Signer.generate()
        now = time.time()
        rotated = old_ring.rotate(new_signer.trusted_key(), overlap=60, now=now)
        new_signer.save(mk.key_path)
        mk.signal(signal.SIGHUP)

        after = node.snapshot()  # same document, re-signed by the new key
        assert after.key_id == new_signer.key_id != before.key_id
        assert after.document == before.document
        assert after.revision == before.revision and after.nonce != before.nonce
        verify_snapshot(after, rotated, now=now + 30)
        verify_snapshot(before, rotated, now=now + 30)  # the old one still verifies...
        with pytest.raises(VerificationError) as info:
            verify_snapshot(before, rotated, now=now + 61)
        assert info.value.reason == EXPIRED_KEY  # ...until the overlap ends
        with pytest.raises(VerificationError) as info:
            verify_snapshot(after, old_ring)  # a node not given the new key yet
        assert info.value.reason == UNKNOWN_KEY

        assert mk.publish(document("rot2")).key_id == new_signer.key_id
        assert any(e.action == "rotate-key" and new_signer.key_id in e.detail
                   for e in mk.audit())
    finally:
        node.close()


def test_shutdown_tells_nodes_when_to_come_back(fresh_meshkit):
    mk = fresh_meshkit
    mk.publish(document("bye"))
    node = mk.watch("bye-1")
    try:
        node.snapshot()
        mk.signal(signal.SIGTERM)
        response = node.next()
        error = response.error
        assert error.code == "shutting_down" and error.retryable
        assert error.retry.retry_after_ms > 0
        assert 0 < error.retry.backoff_base_ms <= error.retry.backoff_max_ms
        with pytest.raises(grpc.RpcError) as info:
            node.next()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers.get("omnirelay-retry-after-ms") == str(error.retry.retry_after_ms)
    finally:
        node.close()
    assert mk.stop() == 0


@pytest.mark.parametrize("nonce_size", [0, 16, 127, 128, 300, 20_000])
def test_preserialized_snapshot_response_parses_as_the_message(nonce_size):
    """The push path concatenates the snapshot's wire form made at publish with the nonce
    field; it must decode to the very message the generated code would have built."""
    from meshkit.cache import Snapshot
    from meshkit.server.watch import snapshot_response
    from meshkit.store import StoredConfig

    doc = json.dumps(document("wire")).encode() + b" " * nonce_size  # lengths past a varint byte
    stored = StoredConfig(scope="region/eu", revision=300, version="wire", epoch=2 ** 40,
                          document=doc, sha256=document_digest(doc), actor="test", updated_at=0.0)
    snapshot = Snapshot.build(stored, Signer.generate())
    nonce = "n" * nonce_size
    parsed = mesh_pb2.WatchResponse.FromString(snapshot_response(snapshot, nonce))
    assert parsed.WhichOneof("kind") == "snapshot"
    assert parsed.snapshot == mesh_pb2.Snapshot(
        version="wire", nonce=nonce, epoch=2 ** 40, scope="region/eu", revision=300,
        document=doc, sha256=snapshot.sha256, key_id=snapshot.key_id,
        signature=snapshot.signature, signature_algorithm="ed25519")
