"""Endpoint lists live in the store: a real `meshkit serve` (SQLite) is given lists, stopped and
started again on the same file, and a discovery client gets the same lists at the same
generation; generations go on increasing from there, a node that held the generation before
the restart is sent only what changed since, and GetEndpoints (`omnirctl endpoints get`) shows
each list's revision for a compare-and-swap."""
from __future__ import annotations

import json

import grpc
import pytest
from mkharness import MeshKitProcess, omnirctl

from omnirelay.config.protos import admin_pb2, mesh_pb2, mesh_pb2_grpc


def _set(server: MeshKitProcess, cluster: str, *ports: int, **kw) -> int:
    data = json.dumps([{"address": "127.0.0.1", "port": p} for p in ports]).encode()
    return server.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
        cluster=cluster, endpoints=data, **kw)).generation


def _discover(server: MeshKitProcess, known: int = 0):
    stub = mesh_pb2_grpc.EndpointDiscoveryStub(server.channel)
    return stub.Watch(mesh_pb2.DiscoveryRequest(node=mesh_pb2.Node(id="eps-node"),
                                                clusters=["web", "api"],
                                                known_generation=known), timeout=10)


def _lists(clusters) -> dict[str, list[int]]:
    return {c.cluster: [e.port for e in c.endpoints] for c in clusters}


def test_endpoints_are_served_again_after_a_restart(tmp_path):
    server = MeshKitProcess(tmp_path).start()
    try:
        web = _set(server, "web", 8080, 8081)
        api = _set(server, "api", 9090)
        assert api > web > 0
        call = _discover(server)
        try:
            before = next(call)
        finally:
            call.cancel()
        assert before.generation == api
        assert _lists(before.snapshot.clusters) == {"web": [8080, 8081], "api": [9090]}
        audit = [(e.action, e.scope, e.revision) for e in server.audit()
                 if e.action == "set-endpoints"]
        assert audit == [("set-endpoints", "cluster/web", web),
                         ("set-endpoints", "cluster/api", api)]
        assert server.stop() == 0

        server.start()  # the same SQLite file
        status = server.admin("GetStatus", admin_pb2.GetStatusRequest(), token="read")
        assert status.discovery_generation == api
        call = _discover(server)
        try:
            after = next(call)
            assert after.generation == api
            assert _lists(after.snapshot.clusters) == {"web": [8080, 8081], "api": [9090]}
            # Generations go on from the store's revision: never backwards for a node.
            web2 = _set(server, "web", 8082, expected_revision=web)
            assert web2 > api
            delta = next(call)
            assert delta.generation == web2 and delta.delta.base_generation == api
            assert _lists(delta.delta.updated) == {"web": [8082]}
        finally:
            call.cancel()

        # A node that held `api` before the restart is sent only what changed since.
        call = _discover(server, known=api)
        try:
            catch_up = next(call)
        finally:
            call.cancel()
        assert catch_up.WhichOneof("kind") == "delta"
        assert catch_up.delta.base_generation == api and catch_up.generation == web2
        assert _lists(catch_up.delta.updated) == {"web": [8082]}

        # What the feed serves, with each list's revision for a compare-and-swap.
        got = server.admin("GetEndpoints", admin_pb2.GetEndpointsRequest(), token="read")
        assert got.generation == web2
        assert [(c.cluster, c.revision, [e.port for e in c.endpoints]) for c in got.clusters] == [
            ("api", api, [9090]), ("web", web2, [8082])]
        shown = omnirctl(server, "endpoints", "get", "web", token="read")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0] == f"discovery generation {web2}"
        assert shown.stdout.split("\n")[2].split() == ["web", str(web2), "127.0.0.1:8082"]

        # Compare-and-swap on the list's revision.
        with pytest.raises(grpc.RpcError) as info:
            _set(server, "web", 1, expected_revision=web)
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert f"expected it at revision {web}, but it is at revision {web2}" in (
            info.value.details())
    finally:
        server.stop()
