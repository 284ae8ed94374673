"""Two real `meshkit serve` replicas on one real etcd: exactly one leads and publishes, the
other serves watches and discovery and refuses publishes naming the leader, and both replicas'
GetStatus agree on who leads; SIGKILL the leader and the other takes over within the lease
TTL (and says so in its status), publishing continues to the same watching node, and the
endpoint lists outlive the leader. With etcd stopped, store-bound calls fail UNAVAILABLE/503
with etcd's reason."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from mkharness import MeshKitProcess, _env, document, omnirctl, verify_snapshot, wait_for

from meshkit.leader import Leader, current_leader
from meshkit.store.etcd import EtcdStore
from omnirelay.config.protos import admin_pb2, mesh_pb2, mesh_pb2_grpc
from omnirelay.config.signing import Signer

LEASE_TTL = 2


def _leader(endpoint: str, prefix: str) -> Leader | None:
    async def read() -> Leader | None:
        store = EtcdStore([endpoint], prefix)
        try:
            return await current_leader(store)
        finally:
            await store.close()

    return asyncio.run(read())


def _leader_is(endpoint: str, prefix: str, replica: str) -> Leader | None:
    leader = _leader(endpoint, prefix)
    return leader if leader is not None and leader.replica == replica else None


def _start_replicas(endpoint: str, prefix: str, workdir, started: dict[str, MeshKitProcess]):
    signer = Signer.generate()
    for replica in ("a", "b"):
        (workdir / replica).mkdir()
        server = MeshKitProcess(workdir / replica)
        server.signer = signer  # every replica signs with the key nodes trust
        signer.save(server.key_path)
        server.extra_args = ["--store", f"etcd://{endpoint}{prefix}",
                             "--replica-id", replica, "--lease-ttl", f"{LEASE_TTL}s"]
        started[replica] = server.start()


@pytest.fixture
def replicas(etcd, tmp_path):
    """Replicas "a" and "b" on one etcd prefix, sharing the signing key; a dict by id."""
    prefix = f"/ha/{uuid.uuid4().hex}"
    started: dict[str, MeshKitProcess] = {}
    try:
        _start_replicas(etcd.endpoint, prefix, tmp_path, started)
        yield started, etcd.endpoint, prefix
    finally:
        for server in started.values():
            server.kill()


def _publish_refused(server: MeshKitProcess, leader: MeshKitProcess, doc) -> str:
    with pytest.raises(grpc.RpcError) as info:
        server.publish(doc)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"publish through the leader, replica {leader_id(leader)!r} at {leader.address}" in (
        info.value.details()), info.value.details()
    return info.value.details()


def leader_id(server: MeshKitProcess) -> str:
    return server.workdir.name


@pytest.mark.timeout(90)
def test_one_leader_publishes_followers_serve_and_failover_on_sigkill(replicas):
    servers, endpoint, prefix = replicas
    leader = wait_for(lambda: _leader(endpoint, prefix), timeout=10)
    assert leader.replica in servers
    first = servers[leader.replica]
    second = servers["b" if leader.replica == "a" else "a"]
    assert leader.address == first.address
    keyring = first.keyring()
    shown = _meshkit("leader", "--store", f"etcd://{endpoint}{prefix}")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"replica": leader.replica, "address": first.address}

    # The follower knows the leader and refuses to publish, naming it.
    wait_for(lambda: "follows replica" in second.log(), timeout=10)
    _publish_refused(second, first, document("refused"))

    # Both replicas' status agree on who leads, and in which term.
    leads, follows = _leadership(first), _leadership(second)
    assert (leads.replica, leads.is_leader, follows.replica, follows.is_leader) == (
        leader.replica, True, leader_id(second), False)
    for lead in (leads, follows):
        assert (lead.store, lead.leader_replica, lead.leader_address) == (
            "etcd", leader.replica, first.address)
        assert lead.lease_ttl_seconds == LEASE_TTL
    assert leads.term == follows.term > 0
    assert 0 < leads.lease_remaining_ms <= LEASE_TTL * 1000 and follows.lease_remaining_ms == 0
    shown = omnirctl(second, "status", token="read")
    assert shown.stdout.startswith(
        f"replica {leader_id(second)} follows replica {leader.replica} at {first.address} "
        f"(etcd, term {leads.term}); discovery generation "), shown

    # Endpoints set through the leader are served by the follower's discovery feed too (it
    # follows the store), at the same generation; the follower refuses to set them.
    generation = _set_endpoints(first, "web", 8080)
    wait_for(lambda: _status(second).discovery_generation == generation, timeout=5)
    assert _discovered(second) == (generation, {"web": [8080]})
    with pytest.raises(grpc.RpcError) as info:
        _set_endpoints(second, "web", 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "publish through the leader" in info.value.details()
    assert ("meshkit-error", "not_leader") in info.value.trailing_metadata()

    # A node watching the follower gets what the leader publishes.
    node = second.watch("edge-1")
    try:
        reply = first.publish(document("v1"))
        assert reply.revision > 0
        snap = node.snapshot()
        assert snap.version == "v1" and snap.revision == reply.revision
        verify_snapshot(snap, keyring)
        node.ack(snap)

        # Kill the leader: the follower takes over within the lease TTL (plus etcd's expiry
        # check), then publishing through it reaches the same node.
        assert "leads and publishes" not in second.log()  # one leader until then
        killed = time.monotonic()
        first.kill()
        new = wait_for(lambda: _leader_is(endpoint, prefix, leader_id(second)),
                       timeout=LEASE_TTL + 8)
        failover = time.monotonic() - killed
        assert new.address == second.address
        assert failover < LEASE_TTL + 6, failover
        print(f"failover after SIGKILL: {failover:.2f} s (lease TTL {LEASE_TTL} s)")
        reply2 = wait_for(lambda: _try_publish(second, document("v2")), timeout=5)
        assert reply2.revision > reply.revision
        snap2 = node.snapshot()
        assert snap2.version == "v2" and snap2.revision == reply2.revision
        assert snap2.epoch > snap.epoch
        verify_snapshot(snap2, keyring)
        assert "leads and publishes" in second.log()
        now = _leadership(second)
        assert (now.replica, now.is_leader, now.leader_replica, now.leader_address) == (
            leader_id(second), True, leader_id(second), second.address)
        assert now.term > leads.term
        # The endpoints outlived the leader: the new one serves them at the same generation.
        assert _discovered(second) == (generation, {"web": [8080]})
    finally:
        node.close()
    audit = [(e.action, e.actor) for e in second.audit() if e.action in ("write", "push")]
    assert audit == [("write", "token:ops"), ("push", "token:ops")] * 2


def _status(server: MeshKitProcess) -> admin_pb2.GetStatusResponse:
    return server.admin("GetStatus", admin_pb2.GetStatusRequest(), token="read")


def _leadership(server: MeshKitProcess) -> admin_pb2.Leadership:
    return _status(server).leadership


def _set_endpoints(server: MeshKitProcess, cluster: str, *ports: int) -> int:
    data = json.dumps([{"address": "127.0.0.1", "port": p} for p in ports]).encode()
    return server.admin("SetEndpoints", admin_pb2.SetEndpointsRequest(
        cluster=cluster, endpoints=data)).generation


def _discovered(server: MeshKitProcess) -> tuple[int, dict[str, list[int]]]:
    """(generation, ports by cluster) of the first response of a discovery stream."""
    call = mesh_pb2_grpc.EndpointDiscoveryStub(server.channel).Watch(
        mesh_pb2.DiscoveryRequest(node=mesh_pb2.Node(id="ha-discovery")), timeout=10)
    try:
        first = next(call)
    finally:
        call.cancel()
    return first.generation, {c.cluster: [e.port for e in c.endpoints]
                              for c in first.snapshot.clusters}


def _try_publish(server: MeshKitProcess, doc):
    try:
        return server.publish(doc)
    except grpc.RpcError as exc:  # the new leader's lease may still be settling in
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return None


@pytest.mark.timeout(60)
def test_clean_shutdown_hands_leadership_over_at_once(replicas):
    servers, endpoint, prefix = replicas
    leader = wait_for(lambda: _leader(endpoint, prefix), timeout=10)
    first = servers[leader.replica]
    second = servers["b" if leader.replica == "a" else "a"]
    wait_for(lambda: "follows replica" in second.log(), timeout=10)
    stopped = time.monotonic()
    assert first.stop() == 0
    wait_for(lambda: _leader_is(endpoint, prefix, leader_id(second)),
             timeout=LEASE_TTL)  # sooner than the lease could expire
    handover = time.monotonic() - stopped
    print(f"handover after SIGTERM: {handover:.2f} s")
    assert second.publish(document("after-handover")).revision > 0


def _meshkit(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshkit", *args], capture_output=True,
                          text=True, env=_env(), timeout=30, check=False, cwd=cwd)


def test_store_option_errors_are_clear(etcd, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    key = tmp_path / "k.pem"
    Signer.generate().save(key)
    serve = ["serve", "--signing-key", str(key), "--no-auth", "--listen", "127.0.0.1:0"]
    bad = _meshkit(*serve, "--store", "etcd://127.0.0.1/x", cwd=tmp_path)
    assert bad.returncode == 2 and "--store" in bad.stderr and "is not HOST:PORT" in bad.stderr
    down = _meshkit(*serve, "--store", f"etcd://127.0.0.1:{closed}/x", cwd=tmp_path)
    assert down.returncode == 1 and f"etcd 127.0.0.1:{closed} prefix /x/: UNAVAILABLE" in (
        down.stderr), down.stderr
    alone = _meshkit(*serve, "--replica-id", "a", cwd=tmp_path)
    assert alone.returncode == 2 and "apply to --store only" in alone.stderr
    assert not (tmp_path / "meshkit.db").exists()
    nobody = _meshkit("leader", "--store", f"etcd://{etcd.endpoint}/nobody-{uuid.uuid4().hex}")
    assert nobody.returncode == 1 and "no replica leads" in nobody.stderr


@pytest.mark.timeout(90)
def test_replicas_recover_when_etcd_restarts(tmp_path):
    """etcd down and back (its own instance here): the replicas elect a leader again, and a
    publish through it reaches a node that stayed connected to a replica."""
    from etcd_fixture import EtcdServer

    server = EtcdServer(tmp_path).start()
    started: dict[str, MeshKitProcess] = {}
    node = None
    try:
        _start_replicas(server.endpoint, "/restart", tmp_path, started)
        wait_for(lambda: _leader(server.endpoint, "/restart"), timeout=10)
        node = started["a"].watch("edge-r")
        before = {r: _campaigns(s, r) for r, s in started.items()}
        server.stop()
        wait_for(lambda: "election:" in started["a"].log() + started["b"].log(), timeout=10)
        server.start()
        restarted = time.monotonic()
        reply = wait_for(lambda: _publish_anywhere(started.values(), document("after")),
                         timeout=LEASE_TTL + 15)
        print(f"publishing again {time.monotonic() - restarted:.2f} s after etcd restarted")
        snap = node.snapshot(timeout=10)
        assert snap.version == "after" and snap.revision == reply.revision
        assert all(s.proc.poll() is None for s in started.values())  # nobody crashed
        # Both replicas campaigned again (neither's election ended with the outage).
        wait_for(lambda: all(_campaigns(s, r) > before[r] for r, s in started.items()),
                 timeout=LEASE_TTL + 10)
    finally:
        if node is not None:
            node.close()
        for replica in started.values():
            replica.kill()
        server.stop()


def _campaigns(server: MeshKitProcess, replica: str) -> int:
    """How many times the replica has won or lost a campaign (its log lines say)."""
    return sum(f"leader: replica {replica} leads" in line
               or f"leader: replica {replica} follows" in line
               for line in server.log().splitlines())


def _publish_anywhere(servers, doc):
    for server in servers:
        try:
            return server.publish(doc)
        except grpc.RpcError as exc:  # not the leader, or its etcd calls still failing
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), exc
    return None


@pytest.mark.timeout(60)
def test_store_unavailable_is_503_with_the_reason(tmp_path):
    """etcd stopped under a replica: calls that need the store fail UNAVAILABLE / HTTP 503
    `store_unavailable` naming etcd's error (not an internal error, not "MeshKit
    unreachable"); validation errors stay INVALID_ARGUMENT; status still answers and shows
    the lease running out."""
    import urllib.error
    import urllib.request

    from etcd_fixture import EtcdServer

    (tmp_path / "etcd").mkdir()
    (tmp_path / "mk").mkdir()
    etcd = EtcdServer(tmp_path / "etcd").start()
    mk = MeshKitProcess(tmp_path / "mk")
    mk.extra_args = ["--store", f"etcd://{etcd.endpoint}/down", "--replica-id", "solo",
                     "--lease-ttl", f"{LEASE_TTL}s", "--http-listen", "127.0.0.1:0"]
    try:
        mk.start()
        wait_for(lambda: _leadership(mk).is_leader, timeout=10)
        mk.publish(document("v1"))
        etcd.stop()

        with pytest.raises(grpc.RpcError) as info:
            mk.admin("GetConfig", admin_pb2.GetConfigRequest(scope="global"), token="read")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (f"the store is unavailable: etcd {etcd.endpoint} prefix /down/: UNAVAILABLE"
                in info.value.details()), info.value.details()
        assert ("meshkit-error", "store_unavailable") in info.value.trailing_metadata()

        request = urllib.request.Request(f"http://{mk.http_address}/v1/audit",
                                         headers={"Authorization": f"Bearer {mk.read_token}"})
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(request, timeout=10)
        with http.value:
            body = json.loads(http.value.read())
        assert http.value.code == 503 and body["error"]["code"] == "store_unavailable"
        assert f"etcd {etcd.endpoint} prefix /down/" in body["error"]["message"]

        out = omnirctl(mk, "config", "get", token="read")
        assert out.returncode == 5 and "the store is unavailable" in out.stderr, out.stderr
        assert "cannot reach MeshKit" not in out.stderr and "Traceback" not in out.stderr

        bad = document("bad")
        bad["spec"]["routes"][0]["cluster"] = "missing"
        with pytest.raises(grpc.RpcError) as info:
            mk.publish(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            mk.publish(document("v2"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        kinds = dict(info.value.trailing_metadata())
        assert kinds["meshkit-error"] in ("store_unavailable", "not_leader"), kinds

        # The lease cannot be renewed: the replica stops leading once its time is up.
        lead = wait_for(lambda: (lead := _leadership(mk)) and not lead.is_leader and lead,
                        timeout=LEASE_TTL + 5)
        assert lead.replica == "solo"
    finally:
        mk.kill()
        etcd.stop()
