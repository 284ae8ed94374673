"""meshkit.store.etcd and meshkit.leader on a real etcd: what the common store tests
(test_meshkit_store.py) do not cover - the URL, audit entries never rewritten, CAS races
between replicas, watch across a compaction, CA records, and the leader election with its
write fence."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aetcd import rpc

from meshkit.leader import Election, current_leader
from meshkit.store import NotLeader, RevisionConflict, StoreError
from meshkit.store.etcd import EtcdStore, EtcdTLS, grpc_target, parse_etcd_url, prefix_end


def _put(store, scope, doc, expected, actor="alice"):
    return store.put(scope, doc, expected_revision=expected, actor=actor, version="v",
                     epoch=1, sha256="0" * 64)


@pytest.fixture
def open_store(etcd):
    prefix = f"/test/{uuid.uuid4().hex}"
    return lambda **kw: EtcdStore([etcd.endpoint], prefix, **kw)


def test_store_url_parsing_and_errors():
    assert parse_etcd_url("etcd://127.0.0.1:2379/mk/prod") == (("127.0.0.1:2379",), "/mk/prod")
    assert parse_etcd_url("etcd://a:1,b:2") == (("a:1", "b:2"), "/meshkit")
    assert grpc_target(("10.0.0.1:2379", "10.0.0.2:2379")) == "ipv4:10.0.0.1:2379,10.0.0.2:2379"
    assert grpc_target(("etcd.local:2379",)) == "etcd.local:2379"
    for url, reason in [("http://127.0.0.1:2379", "expected etcd://"),
                        ("etcd://127.0.0.1/x", "is not HOST:PORT"),
                        ("etcd://127.0.0.1:99999/x", "is not HOST:PORT"),
                        ("etcd://h:1/x?y=1", "no query")]:
        with pytest.raises(ValueError, match=reason):
            parse_etcd_url(url)
    with pytest.raises(ValueError, match="several endpoints must be IP addresses"):
        grpc_target(("a:1", "b:2"))
    assert prefix_end(b"/p/") == b"/p0" and prefix_end(b"a\xff") == b"b"


async def test_unreachable_etcd_is_a_clear_store_error():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = EtcdStore([f"127.0.0.1:{port}"], "/x", timeout=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match=f"etcd 127.0.0.1:{port} prefix /x/: UNAVAILABLE"):
            await store.check()
    finally:
        await store.close()
    assert time.monotonic() - started < 3.0


async def test_several_endpoints_fail_over_to_a_live_one(etcd):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    store = EtcdStore.from_url(f"etcd://{dead},{etcd.endpoint}/multi-{uuid.uuid4().hex}")
    try:
        assert store.target == f"ipv4:{dead},{etcd.endpoint}"
        assert (await _put(store, "global", b"{}", 0)).revision > 0
    finally:
        await store.close()


async def test_audit_entries_are_written_with_their_mutation_and_never_rewritten(open_store):
    store = open_store()
    try:
        first = await _put(store, "global", b"{1}", 0)
        second = await _put(store, "global", b"{2}", first.revision)
        with pytest.raises(RevisionConflict):
            await _put(store, "global", b"{3}", first.revision, actor="mallory")
        await store.get("global", actor="bob")
        log = await store.audit_log()
        writes = [e for e in log if e.action == "write"]
        # Same txn: the entry was created at the revision of the write it records.
        assert [(e.id, e.revision) for e in writes] == [
            (first.revision, first.revision), (second.revision, second.revision)]
        assert [e.action for e in log] == ["write", "write", "conflict", "read"]
        raw = await store.range(store.prefix + b"audit/", prefix_end(store.prefix + b"audit/"))
        assert len(raw.kvs) == 4
        assert all(kv.version == 1 and kv.mod_revision == kv.create_revision for kv in raw.kvs)
        # Paging (newest first, 500 a page) with filters still returns the oldest-first tail.
        for i in range(3):
            await store.append_audit(actor="node:n", action="nack", scope="tenant/t",
                                     detail=str(i))
        tail = await store.audit_log(scope="tenant/t", limit=2)
        assert [e.detail for e in tail] == ["1", "2"]
        assert await store.audit_log(after_id=tail[-1].id) == []
    finally:
        await store.close()


async def test_concurrent_compare_and_swap_from_two_replicas_has_one_winner(open_store):
    a, b = open_store(), open_store()
    try:
        base = await _put(a, "global", b"{0}", 0)
        results = await asyncio.gather(
            *[_put(store, "global", f"{{{i}}}".encode(), base.revision, actor=f"r{i}")
              for i, store in enumerate([a, b, a, b])],
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, RevisionConflict)]
        assert len(won) == 1 and len(lost) == 3, results
        assert all(exc.actual == won[0].revision for exc in lost)
        assert (await b.get("global", actor="x")).document == won[0].document
    finally:
        await a.close()
        await b.close()


async def test_watch_catches_up_with_current_state_after_compaction(open_store):
    store = open_store()
    try:
        first = await _put(store, "global", b"{1}", 0)
        second = await _put(store, "global", b"{2}", first.revision)
        other = await _put(store, "tenant/t", b"{3}", 0)
        await store.call("KV", "Compact", rpc.CompactionRequest(revision=other.revision))
        seen = []
        async for stored in store.watch(after_revision=first.revision):
            seen.append((stored.scope, stored.revision, stored.document))
            if len(seen) == 2:
                break
        # The history between is gone; each scope's current document is delivered instead.
        assert seen == [("global", second.revision, b"{2}"), ("tenant/t", other.revision, b"{3}")]
    finally:
        await store.close()


async def test_ca_records_are_shared_and_audited(open_store):
    a, b = open_store(), open_store()
    try:
        await a.ca_put("node", "n1", b'{"x":1}', actor="ops", detail="registered")
        await a.ca_put("node", "n2", b'{"x":2}', actor="ops")
        await a.ca_put("revoked", "abc", b"{}", actor="ops")
        assert await b.ca_get("node", "n1") == b'{"x":1}'
        assert await b.ca_get("node", "zz") is None
        assert await b.ca_list("node") == [("n1", b'{"x":1}'), ("n2", b'{"x":2}')]
        log = await b.audit_log()
        assert [(e.action, e.scope) for e in log] == [
            ("ca-node", "ca/node/n1"), ("ca-node", "ca/node/n2"), ("ca-revoked", "ca/revoked/abc")]
    finally:
        await a.close()
        await b.close()


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.async_timeout(30)
async def test_election_one_leader_fenced_writes_and_handover(open_store):
    store_a, store_b = open_store(), open_store()
    a = Election(store_a, "a", address="10.0.0.1:7070", ttl=2)
    b = Election(store_b, "b", address="10.0.0.2:7070", ttl=2)
    tasks = [asyncio.ensure_future(a.run())]
    try:
        await _until(lambda: a.is_leader, 5)
        tasks.append(asyncio.ensure_future(b.run()))
        await _until(lambda: b.leader is not None, 5)
        assert a.is_leader and not b.is_leader
        assert b.leader.replica == "a" and b.leader.address == "10.0.0.1:7070"
        assert "publish through the leader, replica 'a' at 10.0.0.1:7070" in b.refusal()
        assert a.refusal() is None
        assert (await current_leader(store_a)).replica == "a"

        # The fence: only the leader writes desired state, whatever the callers check.
        first = await _put(store_a, "global", b"{1}", 0)
        with pytest.raises(NotLeader, match="no longer the leader"):
            await _put(store_b, "global", b"{2}", first.revision)
        assert (await store_b.get("global", actor="x")).revision == first.revision

        # Resigning hands over at once (no TTL wait); the old leader is fenced out.
        started = time.monotonic()
        await a.resign()
        tasks[0].cancel()
        await _until(lambda: b.is_leader, 5)
        handover = time.monotonic() - started
        assert handover < 1.5, handover
        assert not a.is_leader
        with pytest.raises(NotLeader):
            await _put(store_a, "global", b"{2}", first.revision)
        assert (await _put(store_b, "global", b"{2}", first.revision)).revision > first.revision
        assert (await current_leader(store_a)).replica == "b"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await b.resign()
        await store_a.close()
        await store_b.close()


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    """An etcd that requires TLS and a client certificate of its CA."""
    import pki
    from etcd_fixture import EtcdServer

    workdir = tmp_path_factory.mktemp("etcd-tls")
    ca = pki.CA(workdir)
    server_cert, server_key = ca.issue("etcd", "127.0.0.1")
    client_cert, client_key = ca.issue("meshkit", client=True)
    server = EtcdServer(workdir, tls=(ca.cert_file, server_cert, server_key, client_cert,
                                      client_key)).start()
    try:
        yield server
    finally:
        server.stop()


async def test_tls_and_client_certificates_to_etcd(tls_etcd):
    ca, _, _, cert, key = tls_etcd.tls
    store = EtcdStore([tls_etcd.endpoint], "/tls", tls=EtcdTLS.load(ca, cert, key))
    try:
        assert (await _put(store, "global", b"{}", 0)).revision > 0
    finally:
        await store.close()
    for tls in (None, EtcdTLS.load(ca, None, None)):  # plaintext; TLS without a client cert
        store = EtcdStore([tls_etcd.endpoint], "/tls", tls=tls, timeout=3.0)
        try:
            with pytest.raises(StoreError, match=f"etcd {tls_etcd.endpoint} prefix /tls/: "):
                await store.check()
        finally:
            await store.close()


def test_tls_files_are_checked(tmp_path):
    (tmp_path / "junk.pem").write_text("not pem")
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        EtcdTLS.load(None, str(tmp_path / "c.pem"), None)
    with pytest.raises(ValueError, match=r"junk.pem: not a PEM CERTIFICATE"):
        EtcdTLS.load(str(tmp_path / "junk.pem"), None, None)
    with pytest.raises(ValueError, match=r"missing.pem: cannot read: No such file"):
        EtcdTLS.load(str(tmp_path / "missing.pem"), None, None)


def test_meshkit_leader_command_over_tls(tls_etcd, tmp_path):
    import subprocess
    import sys

    from mkharness import _env

    ca, _, _, cert, key = tls_etcd.tls
    url = f"etcd://{tls_etcd.endpoint}/tls-cli"

    def leader(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshkit", "leader", "--store", url, *extra],
                              capture_output=True, text=True, env=_env(), timeout=30,
                              check=False, cwd=tmp_path)

    reached = leader("--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key)
    assert reached.returncode == 1 and "no replica leads on etcd" in reached.stderr, reached
    refused = leader()
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused
    half = leader("--etcd-ca", ca, "--etcd-cert", cert)
    assert half.returncode == 2 and "both a client certificate and its key" in half.stderr


ROOT_PASSWORD = "s3cret-pass"  # etcdctl reads one word from stdin


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    """An etcd with authentication enabled: user root (password ROOT_PASSWORD)."""
    from etcd_fixture import EtcdServer

    server = EtcdServer(tmp_path_factory.mktemp("etcd-auth")).start()
    try:
        server.ctl("user", "add", "root", "--interactive=false", stdin=f"{ROOT_PASSWORD}\n")
        server.ctl("user", "grant-role", "root", "root")
        server.ctl("auth", "enable")
        yield server
    finally:
        server.stop()


async def test_user_password_auth_to_etcd(auth_etcd):
    from meshkit.store.etcd import EtcdAuth

    prefix = f"/auth/{uuid.uuid4().hex}"
    store = EtcdStore([auth_etcd.endpoint], prefix, auth=EtcdAuth("root", ROOT_PASSWORD))
    try:
        first = await _put(store, "global", b"{1}", 0)
        assert (await store.get("global", actor="x")).document == b"{1}"
        async for stored in store.watch(after_revision=first.revision - 1):
            assert stored.revision == first.revision
            break
        token = store._token
        # etcd drops a user's tokens when the password is set (to the same one here): the next
        # call is refused, and the store signs in again and repeats it.
        auth_etcd.ctl("user", "passwd", "root", "--interactive=false",
                      user=f"root:{ROOT_PASSWORD}", stdin=f"{ROOT_PASSWORD}\n")
        second = await _put(store, "global", b"{2}", first.revision)
        assert second.revision > first.revision and store._token != token
    finally:
        await store.close()
    for auth, reason in [
        (EtcdAuth("root", "wrong"), ("authentication as etcd user 'root' failed: "
                                     "INVALID_ARGUMENT: etcdserver: authentication failed")),
        (None, "INVALID_ARGUMENT: etcdserver: user name is empty"),
    ]:
        store = EtcdStore([auth_etcd.endpoint], prefix, auth=auth)
        try:
            with pytest.raises(StoreError, match=reason):
                await store.check()
        finally:
            await store.close()


def test_password_file_is_checked(tmp_path):
    from meshkit.store.etcd import EtcdAuth

    (tmp_path / "pw").write_text("first line\nsecond\n")
    assert EtcdAuth.load("root", str(tmp_path / "pw")).password == "first line"
    assert "first line" not in repr(EtcdAuth.load("root", str(tmp_path / "pw")))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty .the password is its first line"):
        EtcdAuth.load("root", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="missing: cannot read: No such file"):
        EtcdAuth.load("root", str(tmp_path / "missing"))


@pytest.mark.timeout(60)
def test_meshkit_serve_with_etcd_user_and_password(auth_etcd, tmp_path):
    import subprocess
    import sys

    from mkharness import MeshKitProcess, _env, document, wait_for

    from omnirelay.config.protos import admin_pb2
    from omnirelay.config.signing import Signer

    (tmp_path / "good").write_text(f"{ROOT_PASSWORD}\n")
    (tmp_path / "bad").write_text("not it\n")
    url = f"etcd://{auth_etcd.endpoint}/auth-serve-{uuid.uuid4().hex}"
    (tmp_path / "mk").mkdir()
    mk = MeshKitProcess(tmp_path / "mk")
    mk.extra_args = ["--store", url, "--replica-id", "auth", "--etcd-user", "root",
                     "--etcd-password-file", str(tmp_path / "good")]
    try:
        mk.start()
        lead = wait_for(lambda: (s := mk.admin("GetStatus", admin_pb2.GetStatusRequest(),
                                                token="read").leadership).is_leader and s,
                        timeout=10)
        assert lead.replica == "auth" and lead.store == "etcd"
        assert mk.publish(document("authed")).revision > 0
    finally:
        mk.stop()

    key = tmp_path / "k.pem"
    Signer.generate().save(key)

    def serve(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshkit", "serve", "--signing-key", str(key), "--no-auth",
             "--listen", "127.0.0.1:0", "--store", url, *extra],
            capture_output=True, text=True, env=_env(), timeout=30, check=False, cwd=tmp_path)

    wrong = serve("--etcd-user", "root", "--etcd-password-file", str(tmp_path / "bad"))
    assert wrong.returncode == 1, wrong
    assert "authentication as etcd user 'root' failed: INVALID_ARGUMENT: etcdserver: " \
           "authentication failed, invalid user ID or password" in wrong.stderr, wrong.stderr
    alone = serve("--etcd-user", "root")
    assert alone.returncode == 2 and "go together" in alone.stderr
