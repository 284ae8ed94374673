"""Endpoints from MeshKit's discovery feed: `omnirelay run --control-plane` (two workers)
routes an api-discovery cluster to the endpoints MeshKit holds and follows every change; an
embedded Relay does the same through `attach`; the client's snapshot/delta state machine
refuses a gap and an invalid list without losing what it holds."""
from __future__ import annotations

import asyncio
import json

from runtime_harness import RelayProcess, Upstream, body_or_status, free_port, poll, request

import omnirelay
from omnirelay.config.protos import admin_pb2, mesh_pb2
from omnirelay.config.signing import Keyring
from omnirelay.control.discovery import DiscoveryClient, attach


def _doc(port: int) -> dict:
    return {
        "metadata": {"version": "d1"},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": [{"name": "all", "match": {}, "cluster": "svc"}],
            "clusters": [{"name": "svc", "endpoints": [], "discovery": {"type": "api"}}],
        },
        "admin": {"address": "127.0.0.1", "port": 0},
    }


def _set(meshkit, cluster: str, *ports: int) -> int:
    eps = json.dumps([{"address": "127.0.0.1", "port": p} for p in ports]).encode()
    return meshkit.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
        cluster=cluster, endpoints=eps)).generation



def test_supervised_workers_follow_the_feed(tmp_path, meshkit):
    a, b = Upstream("A"), Upstream("B")
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    port = free_port()
    try:
        _set(meshkit, "svc", a.port)
        meshkit.publish(_doc(port))
        proxy = RelayProcess("run", "--control-plane", meshkit.address, "--node-id", "d-1",
                             "--trust-key", str(trust), "--workers", "2",
                             "--lkg-dir", str(tmp_path / "lkg"),
                             "--bootstrap-timeout", "20s", "--drain-timeout", "1s")
        try:
            url = proxy.listeners(timeout=30)["edge"]
            # Both workers start with the list known at start: no 503 window.
            assert [body_or_status(url) for _ in range(6)] == ["A"] * 6
            _set(meshkit, "svc", b.port)
            poll(lambda: all(body_or_status(url) == "B" for _ in range(4)), what="routing to B")
            _set(meshkit, "svc")  # no endpoints: the cluster has nowhere to send
            poll(lambda: body_or_status(url) == "status 503", what="503 with no endpoints")
            _set(meshkit, "svc", a.port, b.port)
            poll(lambda: {body_or_status(url) for _ in range(8)} == {"A", "B"}, what="both endpoints")
            # /config_dump shows the LKG the node saved and the discovery state.
            admin = proxy.wait_for(r"omnirelay: admin on (\S+)", stream="stdout").group(1)
            poll(lambda: json.loads(request(admin, "/config_dump")[1])["last_known_good"],
                 what="an LKG in /config_dump")
            dump = json.loads(request(admin, "/config_dump")[1])
            assert dump["last_known_good"]["version"] == "d1"
            assert dump["discovery"]["clusters"] == ["svc"] and dump["discovery"]["updates"] == 4
        finally:
            assert proxy.stop() == 0, proxy.output()
    finally:
        a.close()
        b.close()


async def test_embedded_relay_attach(meshkit):
    a = Upstream("A")
    try:
        _set(meshkit, "svc", a.port)
        async with omnirelay.Relay(_doc(0)) as relay:
            client = attach(relay, [meshkit.address], mesh_pb2.Node(id="embedded-1"))
            try:
                url = "http://{}:{}/".format(*relay.address())
                for _ in range(200):
                    if await asyncio.to_thread(body_or_status, url) == "A":
                        break
                    await asyncio.sleep(0.05)
                assert await asyncio.to_thread(body_or_status, url) == "A"
                assert client.status()["clusters"] == ["svc"]
            finally:
                await asyncio.to_thread(client.stop)
    finally:
        a.close()


def _cluster(name: str, *ports: int) -> mesh_pb2.ClusterEndpoints:
    return mesh_pb2.ClusterEndpoints(cluster=name, endpoints=[
        mesh_pb2.Endpoint(address="127.0.0.1", port=p) for p in ports])


def test_state_machine_gap_and_invalid_lists():
    got: list[tuple[str, tuple[int, ...]]] = []
    c = DiscoveryClient(["127.0.0.1:1"], mesh_pb2.Node(id="n"),
                        lambda name, eps: got.append((name, tuple(e.port for e in eps))))
    assert c._apply(mesh_pb2.DiscoveryResponse(generation=3, snapshot=mesh_pb2.EndpointSnapshot(
        clusters=[_cluster("x", 1001), _cluster("y", 1002)])))
    assert got == [("x", (1001,)), ("y", (1002,))] and c.generation == 3
    got.clear()
    # A delta on top of generation 3: y changes, x goes away.
    assert c._apply(mesh_pb2.DiscoveryResponse(generation=4, delta=mesh_pb2.EndpointDelta(
        base_generation=3, updated=[_cluster("y", 1003)], removed=["x"])))
    assert got == [("y", (1003,)), ("x", ())] and c.generation == 4
    got.clear()
    # An invalid list (port 0) is refused; y keeps its endpoints.
    assert c._apply(mesh_pb2.DiscoveryResponse(generation=5, delta=mesh_pb2.EndpointDelta(
        base_generation=4, updated=[_cluster("y", 0)])))
    assert got == [] and c.rejected == 1 and c.lists["y"][0].port == 1003
    # A gap (base 9 while 5 is held): nothing applied, the next stream asks for a snapshot.
    assert not c._apply(mesh_pb2.DiscoveryResponse(generation=10, delta=mesh_pb2.EndpointDelta(
        base_generation=9, updated=[_cluster("y", 1004)])))
    assert got == [] and c.generation == 0
    # The next snapshot drops what it no longer lists.
    assert c._apply(mesh_pb2.DiscoveryResponse(generation=11, snapshot=mesh_pb2.EndpointSnapshot(
        clusters=[_cluster("z", 1005)])))
    assert got == [("y", ()), ("z", (1005,))]
