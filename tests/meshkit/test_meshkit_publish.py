"""meshkit.publish: validate -> dry-run diff -> CAS write -> audit -> sign -> push, in-process
(the cache is fed by the store's watch, as in the server)."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from mkharness import document

from meshkit.cache import SnapshotCache
from meshkit.publish import Publisher
from meshkit.scopes import ScopeError, check_scope, scopes_for
from meshkit.store import RevisionConflict, SqliteStore
from omnirelay.config import ConfigError, load_config
from omnirelay.config.signing import Keyring, Signer


@contextlib.asynccontextmanager
async def pipeline(tmp_path):
    store = SqliteStore(tmp_path / "s.db", poll_interval=0.05)
    signer = Signer.generate()
    cache = SnapshotCache(signer)

    async def feed():
        async for stored in store.watch():
            cache.update(stored)

    task = asyncio.ensure_future(feed())
    try:
        yield Publisher(store, cache), store, cache, signer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


def blob(doc) -> bytes:
    return json.dumps(doc).encode()


async def test_publish_writes_signs_and_serves(tmp_path):
    async with pipeline(tmp_path) as (publisher, store, cache, signer):
        result = await publisher.publish("global", blob(document("v1")), actor="alice")
        assert (result.revision, result.version, result.epoch) == (1, "v1", 1)
        snap = cache.get("global")
        assert snap is result.snapshot and snap.revision == 1
        Keyring([signer.trusted_key()]).verify(snap.document, snap.signature, snap.key_id,
                                               sha256=snap.sha256)
        config = load_config(snap.document)
        assert config.metadata.epoch == 1 and config.route("r").cluster == "c"
        actions = [(e.actor, e.action, e.revision) for e in await store.audit_log()]
        assert actions == [("alice", "diff", 0), ("alice", "write", 1), ("alice", "push", 1)]
        assert signer.key_id in (await store.audit_log())[-1].detail


async def test_diff_names_added_removed_and_changed_entries(tmp_path):
    async with pipeline(tmp_path) as (publisher, store, _cache, _):
        first = await publisher.publish("global", blob(document("v1", routes=("a", "b"))),
                                        actor="alice")
        assert first.diff.section("routes").added == ("a", "b")
        doc = document("v2", routes=("b", "c"))
        doc["spec"]["routes"][0]["timeout"] = "3s"  # b changes
        result = await publisher.publish("global", blob(doc), actor="alice", dry_run=True)
        routes = result.diff.section("routes")
        assert (routes.added, routes.removed, routes.changed) == (("c",), ("a",), ("b",))
        assert result.diff.section("clusters").changed == ()
        lines = result.diff.summary().splitlines()
        assert "metadata.version: 'v1' -> 'v2'" in lines
        assert "metadata.epoch: 1 -> 2" in lines
        assert {"+ route c", "- route a", "~ route b"} <= set(lines)
        # A dry run writes nothing, and is audited as such.
        assert result.dry_run and result.revision == 1
        assert (await store.get("global", actor="t")).version == "v1"
        assert (await store.audit_log())[-2].action == "dry-run"


async def test_epoch_is_raised_and_identical_documents_are_not_rewritten(tmp_path):
    async with pipeline(tmp_path) as (publisher, _store, cache, _):
        await publisher.publish("global", blob(document("v1", epoch=5)), actor="a")
        assert cache.get("global").epoch == 5
        again = await publisher.publish("global", blob(document("v1", epoch=0)), actor="a")
        assert again.unchanged and again.revision == 1 and again.epoch == 5
        assert again.diff.empty
        nxt = await publisher.publish("global", blob(document("v2", epoch=3)), actor="a")
        assert (nxt.revision, nxt.epoch) == (2, 6)
        assert load_config(cache.get("global").document).metadata.epoch == 6
        jump = await publisher.publish("global", blob(document("v3", epoch=100)), actor="a")
        assert jump.epoch == 100


async def test_invalid_documents_and_conflicts_are_refused(tmp_path):
    async with pipeline(tmp_path) as (publisher, store, _cache, _):
        bad = document()
        bad["spec"]["routes"][0]["cluster"] = "nope"
        bad["spec"]["surprise"] = 1
        with pytest.raises(ConfigError) as info:
            await publisher.publish("global", blob(bad), actor="a")
        text = str(info.value)
        assert "surprise" in text and "nope" in text
        await publisher.publish("global", blob(document("v1")), actor="a")
        with pytest.raises(RevisionConflict):
            await publisher.publish("global", blob(document("v2")), actor="b",
                                    expected_revision=0)
        with pytest.raises(ScopeError):
            await publisher.publish("planet/x", blob(document()), actor="a")
        assert await store.revision() == 1


def test_scopes():
    assert check_scope("") == "global"
    assert check_scope("tenant/acme") == "tenant/acme"
    for bad in ("tenant/", "zone/a", "tenant/a/b", "node/-x"):
        with pytest.raises(ScopeError):
            check_scope(bad)
    assert scopes_for("n1", "acme", "eu") == ["node/n1", "tenant/acme", "region/eu", "global"]
    assert scopes_for("n1") == ["node/n1", "global"]
