"""The northbound gRPC service (`omnirelay.mesh.v1.MeshAdmin`): what `omnirctl` calls."""

from __future__ import annotations

import logging

import grpc

from omnirelay.config import ConfigError, canonical_json
from omnirelay.config.endpoints import parse_endpoints
from omnirelay.config.protos import admin_pb2, admin_pb2_grpc, mesh_pb2

from ..cache import SnapshotCache
from ..diff import ConfigDiff
from ..publish import Publisher, PublishError, validate
from ..scopes import ScopeError, check_scope, valid_name
from ..server.discovery import EndpointFeed
from ..server.nodes import NodeRegistry, drifts
from ..store import RevisionConflict, Store, StoredConfig
from .auth import MUTATE, READ, AuthError, Principal, TokenAuthority

log = logging.getLogger("meshkit.api")
_DEFAULT_AUDIT_LIMIT = 100
_MAX_AUDIT_LIMIT = 10_000


def diff_message(diff: ConfigDiff) -> admin_pb2.ConfigDiff:
    return admin_pb2.ConfigDiff(
        sections=[
            admin_pb2.SectionDiff(
                section=s.section, added=s.added, removed=s.removed, changed=s.changed
            )
            for s in diff.sections
        ],
        metadata=diff.metadata,
        empty=diff.empty,
    )


def record_message(stored: StoredConfig) -> admin_pb2.ConfigRecord:
    return admin_pb2.ConfigRecord(
        scope=stored.scope,
        revision=stored.revision,
        version=stored.version,
        epoch=stored.epoch,
        sha256=stored.sha256,
        document=stored.document,
        actor=stored.actor,
        updated_at_unix_ms=int(stored.updated_at * 1000),
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if seconds else 0


class MeshAdminService(admin_pb2_grpc.MeshAdminServicer):
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        publisher: Publisher,
        registry: NodeRegistry,
        feed: EndpointFeed,
        tokens: TokenAuthority,
    ) -> None:
        self.store = store
        self.cache = cache
        self.publisher = publisher
        self.registry = registry
        self.feed = feed
        self.tokens = tokens

    async def _authorize(self, context: grpc.aio.ServicerContext, permission: str) -> Principal:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
        try:
            return self.tokens.authorize(authorization, permission)
        except AuthError as exc:
            code = (grpc.StatusCode.PERMISSION_DENIED if exc.denied
                    else grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(code, str(exc))
            raise  # unreachable: abort raises

    @staticmethod
    async def _scope(context: grpc.aio.ServicerContext, scope: str) -> str:
        try:
            return check_scope(scope)
        except ScopeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    async def GetConfig(self, request, context):
        principal = await self._authorize(context, READ)
        scope = await self._scope(context, request.scope)
        stored = await self.store.get(scope, actor=principal.actor)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no config in scope {scope!r}")
        return record_message(stored)

    async def SetConfig(self, request, context):
        principal = await self._authorize(context, READ if request.dry_run else MUTATE)
        scope = await self._scope(context, request.scope)
        expected = request.expected_revision if request.HasField("expected_revision") else None
        try:
            result = await self.publisher.publish(
                scope, request.document, actor=principal.actor, expected_revision=expected,
                dry_run=request.dry_run,
            )
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid config ({len(exc.issues)} issues):\n{exc}")
        except RevisionConflict as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except PublishError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if not result.dry_run and not result.unchanged:
            log.info("%s published scope %s revision %d (version %r, epoch %d)",
                     principal.actor, scope, result.revision, result.version, result.epoch)
        return admin_pb2.SetConfigResponse(
            scope=result.scope,
            revision=result.revision,
            version=result.version,
            epoch=result.epoch,
            sha256=result.sha256,
            dry_run=result.dry_run,
            unchanged=result.unchanged,
            diff=diff_message(result.diff),
            summary=result.diff.summary(),
            key_id=result.snapshot.key_id if result.snapshot is not None else "",
            watchers=result.watchers,
        )

    async def ValidateConfig(self, request, context):
        principal = await self._authorize(context, READ)
        try:
            validated = validate(request.document)
        except ConfigError as exc:
            return admin_pb2.ValidateConfigResponse(
                valid=False,
                issues=[admin_pb2.ConfigIssue(path=i.path, message=i.message)
                        for i in exc.issues],
            )
        response = admin_pb2.ValidateConfigResponse(
            valid=True,
            version=validated.config.metadata.version,
            epoch=validated.config.metadata.epoch,
            sha256=validated.sha256,
        )
        if request.scope:
            scope = await self._scope(context, request.scope)
            _, config, diff, _ = await self.publisher.diff(
                scope, validated, actor=principal.actor, action="validate"
            )
            response.epoch = config.metadata.epoch
            response.sha256 = validated.sha256
            response.diff.CopyFrom(diff_message(diff))
            response.summary = diff.summary()
        return response

    async def ListNodes(self, request, context):
        await self._authorize(context, READ)
        nodes = []
        for state in self.registry:
            if request.connected_only and not state.connected:
                continue
            region = state.region
            desired = self.cache.resolve(state.id, state.tenant, region)
            report = state.report
            nodes.append(
                admin_pb2.NodeRecord(
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
                    health=(_health_name(report.health) if report else ""),
                    reported_at_unix_ms=_ms(state.reported_at),
                    drift=drifts(state, desired),
                    desired_version=desired.version if desired else "",
                )
            )
        return admin_pb2.ListNodesResponse(nodes=nodes)

    async def TailAudit(self, request, context):
        await self._authorize(context, READ)
        scope = None
        if request.scope:
            scope = await self._scope(context, request.scope)
        limit = min(request.limit or _DEFAULT_AUDIT_LIMIT, _MAX_AUDIT_LIMIT)
        entries = await self.store.audit_log(
            since=request.since_unix_ms / 1000 if request.since_unix_ms else None,
            after_id=request.after_id,
            scope=scope,
            limit=limit,
        )
        return admin_pb2.TailAuditResponse(
            entries=[
                admin_pb2.AuditEntry(
                    id=e.id, timestamp_unix_ms=int(e.timestamp * 1000), actor=e.actor,
                    action=e.action, scope=e.scope, revision=e.revision, detail=e.detail,
                )
                for e in entries
            ]
        )

    async def SetEndpoints(self, request, context):
        principal = await self._authorize(context, MUTATE)
        if not valid_name(request.cluster):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"bad cluster name {request.cluster!r}")
        try:
            endpoints = parse_endpoints(request.endpoints, "endpoints")
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"invalid endpoints ({len(exc.issues)} issues):\n{exc}")
        generation = self.feed.set(request.cluster, endpoints)
        await self.store.append_audit(
            actor=principal.actor, action="set-endpoints", scope=f"cluster/{request.cluster}",
            revision=generation,
            detail=canonical_json([f"{e.address}:{e.port}" for e in endpoints]).decode(),
        )
        return admin_pb2.SetEndpointsResponse(generation=generation)


def _health_name(value: int) -> str:
    name = mesh_pb2.NodeHealth.Name(value)
    return name.removeprefix("NODE_HEALTH_").lower()
