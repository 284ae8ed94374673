"""Drift and its repair on a real MeshKit process (`--drift-retry 0.2s,0.4s,3`): a node that
NACKs, or reports running an older config, shows drift in status (gRPC GetStatus and
`omnirctl status`); MeshKit re-sends the desired snapshot with a fresh nonce, a bounded
number of times, and the node converges once it ACKs."""
from __future__ import annotations

import json

import pytest
from mkharness import MeshKitProcess, document, omnirctl, wait_for

from omnirelay.config.protos import admin_pb2, mesh_pb2, mesh_pb2_grpc

ATTEMPTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mk = MeshKitProcess(tmp_path_factory.mktemp("meshkit-status"))
    mk.extra_args = ["--drift-retry", f"0.2s,0.4s,{ATTEMPTS}"]
    mk.start()
    try:
        yield mk
    finally:
        mk.stop()


def _status(server, scope: str = "") -> admin_pb2.GetStatusResponse:
    return server.admin("GetStatus", admin_pb2.GetStatusRequest(scope=scope), token="read")


def _node(server, node_id: str, scope: str) -> admin_pb2.NodeRecord | None:
    return next((n for n in _status(server, scope).nodes if n.id == node_id), None)


def test_nack_shows_drift_then_resend_converges(server):
    scope = "node/nacker"
    server.publish(document("s1"), scope=scope)
    node = server.watch("nacker")
    try:
        first = node.snapshot()
        node.nack(first, "apply_failed", "port 80 busy")
        record = wait_for(lambda: (n := _node(server, "nacker", scope)) and n.nack_code and n)
        assert record.drift and record.desired_version == "s1" and record.applied_version == ""
        status = _status(server, scope)
        assert status.drifting == 1 and status.scopes[0].drifting == 1

        out = omnirctl(server, "status", "--scope", scope, token="read")
        assert out.returncode == 0, out.stderr
        row = next(line for line in out.stdout.splitlines() if line.startswith("nacker"))
        assert "NACK s1: apply_failed: port 80 busy" in row and " yes " in row
        assert "1 connected nodes, 1 drifting" in out.stdout
        assert omnirctl(server, "status", "--check", token="read").returncode == 9

        again = node.snapshot(timeout=5)  # MeshKit re-sends it after the backoff
        assert again.sha256 == first.sha256 and again.nonce != first.nonce
        node.ack(again)
        record = wait_for(lambda: (n := _node(server, "nacker", scope)) and not n.drift and n)
        assert record.applied_version == "s1" and record.nack_code == ""
        assert record.repushes == 1
        node.expect_quiet(0.6)  # converged: nothing more is sent
        out = omnirctl(server, "status", "--scope", scope, "--json", token="read")
        body = json.loads(out.stdout)
        assert body["drifting"] == 0 and body["nodes"][0]["applied_version"] == "s1"
    finally:
        node.close()


def test_resends_are_bounded(server):
    server.publish(document("b1"), scope="node/stubborn")
    node = server.watch("stubborn")
    try:
        snap = node.snapshot()
        node.nack(snap, "invalid_config", "no")
        for _ in range(ATTEMPTS):
            snap = node.snapshot(timeout=5)
            node.nack(snap, "invalid_config", "still no")
        node.expect_quiet(1.5)  # the budget (3 re-sends) is spent
        record = _node(server, "stubborn", "node/stubborn")
        assert record.repushes == ATTEMPTS and record.drift
        # A new desired document gets a fresh budget and is sent at once.
        server.publish(document("b2"), scope="node/stubborn")
        assert node.snapshot().version == "b2"
    finally:
        node.close()


def test_reported_old_version_is_drift_and_repaired(server):
    scope = "node/reverter"
    server.publish(document("r1"), scope=scope)
    node = server.watch("reverter")
    try:
        snap = node.snapshot()
        node.ack(snap)
        wait_for(lambda: (n := _node(server, "reverter", scope)) and n.applied_version == "r1")
        # The node says it runs something else (e.g. it fell back to an older LKG).
        stub = mesh_pb2_grpc.NodeStatusStub(server.channel)
        reply = stub.Report(mesh_pb2.StatusReport(
            node=mesh_pb2.Node(id="reverter"), config_version="r0", config_sha256="0" * 64,
            health=mesh_pb2.NODE_HEALTH_DEGRADED), timeout=5)
        assert reply.config_drift and reply.desired_version == "r1"
        record = _node(server, "reverter", scope)
        assert record.drift and record.applied_version == "r0" and record.health == "degraded"
        again = node.snapshot(timeout=5)  # re-sent over the watch stream
        assert again.sha256 == snap.sha256 and again.nonce != snap.nonce
        node.ack(again)
        record = wait_for(lambda: (n := _node(server, "reverter", scope)) and not n.drift and n)
        assert record.applied_version == "r1"
    finally:
        node.close()


def test_status_lists_scopes_and_disconnected_nodes(server):
    server.publish(document("g1"), scope="tenant/listing")
    node = server.watch("lister", tenant="listing")
    node.ack(node.snapshot())
    wait_for(lambda: (n := _node(server, "lister", "tenant/listing")) and not n.drift)
    node.close()
    record = wait_for(lambda: (n := _node(server, "lister", "tenant/listing"))
                      and not n.connected and n)
    assert record.last_seen_unix_ms > 0 and record.applied_version == "g1"
    status = _status(server, "tenant/listing")
    assert [s.scope for s in status.scopes] == ["tenant/listing"]
    assert status.scopes[0].nodes == 0 and status.connected == 0
    out = omnirctl(server, "status", "--scope", "planet/x", token="read")
    assert out.returncode == 1 and "bad scope" in out.stderr and "Traceback" not in out.stderr
    assert omnirctl(server, "status", token=None).returncode == 4


def test_a_sqlite_meshkit_reports_itself_the_leader(server):
    lead = _status(server).leadership
    assert lead.is_leader and lead.store == "sqlite"
    assert lead.replica and lead.leader_replica == lead.replica
    assert lead.leader_address == server.address
    assert lead.term == 0 and lead.lease_ttl_seconds == 0
    out = omnirctl(server, "status", token="read")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"replica {lead.replica} leads (sqlite); "
                                                 "discovery generation ")
    shown = json.loads(omnirctl(server, "status", "--json", token="read").stdout)
    assert shown["leadership"]["is_leader"] is True
    assert shown["leadership"]["leader_address"] == server.address
