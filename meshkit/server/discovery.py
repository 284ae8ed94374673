"""The endpoint discovery feed (`omnirelay.mesh.v1.EndpointDiscovery/Watch`).

Config never embeds IP lists: clusters with `discovery: {type: api}` get their endpoints here.
The lists live in the store (`Store.put_endpoints`): MeshKit loads them at start and follows
the store's endpoint watch, the path every write takes whoever made it, so a follower replica
serves what the leader wrote. A list's generation is the store revision it was written at and
the feed's generation that of the newest list, so generations never go backwards across
restarts and failovers, and every replica agrees on them. A subscriber gets a full snapshot
(or the delta since the generation it already holds), then one delta per new generation, each
naming the generation it applies on top of; a node holding a newer generation than the feed's
(another deployment's) is sent a full snapshot.
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
        self._clusters: dict[str, tuple[Endpoint, ...]] = {}
        self._changed_at: dict[str, int] = {}
        self._event = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._event

    def apply(self, stored: StoredEndpoints) -> bool:
        """Take a list as written to the store (in revision order); False if it is not newer
        than the feed's generation (already applied)."""
        if stored.revision <= self.generation:
            return False
        try:
            endpoints = decode_endpoints(json.loads(stored.endpoints),
                                         f"endpoints of cluster {stored.cluster}")
        except (ValueError, ConfigError) as exc:  # written by another version's schema
            log.error("not serving cluster %s revision %d: %s", stored.cluster,
                      stored.revision, exc)
        else:
            self._clusters[stored.cluster] = endpoints
            self._changed_at[stored.cluster] = stored.revision
        self.generation = stored.revision
        event, self._event = self._event, asyncio.Event()
        event.set()
        return True

    async def wait_for(self, generation: int, timeout: float) -> bool:
        """Wait until the feed has applied `generation`; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.generation < generation:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except TimeoutError:
                return self.generation >= generation
        return True

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
        still moves the node to the current generation)."""
        updated = sorted(
            n for n, g in self._changed_at.items() if g > since and (wanted is None or n in wanted)
        )
        return mesh_pb2.DiscoveryResponse(
            generation=self.generation,
            delta=mesh_pb2.EndpointDelta(
                base_generation=since,
                updated=[self._cluster(n) for n in updated],
            ),
        )


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
        known = request.known_generation
        if known == 0 or known > feed.generation:
            await context.write(feed.snapshot(wanted))
            last = feed.generation
        elif known < feed.generation:
            await context.write(feed.delta(known, wanted))
            last = feed.generation
        else:
            last = known
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
