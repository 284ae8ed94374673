"""Endpoint lists live in the store: a real `meshkit serve` (SQLite) is given lists, stopped and
started again on the same file, and a discovery client gets the same lists at the same
generation; generations go on increasing from there, a node that held the generation before
the restart is sent only what changed since, and GetEndpoints (`omnirctl endpoints get`) shows
each list's revision for a compare-and-swap. A deleted list (DeleteEndpoints, `omnirctl
endpoints delete`, on SQLite and on etcd) reaches watching nodes as a delta's `removed`, nodes
reconnecting with an older generation (before and after a restart), and an `omnirelay run`
node's workers."""
from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from mkharness import MeshKitProcess, omnirctl, wait_for

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


def _delete(server: MeshKitProcess, cluster: str, token: str = "mutate", **kw) -> int:
    return server.admin("DeleteEndpoints", admin_pb2.DeleteEndpointsRequest(
        cluster=cluster, **kw), token=token).generation


def _refused(server: MeshKitProcess, cluster: str, token: str = "mutate", **kw):
    with pytest.raises(grpc.RpcError) as info:
        _delete(server, cluster, token, **kw)
    return info.value


def _leading(server: MeshKitProcess) -> MeshKitProcess:
    """Once the replica leads (at once on SQLite; on etcd once it won the election)."""
    wait_for(lambda: server.admin("GetStatus", admin_pb2.GetStatusRequest(),
                                  token="read").leadership.is_leader, timeout=10)
    return server


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_a_deleted_list_reaches_watchers_and_reconnecting_nodes(backend, tmp_path, request):
    server = MeshKitProcess(tmp_path)
    if backend == "etcd":
        endpoint = request.getfixturevalue("etcd").endpoint
        server.extra_args = ["--store", f"etcd://{endpoint}/del/{uuid.uuid4().hex}"]
    _leading(server.start())
    try:
        web = _set(server, "web", 8080)
        api = _set(server, "api", 9090)
        call = _discover(server)
        try:
            assert _lists(next(call).snapshot.clusters) == {"web": [8080], "api": [9090]}
            gone = _delete(server, "web", expected_revision=web)
            assert gone > api  # a deletion is a new generation
            delta = next(call)
            assert delta.WhichOneof("kind") == "delta"
            assert (delta.generation, delta.delta.base_generation) == (gone, api)
            assert list(delta.delta.removed) == ["web"] and not delta.delta.updated
        finally:
            call.cancel()
        got = server.admin("GetEndpoints", admin_pb2.GetEndpointsRequest(), token="read")
        assert got.generation == gone and [c.cluster for c in got.clusters] == ["api"]
        assert ("delete-endpoints", "cluster/web", gone) in {
            (e.action, e.scope, e.revision) for e in server.audit()}

        # Refusals, each with the status the other endpoint calls use.
        error = _refused(server, "web")
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "'web' has no endpoint list" in error.details()
        assert ("meshkit-error", "not_found") in error.trailing_metadata()
        error = _refused(server, "api", expected_revision=web)
        assert error.code() == grpc.StatusCode.ABORTED
        assert f"expected it at revision {web}, but it is at revision {api}" in error.details()
        assert _refused(server, "api", token="read").code() == grpc.StatusCode.PERMISSION_DENIED
        assert _refused(server, "bad/name").code() == grpc.StatusCode.INVALID_ARGUMENT

        # A node that held a generation before the deletion is sent the removal.
        for known in (web, api):
            call = _discover(server, known=known)
            try:
                catch_up = next(call)
            finally:
                call.cancel()
            assert catch_up.WhichOneof("kind") == "delta" and catch_up.generation == gone
            assert list(catch_up.delta.removed) == ["web"]
        assert server.stop() == 0

        # After a restart the generation is the store revision the lists were loaded at: on
        # SQLite the deletion's (the newest endpoint write), on etcd at least that. A node
        # that held an older one gets a full snapshot without web (the deletions before the
        # restart are not known to the feed, so no delta could carry them).
        _leading(server.start())
        status = server.admin("GetStatus", admin_pb2.GetStatusRequest(), token="read")
        loaded = status.discovery_generation
        assert loaded == gone if backend == "sqlite" else loaded >= gone
        call = _discover(server, known=api)
        try:
            restarted = next(call)
        finally:
            call.cancel()
        assert restarted.WhichOneof("kind") == "snapshot" and restarted.generation == loaded
        assert _lists(restarted.snapshot.clusters) == {"api": [9090]}

        # omnirctl endpoints delete: conflict 3, read token 4, done 0, not found 6.
        shown = omnirctl(server, "endpoints", "delete", "api", "--expected-revision", str(web))
        assert shown.returncode == 3, shown.stderr
        assert omnirctl(server, "endpoints", "delete", "api", token="read").returncode == 4
        shown = omnirctl(server, "endpoints", "delete", "api", "--expected-revision", str(api))
        assert shown.returncode == 0, shown.stderr
        dropped = server.admin("GetEndpoints", admin_pb2.GetEndpointsRequest(),
                               token="read").generation
        assert dropped > loaded
        assert shown.stdout.strip() == f"cluster api: endpoints deleted at generation {dropped}"
        shown = omnirctl(server, "endpoints", "delete", "api")
        assert shown.returncode == 6 and "'api' has no endpoint list" in shown.stderr
    finally:
        server.stop()


def _relay_doc(port: int) -> dict:
    return {
        "metadata": {"version": "del-1"},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": [{"name": "all", "match": {}, "cluster": "svc"}],
            "clusters": [{"name": "svc", "endpoints": [], "discovery": {"type": "api"}}],
        },
        "admin": {"address": "127.0.0.1", "port": 0},
    }


def test_an_omnirelay_node_drops_a_deleted_list(tmp_path):
    """The node's discovery client drops the list and hands the drop to its workers as it
    hands updates: every worker then has nowhere to send the cluster (503)."""
    runtime = str(Path(__file__).resolve().parent.parent / "runtime")
    if runtime not in sys.path:
        sys.path.insert(0, runtime)
    from runtime_harness import RelayProcess, Upstream, body_or_status, free_port, poll, request

    from omnirelay.config.signing import Keyring
    from omnirelay.control.discovery import DiscoveryClient

    (tmp_path / "mk").mkdir()
    server = MeshKitProcess(tmp_path / "mk").start()
    upstream = Upstream("A")
    delivered: list[tuple[str, int]] = []
    seen = threading.Event()

    def deliver(cluster, endpoints):
        delivered.append((cluster, len(endpoints)))
        seen.set()

    client = DiscoveryClient([server.address], mesh_pb2.Node(id="del-client"), deliver)
    try:
        _set(server, "svc", upstream.port)
        server.publish(_relay_doc(free_port()))
        trust = tmp_path / "trust.json"
        Keyring([server.signer.trusted_key()]).save(trust)
        client.start()
        assert client.synced.wait(10) and client.lists.keys() == {"svc"}
        proxy = RelayProcess("run", "--control-plane", server.address, "--node-id", "del-1",
                             "--trust-key", str(trust), "--workers", "2",
                             "--lkg-dir", str(tmp_path / "lkg"),
                             "--bootstrap-timeout", "20s", "--drain-timeout", "1s")
        try:
            url = proxy.listeners(timeout=30)["edge"]
            assert [body_or_status(url) for _ in range(4)] == ["A"] * 4
            seen.clear()
            gone = _delete(server, "svc")
            assert seen.wait(10) and delivered[-1] == ("svc", 0)
            wait_for(lambda: client.generation == gone)
            assert "svc" not in client.lists
            poll(lambda: all(body_or_status(url) == "status 503" for _ in range(6)),
                 what="503 from every worker once svc's list is deleted")
            admin = proxy.wait_for(r"omnirelay: admin on (\S+)", stream="stdout").group(1)
            poll(lambda: json.loads(request(admin, "/config_dump")[1])["discovery"][
                "generation"] == gone, what="the node at the deletion's generation")
            assert json.loads(request(admin, "/config_dump")[1])["discovery"]["clusters"] == []
        finally:
            assert proxy.stop() == 0, proxy.output()
    finally:
        client.stop()
        upstream.close()
        server.stop()


def test_feed_catch_up_after_a_load_that_hides_earlier_deletions():
    from meshkit.server.discovery import EndpointFeed
    from meshkit.store import StoredEndpoints

    def stored(cluster: str, revision: int, deleted: bool = False) -> StoredEndpoints:
        data = b"" if deleted else b'[{"address": "127.0.0.1", "port": 80}]'
        return StoredEndpoints(cluster, revision, data, "t", 0.0, deleted)

    feed = EndpointFeed()
    # Loaded at store revision 9: api's list is from 7, and something (web's deletion, say)
    # happened at 9; the feed cannot know what.
    feed.load([stored("api", 7)], 9)
    assert (feed.generation, feed.floor) == (9, 9)
    for known in (0, 7, 12):  # none, older than the load, another deployment's
        first = feed.catch_up(known, None)
        assert first.WhichOneof("kind") == "snapshot" and first.generation == 9, known
        assert [c.cluster for c in first.snapshot.clusters] == ["api"]
    assert feed.catch_up(9, None) is None  # current
    assert feed.apply(stored("web", 10)) and feed.apply(stored("web", 11, deleted=True))
    assert not feed.apply(stored("api", 11, deleted=True))  # not newer: already applied
    for known in (9, 10):
        delta = feed.catch_up(known, None)
        assert delta.WhichOneof("kind") == "delta" and delta.generation == 11
        assert (list(delta.delta.removed), list(delta.delta.updated)) == (["web"], [])
    assert not feed.catch_up(9, {"api"}).delta.removed  # not followed: not named
    assert feed.apply(stored("web", 12))  # back again: an update, no longer a removal
    delta = feed.catch_up(10, None)
    assert ([c.cluster for c in delta.delta.updated], list(delta.delta.removed)) == (["web"], [])
