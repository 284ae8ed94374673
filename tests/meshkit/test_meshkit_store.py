"""meshkit.store.SqliteStore: revisions, compare-and-swap, watch, append-only audit log."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from meshkit.store import RevisionConflict, SqliteStore


def _put(store, scope, doc, expected, actor="alice", version="v", epoch=1):
    return store.put(scope, doc, expected_revision=expected, actor=actor, version=version,
                     epoch=epoch, sha256="0" * 64, detail="why")


async def test_revisions_and_compare_and_swap(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    try:
        assert await store.get("global", actor="bob") is None
        first = await _put(store, "global", b"{1}", 0)
        assert first.revision == 1
        other = await _put(store, "region/eu", b"{2}", 0)
        assert other.revision == 2  # one store-wide counter
        second = await _put(store, "global", b"{3}", 1, version="v2", epoch=2)
        assert second.revision == 3
        got = await store.get("global", actor="bob")
        assert (got.revision, got.document, got.version, got.epoch, got.actor) == (
            3, b"{3}", "v2", 2, "alice")

        with pytest.raises(RevisionConflict) as info:
            await _put(store, "global", b"{4}", 1, actor="mallory")
        assert (info.value.expected, info.value.actual) == (1, 3)
        assert "expected it at revision 1, but it is at revision 3" in str(info.value)
        with pytest.raises(RevisionConflict, match="expected it to be empty"):
            await _put(store, "region/eu", b"{5}", 0)
        with pytest.raises(RevisionConflict, match="but it has no document"):
            await _put(store, "tenant/x", b"{6}", 7)
        assert (await store.get("global", actor="bob")).document == b"{3}"
        assert await store.revision() == 3
        states, revision = await store.current(actor="meshkit")
        assert revision == 3
        assert [(s.scope, s.revision) for s in states] == [("global", 3), ("region/eu", 2)]
    finally:
        await store.close()


async def test_audit_log_records_every_mutation_refusal_and_read(tmp_path):
    times = iter(range(1000, 2000))
    store = SqliteStore(tmp_path / "s.db", clock=lambda: float(next(times)))
    try:
        await _put(store, "global", b"{}", 0, actor="alice")
        await store.get("global", actor="bob")
        with pytest.raises(RevisionConflict):
            await _put(store, "global", b"{}", 0, actor="mallory")
        await store.append_audit(actor="node:n1", action="nack", scope="global", revision=1,
                                 detail="bad_signature: ...")
        log = await store.audit_log()
        assert [(e.actor, e.action, e.scope, e.revision) for e in log] == [
            ("alice", "write", "global", 1),
            ("bob", "read", "global", 1),
            ("mallory", "conflict", "global", 1),
            ("node:n1", "nack", "global", 1),
        ]
        assert all(e.timestamp >= 1000 for e in log)
        assert log[0].detail == "why" and log[2].detail == "expected revision 0"
        assert [e.action for e in await store.audit_log(limit=2)] == ["conflict", "nack"]
        assert [e.id for e in await store.audit_log(after_id=log[1].id)] == [log[2].id, log[3].id]
        assert len(await store.audit_log(since=log[2].timestamp)) == 2
        assert await store.audit_log(scope="region/x") == []
    finally:
        await store.close()

    # Append-only, enforced by the database itself.
    conn = sqlite3.connect(tmp_path / "s.db")
    for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit",
                "UPDATE history SET document = x''", "DELETE FROM history"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


async def test_data_survives_reopen_and_wal_is_on(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    await _put(store, "global", b"{}", 0)
    await store.close()
    store = SqliteStore(tmp_path / "s.db")
    try:
        assert (await store.get("global", actor="x")).revision == 1
        assert (await _put(store, "global", b"{1}", 1)).revision == 2
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_watch_yields_writes_in_order_including_other_writers(tmp_path):
    store = SqliteStore(tmp_path / "s.db", poll_interval=0.05)
    other = SqliteStore(tmp_path / "s.db")  # another process's connection to the same file
    try:
        await _put(store, "global", b"{1}", 0)
        seen = []

        async def follow():
            async for stored in store.watch(after_revision=0):
                seen.append((stored.scope, stored.revision, stored.document))
                if len(seen) == 3:
                    return

        task = asyncio.ensure_future(follow())
        await _put(store, "global", b"{2}", 1)
        await _put(other, "tenant/t", b"{3}", 0)  # found by polling
        await asyncio.wait_for(task, 5)
        assert seen == [("global", 1, b"{1}"), ("global", 2, b"{2}"), ("tenant/t", 3, b"{3}")]
    finally:
        await store.close()
        await other.close()
