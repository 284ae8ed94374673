"""The config client's status reports and reconciliation against a real MeshKit process: a
node in sync reports what it runs and never reconciles; a node that keeps drifting (its
apply fails) reconciles by reopening its stream and converges once the apply works; a hung
control plane (SIGSTOP) makes the client reconcile, and it catches up after SIGCONT.
MeshKit's own re-sends are disabled (--drift-retry ...,0) so only the client repairs drift."""
from __future__ import annotations

import signal
import threading
from typing import Self

import mkharness
import pytest

from omnirelay.config.protos import mesh_pb2
from omnirelay.control.client import Backoff, ControlClient

STALE = 1.0
REPORT = 0.1


@pytest.fixture
def meshkit(tmp_path):
    server = mkharness.MeshKitProcess(tmp_path)
    server.extra_args = ["--drift-retry", "1s,1s,0"]
    server.start()
    try:
        yield server
    finally:
        server.signal(signal.SIGCONT)
        server.stop()


class Node:
    """A ControlClient whose activation can be made to fail."""

    def __init__(self, server, node_id: str) -> None:
        self.fail: str | None = None
        self.applied: list[str] = []
        self.client = ControlClient(
            [server.address], mesh_pb2.Node(id=node_id), server.keyring(),
            activate=self.activate, build_check=lambda config: config,
            backoff=Backoff(base=0.05, maximum=0.2), report_interval=REPORT, stale_after=STALE,
            discovery_generation=lambda: 7,
        )
        self.lock = threading.Lock()

    def activate(self, config) -> str | None:
        if self.fail:
            return self.fail
        with self.lock:
            self.applied.append(config.metadata.version)
        return None

    def __enter__(self) -> Self:
        self.client.start()
        return self

    def __exit__(self, *exc) -> None:
        self.client.stop()


def _node(server, node_id: str):
    return server.nodes().get(node_id)


def test_in_sync_node_reports_and_does_not_reconcile(meshkit):
    meshkit.publish(mkharness.document("v1"))
    with Node(meshkit, "steady") as node:
        mkharness.wait_for(lambda: node.client.acks >= 1)
        record = mkharness.wait_for(
            lambda: (n := _node(meshkit, "steady")) and n.reported_version == "v1" and n)
        assert record.health == "serving" and record.reported_generation == 7
        assert not record.drift and record.applied_version == "v1"
        start = node.client.reports
        # Several stale periods' worth of reports, each one in sync: no reconcile.
        mkharness.wait_for(lambda: node.client.reports >= start + int(2 * STALE / REPORT),
                           timeout=10)
        assert node.client.reconciles == 0
        assert node.applied == ["v1"]


def test_drifting_node_reconciles_and_converges(meshkit):
    meshkit.publish(mkharness.document("d1"))
    with Node(meshkit, "drifter") as node:
        mkharness.wait_for(lambda: node.client.acks >= 1)
        node.fail = "listener port busy"
        meshkit.publish(mkharness.document("d2", routes=("r", "s")))
        record = mkharness.wait_for(
            lambda: (n := _node(meshkit, "drifter")) and n.nack_code and n)
        assert record.drift and record.nack_code == "apply_failed"
        # Reports keep showing drift, so the client reopens its stream (MeshKit does not
        # re-send here) and is sent d2 again: NACKed again while the apply fails.
        mkharness.wait_for(lambda: node.client.reconciles >= 1, timeout=10)
        assert _node(meshkit, "drifter").drift
        node.fail = None
        mkharness.wait_for(lambda: "d2" in node.applied, timeout=10)
        record = mkharness.wait_for(
            lambda: (n := _node(meshkit, "drifter")) and not n.drift and n)
        assert record.applied_version == "d2" and record.nack_code == ""


def test_hung_control_plane_triggers_reconcile(meshkit):
    meshkit.publish(mkharness.document("h1"))
    with Node(meshkit, "patient") as node:
        mkharness.wait_for(lambda: node.client.acks >= 1)
        meshkit.signal(signal.SIGSTOP)  # connections stay open; nothing answers
        try:
            mkharness.wait_for(lambda: node.client.reconciles >= 1, timeout=10)
            assert node.client.acks == 1
        finally:
            meshkit.signal(signal.SIGCONT)
        # Back: the reopened stream's Hello brings h1 again, ACKed without a reload.
        mkharness.wait_for(lambda: node.client.acks >= 2, timeout=15)
        assert node.applied == ["h1"]
        settled = node.client.reports + 3  # a few replies in sync first
        mkharness.wait_for(lambda: node.client.reports >= settled, timeout=10)
        before = node.client.reconciles  # in sync again: no further reconciles
        start = node.client.reports
        mkharness.wait_for(lambda: node.client.reports >= start + int(2 * STALE / REPORT),
                           timeout=10)
        assert node.client.reconciles == before
