"""Signed config deltas for the watch stream, made once per (base, target) and shared.

A node that announced `config_delta/1` and ACKed document B is sent the next snapshot T of its
scope as a `Delta`: an RFC 6902 patch from B to T (omnirelay.config.delta) with T's signature,
which stays over T's whole canonical document. The patch for a (B, T) pair is computed once,
on a worker thread, by the first stream that needs it; every other stream on the same base
awaits the same future and gets the same pre-serialized message (nonce appended per node, as
for snapshots). A delta that is not smaller than `ratio` of the snapshot is not worth it: the
pair is remembered as None and the snapshot is sent instead.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from omnirelay.config.delta import FORMAT, make_patch
from omnirelay.config.protos import mesh_pb2

from .cache import Snapshot, signed_fields

log = logging.getLogger("meshkit.delta")

DOCUMENT_BYTES = 64 << 20  # recent documents kept as possible bases, at most this much
DELTAS = 256  # (base, target) pairs remembered
RATIO = 0.5  # send a delta only when it is smaller than this share of the snapshot


@dataclass(frozen=True, slots=True)
class Delta:
    base_version: str
    base_sha256: str
    target: Snapshot
    patch: bytes
    # The serialized omnirelay.mesh.v1.Delta without its nonce (see server/watch.py).
    wire: bytes = field(default=b"", repr=False, compare=False)


def delta_wire(base_version: str, base_sha256: str, target: Snapshot, patch: bytes) -> bytes:
    return mesh_pb2.Delta(
        **signed_fields(target),
        base_version=base_version,
        base_sha256=base_sha256,
        patch_format=FORMAT,
        patch=patch,
    ).SerializeToString(deterministic=True)


def build_delta(base_version: str, base: bytes, base_sha256: str, target: Snapshot,
                ratio: float = RATIO) -> Delta | None:
    """The delta from `base` to `target`, or None when no exact patch exists or it is not
    smaller than `ratio` of the snapshot's wire form."""
    patch = make_patch(base, target.document)
    if patch is None:
        return None
    wire = delta_wire(base_version, base_sha256, target, patch)
    if len(wire) >= ratio * len(target.wire):
        return None
    return Delta(base_version, base_sha256, target, patch, wire)


class DeltaCache:
    """Recent documents by SHA-256 (the bases a node may run; the least recently sent go
    first past `document_bytes`) and the deltas made from them."""

    def __init__(self, document_bytes: int = DOCUMENT_BYTES, deltas: int = DELTAS,
                 ratio: float = RATIO) -> None:
        self._documents: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._document_bytes = 0
        self._deltas: OrderedDict[tuple, asyncio.Future[Delta | None]] = OrderedDict()
        self._max_document_bytes = document_bytes
        self._max_deltas = deltas
        self.ratio = ratio

    def remember(self, snapshot: Snapshot) -> None:
        """Keep `snapshot`'s document as a possible base (called per send: O(1))."""
        if snapshot.sha256 in self._documents:
            self._documents.move_to_end(snapshot.sha256)
            return
        self._documents[snapshot.sha256] = (snapshot.version, snapshot.document)
        self._document_bytes += len(snapshot.document)
        while self._document_bytes > self._max_document_bytes and len(self._documents) > 1:
            _, (_, document) = self._documents.popitem(last=False)
            self._document_bytes -= len(document)

    def knows(self, sha256: str) -> bool:
        return sha256 in self._documents

    async def get(self, base_sha256: str, target: Snapshot) -> Delta | None:
        """The delta from the document with SHA-256 `base_sha256` to `target`; None when that
        document is not known, no patch reproduces the target, or it would not be smaller."""
        if base_sha256 == target.sha256:
            return None
        # The signature and the scope's revision pin the target's document and signing key.
        key = (base_sha256, target.scope, target.revision, target.signature)
        future = self._deltas.get(key)
        if future is None:
            known = self._documents.get(base_sha256)
            if known is None:
                return None
            version, base = known
            future = asyncio.ensure_future(asyncio.to_thread(
                build_delta, version, base, base_sha256, target, self.ratio))
            future.add_done_callback(lambda f, k=key: self._built(f, k))
            self._deltas[key] = future
            while len(self._deltas) > self._max_deltas:
                self._deltas.popitem(last=False)
        else:
            self._deltas.move_to_end(key)
        try:
            # shield: a stream that ends while waiting must not cancel it for the others.
            return await asyncio.shield(future)
        except Exception:
            log.exception("cannot make the delta %s -> %s revision %d", base_sha256[:16],
                          target.scope, target.revision)
            return None

    @staticmethod
    def _built(future: asyncio.Future, key: tuple) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        delta = future.result()
        log.debug("made the delta %s -> %s revision %d: %s", key[0][:16], key[1], key[2],
                  "not worth it" if delta is None else f"{len(delta.wire)} bytes")
