"""Leader election among MeshKit replicas sharing an etcd store: exactly one publishes.

Each replica holds a lease (TTL `ttl` seconds, renewed every ttl/3) and campaigns with one
txn: create `P/leader` bound to its lease if the key is absent (create_revision == 0). The
winner publishes. The create_revision of its leader key is the fence every desired-state
write compares (`EtcdStore.fence`), so a replica whose lease ran out cannot write even before
it notices. A leader that cannot renew its lease stops publishing when the lease's time is
up by its own clock (measured from when it sent the last renewal, so never later than etcd).

Followers serve watches as the leader does (every replica follows the store) and watch the
leader key; when it is deleted (the leader resigned on shutdown, or died and its lease
expired) they campaign again. A publish request reaching a follower is refused with the
leader's replica id and address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from aetcd import rpc

from .store import StoreError
from .store.etcd import Compacted, EtcdStore

log = logging.getLogger("meshkit.leader")
DEFAULT_TTL = 10


@dataclass(frozen=True, slots=True)
class Leader:
    replica: str
    address: str


def decode_leader(value: bytes) -> Leader | None:
    try:
        data = json.loads(value)
        return Leader(str(data["replica"]), str(data["address"]))
    except (ValueError, KeyError, TypeError):
        return None


async def current_leader(store: EtcdStore) -> Leader | None:
    """Who leads the replicas on this store now (None: nobody)."""
    reply = await store.range(store.leader_key)
    return decode_leader(reply.kvs[0].value) if reply.kvs else None


class Election:
    def __init__(
        self,
        store: EtcdStore,
        replica: str,
        *,
        address: str = "",
        ttl: int = DEFAULT_TTL,
        retry: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.replica = replica
        self.address = address  # the gRPC address publishers should use (set once bound)
        self.ttl = ttl
        self.retry = retry
        self._clock = clock
        self.leader: Leader | None = None
        # The leader key's create_revision (the leader's fence): one value per leader term,
        # the same on every replica; 0 while nobody is known to lead.
        self.term = 0
        self.lease = 0
        self._leading = False
        self._valid_until = 0.0
        store.fence = -1  # no desired-state write until this replica wins

    # -- state ------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock() < self._valid_until

    def refusal(self) -> str | None:
        """Why this replica may not publish now, or None if it may."""
        if self.is_leader:
            return None
        leader = self.leader
        if leader is None or leader.replica == self.replica:
            return (f"no MeshKit replica leads right now (replica {self.replica!r} is "
                    "campaigning); retry in a few seconds")
        return (f"MeshKit replica {self.replica!r} is not the leader; publish through the "
                f"leader, replica {leader.replica!r} at {leader.address}")

    def status(self) -> dict[str, object]:
        """For status output (the fields of admin.proto's Leadership): this replica, whether
        it leads, the leader it knows, the term, and the lease."""
        leader, leading = self.leader, self.is_leader
        remaining = max(self._valid_until - self._clock(), 0.0) if leading else 0.0
        return {"replica": self.replica, "is_leader": leading,
                "leader_replica": leader.replica if leader else "",
                "leader_address": leader.address if leader else "",
                "store": "etcd", "term": self.term if leader else 0,
                "lease_ttl_seconds": self.ttl, "lease_remaining_ms": int(remaining * 1000)}

    # -- the campaign -----------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, then lead or follow, forever; cancel to stop (resign() first to hand
        over at once rather than after the lease's TTL)."""
        while True:
            try:
                await self._term()
            except StoreError as exc:
                log.warning("election: %s; campaigning again in %g s", exc, self.retry)
            except Exception:  # a bug must not end the campaign: log it, go on
                log.exception("election failed; campaigning again in %g s", self.retry)
            finally:
                self._step_down()
            await asyncio.sleep(self.retry)

    async def _term(self) -> None:
        """One lease: campaign, and lead or follow until the lease is lost."""
        sent = self._clock()
        grant = await self.store.call("Lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=self.ttl))
        if grant.error:
            raise StoreError(f"{self.store.where}: lease refused: {grant.error}")
        self.lease, self._valid_until = grant.ID, sent + grant.TTL
        keepalive = asyncio.ensure_future(self._keepalive(grant.ID, grant.TTL))
        try:
            while True:
                revision = await self._campaign()
                if self._leading:
                    await keepalive  # returns or raises when the lease is lost
                    log.warning("replica %s lost its lease; stepping down", self.replica)
                    return
                vacant = asyncio.ensure_future(self._until_vacant(revision))
                done, _ = await asyncio.wait({vacant, keepalive},
                                             return_when=asyncio.FIRST_COMPLETED)
                vacant.cancel()
                if keepalive in done:
                    keepalive.result()
                    return
                vacant.result()
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await keepalive

    async def _campaign(self) -> int:
        """Try to take the leader key; returns the revision the outcome was read at."""
        key = self.store.leader_key
        value = json.dumps({"replica": self.replica, "address": self.address}).encode()
        reply = await self.store.txn(
            [rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                         create_revision=0)],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=self.lease))],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        if reply.succeeded:
            self.store.fence = self.term = reply.header.revision  # the key's create_revision
            self._leading = True
            self.leader = Leader(self.replica, self.address)
            log.info("leader: replica %s leads and publishes (lease %x, ttl %d s, fence %d)",
                     self.replica, self.lease, self.ttl, reply.header.revision)
        else:
            kvs = reply.responses[0].response_range.kvs
            leader = decode_leader(kvs[0].value) if kvs else None
            self.leader, self.term = leader, kvs[0].create_revision if leader else 0
            log.info("leader: replica %s follows %s", self.replica,
                     f"replica {leader.replica} at {leader.address}" if leader else "nobody")
        return reply.header.revision

    async def _until_vacant(self, revision: int) -> None:
        """Follow the leader key from `revision`; return once it is deleted."""
        key = self.store.leader_key
        try:
            async for event in self.store.events(key, b"", revision + 1):
                if event.type == rpc.Event.DELETE:
                    log.info("leader: replica %s is gone; replica %s campaigns",
                             self.leader.replica if self.leader else "?", self.replica)
                    self.leader, self.term = None, 0
                    return
                self.leader = decode_leader(event.kv.value)
                self.term = event.kv.create_revision if self.leader else 0
        except Compacted:
            return  # campaign again: that reads the key afresh

    async def _keepalive(self, lease: int, ttl: int) -> None:
        """Renew the lease every ttl/3; returns when etcd says it expired, raises StoreError
        when it cannot be renewed before its time is up."""
        call = rpc.LeaseStub(self.store.channel()).LeaseKeepAlive(
            metadata=await self.store.metadata())
        try:
            while True:
                sent = self._clock()
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                left = max(self._valid_until - self._clock(), 0.05)
                try:
                    reply = await asyncio.wait_for(call.read(), left)
                except TimeoutError:
                    raise StoreError(f"{self.store.where}: lease {lease:x} not renewed in "
                                     "time") from None
                if reply is grpc.aio.EOF:
                    raise StoreError(f"{self.store.where}: the lease keepalive stream ended")
                if reply.TTL <= 0:
                    return
                self._valid_until = sent + reply.TTL
                await asyncio.sleep(ttl / 3)  # the renewal period, not a synchronization
        except grpc.aio.AioRpcError as exc:
            raise self.store.error(exc) from None
        except (grpc.aio.UsageError, asyncio.InvalidStateError):  # written after it failed
            raise StoreError(f"{self.store.where}: lease keepalive: {(await call.code()).name}:"
                             f" {await call.details()}") from None
        finally:
            call.cancel()

    def _step_down(self) -> None:
        """The term ended (lease lost, etcd unreachable, resigned): lead no more, and forget
        the leader known until the next campaign reads it again."""
        self.store.fence = -1
        self.leader, self.term = None, 0
        if self._leading:
            self._leading = False
            log.warning("leader: replica %s no longer leads", self.replica)

    async def resign(self) -> None:
        """Give up leadership now (revoke the lease, which deletes the leader key); the
        others campaign at once. Best effort: the lease expires anyway."""
        lease, self.lease = self.lease, 0
        self._step_down()
        if lease:
            try:
                await self.store.call("Lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))
            except StoreError as exc:
                log.warning("resign: %s (the lease expires within %d s)", exc, self.ttl)
