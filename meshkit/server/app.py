"""`MeshKit`: one control-plane server process's parts, wired together.

    store --watch--> SnapshotCache (signs) --> ConfigWatch streams --> nodes
      ^                                              |
    Publisher <-- MeshAdmin (northbound)        NodeRegistry <-- NodeStatus reports

Writes reach the cache only through the store's watch, whoever made them, so a publish by
this process, by another process on the same SQLite file or by another replica on etcd is
pushed the same way; endpoint lists reach the discovery feed the same way (the store's endpoint
watch). With an `election` (replicas on etcd, meshkit/leader.py) only the leader publishes;
every replica serves watches and discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from omnirelay.config.protos import admin_pb2_grpc, mesh_pb2_grpc
from omnirelay.config.signing import Signer

from ..api.admin import MeshAdminService
from ..api.auth import TokenAuthority
from ..api.ops import AdminOps
from ..ca import CertificateAuthority
from ..ca.server_tls import ServerIdentity
from ..cache import SnapshotCache, SnapshotError
from ..publish import Publisher
from ..store import Store, StoreError
from . import ca_service, watch
from .discovery import EndpointDiscoveryService, EndpointFeed
from .nodes import NodeRegistry, RepushPolicy
from .status import NodeStatusService
from .watch import DEFAULT_RETRY, ConfigWatchService, RetryPolicy

if TYPE_CHECKING:  # the etcd client is imported only by replicas that use it
    from ..leader import Election

log = logging.getLogger("meshkit.server")
ACTOR = "meshkit"


class MeshKit:
    def __init__(
        self,
        store: Store,
        signer: Signer,
        tokens: TokenAuthority,
        *,
        listen: str = "127.0.0.1:0",
        retry: RetryPolicy = DEFAULT_RETRY,
        report_interval_ms: int = 10_000,
        http_listen: str | None = None,
        repush: RepushPolicy | None = None,
        ca: CertificateAuthority | None = None,
        tls: ServerIdentity | None = None,
        bootstrap_listen: str | None = None,
        election: Election | None = None,
        replica: str | None = None,
        ca_retention: float | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.listen = listen
        self.retry = retry
        self.report_interval_ms = report_interval_ms
        self.cache = SnapshotCache(signer)
        self.registry = NodeRegistry(repush=repush)
        self.feed = EndpointFeed()
        self.publisher = Publisher(store, self.cache, self.registry.watching,
                                   nodes=self.registry.targets)
        self.ops = AdminOps(store, self.cache, self.publisher, self.registry, self.feed, tokens,
                            leadership=self.leadership)
        self.http_listen, self.http_port, self._http = http_listen, None, None
        self.port: int | None = None
        # The CA (meshkit/ca); with `tls`, `listen` is mTLS (callers present an SVID of this CA)
        # and `bootstrap_listen` is server-only TLS (first certificates, the admin API).
        self.ca, self.tls, self.bootstrap_listen = ca, tls, bootstrap_listen
        self.bootstrap_port: int | None = None
        self.ca_retention = ca_retention  # expired certificates' records pruned after it
        self._ca_upkeep: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._feeders: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.election = election
        self.replica = (election.replica if election is not None
                        else replica or f"{socket.gethostname()}-{os.getpid()}")
        self._campaign: asyncio.Task[None] | None = None
        if election is not None:
            self.publisher.may_publish = election.refusal

    async def start(self) -> int:
        """Load every scope, start following the store and serving; returns the bound port."""
        states, revision = await self.store.current(actor=ACTOR)
        for stored in states:
            self._apply(stored)
        lists, endpoints_revision = await self.store.current_endpoints()
        self.feed.load(lists, endpoints_revision)
        self._feeders = [
            asyncio.create_task(self._follow(self.store.watch, self._apply, revision),
                                name="meshkit-store-watch"),
            asyncio.create_task(self._follow(self.store.watch_endpoints, self.feed.apply,
                                             endpoints_revision),
                                name="meshkit-endpoints-watch"),
        ]
        if self.ca is not None:
            await ca_service.load_ca(self.ca, needs_ca=self.tls is not None, actor=ACTOR)
        server = grpc.aio.server(
            interceptors=ca_service.interceptors(self.ca, self.tls),
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        watch.add_to_server(
            ConfigWatchService(self.cache, self.registry, self.store, self._stopping,
                               retry=self.retry),
            server,
        )
        mesh_pb2_grpc.add_EndpointDiscoveryServicer_to_server(
            EndpointDiscoveryService(self.feed, self._stopping, retry=self.retry), server
        )
        mesh_pb2_grpc.add_NodeStatusServicer_to_server(
            NodeStatusService(self.cache, self.registry, self.feed,
                              report_interval_ms=self.report_interval_ms),
            server,
        )
        admin_pb2_grpc.add_MeshAdminServicer_to_server(
            MeshAdminService(self.ops),
            server,
        )
        if self.ca is not None:
            ca_service.add_services(server, self.ca, self.tokens)
        if self.tls is not None:
            self.port = server.add_secure_port(
                self.listen, self.tls.credentials(require_client_certificate=True))
            if self.bootstrap_listen:  # node services there refuse callers without an SVID
                self.bootstrap_port = server.add_secure_port(
                    self.bootstrap_listen, self.tls.credentials(require_client_certificate=False))
                if not self.bootstrap_port:
                    raise OSError(f"cannot listen on {self.bootstrap_listen}")
        else:  # development only: plaintext, bind to loopback
            self.port = server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await server.start()
        self._server = server
        if self.http_listen:  # the JSON/HTTP northbound API (meshkit/api/http.py)
            from ..api.http import HttpApi

            self._http = HttpApi(self.ops)
            self.http_port = await self._http.start(self.http_listen)
        if self.ca is not None:  # CRL refresh; pruning on the leader (ca_service.maintain)
            election = self.election
            self._ca_upkeep = asyncio.create_task(ca_service.maintain(
                self.ca, leading=lambda: election is None or election.is_leader, actor=ACTOR,
                **({"retention": self.ca_retention} if self.ca_retention is not None else {})),
                name="meshkit-ca-upkeep")
        if self.election is not None:
            if not self.election.address:
                self.election.address = f"{self.listen.rpartition(':')[0]}:{self.port}"
            self._campaign = asyncio.create_task(self.election.run(), name="meshkit-election")
        log.info("serving on port %d; %d scopes at store revision %d, %d endpoint lists at "
                 "discovery generation %d, signing key %s", self.port, len(states), revision,
                 len(lists), self.feed.generation, self.cache.signer.key_id)
        return self.port

    def _apply(self, stored) -> None:
        try:
            snapshot = self.cache.update(stored)
        except SnapshotError as exc:
            log.error("not serving %s: %s", stored.scope, exc)
            return
        if snapshot is not None:
            log.info("serving %s revision %d (version %r, epoch %d) to %d nodes",
                     snapshot.scope, snapshot.revision, snapshot.version, snapshot.epoch,
                     self.registry.watching(snapshot.scope))

    def leadership(self) -> dict[str, Any]:
        """Which replica publishes (admin.proto's Leadership): the election's view on etcd; a
        MeshKit on SQLite publishes itself, so it is the leader."""
        if self.election is not None:
            return self.election.status()
        address = f"{self.listen.rpartition(':')[0]}:{self.port}" if self.port else ""
        return {"replica": self.replica, "is_leader": True, "leader_replica": self.replica,
                "leader_address": address, "store": self.store.kind}

    async def _follow(self, watch: Callable[[int], AsyncIterator[Any]],
                      apply: Callable[[Any], object], after_revision: int) -> None:
        """Apply every write `watch` yields after `after_revision`, resuming after failures."""
        while True:
            try:
                async for stored in watch(after_revision):
                    apply(stored)
                    after_revision = stored.revision
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # e.g. etcd unreachable for a while: no traceback
                log.warning("store watch failed: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("store watch failed; retrying in 1 s")
                await asyncio.sleep(1.0)

    async def rotate_signer(self, signer: Signer) -> None:
        """Sign with `signer` from now on; every node is re-sent its snapshot signed by it."""
        previous = self.cache.signer.key_id
        self.cache.set_signer(signer)
        await self.store.append_audit(actor=ACTOR, action="rotate-key",
                                      detail=f"{previous} -> {signer.key_id}")
        log.info("signing key rotated: %s -> %s", previous, signer.key_id)

    async def stop(self, grace: float = 2.0) -> None:
        """Tell every stream to reconnect elsewhere (with retry hints), then stop."""
        self._stopping.set()
        if self._http is not None:
            await self._http.stop()
        if self._ca_upkeep is not None:
            self._ca_upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ca_upkeep
        if self._campaign is not None:  # hand leadership over now, not after the lease's TTL
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
            await self.election.resign()
        if self._server is not None:
            await self._server.stop(grace)
        for feeder in self._feeders:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
