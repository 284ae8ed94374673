"""The store interface on both backends (SqliteStore, EtcdStore on a real etcd): revisions,
compare-and-swap, watch, append-only audit log, endpoint lists and their deletion."""
from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest

from meshkit.store import NotFound, NotLeader, RevisionConflict, SqliteStore


@pytest.fixture(params=["sqlite", "etcd"])
def open_store(request, tmp_path):
    """open_store(name, **kw): a store of this backend; the same name is the same data (the
    same SQLite file, the same etcd prefix), as another process would see it."""
    namespace = uuid.uuid4().hex
    if request.param == "etcd":
        from meshkit.store.etcd import EtcdStore

        endpoint = request.getfixturevalue("etcd").endpoint
        return lambda name="s", poll_interval=None, **kw: EtcdStore(
            [endpoint], f"/test/{namespace}/{name}", **kw)
    return lambda name="s", poll_interval=0.5, **kw: SqliteStore(
        tmp_path / f"{name}.db", poll_interval=poll_interval, **kw)


def _put(store, scope, doc, expected, actor="alice", version="v", epoch=1):
    return store.put(scope, doc, expected_revision=expected, actor=actor, version=version,
                     epoch=epoch, sha256="0" * 64, detail="why")


async def test_revisions_and_compare_and_swap(open_store):
    # SQLite counts writes (1, 2, 3); etcd's revision also counts audit entries, so only the
    # order of revisions is common to both.
    store = open_store()
    try:
        assert await store.get("global", actor="bob") is None
        first = await _put(store, "global", b"{1}", 0)
        assert first.revision >= 1
        other = await _put(store, "region/eu", b"{2}", 0)
        assert other.revision > first.revision  # one store-wide counter
        second = await _put(store, "global", b"{3}", first.revision, version="v2", epoch=2)
        assert second.revision > other.revision
        got = await store.get("global", actor="bob")
        assert (got.revision, got.document, got.version, got.epoch, got.actor) == (
            second.revision, b"{3}", "v2", 2, "alice")

        with pytest.raises(RevisionConflict) as info:
            await _put(store, "global", b"{4}", first.revision, actor="mallory")
        assert (info.value.expected, info.value.actual) == (first.revision, second.revision)
        assert (f"expected it at revision {first.revision}, but it is at revision "
                f"{second.revision}") in str(info.value)
        with pytest.raises(RevisionConflict, match="expected it to be empty"):
            await _put(store, "region/eu", b"{5}", 0)
        with pytest.raises(RevisionConflict, match="but it has no document"):
            await _put(store, "tenant/x", b"{6}", 7)
        assert (await store.get("global", actor="bob")).document == b"{3}"
        assert await store.revision() == second.revision
        states, revision = await store.current(actor="meshkit")
        assert revision >= second.revision  # a watch from it misses nothing
        assert [(s.scope, s.revision) for s in states] == [
            ("global", second.revision), ("region/eu", other.revision)]
    finally:
        await store.close()


async def test_audit_log_records_every_mutation_refusal_and_read(open_store, tmp_path):
    times = iter(range(1000, 2000))
    store = open_store(clock=lambda: float(next(times)))
    try:
        rev = (await _put(store, "global", b"{}", 0, actor="alice")).revision
        await store.get("global", actor="bob")
        with pytest.raises(RevisionConflict):
            await _put(store, "global", b"{}", 0, actor="mallory")
        await store.append_audit(actor="node:n1", action="nack", scope="global", revision=rev,
                                 detail="bad_signature: ...")
        log = await store.audit_log()
        assert [(e.actor, e.action, e.scope, e.revision) for e in log] == [
            ("alice", "write", "global", rev),
            ("bob", "read", "global", rev),
            ("mallory", "conflict", "global", rev),
            ("node:n1", "nack", "global", rev),
        ]
        assert [e.id for e in log] == sorted({e.id for e in log})  # unique, in order
        assert all(e.timestamp >= 1000 for e in log)
        assert log[0].detail == "why" and log[2].detail == "expected revision 0"
        assert [e.action for e in await store.audit_log(limit=2)] == ["conflict", "nack"]
        assert [e.id for e in await store.audit_log(after_id=log[1].id)] == [log[2].id, log[3].id]
        assert len(await store.audit_log(since=log[2].timestamp)) == 2
        assert await store.audit_log(scope="region/x") == []
    finally:
        await store.close()
    if not isinstance(store, SqliteStore):
        return  # etcd: test_meshkit_etcd.py checks that no entry is ever rewritten

    # Append-only, enforced by the database itself.
    conn = sqlite3.connect(tmp_path / "s.db")
    for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit",
                "UPDATE history SET document = x''", "DELETE FROM history"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


async def test_data_survives_reopen_and_wal_is_on(open_store, tmp_path):
    store = open_store()
    first = await _put(store, "global", b"{}", 0)
    await store.close()
    store = open_store()
    try:
        assert (await store.get("global", actor="x")).revision == first.revision
        assert (await _put(store, "global", b"{1}", first.revision)).revision > first.revision
    finally:
        await store.close()
    if not isinstance(store, SqliteStore):
        return
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_watch_yields_writes_in_order_including_other_writers(open_store):
    store = open_store(poll_interval=0.05)
    other = open_store()  # another process's connection to the same file or etcd prefix
    try:
        r1 = (await _put(store, "global", b"{1}", 0)).revision
        seen = []

        async def follow():
            # From just before r1 (etcd is shared by the session's tests, and its history
            # before some test's compaction is gone).
            async for stored in store.watch(after_revision=r1 - 1):
                seen.append((stored.scope, stored.revision, stored.document))
                if len(seen) == 3:
                    return

        task = asyncio.ensure_future(follow())
        r2 = (await _put(store, "global", b"{2}", r1)).revision
        r3 = (await _put(other, "tenant/t", b"{3}", 0)).revision  # SQLite: found by polling
        await asyncio.wait_for(task, 5)
        assert seen == [("global", r1, b"{1}"), ("global", r2, b"{2}"),
                        ("tenant/t", r3, b"{3}")]
    finally:
        await store.close()
        await other.close()


def _put_endpoints(store, cluster, data, expected=None, actor="alice"):
    return store.put_endpoints(cluster, data, expected_revision=expected, actor=actor,
                               detail="127.0.0.1:80")


async def test_endpoint_lists_compare_and_swap_audit_and_one_revision_counter(open_store):
    store = open_store()
    try:
        lists, _ = await store.current_endpoints()
        assert lists == []
        config = await _put(store, "global", b"{}", 0)
        web = await _put_endpoints(store, "web", b'[{"port":80}]')
        assert web.revision > config.revision  # the counter config writes use too
        assert (web.cluster, web.endpoints, web.actor) == ("web", b'[{"port":80}]', "alice")
        api = await _put_endpoints(store, "api", b"[]", expected=0)
        web2 = await _put_endpoints(store, "web", b'[{"port":81}]', expected=web.revision)
        assert web.revision < api.revision < web2.revision
        later = await _put(store, "global", b"{1}", config.revision)
        assert later.revision > web2.revision

        with pytest.raises(RevisionConflict) as info:
            await _put_endpoints(store, "web", b"[]", expected=web.revision, actor="mallory")
        assert (info.value.scope, info.value.expected, info.value.actual) == (
            "cluster/web", web.revision, web2.revision)
        with pytest.raises(RevisionConflict, match="expected it to be empty"):
            await _put_endpoints(store, "api", b"[]", expected=0)

        lists, revision = await store.current_endpoints()
        assert [(s.cluster, s.revision, s.endpoints) for s in lists] == [
            ("api", api.revision, b"[]"), ("web", web2.revision, b'[{"port":81}]')]
        assert revision >= web2.revision
        log = [(e.actor, e.action, e.scope, e.revision) for e in await store.audit_log()
               if e.scope.startswith("cluster/")]
        assert log == [
            ("alice", "set-endpoints", "cluster/web", web.revision),
            ("alice", "set-endpoints", "cluster/api", api.revision),
            ("alice", "set-endpoints", "cluster/web", web2.revision),
            ("mallory", "conflict", "cluster/web", web2.revision),
            ("alice", "conflict", "cluster/api", api.revision),
        ]
    finally:
        await store.close()


async def test_endpoint_lists_survive_reopen_and_are_watched_from_other_writers(open_store,
                                                                                tmp_path):
    store = open_store(poll_interval=0.05)
    other = open_store()  # another process (or replica) on the same file or prefix
    try:
        first = await _put_endpoints(store, "web", b"[1]")
        seen = []

        async def follow():
            async for stored in store.watch_endpoints(after_revision=first.revision - 1):
                seen.append((stored.cluster, stored.revision, stored.endpoints))
                if len(seen) == 3:
                    return

        task = asyncio.ensure_future(follow())
        await _put(store, "global", b"{}", 0)  # config writes are not endpoint writes
        second = await _put_endpoints(other, "api", b"[2]")  # SQLite: found by polling
        third = await _put_endpoints(store, "web", b"[3]", expected=first.revision)
        await asyncio.wait_for(task, 5)
        assert seen == [("web", first.revision, b"[1]"), ("api", second.revision, b"[2]"),
                        ("web", third.revision, b"[3]")]
    finally:
        await store.close()
        await other.close()
    reopened = open_store()
    try:
        lists, revision = await reopened.current_endpoints()
        assert revision >= third.revision
        assert {(s.cluster, s.revision) for s in lists} == {
            ("api", second.revision), ("web", third.revision)}
        # The counter goes on from there: a generation never goes backwards after a restart.
        assert (await _put_endpoints(reopened, "web", b"[4]")).revision > third.revision
    finally:
        await reopened.close()
    if isinstance(reopened, SqliteStore):  # the endpoint history is append-only too
        conn = sqlite3.connect(tmp_path / "s.db")
        for sql in ("UPDATE endpoint_history SET endpoints = x''", "DELETE FROM endpoint_history"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        conn.close()


async def test_endpoint_list_deletion_is_a_watched_audited_compare_and_swap_write(open_store):
    store = open_store(poll_interval=0.05)
    other = open_store()  # another process (or replica) on the same file or prefix
    try:
        web = await _put_endpoints(store, "web", b"[1]")
        api = await _put_endpoints(store, "api", b"[2]")
        seen = []

        async def follow():
            async for stored in store.watch_endpoints(after_revision=api.revision):
                seen.append((stored.cluster, stored.deleted, stored.endpoints))
                if len(seen) == 3:
                    return stored.revision

        task = asyncio.ensure_future(follow())
        with pytest.raises(RevisionConflict) as info:
            await store.delete_endpoints("web", expected_revision=web.revision + 100,
                                         actor="mallory")
        assert (info.value.scope, info.value.actual) == ("cluster/web", web.revision)
        gone = await store.delete_endpoints("web", expected_revision=web.revision,
                                            actor="alice", detail="decommissioned")
        assert gone.deleted and (gone.cluster, gone.endpoints) == ("web", b"")
        assert gone.revision > api.revision  # a deletion is a new store revision
        lists, revision = await store.current_endpoints()
        assert [(s.cluster, s.revision) for s in lists] == [("api", api.revision)]
        assert revision >= gone.revision

        # Nothing to delete: a clear not-found, whether it was deleted or never there.
        for cluster in ("web", "never"):
            with pytest.raises(NotFound, match=f"cluster/{cluster}.*nothing to delete"):
                await store.delete_endpoints(cluster, actor="bob")
        with pytest.raises(NotFound):
            await store.delete_endpoints("web", expected_revision=web.revision, actor="bob")

        # Deleted means empty again: expected_revision 0 recreates it, at a newer revision.
        back = await _put_endpoints(store, "web", b"[3]", expected=0)
        assert back.revision > gone.revision
        dropped = await other.delete_endpoints("api", actor="carol")  # SQLite: by polling
        last = await asyncio.wait_for(task, 5)
        assert seen == [("web", True, b""), ("web", False, b"[3]"), ("api", True, b"")]
        assert last == dropped.revision > back.revision

        log = [(e.actor, e.action, e.scope) for e in await store.audit_log()
               if e.scope.startswith("cluster/") and e.action != "set-endpoints"]
        assert log == [
            ("mallory", "conflict", "cluster/web"),
            ("alice", "delete-endpoints", "cluster/web"),
            ("bob", "not-found", "cluster/web"),
            ("bob", "not-found", "cluster/never"),
            ("bob", "not-found", "cluster/web"),
            ("carol", "delete-endpoints", "cluster/api"),
        ]
        entry = next(e for e in await store.audit_log(scope="cluster/web")
                     if e.action == "delete-endpoints")
        assert (entry.revision, entry.detail) == (gone.revision, "decommissioned")
    finally:
        await store.close()
        await other.close()
    reopened = open_store()
    try:
        lists, revision = await reopened.current_endpoints()
        assert [(s.cluster, s.revision) for s in lists] == [("web", back.revision)]
        assert revision >= dropped.revision
    finally:
        await reopened.close()


async def test_sqlite_version_2_file_gains_deletions(tmp_path):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(  # the endpoint tables as version 2 made them
        "CREATE TABLE endpoint_history (revision INTEGER PRIMARY KEY, cluster TEXT NOT NULL,"
        " endpoints BLOB NOT NULL, actor TEXT NOT NULL, updated_at REAL NOT NULL);"
        "CREATE TABLE endpoints (cluster TEXT PRIMARY KEY, revision INTEGER NOT NULL);"
        "INSERT INTO endpoint_history VALUES (4, 'web', x'5b5d', 'alice', 1.0);"
        "INSERT INTO endpoints VALUES ('web', 4);"
        "PRAGMA user_version=2;")
    conn.close()
    store = SqliteStore(path)
    try:
        lists, revision = await store.current_endpoints()
        assert [(s.cluster, s.revision, s.deleted) for s in lists] == [("web", 4, False)]
        assert revision == 4
        gone = await store.delete_endpoints("web", expected_revision=4, actor="alice")
        assert gone.revision == 5 and (await store.current_endpoints()) == ([], 5)
    finally:
        await store.close()


async def test_etcd_deletion_is_fenced_and_survives_a_compaction(etcd):
    from aetcd import rpc

    from meshkit.store.etcd import EtcdStore

    prefix = f"/test/{uuid.uuid4().hex}"
    store = EtcdStore([etcd.endpoint], prefix)
    try:
        web = await _put_endpoints(store, "web", b"[1]")
        api = await _put_endpoints(store, "api", b"[2]")
        store.fence = -1  # an election says this replica does not lead: nothing matches
        with pytest.raises(NotLeader):
            await store.delete_endpoints("web", actor="alice")
        assert [s.cluster for s in (await store.current_endpoints())[0]] == ["api", "web"]
        store.fence = None
        assert ("alice", "refused") in {(e.actor, e.action) for e in
                                        await store.audit_log(scope="cluster/web")}

        # A watcher that held both lists falls behind a compaction that swallowed the
        # deletion of web: the catch-up still reports it (the key's tombstone), in order.
        gone = await store.delete_endpoints("web", actor="alice")
        api2 = await _put_endpoints(store, "api", b"[3]", expected=api.revision)
        await store.call("KV", "Compact", rpc.CompactionRequest(revision=api2.revision))
        seen = []
        async for stored in store.watch_endpoints(after_revision=api.revision):
            seen.append((stored.cluster, stored.deleted, stored.endpoints))
            if len(seen) == 2:
                break
        assert seen == [("web", True, b""), ("api", False, b"[3]")]
        assert gone.revision > web.revision
    finally:
        await store.close()
