"""Immutable signed snapshots, one per scope, and the cache the watch server reads them from.

A `Snapshot` is built from a stored document and checked before it is served: its digest must
match the stored one and its signature must verify with the signer's public key (so a corrupt
row or a wrong key is caught here, not by every node). The cache is fed from the store's watch
(`MeshKit` runs that loop), so a write by any writer reaches the nodes the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import ALGORITHM, Keyring, Signer, document_digest

from .scopes import scopes_for
from .store import StoredConfig
from .waiting import wait_until


class SnapshotError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Snapshot:
    scope: str
    revision: int
    version: str
    epoch: int
    document: bytes
    sha256: str
    key_id: str
    signature: bytes
    algorithm: str = ALGORITHM
    # The serialized omnirelay.mesh.v1.Snapshot without its nonce, made once per snapshot so
    # that a push to many nodes costs a concatenation each (see server/watch.py).
    wire: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def build(cls, stored: StoredConfig, signer: Signer) -> Snapshot:
        if document_digest(stored.document) != stored.sha256:
            raise SnapshotError(
                f"scope {stored.scope!r} revision {stored.revision}: the stored document does "
                "not match its SHA-256; refusing to sign it"
            )
        signed = signer.sign(stored.document)
        snapshot = cls(
            scope=stored.scope,
            revision=stored.revision,
            version=stored.version,
            epoch=stored.epoch,
            document=stored.document,
            sha256=signed.sha256,
            key_id=signed.key_id,
            signature=signed.signature,
        )
        # Consistency before serving: the signature verifies with the signer's public key.
        Keyring([signer.trusted_key()]).verify(
            snapshot.document, snapshot.signature, snapshot.key_id, sha256=snapshot.sha256
        )
        object.__setattr__(snapshot, "wire", snapshot_wire(snapshot))
        return snapshot


def signed_fields(snapshot: Snapshot) -> dict[str, object]:
    """What identifies and signs a snapshot, as both a Snapshot and a Delta message carry it
    (the same field names in mesh.proto)."""
    return {"version": snapshot.version, "epoch": snapshot.epoch, "scope": snapshot.scope,
            "revision": snapshot.revision, "sha256": snapshot.sha256,
            "key_id": snapshot.key_id, "signature": snapshot.signature,
            "signature_algorithm": snapshot.algorithm}


def snapshot_wire(snapshot: Snapshot) -> bytes:
    return mesh_pb2.Snapshot(document=snapshot.document, **signed_fields(snapshot)
                             ).SerializeToString(deterministic=True)


class SnapshotCache:
    """Current snapshot per scope. Waiters take `changed()` before reading, then await it."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._snapshots: dict[str, Snapshot] = {}
        self._stored: dict[str, StoredConfig] = {}
        self._revision = 0
        self._event = asyncio.Event()
        self._next: asyncio.Future[None] | None = None

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def revision(self) -> int:
        """The highest store revision applied."""
        return self._revision

    def changed(self) -> asyncio.Event:
        """An event set at the next change (take it before reading, so nothing is missed)."""
        return self._event

    def next_change(self) -> asyncio.Future[None]:
        """A future done at the next change, shared by every waiter (take it before reading,
        like `changed()`): thousands of watch streams wait on one future, not a task each."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()
        future, self._next = self._next, None
        if future is not None and not future.done():
            future.set_result(None)

    def update(self, stored: StoredConfig) -> Snapshot | None:
        """Sign and serve `stored` unless the cache already holds that scope at a later
        revision. Returns the new snapshot (None if it was older)."""
        current = self._stored.get(stored.scope)
        self._revision = max(self._revision, stored.revision)
        if current is not None and current.revision >= stored.revision:
            self._notify()
            return None
        snapshot = Snapshot.build(stored, self._signer)
        self._stored[stored.scope] = stored
        self._snapshots[stored.scope] = snapshot
        self._notify()
        return snapshot

    def set_signer(self, signer: Signer) -> None:
        """Re-sign every snapshot with `signer` (key rotation) and wake the watchers, who send
        the re-signed snapshots (same documents, new key id) to their nodes."""
        snapshots = {scope: Snapshot.build(s, signer) for scope, s in self._stored.items()}
        self._signer = signer
        self._snapshots = snapshots
        self._notify()

    def get(self, scope: str) -> Snapshot | None:
        return self._snapshots.get(scope)

    def snapshots(self) -> list[Snapshot]:
        """Every scope's current snapshot, by scope name."""
        return [self._snapshots[scope] for scope in sorted(self._snapshots)]

    def resolve(self, node_id: str, tenant: str = "", region: str = "") -> Snapshot | None:
        """The snapshot a node is served: its most specific scope that has one."""
        for scope in scopes_for(node_id, tenant, region):
            snapshot = self._snapshots.get(scope)
            if snapshot is not None:
                return snapshot
        return None

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the cache has applied `revision`; False on timeout."""
        return await wait_until(lambda: self._revision >= revision, lambda: self._event, timeout)
