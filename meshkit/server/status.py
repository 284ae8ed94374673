"""Node status reports (`omnirelay.mesh.v1.NodeStatus/Report`): what each node runs, compared
with what MeshKit wants it to run (drift)."""

from __future__ import annotations

import grpc

from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc

from ..cache import SnapshotCache
from .discovery import EndpointFeed
from .nodes import NodeRegistry
from .watch import check_node


class NodeStatusService(mesh_pb2_grpc.NodeStatusServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        registry: NodeRegistry,
        feed: EndpointFeed,
        *,
        report_interval_ms: int = 10_000,
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.feed = feed
        self.report_interval_ms = report_interval_ms

    async def Report(
        self, request: mesh_pb2.StatusReport, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.StatusReply:
        problem = check_node(request.node)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.registry.report(request)
        node = request.node
        desired = self.cache.resolve(node.id, node.tenant, node.locality.region)
        reply = mesh_pb2.StatusReply(
            discovery_generation=self.feed.generation,
            discovery_drift=request.discovery_generation < self.feed.generation,
            report_interval_ms=self.report_interval_ms,
        )
        if desired is not None:
            reply.desired_version = desired.version
            reply.desired_epoch = desired.epoch
            reply.desired_sha256 = desired.sha256
            reply.config_drift = request.config_sha256 != desired.sha256
        return reply
