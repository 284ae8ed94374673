"""The northbound operations, transport-neutral: the gRPC service (admin.py) and the JSON/HTTP
API (http.py) are thin adapters over `AdminOps`, so both expose the same operations with the
same checks, audit rows and errors. Results are the admin.proto messages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import grpc

from omnirelay.config import ConfigError, canonical_json
from omnirelay.config.endpoints import parse_endpoints
from omnirelay.config.protos import admin_pb2

from ..cache import SnapshotCache
from ..diff import ConfigDiff
from ..gating import Gap
from ..publish import CapabilityError, Publisher, PublishError, PublishResult, validate
from ..scopes import ScopeError, check_scope, valid_name
from ..store import NotFound, NotLeader, RevisionConflict, Store, StoredConfig, StoreError
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
    "unavailable": (grpc.StatusCode.UNAVAILABLE, 503),  # written but not served in time
    "not_leader": (grpc.StatusCode.UNAVAILABLE, 503),  # publish through the leader
    "store_unavailable": (grpc.StatusCode.UNAVAILABLE, 503),  # etcd down, disk failing, ...
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def store_errors(operation: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Store failures as API errors: a lost compare-and-swap is a conflict, a refusal of the
    leader fence is not_leader, nothing to delete is not_found, anything else (etcd
    unreachable, a failing disk) is store_unavailable with the store's reason, never an
    internal error."""

    @functools.wraps(operation)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await operation(*args, **kwargs)
        except RevisionConflict as exc:
            raise ApiError("revision_conflict", str(exc)) from None
        except NotLeader as exc:
            raise ApiError("not_leader", str(exc)) from None
        except NotFound as exc:
            raise ApiError("not_found", str(exc)) from None
        except StoreError as exc:
            log.warning("store unavailable: %s", exc)
            raise ApiError("store_unavailable", f"the store is unavailable: {exc}") from None

    return call


def scope_of(scope: str | None) -> str:
    try:
        return check_scope(scope)
    except ScopeError as exc:
        raise ApiError("invalid_argument", str(exc)) from None


def audit_scope(scope: str) -> str:
    """A config scope, or `cluster/<name>` (what endpoint-list writes are audited under)."""
    kind, _, name = scope.partition("/")
    if kind == "cluster" and valid_name(name):
        return scope
    return scope_of(scope)


class AdminOps:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        publisher: Publisher,
        registry: NodeRegistry,
        feed: EndpointFeed,
        tokens: TokenAuthority,
        *,
        leadership: Callable[[], Mapping[str, object]] = dict,
    ) -> None:
        self.store = store
        self.leadership = leadership  # which replica leads: admin.proto's Leadership fields
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

    @store_errors
    async def get_config(self, principal: Principal, scope: str) -> admin_pb2.ConfigRecord:
        scope = scope_of(scope)
        stored = await self.store.get(scope, actor=principal.actor)
        if stored is None:
            raise ApiError("not_found", f"no config in scope {scope!r}")
        return record_message(stored)

    @store_errors
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
        except PublishError as exc:  # leadership lost meanwhile, or not served in time
            refusal = self.publisher.may_publish()
            raise ApiError("unavailable" if refusal is None else "not_leader",
                           refusal or str(exc)) from None
        if not result.dry_run and not result.unchanged:
            log.info("%s published scope %s revision %d (version %r, epoch %d)%s",
                     principal.actor, scope, result.revision, result.version, result.epoch,
                     " despite capability gaps (forced)" if result.gaps else "")
        return publish_message(result)

    @store_errors
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

        return status(self.registry, self.cache, scope_of(scope) if scope else "",
                      leadership=self.leadership(), discovery_generation=self.feed.generation)

    @store_errors
    async def tail_audit(self, *, since_unix_ms: int = 0, after_id: int = 0, scope: str = "",
                         limit: int = 0) -> admin_pb2.TailAuditResponse:
        entries = await self.store.audit_log(
            since=since_unix_ms / 1000 if since_unix_ms else None,
            after_id=after_id,
            scope=audit_scope(scope) if scope else None,
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

    def get_endpoints(self, clusters: list[str] | tuple[str, ...] = ()
                      ) -> admin_pb2.GetEndpointsResponse:
        """The lists this replica's discovery feed serves (of `clusters`, if any named)."""
        bad = [name for name in clusters if not valid_name(name)]
        if bad:
            raise ApiError("invalid_argument", f"bad cluster name {bad[0]!r}")
        return admin_pb2.GetEndpointsResponse(
            generation=self.feed.generation,
            clusters=[
                admin_pb2.ClusterEndpointList(
                    cluster=name, revision=revision,
                    endpoints=[admin_pb2.EndpointRecord(
                        address=e.address, port=e.port, weight=e.weight, priority=e.priority,
                        locality=e.locality or "") for e in endpoints])
                for name, revision, endpoints in self.feed.lists(set(clusters) or None)
            ],
        )

    @store_errors
    async def set_endpoints(self, principal: Principal, cluster: str, data: bytes, *,
                            expected_revision: int | None = None,
                            ) -> admin_pb2.SetEndpointsResponse:
        """Validate the list, write it to the store (compare-and-swap with
        `expected_revision`), and return once this replica's feed serves it."""
        from ..server.discovery import endpoint_data

        if not valid_name(cluster):
            raise ApiError("invalid_argument", f"bad cluster name {cluster!r}")
        try:
            endpoints = parse_endpoints(data, "endpoints")
        except ConfigError as exc:
            raise _config_error(exc, "endpoints") from None
        refusal = self.publisher.may_publish()  # only the leader writes, as for config
        if refusal is not None:
            raise ApiError("not_leader", refusal)
        stored = await self.store.put_endpoints(
            cluster, canonical_json([endpoint_data(e) for e in endpoints]),
            expected_revision=expected_revision, actor=principal.actor,
            detail=canonical_json([f"{e.address}:{e.port}" for e in endpoints]).decode(),
        )
        if not await self.feed.wait_for(stored.revision, self.publisher.push_timeout):
            raise ApiError("unavailable",
                           f"cluster {cluster!r} endpoints were written at revision "
                           f"{stored.revision} but not served within "
                           f"{self.publisher.push_timeout:g} s; the discovery feed serves "
                           "them when it catches up")
        log.info("%s set %d endpoints of cluster %s (generation %d)", principal.actor,
                 len(endpoints), cluster, stored.revision)
        return admin_pb2.SetEndpointsResponse(generation=stored.revision)

    @store_errors
    async def delete_endpoints(self, principal: Principal, cluster: str, *,
                               expected_revision: int | None = None,
                               ) -> admin_pb2.DeleteEndpointsResponse:
        """Delete the cluster's list from the store (compare-and-swap with
        `expected_revision`), and return once this replica's feed no longer serves it."""
        if not valid_name(cluster):
            raise ApiError("invalid_argument", f"bad cluster name {cluster!r}")
        refusal = self.publisher.may_publish()  # only the leader writes, as for config
        if refusal is not None:
            raise ApiError("not_leader", refusal)
        try:
            stored = await self.store.delete_endpoints(
                cluster, expected_revision=expected_revision, actor=principal.actor)
        except NotFound:
            raise ApiError("not_found", f"cluster {cluster!r} has no endpoint list") from None
        if not await self.feed.wait_for(stored.revision, self.publisher.push_timeout):
            raise ApiError("unavailable",
                           f"cluster {cluster!r} endpoints were deleted at revision "
                           f"{stored.revision} but the discovery feed did not follow within "
                           f"{self.publisher.push_timeout:g} s; it removes them when it "
                           "catches up")
        log.info("%s deleted the endpoints of cluster %s (generation %d)", principal.actor,
                 cluster, stored.revision)
        return admin_pb2.DeleteEndpointsResponse(generation=stored.revision)
