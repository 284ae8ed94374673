"""The store interface MeshKit's server depends on, whatever keeps the data (SQLite, etcd).

Model (etcd's): one store-wide revision counter. Every write of a scope's document takes the
next revision, and a scope's revision is the revision of its last write, so a compare-and-swap
names the revision the writer last saw (0 = the scope has no document yet). `watch` yields
every write after a revision, in order. The audit log is append-only and records every
mutation, every refused mutation and every read, with actor, action, scope, revision and time.

Endpoint lists of the discovery feed (clusters with `discovery: {type: api}`) are kept the
same way: one list per cluster, written by compare-and-swap at the next store revision with
its audit entry, followed by `watch_endpoints`. The feed's generation is the revision of the
last list written (or, at start, the revision the lists were loaded at), so it never goes
backwards across restarts and every replica agrees on it.
Deleting a list (`delete_endpoints`) is a write too: it takes the next revision, is audited,
and the watch reports it (a `StoredEndpoints` with `deleted` set).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass


class StoreError(Exception):
    """The store cannot do what was asked (not a caller mistake a retry would fix)."""


class RevisionConflict(StoreError):
    """A compare-and-swap write lost: the scope is not at the revision the writer expected."""

    def __init__(self, scope: str, expected: int, actual: int) -> None:
        self.scope = scope
        self.expected = expected
        self.actual = actual
        wanted = "to be empty" if expected == 0 else f"at revision {expected}"
        found = "has no document" if actual == 0 else f"is at revision {actual}"
        super().__init__(
            f"revision conflict on scope {scope!r}: expected it {wanted}, but it {found}; "
            "read it again and retry"
        )

    def __reduce__(self):
        return (type(self), (self.scope, self.expected, self.actual))


class NotLeader(StoreError):
    """A write refused because this replica is not (or no longer) the elected publisher."""


class NotFound(StoreError):
    """A deletion refused: there is nothing to delete."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"{scope!r} has nothing to delete")

    def __reduce__(self):
        return (type(self), (self.scope,))


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """One scope's document as written at `revision`."""

    scope: str
    revision: int
    document: bytes  # canonical JSON
    sha256: str
    version: str
    epoch: int
    actor: str
    updated_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class StoredEndpoints:
    """One cluster's endpoint list as written at `revision` (its discovery generation), or,
    with `deleted`, the deletion of its list at `revision` (`endpoints` empty)."""

    cluster: str
    revision: int
    endpoints: bytes  # canonical JSON list of endpoint mappings
    actor: str
    updated_at: float  # Unix seconds
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    timestamp: float  # Unix seconds
    actor: str
    action: str  # read, write, conflict, dry-run, push, nack, ...
    scope: str
    revision: int
    detail: str


class Store(abc.ABC):
    """Desired state by scope, with revisions, compare-and-swap writes, watch and audit."""

    kind = ""  # "sqlite", "etcd": what status output names the backend

    @abc.abstractmethod
    async def get(
        self, scope: str, *, actor: str, action: str = "read", detail: str = ""
    ) -> StoredConfig | None:
        """The scope's current document, or None; audited as `action` by `actor`."""

    @abc.abstractmethod
    async def current(self, *, actor: str) -> tuple[list[StoredConfig], int]:
        """Every scope's current document and the store revision they were read at (so a
        `watch(after_revision=...)` started from it misses nothing); audited as one read."""

    @abc.abstractmethod
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
        """Write the scope's document if the scope is at `expected_revision` (0 = empty),
        atomically with its audit entry. RevisionConflict otherwise (also audited)."""

    @abc.abstractmethod
    def watch(self, after_revision: int = 0) -> AsyncIterator[StoredConfig]:
        """Every write with a revision above `after_revision`, in revision order, forever."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store revision: the revision of the last write, 0 if none."""

    # -- endpoint lists (the discovery feed) ------------------------------------------------

    @abc.abstractmethod
    async def put_endpoints(
        self, cluster: str, endpoints: bytes, *, expected_revision: int | None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        """Replace the cluster's endpoint list at the next store revision, atomically with
        its audit entry (action `set-endpoints`, scope `cluster/<name>`); with
        `expected_revision`, only if the list is at that revision (0 = the cluster has none),
        RevisionConflict otherwise (audited)."""

    @abc.abstractmethod
    async def delete_endpoints(
        self, cluster: str, *, expected_revision: int | None = None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        """Delete the cluster's endpoint list at the next store revision, atomically with its
        audit entry (action `delete-endpoints`, scope `cluster/<name>`); the deletion record
        (`deleted` set) is returned and watched like a write. NotFound (audited as
        `not-found`) when the cluster has no list; with `expected_revision`, RevisionConflict
        (audited) unless the list is at that revision."""

    @abc.abstractmethod
    async def current_endpoints(self) -> tuple[list[StoredEndpoints], int]:
        """Every cluster's current list (by cluster; deleted ones are not listed) and the
        store revision they were read at, from which `watch_endpoints` misses nothing."""

    @abc.abstractmethod
    def watch_endpoints(self, after_revision: int = 0) -> AsyncIterator[StoredEndpoints]:
        """Every endpoint-list write and deletion with a revision above `after_revision`, in
        revision order, forever."""

    @abc.abstractmethod
    async def append_audit(
        self, *, actor: str, action: str, scope: str = "", revision: int = 0, detail: str = ""
    ) -> AuditEntry:
        """Record an event that is not a store operation (a push, a node's NACK)."""

    @abc.abstractmethod
    async def audit_log(
        self,
        *,
        since: float | None = None,
        after_id: int = 0,
        scope: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries matching every given filter, oldest first; with `limit`, the newest
        `limit` of them."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store; further calls fail."""

    # -- CA records (meshkit/ca): small JSON values by (kind, name), shared by replicas. ------
    # Kinds: "authority" (the CA state), "node" (registrations), "issued", "revoked". A backend
    # without them cannot run the CA; these defaults say so.

    async def ca_get(self, kind: str, name: str) -> bytes | None:
        """The record's value, or None."""
        raise StoreError(f"{type(self).__name__} does not keep CA records")

    async def ca_put(self, kind: str, name: str, value: bytes, *, actor: str,
                     detail: str = "") -> None:
        """Create or replace the record, atomically with an audit entry (action `ca-<kind>`,
        scope `ca/<kind>/<name>`)."""
        raise StoreError(f"{type(self).__name__} does not keep CA records")

    async def ca_list(self, kind: str) -> list[tuple[str, bytes]]:
        """Every record of `kind` as (name, value), by name."""
        raise StoreError(f"{type(self).__name__} does not keep CA records")

    async def ca_create(self, kind: str, name: str, value: bytes, *, actor: str,
                        detail: str = "") -> bool:
        """Create the record only if there is none (atomically, audited like `ca_put`);
        False, writing nothing, when it exists: replicas racing to create it agree on one."""
        raise StoreError(f"{type(self).__name__} does not keep CA records")

    async def ca_delete(self, kind: str, name: str, *, actor: str, detail: str = "") -> bool:
        """Delete the record, atomically with an audit entry (action `ca-<kind>-deleted`);
        False when there was none (nothing audited)."""
        raise StoreError(f"{type(self).__name__} does not keep CA records")
