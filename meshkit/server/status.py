"""Node status: the `omnirelay.mesh.v1.NodeStatus/Report` service (what each node runs,
compared with what MeshKit wants it to run) and the per-node record the northbound APIs show
(`omnirctl status` / `nodes`, `GET /v1/status`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from omnirelay.config.protos import admin_pb2, mesh_pb2, mesh_pb2_grpc

from ..cache import Snapshot, SnapshotCache
from .discovery import EndpointFeed
from .nodes import NodeRegistry, NodeState, applied, drifts
from .watch import check_node

log = logging.getLogger("meshkit.status")


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if seconds else 0


def health_name(value: int) -> str:
    return mesh_pb2.NodeHealth.Name(value).removeprefix("NODE_HEALTH_").lower()


def node_record(state: NodeState, desired: Snapshot | None) -> admin_pb2.NodeRecord:
    """One node as the northbound APIs show it."""
    report = state.report
    version, epoch, _ = applied(state)
    return admin_pb2.NodeRecord(
        id=state.id,
        tenant=state.tenant,
        locality=state.locality,
        scope=state.scope,
        connected=state.connected,
        peer=state.peer,
        connected_at_unix_ms=_ms(state.connected_at),
        capabilities=state.capabilities,
        sent_version=state.sent.version if state.sent else "",
        sent_epoch=state.sent.epoch if state.sent else 0,
        sent_nonce=state.sent_nonce,
        acked_version=state.acked_version,
        acked_epoch=state.acked_epoch,
        acked_at_unix_ms=_ms(state.acked_at),
        nack_version=state.nack_version,
        nack_code=state.nack_code,
        nack_message=state.nack_message,
        nack_at_unix_ms=_ms(state.nack_at),
        reported_version=report.config_version if report else "",
        reported_generation=report.discovery_generation if report else 0,
        health=health_name(report.health) if report else "",
        reported_at_unix_ms=_ms(state.reported_at),
        drift=drifts(state, desired),
        desired_version=desired.version if desired else "",
        desired_epoch=desired.epoch if desired else 0,
        applied_version=version,
        applied_epoch=epoch,
        last_seen_unix_ms=_ms(state.last_seen),
        repushes=state.repushes,
    )


def node_records(registry: NodeRegistry, cache: SnapshotCache, *,
                 connected_only: bool = False) -> list[admin_pb2.NodeRecord]:
    return [
        node_record(state, cache.resolve(state.id, state.tenant, state.region))
        for state in registry
        if state.connected or not connected_only
    ]


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
        state = self.registry.report(request)
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
            if reply.config_drift and state.connected:
                # Repaired over the node's watch stream (unless it ACKs meanwhile).
                delay = self.registry.schedule_repush(state)
                if delay is not None:
                    log.info("node %s reports %r, desired is %r; re-sending in %.2f s",
                             node.id, request.config_version, desired.version, delay)
        return reply


def status(registry: NodeRegistry, cache: SnapshotCache, scope: str = "", *,
           leadership: Mapping[str, object] | None = None,
           discovery_generation: int = 0) -> admin_pb2.GetStatusResponse:
    """Desired state per scope and each node's view of it (only `scope`, and the nodes served
    from it, when given), which replica leads (`leadership`: the fields of admin.proto's
    Leadership) and the discovery feed's generation."""
    response = admin_pb2.GetStatusResponse(
        leadership=admin_pb2.Leadership(**leadership) if leadership else None,
        discovery_generation=discovery_generation,
    )
    scopes: dict[str, admin_pb2.ScopeStatus] = {}
    for snapshot in cache.snapshots():
        if scope and snapshot.scope != scope:
            continue
        scopes[snapshot.scope] = admin_pb2.ScopeStatus(
            scope=snapshot.scope, revision=snapshot.revision, version=snapshot.version,
            epoch=snapshot.epoch, sha256=snapshot.sha256)
    for state in registry:
        desired = cache.resolve(state.id, state.tenant, state.region)
        served = desired.scope if desired is not None else state.scope
        if scope and served != scope:
            continue
        record = node_record(state, desired)
        response.nodes.append(record)
        if not state.connected:
            continue
        response.connected += 1
        response.drifting += record.drift
        if served in scopes:
            scopes[served].nodes += 1
            scopes[served].drifting += record.drift
    response.scopes.extend(scopes.values())
    return response
