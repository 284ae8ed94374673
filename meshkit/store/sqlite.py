"""`SqliteStore`: the embedded default store, one SQLite file in WAL mode.

Tables:
- `history`: every write (revision, scope, document, digest, version, epoch, actor, time), the
  revision being the store-wide counter; append-only (triggers refuse UPDATE and DELETE).
- `desired`: each scope's current revision (a pointer into `history`).
- `audit`: the append-only audit log (same triggers).
- `ca_records`: the certificate authority's records by (kind, name) (meshkit/ca).
- `endpoint_history` and `endpoints`: every endpoint-list write of the discovery feed and each
  cluster's current one, as `history` and `desired`; a deletion is a history row with
  `deleted` set (and no row in `endpoints`). Config and endpoint writes draw their revisions
  from one counter (the larger of both histories, plus one).

A compare-and-swap runs in one `BEGIN IMMEDIATE` transaction: read the scope's revision,
compare, append to `history`, move the pointer, append the audit row, commit. Several
processes may share the file (SQLite's lock serializes writers; `busy_timeout` waits for it).

All SQLite calls run on one dedicated thread that owns the connection, so the asyncio loop is
never blocked on disk. `watch` is woken at once by writes through this object and polls every
`poll_interval` seconds for writes by other processes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    AuditEntry,
    NotFound,
    RevisionConflict,
    Store,
    StoredConfig,
    StoredEndpoints,
    StoreError,
)

_T = TypeVar("_T")
SCHEMA_VERSION = 3  # 2: endpoint lists; 3: their deletions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    revision   INTEGER PRIMARY KEY,
    scope      TEXT    NOT NULL,
    document   BLOB    NOT NULL,
    sha256     TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    updated_at REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS history_scope ON history (scope, revision);
CREATE TABLE IF NOT EXISTS desired (
    scope    TEXT    PRIMARY KEY,
    revision INTEGER NOT NULL REFERENCES history (revision)
);
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp REAL    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    scope     TEXT    NOT NULL,
    revision  INTEGER NOT NULL,
    detail    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (timestamp);
CREATE TABLE IF NOT EXISTS ca_records (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS endpoint_history (
    revision   INTEGER PRIMARY KEY,
    cluster    TEXT    NOT NULL,
    endpoints  BLOB    NOT NULL,
    actor      TEXT    NOT NULL,
    updated_at REAL    NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS endpoints (
    cluster  TEXT    PRIMARY KEY,
    revision INTEGER NOT NULL REFERENCES endpoint_history (revision)
);
CREATE TRIGGER IF NOT EXISTS endpoint_history_no_update BEFORE UPDATE ON endpoint_history
    BEGIN SELECT RAISE(ABORT, 'endpoint history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS endpoint_history_no_delete BEFORE DELETE ON endpoint_history
    BEGIN SELECT RAISE(ABORT, 'endpoint history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;
"""

_STORED_COLUMNS = "h.scope, h.revision, h.document, h.sha256, h.version, h.epoch, h.actor, h.updated_at"
_ENDPOINT_COLUMNS = "h.cluster, h.revision, h.endpoints, h.actor, h.updated_at, h.deleted"
_ENDPOINT_REVISION = "SELECT revision FROM endpoints WHERE cluster = ?"
_NEXT_REVISION = (
    "SELECT MAX(COALESCE((SELECT MAX(revision) FROM history), 0),"
    " COALESCE((SELECT MAX(revision) FROM endpoint_history), 0)) + 1"
)


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshkit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Watchers in any event loop; set from that loop after a write through this object.
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wakers_lock = threading.Lock()
        self._executor.submit(self._open).result()

    # -- thread plumbing --------------------------------------------------------------------

    def _open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version} is newer than this MeshKit "
                    f"({SCHEMA_VERSION}); upgrade MeshKit"
                )
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(endpoint_history)")}
            if "deleted" not in columns:  # a version 2 file: no deletions yet
                conn.execute("ALTER TABLE endpoint_history"
                             " ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        self._conn = conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreError("the store is closed")
        conn = self._conn
        assert conn is not None
        return await asyncio.wrap_future(self._executor.submit(fn, conn))

    def _transaction(self, conn: sqlite3.Connection, body: Callable[[], _T]) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _checked_write(
        self, conn: sqlite3.Connection, current: str, key: str, scope: str,
        expected_revision: int | None, actor: str,
        write: Callable[[sqlite3.Connection, int, float], _T], *, must_exist: str | None = None,
    ) -> _T:
        """One audited compare-and-swap write in one transaction. `current` selects the
        key's revision (0: none). A refusal (a revision other than `expected_revision`, or no
        row when `must_exist` says why one is needed) is audited, committed and raised;
        otherwise `write(conn, revision, now)` runs at the next store revision."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(current, (key,)).fetchone()
            actual = row[0] if row else 0
            refusal: StoreError | None = None
            if must_exist is not None and actual == 0:
                refusal = NotFound(scope)
                self._audit_row(conn, actor, "not-found", scope, 0, must_exist)
            elif expected_revision is not None and actual != expected_revision:
                refusal = RevisionConflict(scope, expected_revision, actual)
                self._audit_row(conn, actor, "conflict", scope, actual,
                                f"expected revision {expected_revision}")
            if refusal is not None:
                conn.execute("COMMIT")
                raise refusal
            result = write(conn, conn.execute(_NEXT_REVISION).fetchone()[0], self._clock())
            conn.execute("COMMIT")
            return result
        except (NotFound, RevisionConflict):
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _audit_row(
        self, conn: sqlite3.Connection, actor: str, action: str, scope: str, revision: int,
        detail: str,
    ) -> AuditEntry:
        now = self._clock()
        cursor = conn.execute(
            "INSERT INTO audit (timestamp, actor, action, scope, revision, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (now, actor, action, scope, revision, detail),
        )
        return AuditEntry(cursor.lastrowid, now, actor, action, scope, revision, detail)

    @staticmethod
    def _stored(row: tuple[Any, ...]) -> StoredConfig:
        return StoredConfig(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], row[7])

    def _current_row(self, conn: sqlite3.Connection, scope: str) -> StoredConfig | None:
        row = conn.execute(
            f"SELECT {_STORED_COLUMNS} FROM desired d JOIN history h ON h.revision = d.revision"
            " WHERE d.scope = ?",
            (scope,),
        ).fetchone()
        return None if row is None else self._stored(row)

    def _wake(self) -> None:
        with self._wakers_lock:
            wakers = list(self._wakers)
        for loop, event in wakers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                pass

    # -- Store ------------------------------------------------------------------------------

    async def get(
        self, scope: str, *, actor: str, action: str = "read", detail: str = ""
    ) -> StoredConfig | None:
        def op(conn: sqlite3.Connection) -> StoredConfig | None:
            def body() -> StoredConfig | None:
                stored = self._current_row(conn, scope)
                self._audit_row(conn, actor, action, scope, stored.revision if stored else 0,
                                detail)
                return stored

            return self._transaction(conn, body)

        return await self._run(op)

    async def current(self, *, actor: str) -> tuple[list[StoredConfig], int]:
        def op(conn: sqlite3.Connection) -> tuple[list[StoredConfig], int]:
            def body() -> tuple[list[StoredConfig], int]:
                rows = conn.execute(
                    f"SELECT {_STORED_COLUMNS} FROM desired d"
                    " JOIN history h ON h.revision = d.revision ORDER BY d.scope"
                ).fetchall()
                revision = conn.execute("SELECT COALESCE(MAX(revision), 0) FROM history")
                revision = revision.fetchone()[0]
                self._audit_row(conn, actor, "read-all", "", revision, f"{len(rows)} scopes")
                return [self._stored(r) for r in rows], revision

            return self._transaction(conn, body)

        return await self._run(op)

    async def put(
        self,
        scope: str,
        document: bytes,
        *,
        expected_revision: int,
        actor: str,
        version: str,
        epoch: int,
        sha256: str,
        detail: str = "",
    ) -> StoredConfig:
        document = bytes(document)

        def write(conn: sqlite3.Connection, revision: int, now: float) -> StoredConfig:
            conn.execute(
                "INSERT INTO history (revision, scope, document, sha256, version, epoch,"
                " actor, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (revision, scope, document, sha256, version, epoch, actor, now),
            )
            conn.execute(
                "INSERT INTO desired (scope, revision) VALUES (?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET revision = excluded.revision",
                (scope, revision),
            )
            self._audit_row(conn, actor, "write", scope, revision, detail)
            return StoredConfig(scope, revision, document, sha256, version, epoch, actor, now)

        def op(conn: sqlite3.Connection) -> StoredConfig:
            return self._checked_write(conn, "SELECT revision FROM desired WHERE scope = ?",
                                       scope, scope, expected_revision, actor, write)

        stored = await self._run(op)
        self._wake()
        return stored

    async def revision(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("SELECT COALESCE(MAX(revision), 0) FROM history").fetchone()[0]

        return await self._run(op)

    def watch(self, after_revision: int = 0) -> AsyncIterator[StoredConfig]:
        return self._follow(f"SELECT {_STORED_COLUMNS} FROM history h", self._stored,
                            after_revision)

    async def _follow(self, select: str, decode: Callable[[tuple[Any, ...]], _T],
                      after_revision: int) -> AsyncIterator[_T]:
        """The rows of `select` (a history table as `h`) above `after_revision`, in revision
        order, forever: woken by writes through this object, polling for other processes'."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waker = (loop, event)
        with self._wakers_lock:
            self._wakers.add(waker)
        last = after_revision

        def changes(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(f"{select} WHERE h.revision > ? ORDER BY h.revision LIMIT 1000",
                                (last,)).fetchall()

        try:
            while True:
                event.clear()
                batch = await self._run(changes)
                for row in batch:
                    last = row[1]
                    yield decode(row)
                if len(batch) == 1000:
                    continue
                try:
                    await asyncio.wait_for(event.wait(), self.poll_interval)
                except TimeoutError:
                    pass
        finally:
            with self._wakers_lock:
                self._wakers.discard(waker)

    # -- endpoint lists ---------------------------------------------------------------------

    @staticmethod
    def _endpoints(row: tuple[Any, ...]) -> StoredEndpoints:
        return StoredEndpoints(row[0], row[1], bytes(row[2]), row[3], row[4], bool(row[5]))

    async def put_endpoints(
        self, cluster: str, endpoints: bytes, *, expected_revision: int | None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        endpoints = bytes(endpoints)
        scope = f"cluster/{cluster}"

        def write(conn: sqlite3.Connection, revision: int, now: float) -> StoredEndpoints:
            conn.execute(
                "INSERT INTO endpoint_history (revision, cluster, endpoints, actor,"
                " updated_at) VALUES (?, ?, ?, ?, ?)",
                (revision, cluster, endpoints, actor, now),
            )
            conn.execute(
                "INSERT INTO endpoints (cluster, revision) VALUES (?, ?)"
                " ON CONFLICT (cluster) DO UPDATE SET revision = excluded.revision",
                (cluster, revision),
            )
            self._audit_row(conn, actor, "set-endpoints", scope, revision, detail)
            return StoredEndpoints(cluster, revision, endpoints, actor, now)

        def op(conn: sqlite3.Connection) -> StoredEndpoints:
            return self._checked_write(conn, _ENDPOINT_REVISION, cluster, scope,
                                       expected_revision, actor, write)

        stored = await self._run(op)
        self._wake()
        return stored

    async def delete_endpoints(
        self, cluster: str, *, expected_revision: int | None = None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        scope = f"cluster/{cluster}"

        def write(conn: sqlite3.Connection, revision: int, now: float) -> StoredEndpoints:
            conn.execute(
                "INSERT INTO endpoint_history (revision, cluster, endpoints, actor,"
                " updated_at, deleted) VALUES (?, ?, x'', ?, ?, 1)",
                (revision, cluster, actor, now),
            )
            conn.execute("DELETE FROM endpoints WHERE cluster = ?", (cluster,))
            self._audit_row(conn, actor, "delete-endpoints", scope, revision, detail)
            return StoredEndpoints(cluster, revision, b"", actor, now, deleted=True)

        def op(conn: sqlite3.Connection) -> StoredEndpoints:
            return self._checked_write(conn, _ENDPOINT_REVISION, cluster, scope,
                                       expected_revision, actor, write,
                                       must_exist="no endpoint list to delete")

        stored = await self._run(op)
        self._wake()
        return stored

    async def current_endpoints(self) -> tuple[list[StoredEndpoints], int]:
        def op(conn: sqlite3.Connection) -> tuple[list[StoredEndpoints], int]:
            def body() -> tuple[list[StoredEndpoints], int]:
                rows = conn.execute(
                    f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints e"
                    " JOIN endpoint_history h ON h.revision = e.revision ORDER BY e.cluster"
                ).fetchall()
                # The last endpoint write or deletion: what the watch goes on from.
                revision = conn.execute(
                    "SELECT COALESCE(MAX(revision), 0) FROM endpoint_history").fetchone()[0]
                return [self._endpoints(r) for r in rows], revision

            return self._transaction(conn, body)

        return await self._run(op)

    def watch_endpoints(self, after_revision: int = 0) -> AsyncIterator[StoredEndpoints]:
        return self._follow(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoint_history h",
                            self._endpoints, after_revision)

    async def append_audit(
        self, *, actor: str, action: str, scope: str = "", revision: int = 0, detail: str = ""
    ) -> AuditEntry:
        def op(conn: sqlite3.Connection) -> AuditEntry:
            return self._transaction(
                conn, lambda: self._audit_row(conn, actor, action, scope, revision, detail)
            )

        return await self._run(op)

    async def audit_log(
        self,
        *,
        since: float | None = None,
        after_id: int = 0,
        scope: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        clauses, params = ["id > ?"], [after_id]
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(since)
        if scope is not None:
            clauses.append("scope = ?")
            params.append(scope)
        sql = (
            "SELECT id, timestamp, actor, action, scope, revision, detail FROM audit"
            f" WHERE {' AND '.join(clauses)} ORDER BY id DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def op(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(sql, params).fetchall()
            return [AuditEntry(*row) for row in reversed(rows)]

        return await self._run(op)

    async def ca_get(self, kind: str, name: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM ca_records WHERE kind = ? AND name = ?",
                               (kind, name)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(op)

    async def ca_put(self, kind: str, name: str, value: bytes, *, actor: str,
                     detail: str = "") -> None:
        value = bytes(value)

        def op(conn: sqlite3.Connection) -> None:
            def body() -> None:
                conn.execute(
                    "INSERT INTO ca_records (kind, name, value, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (kind, name) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    (kind, name, value, self._clock()),
                )
                self._audit_row(conn, actor, f"ca-{kind}", f"ca/{kind}/{name}", 0, detail)

            self._transaction(conn, body)

        await self._run(op)

    async def ca_create(self, kind: str, name: str, value: bytes, *, actor: str,
                        detail: str = "") -> bool:
        value = bytes(value)

        def op(conn: sqlite3.Connection) -> bool:
            def body() -> bool:
                cursor = conn.execute(
                    "INSERT INTO ca_records (kind, name, value, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (kind, name) DO NOTHING", (kind, name, value, self._clock()))
                if cursor.rowcount == 1:
                    self._audit_row(conn, actor, f"ca-{kind}", f"ca/{kind}/{name}", 0, detail)
                return cursor.rowcount == 1

            return self._transaction(conn, body)

        return await self._run(op)

    async def ca_delete(self, kind: str, name: str, *, actor: str, detail: str = "") -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            def body() -> bool:
                cursor = conn.execute("DELETE FROM ca_records WHERE kind = ? AND name = ?",
                                      (kind, name))
                if cursor.rowcount == 1:
                    self._audit_row(conn, actor, f"ca-{kind}-deleted", f"ca/{kind}/{name}", 0,
                                    detail)
                return cursor.rowcount == 1

            return self._transaction(conn, body)

        return await self._run(op)

    async def ca_list(self, kind: str) -> list[tuple[str, bytes]]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            rows = conn.execute("SELECT name, value FROM ca_records WHERE kind = ? ORDER BY name",
                                (kind,)).fetchall()
            return [(name, bytes(value)) for name, value in rows]

        return await self._run(op)

    async def close(self) -> None:
        if self._closed:
            return
        conn = self._conn

        def op() -> None:
            if conn is not None:
                conn.close()

        await asyncio.wrap_future(self._executor.submit(op))
        self._closed = True
        self._executor.shutdown(wait=True)
