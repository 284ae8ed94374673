"""The endpoint discovery feed (`omnirelay.mesh.v1.EndpointDiscovery/Watch`).

Config never embeds IP lists: clusters with `discovery: {type: api}` get their endpoints here.
Every change makes a new generation; a subscriber gets a full snapshot (or the delta since the
generation it already holds), then one delta per new generation, each naming the generation it
applies on top of. In memory in this increment: after a restart generations start again, and a
node holding a newer generation than the server's is sent a full snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import grpc

from omnirelay.config import Endpoint
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc

from .watch import DEFAULT_RETRY, RetryPolicy, check_node, end_stream


def endpoint_message(endpoint: Endpoint) -> mesh_pb2.Endpoint:
    return mesh_pb2.Endpoint(
        address=endpoint.address,
        port=endpoint.port,
        weight=endpoint.weight,
        priority=endpoint.priority,
        locality=endpoint.locality or "",
    )


class EndpointFeed:
    def __init__(self) -> None:
        self.generation = 0
        self._clusters: dict[str, tuple[Endpoint, ...]] = {}
        self._changed_at: dict[str, int] = {}
        self._removed_at: dict[str, int] = {}
        self._event = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._event

    def _bump(self) -> int:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()
        return self.generation

    def set(self, cluster: str, endpoints: Iterable[Endpoint]) -> int:
        """Replace a cluster's endpoints (an empty list is a cluster with none); the new
        generation."""
        self._clusters[cluster] = tuple(endpoints)
        self._removed_at.pop(cluster, None)
        generation = self._bump()
        self._changed_at[cluster] = generation
        return generation

    def remove(self, cluster: str) -> int:
        if cluster not in self._clusters:
            return self.generation
        del self._clusters[cluster]
        self._changed_at.pop(cluster, None)
        generation = self._bump()
        self._removed_at[cluster] = generation
        return generation

    def endpoints(self, cluster: str) -> tuple[Endpoint, ...] | None:
        return self._clusters.get(cluster)

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
        removed = sorted(
            n for n, g in self._removed_at.items() if g > since and (wanted is None or n in wanted)
        )
        return mesh_pb2.DiscoveryResponse(
            generation=self.generation,
            delta=mesh_pb2.EndpointDelta(
                base_generation=since,
                updated=[self._cluster(n) for n in updated],
                removed=removed,
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
