"""The northbound operations, transport-neutral: the gRPC service (admin.py) and the JSON/HTTP
API (http.py) are thin adapters over `AdminOps`, so both expose the same operations with the
same checks, audit rows and errors. Results are the admin.proto messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from omnirelay.config import ConfigError, canonical_json
from omnirelay.config.endpoints import parse_endpoints
from omnirelay.config.protos import admin_pb2

from ..cache import SnapshotCache
from ..diff import ConfigDiff
from ..gating import Gap
from ..publish import CapabilityError, Publisher, PublishError, PublishResult, validate
from ..scopes import ScopeError, check_scope, valid_name
from ..store import RevisionConflict, Store, StoredConfig
from .auth import AuthError, Principal, TokenAuthority

if TYPE_CHECKING:  # meshkit.server imports this module
    from ..server.discovery import EndpointFeed
    from ..server.nodes import NodeRegistry

log = logging.getLogger("meshkit.api")
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 10_000

# Error kind -> (gRPC status, HTTP status). The kind is the JSON API's `error.code`.
ERRORS = {
    "invalid_argument": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "invalid_config": (grpc.StatusCode.INVALID_ARGUMENT, 422),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "permission_denied": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "not_found": (grpc.StatusCode.NOT_FOUND, 404),
    "revision_conflict": (grpc.StatusCode.ABORTED, 409),
    "capability_gap": (grpc.StatusCode.FAILED_PRECONDITION, 409),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, 503),
}


class ApiError(Exception):
    def __init__(self, kind: str, message: str, *, issues: list[dict[str, str]] | None = None,
                 gaps: list[Gap] | None = None) -> None:
        assert kind in ERRORS, kind
        super().__init__(message)
        self.kind = kind
        self.issues = issues or []
        self.gaps = gaps or []

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return ERRORS[self.kind][0]

    @property
    def http_status(self) -> int:
        return ERRORS[self.kind][1]


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


def gap_messages(gaps) -> list[admin_pb2.CapabilityGap]:
    return [admin_pb2.CapabilityGap(node=g.node, missing=g.missing) for g in gaps]


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


def publish_message(result: PublishResult) -> admin_pb2.SetConfigResponse:
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
        capability_gaps=gap_messages(result.gaps),
    )


def _config_error(exc: ConfigError, what: str = "config") -> ApiError:
    return ApiError("invalid_config", f"invalid {what} ({len(exc.issues)} issues):\n{exc}",
                    issues=[{"path": i.path, "message": i.message} for i in exc.issues])


def scope_of(scope: str | None) -> str:
    try:
        return check_scope(scope)
    except ScopeError as exc:
        raise ApiError("invalid_argument", str(exc)) from None


class AdminOps:
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

    def authorize(self, authorization: str | None, permission: str) -> Principal:
        try:
            return self.tokens.authorize(authorization, permission)
        except AuthError as exc:
            raise ApiError("permission_denied" if exc.denied else "unauthenticated",
                           str(exc)) from None

    async def get_config(self, principal: Principal, scope: str) -> admin_pb2.ConfigRecord:
        scope = scope_of(scope)
        stored = await self.store.get(scope, actor=principal.actor)
        if stored is None:
            raise ApiError("not_found", f"no config in scope {scope!r}")
        return record_message(stored)

    async def set_config(self, principal: Principal, scope: str, document: bytes, *,
                         expected_revision: int | None = None, dry_run: bool = False,
                         force: bool = False) -> admin_pb2.SetConfigResponse:
        scope = scope_of(scope)
        try:
            result = await self.publisher.publish(
                scope, document, actor=principal.actor, expected_revision=expected_revision,
                dry_run=dry_run, force=force,
            )
        except ConfigError as exc:
            raise _config_error(exc) from None
        except RevisionConflict as exc:
            raise ApiError("revision_conflict", str(exc)) from None
        except CapabilityError as exc:
            raise ApiError("capability_gap", str(exc), gaps=exc.gaps) from None
        except PublishError as exc:
            raise ApiError("unavailable", str(exc)) from None
        if not result.dry_run and not result.unchanged:
            log.info("%s published scope %s revision %d (version %r, epoch %d)%s",
                     principal.actor, scope, result.revision, result.version, result.epoch,
                     " despite capability gaps (forced)" if result.gaps else "")
        return publish_message(result)

    async def validate_config(self, principal: Principal, document: bytes,
                              scope: str = "") -> admin_pb2.ValidateConfigResponse:
        try:
            validated = validate(document)
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
        if scope:
            scope = scope_of(scope)
            _, config, diff, _ = await self.publisher.diff(
                scope, validated, actor=principal.actor, action="validate"
            )
            response.epoch = config.metadata.epoch
            response.diff.CopyFrom(diff_message(diff))
            response.summary = diff.summary()
            response.capability_gaps.extend(gap_messages(self.publisher.gaps(scope, config)))
        return response

    def list_nodes(self, connected_only: bool = False) -> admin_pb2.ListNodesResponse:
        from ..server.status import node_records

        return admin_pb2.ListNodesResponse(
            nodes=node_records(self.registry, self.cache, connected_only=connected_only)
        )

    def get_status(self, scope: str = "") -> admin_pb2.GetStatusResponse:
        from ..server.status import status

        return status(self.registry, self.cache, scope_of(scope) if scope else "")

    async def tail_audit(self, *, since_unix_ms: int = 0, after_id: int = 0, scope: str = "",
                         limit: int = 0) -> admin_pb2.TailAuditResponse:
        entries = await self.store.audit_log(
            since=since_unix_ms / 1000 if since_unix_ms else None,
            after_id=after_id,
            scope=scope_of(scope) if scope else None,
            limit=min(limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT),
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

    async def set_endpoints(self, principal: Principal, cluster: str,
                            data: bytes) -> admin_pb2.SetEndpointsResponse:
        if not valid_name(cluster):
            raise ApiError("invalid_argument", f"bad cluster name {cluster!r}")
        try:
            endpoints = parse_endpoints(data, "endpoints")
        except ConfigError as exc:
            raise _config_error(exc, "endpoints") from None
        generation = self.feed.set(cluster, endpoints)
        await self.store.append_audit(
            actor=principal.actor, action="set-endpoints", scope=f"cluster/{cluster}",
            revision=generation,
            detail=canonical_json([f"{e.address}:{e.port}" for e in endpoints]).decode(),
        )
        return admin_pb2.SetEndpointsResponse(generation=generation)
