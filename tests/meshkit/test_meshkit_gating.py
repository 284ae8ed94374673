"""Capability gating on a real MeshKit process: a publish that a connected, targeted node cannot
run (a Wasm filter, an HTTP/2 upstream, a TCP listener) is refused with the nodes and what they
lack; dry runs and `config validate --scope` list the gaps; `--force` publishes anyway
(audited); nodes served from another scope are not in the way."""
from __future__ import annotations

import json

import grpc
import pytest
from mkharness import document, omnirctl, wait_for

from omnirelay.config import load_config
from omnirelay.config.protos import admin_pb2, mesh_pb2
from omnirelay.config.requirements import required

WASM_FILTER = {"name": "omnirelay.filters.http.wasm", "config": {"path": "f.wasm"}}


def _caps(*features: str) -> mesh_pb2.Capabilities:
    return mesh_pb2.Capabilities(api_versions=["omnirelay.mesh.v1", "omnirelay.config.v1"],
                                 features=list(features))


def _wasm_doc(version: str) -> dict:
    doc = document(version)
    doc["spec"]["routes"][0]["filters"] = [WASM_FILTER]
    return doc


def _h2_doc(version: str) -> dict:
    doc = document(version)
    doc["spec"]["clusters"][0]["protocol"] = "http2"
    return doc


def test_required_capabilities_of_a_document():
    assert required(load_config(json.dumps(document("plain")).encode())) == {}
    doc = _h2_doc("x")
    doc["spec"]["routes"][0]["filters"] = [WASM_FILTER]
    doc["spec"]["listeners"].append({"name": "raw", "address": "127.0.0.1", "port": 0,
                                     "protocol": "tcp", "tcp": {"cluster": "c"}})
    needs = required(load_config(json.dumps(doc).encode()))
    assert needs == {"feature:wasm": "route r filter omnirelay.filters.http.wasm",
                     "feature:h2c": "cluster c", "feature:tcp": "listener raw"}


def _connect(meshkit, node_id: str, tenant: str, *features: str):
    node = meshkit.watch(node_id, tenant=tenant, capabilities=_caps(*features))
    wait_for(lambda: (n := meshkit.nodes().get(node_id)) and n.connected)
    return node


def test_publish_refused_for_nodes_lacking_a_capability(meshkit, tmp_path):
    scope = "tenant/gated"
    meshkit.publish(document("g0"), scope=scope)
    old = _connect(meshkit, "gate-old", "gated", "http1", "h2c")
    new = _connect(meshkit, "gate-new", "gated", "http1", "h2c", "wasm")
    own = _connect(meshkit, "gate-own", "gated", "http1")  # served its own node scope
    meshkit.publish(document("own"), scope="node/gate-own")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            meshkit.publish(_wasm_doc("g1"), scope=scope)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        message = refused.value.details()
        assert "node gate-old: lacks feature:wasm" in message
        assert "gate-new" not in message and "gate-own" not in message
        current = meshkit.admin("GetConfig", admin_pb2.GetConfigRequest(scope=scope))
        assert current.version == "g0"  # nothing written
        assert any(e.action == "refused" for e in meshkit.audit(scope=scope))

        path = tmp_path / "wasm.json"
        path.write_text(json.dumps(_wasm_doc("g1")))
        out = omnirctl(meshkit, "config", "set", str(path), "--scope", scope)
        assert out.returncode == 8 and "gate-old" in out.stderr and "Traceback" not in out.stderr
        out = omnirctl(meshkit, "config", "set", str(path), "--scope", scope, "--dry-run")
        assert out.returncode == 0 and "node gate-old: lacks feature:wasm" in out.stdout
        out = omnirctl(meshkit, "config", "validate", str(path), "--scope", scope)
        assert out.returncode == 0 and "node gate-old: lacks feature:wasm" in out.stdout

        # HTTP/2 upstreams: both nodes speak h2c, nobody is in the way.
        assert meshkit.publish(_h2_doc("g2"), scope=scope).capability_gaps == []

        out = omnirctl(meshkit, "config", "set", str(path), "--scope", scope, "--force")
        assert out.returncode == 0, out.stderr
        assert "forced past capability gaps" in out.stdout and "gate-old" in out.stdout
        push = [e for e in meshkit.audit(scope=scope) if e.action == "push"][-1]
        assert "forced past capability gaps" in push.detail and "gate-old" in push.detail
    finally:
        for node in (old, new, own):
            node.close()


def test_disconnected_nodes_do_not_gate(meshkit):
    node = _connect(meshkit, "gate-gone", "gone", "http1")
    node.close()
    wait_for(lambda: not meshkit.nodes()["gate-gone"].connected)
    reply = meshkit.publish(_wasm_doc("w1"), scope="tenant/gone")
    assert reply.revision > 0 and list(reply.capability_gaps) == []
