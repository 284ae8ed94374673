"""The config client's capability check against a real MeshKit: a snapshot needing what the
node does not announce in its Hello is NACKed `missing_capability` (each capability with the
place in the document needing it), the old config keeps routing and stays the LKG, and MeshKit
shows the NACK; the next valid publish is ACKed. The node lacking h2c is the config client
built as `omnirelay run --control-plane` builds it (node_message from this build's
capabilities, less h2c), activating on a real Relay on a loop thread; a real `omnirelay run`
announcing everything ACKs a document needing h2c and a TCP listener (the Hello's set and the
document's requirements use the same names). The NACK's details and the shared requirements
function are checked at the end."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Self

import grpc
import pytest
import uvloop
from runtime_harness import RelayProcess, body_or_status, free_port, poll

from omnirelay import Relay
from omnirelay.admin.capabilities import capabilities
from omnirelay.config import Config, canonical_json, load_config
from omnirelay.config.protos import admin_pb2, mesh_pb2
from omnirelay.config.requirements import describe, flatten, missing, required
from omnirelay.config.signing import Keyring, Signer
from omnirelay.control.client import MISSING_CAPABILITY, Backoff, ControlClient
from omnirelay.control.lkg import load_lkg
from omnirelay.control.node import ControlOptions, node_message
from omnirelay.runtime.supervisor import build_checked

WASM_FILTER = {"name": "omnirelay.filters.http.wasm", "config": {"path": "f.wasm"}}


def _doc(version: str, route_to: str, port: int, upstreams: dict[str, int], *,
         h2c: str | None = None) -> dict:
    """One listener routing everything to `route_to`; cluster `h2c` (if any) speaks h2c."""
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": [{"name": "all", "match": {}, "cluster": route_to}],
            "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}],
                          **({"protocol": "http2"} if n == h2c else {})}
                         for n, p in upstreams.items()],
        },
    }


class RelayNode:
    """A config client feeding a real Relay on its own loop thread: the first config starts
    it, later ones reload it (what the supervisor does for its workers)."""

    def __init__(self, meshkit, node_id: str, caps: dict, lkg_dir) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.relay: Relay | None = None
        self.node = node_message(ControlOptions(endpoints=[meshkit.address], node_id=node_id,
                                                trust_keys=[], capabilities=caps))
        self.client = ControlClient([meshkit.address], self.node, meshkit.keyring(),
                                    activate=self.activate, build_check=build_checked,
                                    lkg_dir=str(lkg_dir), backoff=Backoff(0.05, 0.2),
                                    report_interval=0.2, stale_after=30.0)

    async def _apply(self, config: Config) -> None:
        if self.relay is None:
            self.relay = Relay(config, admin=False)
            await self.relay.start()
        else:
            await self.relay.reload(config)

    def activate(self, config: Config) -> str | None:
        try:
            asyncio.run_coroutine_threadsafe(self._apply(config), self.loop).result(10)
        except Exception as exc:  # noqa: BLE001 - the client NACKs with the reason
            return f"{type(exc).__name__}: {exc}"
        return None

    def __enter__(self) -> Self:
        self.thread.start()
        self.client.start()
        return self

    def __exit__(self, *exc) -> None:
        self.client.stop()
        if self.relay is not None:
            asyncio.run_coroutine_threadsafe(self.relay.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_snapshot_needing_a_missing_capability_is_nacked(tmp_path, meshkit, upstreams):
    port = free_port()
    caps = capabilities()
    caps["protocols"] = [p for p in caps["protocols"] if p != "h2c"]
    lkg_dir = tmp_path / "lkg"
    meshkit.publish(_doc("v1", "a", port, upstreams))
    with RelayNode(meshkit, "no-h2c", caps, lkg_dir) as node:
        assert "feature:h2c" not in node.client.capabilities
        assert "feature:h2" in node.client.capabilities
        record = poll(lambda: (n := meshkit.nodes().get("no-h2c")) and n.acked_version == "v1"
                      and n, what="ACK of v1")
        assert set(record.capabilities) == node.client.capabilities  # the Hello's set
        url = node.relay.url("edge")
        assert body_or_status(url) == "A"

        # MeshKit's gating refuses it for this connected node; forced, the node refuses it.
        v2 = _doc("v2", "b", port, upstreams, h2c="b")
        with pytest.raises(grpc.RpcError) as refused:
            meshkit.publish(v2)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "node no-h2c: lacks feature:h2c" in refused.value.details()
        meshkit.publish(v2, force=True)
        record = poll(lambda: (n := meshkit.nodes()["no-h2c"]).nack_version == "v2" and n,
                      what="NACK of v2")
        assert record.nack_code == MISSING_CAPABILITY
        assert "feature:h2c (needed by cluster b)" in record.nack_message
        assert record.acked_version == "v1"
        status = meshkit.admin("GetStatus", admin_pb2.GetStatusRequest(), token="read")
        (shown,) = [n for n in status.nodes if n.id == "no-h2c"]
        assert shown.nack_code == MISSING_CAPABILITY and "feature:h2c" in shown.nack_message
        # The status report carries it too: the node runs v1, degraded, until the next ACK.
        poll(lambda: (n := meshkit.nodes()["no-h2c"]).reported_version == "v1"
             and n.health == "degraded", what="a degraded status report")
        assert node.client.version == "v1"
        assert load_lkg(lkg_dir, meshkit.keyring()).version == "v1"
        assert all(body_or_status(url) == "A" for _ in range(5))

        # The next publish the node can run is ACKed and routes.
        meshkit.publish(_doc("v3", "b", port, upstreams))
        poll(lambda: meshkit.nodes()["no-h2c"].acked_version == "v3", what="ACK of v3")
        poll(lambda: body_or_status(url) == "B", what="routing per v3")
        assert load_lkg(lkg_dir, meshkit.keyring()).version == "v3"
        assert not node.client.last_error


def test_real_node_runs_what_it_announces(tmp_path, meshkit, upstreams):
    """`omnirelay run` announces this build's set: a document needing h2c and a TCP listener
    passes MeshKit's gating unforced and the node's own check, and is ACKed."""
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    port, raw = free_port(), free_port()
    tcp = {"name": "raw", "address": "127.0.0.1", "port": raw, "protocol": "tcp",
           "tcp": {"cluster": "a"}}
    first, doc = _doc("v0", "a", port, upstreams), _doc("v1", "a", port, upstreams, h2c="b")
    for d in (first, doc):  # the same listeners: listener changes need a restart
        d["spec"]["listeners"].append(tcp)
    assert set(required(load_config(json.dumps(doc).encode()))) == {"feature:h2c",
                                                                    "feature:tcp"}
    meshkit.publish(first, scope="node/full")
    proxy = RelayProcess("run", "--control-plane", meshkit.address, "--node-id", "full",
                         "--trust-key", str(trust), "--bootstrap-timeout", "20s",
                         "--drain-timeout", "1s")
    try:
        poll(lambda: (n := meshkit.nodes().get("full")) and n.acked_version == "v0",
             timeout=30, what="ACK of v0")
        assert {"feature:h2c", "feature:tcp"} <= set(meshkit.nodes()["full"].capabilities)
        meshkit.publish(doc, scope="node/full")  # not forced: the node has both
        record = poll(lambda: (n := meshkit.nodes()["full"]).acked_version == "v1"
                      or n.nack_code and n, timeout=20, what="ACK of v1")
        assert record is True, f"NACK: {record.nack_code}: {record.nack_message}"
        url = poll(lambda: proxy.listeners().get("edge"), what="the edge listener")
        assert body_or_status(url) == "A"
    finally:
        assert proxy.stop() == 0, proxy.output()


def test_required_and_missing_capabilities():
    base = _doc("x", "a", 1, {"a": 2, "b": 3})
    assert required(load_config(json.dumps(base).encode())) == {}
    doc = _doc("x", "a", 1, {"a": 2, "b": 3}, h2c="b")
    doc["spec"]["clusters"].append({"name": "tls2", "protocol": "http2", "tls": {},
                                    "endpoints": [{"address": "127.0.0.1", "port": 4}]})
    doc["spec"]["listeners"][0]["filters"] = [WASM_FILTER]
    doc["spec"]["routes"][0]["filters"] = [WASM_FILTER]  # the listener came first
    doc["spec"]["listeners"].append({"name": "pass", "address": "127.0.0.1", "port": 5,
                                     "protocol": "tls_passthrough",
                                     "sni_routes": [{"server_names": ["*"], "cluster": "a"}]})
    config = load_config(json.dumps(doc).encode())
    assert required(config) == {
        "feature:wasm": "listener edge filter omnirelay.filters.http.wasm",
        "feature:h2c": "cluster b", "feature:h2": "cluster tls2",
        "feature:tls_passthrough": "listener pass"}

    caps = mesh_pb2.Capabilities(api_versions=["omnirelay.mesh.v1"], features=["h2", "wasm"],
                                 wasm_runtimes=["wasmtime"])
    have = flatten(caps)
    assert have == ("api:omnirelay.mesh.v1", "feature:h2", "feature:wasm", "wasm:wasmtime")
    gaps = missing(config, have)
    assert gaps == {"feature:h2c": "cluster b", "feature:tls_passthrough": "listener pass"}
    assert list(describe(gaps)) == ["feature:h2c (needed by cluster b)",
                                    "feature:tls_passthrough (needed by listener pass)"]
    assert missing(config, have + ("feature:h2c", "feature:tls_passthrough")) == {}


def test_client_nack_lists_each_missing_capability(tmp_path):
    """The NACK itself: code, one details line per capability, nothing activated or saved."""
    signer = Signer.generate()
    activated: list[str] = []
    node = mesh_pb2.Node(id="n", capabilities=mesh_pb2.Capabilities(features=["http1", "h2"]))
    client = ControlClient(["127.0.0.1:1"], node, Keyring([signer.trusted_key()]),
                           activate=lambda c: activated.append(c.metadata.version),
                           build_check=lambda c: c, lkg_dir=str(tmp_path))
    doc = _doc("v1", "a", 1, {"a": 2, "b": 3}, h2c="b")
    doc["spec"]["routes"][0]["filters"] = [WASM_FILTER]
    signed = signer.sign(canonical_json(load_config(doc)))
    nack = client.handle(mesh_pb2.Snapshot(
        version="v1", nonce="x", epoch=1, document=signed.document, sha256=signed.sha256,
        key_id=signed.key_id, signature=signed.signature, signature_algorithm="ed25519")).nack
    assert nack.nonce == "x" and nack.error.code == MISSING_CAPABILITY
    assert list(nack.error.details) == [
        "feature:h2c (needed by cluster b)",
        "feature:wasm (needed by route all filter omnirelay.filters.http.wasm)"]
    assert all(line in nack.error.message for line in nack.error.details)
    assert activated == [] and client.version == "" and list(tmp_path.iterdir()) == []
