"""The endpoint discovery feed (`omnirelay.mesh.v1.EndpointDiscovery/Watch`).

Config never embeds IP lists: clusters with `discovery: {type: api}` get their endpoints here.
The lists live in the store (`Store.put_endpoints`): MeshKit loads them at start and follows
the store's endpoint watch, the path every write takes whoever made it, so a follower replica
serves what the leader wrote. A list's generation is the store revision it was written at and
the feed's generation that of the newest write (a list or a deletion; at start, the revision
the lists were loaded at), so generations never go backwards across restarts and failovers.
A subscriber gets a full snapshot (or the delta since the generation it already holds), then
one delta per new generation, each naming the generation it applies on top of; a node holding
a newer generation than the feed's (another deployment's) is sent a full snapshot.

A deleted list (`Store.delete_endpoints`) leaves a tombstone here: deltas name the cluster in
`removed`, at the deletion's generation. Deletions made before this process loaded the store
are not known, so a node holding a generation older than that load (`floor`) is sent a full
snapshot, which drops whatever is not in it, rather than a delta that could miss a removal.
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc

from omnirelay.config import ConfigError, Endpoint
from omnirelay.config.endpoints import decode_endpoints
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc

from ..store import StoredEndpoints
from ..waiting import wait_until
from .watch import DEFAULT_RETRY, RetryPolicy, check_node, end_stream

log = logging.getLogger("meshkit.discovery")


def endpoint_message(endpoint: Endpoint) -> mesh_pb2.Endpoint:
    return mesh_pb2.Endpoint(
        address=endpoint.address,
        port=endpoint.port,
        weight=endpoint.weight,
        priority=endpoint.priority,
        locality=endpoint.locality or "",
    )


def endpoint_data(endpoint: Endpoint) -> dict[str, object]:
    """An endpoint as stored (canonical JSON): the fields of `spec.clusters[].endpoints`."""
    data: dict[str, object] = {"address": endpoint.address, "port": endpoint.port,
                               "weight": endpoint.weight, "priority": endpoint.priority}
    if endpoint.locality is not None:
        data["locality"] = endpoint.locality
    return data


class EndpointFeed:
    def __init__(self) -> None:
        self.generation = 0
        self.floor = 0  # deletions at or below it are not known: older nodes get snapshots
        self._clusters: dict[str, tuple[Endpoint, ...]] = {}
        self._changed_at: dict[str, int] = {}
        self._removed_at: dict[str, int] = {}  # tombstones: cluster -> deletion's generation
        self._event = asyncio.Event()

    def load(self, lists: list[StoredEndpoints], revision: int) -> None:
        """Start from the store's current lists, read at store `revision`: the generation
        is that revision from then on (a deletion after the newest list is not forgotten)."""
        for stored in sorted(lists, key=lambda stored: stored.revision):
            self.apply(stored)
        self.floor = max(self.floor, revision)
        self.generation = max(self.generation, revision)

    def changed(self) -> asyncio.Event:
        return self._event

    def apply(self, stored: StoredEndpoints) -> bool:
        """Take a list as written to the store, or its deletion (in revision order); False if
        it is not newer than the feed's generation (already applied)."""
        if stored.revision <= self.generation:
            return False
        if stored.deleted:
            self._clusters.pop(stored.cluster, None)
            self._changed_at.pop(stored.cluster, None)
            self._removed_at[stored.cluster] = stored.revision
            self._advance(stored.revision)
            return True
        try:
            endpoints = decode_endpoints(json.loads(stored.endpoints),
                                         f"endpoints of cluster {stored.cluster}")
        except (ValueError, ConfigError) as exc:  # written by another version's schema
            log.error("not serving cluster %s revision %d: %s", stored.cluster,
                      stored.revision, exc)
        else:
            self._clusters[stored.cluster] = endpoints
            self._changed_at[stored.cluster] = stored.revision
            self._removed_at.pop(stored.cluster, None)
        self._advance(stored.revision)
        return True

    def _advance(self, generation: int) -> None:
        self.generation = generation
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, generation: int, timeout: float) -> bool:
        """Wait until the feed has applied `generation`; False on timeout."""
        return await wait_until(lambda: self.generation >= generation, lambda: self._event, timeout)

    def endpoints(self, cluster: str) -> tuple[Endpoint, ...] | None:
        return self._clusters.get(cluster)

    def lists(self, wanted: set[str] | None = None) -> list[tuple[str, int, tuple[Endpoint, ...]]]:
        """(cluster, revision, endpoints) of every list served (of `wanted` ones), by name."""
        return [(name, self._changed_at[name], self._clusters[name])
                for name in sorted(self._clusters) if wanted is None or name in wanted]

    def _cluster(self, name: str) -> mesh_pb2.ClusterEndpoints:
        return mesh_pb2.ClusterEndpoints(
            cluster=name, endpoints=[endpoint_message(e) for e in self._clusters[name]]
        )

    def snapshot(self, wanted: set[str] | None) -> mesh_pb2.DiscoveryResponse:
        names = sorted(n for n in self._clusters if wanted is None or n in wanted)
        return mesh_pb2.DiscoveryResponse(
            generation=self.generation,
            snapshot=mesh_pb2.EndpointSnapshot(clusters=[self._cluster(n) for n in names]),
        )

    def delta(self, since: int, wanted: set[str] | None) -> mesh_pb2.DiscoveryResponse:
        """What changed after generation `since` (possibly nothing for `wanted`: the response
        still moves the node to the current generation): lists written and lists deleted."""

        def after(changes: dict[str, int]) -> list[str]:
            return sorted(n for n, g in changes.items()
                          if g > since and (wanted is None or n in wanted))

        return mesh_pb2.DiscoveryResponse(
            generation=self.generation,
            delta=mesh_pb2.EndpointDelta(
                base_generation=since,
                updated=[self._cluster(n) for n in after(self._changed_at)],
                removed=after(self._removed_at),
            ),
        )

    def catch_up(self, known: int, wanted: set[str] | None) -> mesh_pb2.DiscoveryResponse | None:
        """The first response to a node holding generation `known` (0 = none): a snapshot
        when it holds none, a newer one than the feed's (another deployment's) or one older
        than the feed's `floor` (deletions since may be unknown here), else the delta since
        `known`; None when it is current."""
        if known == 0 or known > self.generation or known < self.floor:
            return self.snapshot(wanted)
        if known < self.generation:
            return self.delta(known, wanted)
        return None


class EndpointDiscoveryService(mesh_pb2_grpc.EndpointDiscoveryServicer):
    def __init__(
        self, feed: EndpointFeed, stopping: asyncio.Event, *, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self.feed = feed
        self.stopping = stopping
        self.retry = retry

    async def Watch(
        self, request: mesh_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> None:
        problem = check_node(request.node)
        if problem:
            await end_stream(context, mesh_pb2.DiscoveryResponse, "invalid_hello", problem,
                             grpc.StatusCode.INVALID_ARGUMENT, None)
            return
        wanted = set(request.clusters) or None
        feed = self.feed
        first = feed.catch_up(request.known_generation, wanted)
        if first is not None:
            await context.write(first)
        last = feed.generation
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                changed = feed.changed()
                if feed.generation > last:
                    await context.write(feed.delta(last, wanted))
                    last = feed.generation
                change = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait({change, stopping},
                                             return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
                if stopping in done:
                    await end_stream(context, mesh_pb2.DiscoveryResponse, "shutting_down",
                                     "MeshKit is shutting down", grpc.StatusCode.UNAVAILABLE,
                                     self.retry)
                    return
        finally:
            stopping.cancel()
