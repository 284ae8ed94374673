"""The JSON/HTTP northbound API (`meshkit serve --http-listen`): the operations of the gRPC
MeshAdmin service (ops.py), the same bearer tokens (`Authorization: Bearer <token>`; 401
without or with an unknown token, 403 with a read token on a mutation), JSON bodies encoded from
the same admin.proto messages, and `GET /openapi.json` describing every route (openapi.py).

Errors are `{"error": {"code", "message", "issues"?, "capability_gaps"?}}` with the status
of `ops.ERRORS`. Request bodies are config documents (YAML or JSON) as `omnirctl` sends them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from omnirelay.config.protos import admin_pb2

from .auth import MUTATE, READ
from .openapi import Param, Route, document
from .ops import AdminOps, ApiError

log = logging.getLogger("meshkit.http")
MAX_BODY = 64 * 1024 * 1024  # as the gRPC port's message limit

_SCOPE = Param("scope", "string", "global, region/<r>, tenant/<t> or node/<id>; default global")

ROUTES = [
    Route("GET", "/v1/config", "get_config", "A scope's current document and revision", READ,
          admin_pb2.ConfigRecord.DESCRIPTOR, (_SCOPE,), errors=(400, 404, 503)),
    Route("PUT", "/v1/config", "set_config",
          "Publish a document to a scope: validate, diff, capability gating, compare-and-swap "
          "write, audit, sign, push (a read token may dry-run)", MUTATE,
          admin_pb2.SetConfigResponse.DESCRIPTOR,
          (_SCOPE,
           Param("dry_run", "boolean", "validate, diff and gate only; write nothing"),
           Param("expected_revision", "integer",
                 "compare-and-swap: write only if the scope is at this revision (0: empty)"),
           Param("force", "boolean", "publish despite capability gaps")),
          body="the config document, YAML or JSON", errors=(400, 409, 422, 503)),
    Route("POST", "/v1/config/validate", "validate_config",
          "Validate a document; with scope also diff and gate it against that scope", READ,
          admin_pb2.ValidateConfigResponse.DESCRIPTOR, (_SCOPE,),
          body="the config document, YAML or JSON", errors=(400, 503)),
    Route("GET", "/v1/nodes", "list_nodes", "Every node MeshKit knows", READ,
          admin_pb2.ListNodesResponse.DESCRIPTOR,
          (Param("connected", "boolean", "only nodes with an open watch stream"),)),
    Route("GET", "/v1/status", "get_status",
          "Per scope and per node: desired vs applied version, last ACK/NACK, drift; which "
          "replica leads; the discovery generation", READ,
          admin_pb2.GetStatusResponse.DESCRIPTOR,
          (Param("scope", "string", "only this scope and the nodes served from it"),),
          errors=(400,)),
    Route("GET", "/v1/audit", "tail_audit", "The newest audit entries, oldest first", READ,
          admin_pb2.TailAuditResponse.DESCRIPTOR,
          (Param("since_unix_ms", "integer", "entries at or after this time"),
           Param("after_id", "integer", "entries with a larger id"),
           Param("scope", "string", "only this scope (or cluster/<name>: its endpoint list)"),
           Param("limit", "integer", "at most this many (default 100, max 10000)")),
          errors=(400, 503)),
    Route("GET", "/v1/endpoints", "get_endpoints",
          "The endpoint lists the discovery feed serves, with their revisions", READ,
          admin_pb2.GetEndpointsResponse.DESCRIPTOR,
          (Param("cluster", "string", "only these clusters (repeatable)"),), errors=(400,)),
    Route("PUT", "/v1/endpoints/{cluster}", "set_endpoints",
          "Replace a cluster's endpoints in the discovery feed (kept in the store)", MUTATE,
          admin_pb2.SetEndpointsResponse.DESCRIPTOR,
          (Param("cluster", "string", "the cluster name", where="path"),
           Param("expected_revision", "integer",
                 "compare-and-swap: write only if the cluster's list is at this revision "
                 "(0: it has none)")),
          body="a YAML or JSON list of endpoints", errors=(400, 409, 422, 503)),
    Route("DELETE", "/v1/endpoints/{cluster}", "delete_endpoints",
          "Remove a cluster's endpoint list from the discovery feed (and the store)", MUTATE,
          admin_pb2.DeleteEndpointsResponse.DESCRIPTOR,
          (Param("cluster", "string", "the cluster name", where="path"),
           Param("expected_revision", "integer",
                 "compare-and-swap: delete only if the cluster's list is at this revision")),
          errors=(400, 404, 409, 503)),
    Route("GET", "/openapi.json", "openapi", "This API's OpenAPI 3.1 description", None, None),
]


def message_json(message: Message) -> dict[str, Any]:
    """A message as JSON: every field (defaults included), integers as numbers, bytes fields
    (config documents) decoded."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            convert = message_json
        elif field.type == FieldDescriptor.TYPE_BYTES:
            convert = _document
        else:
            convert = _same
        out[field.name] = [convert(v) for v in value] if field.is_repeated else convert(value)
    return out


def _same(value: Any) -> Any:
    return value


def _document(value: bytes) -> Any:
    return json.loads(value) if value else None


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v})
    headers = {"WWW-Authenticate": 'Bearer realm="meshkit"'} if status == 401 else None
    return web.json_response({"error": body}, status=status, headers=headers)


class _Query:
    """Strict query parameters: unknown names and malformed values are 400s that say which."""

    def __init__(self, request: web.Request, route: Route) -> None:
        self.values = request.query
        known = {p.name for p in route.params if p.where == "query"}
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise ApiError("invalid_argument",
                           f"unknown query parameter {unknown[0]!r}; this route takes "
                           f"{', '.join(sorted(known)) or 'none'}")

    def text(self, name: str) -> str:
        return self.values.get(name, "")

    def flag(self, name: str) -> bool:
        value = self.values.get(name, "false").lower()
        if value not in ("true", "false", "1", "0", ""):
            raise ApiError("invalid_argument", f"{name} must be true or false, not {value!r}")
        return value in ("true", "1", "")

    def number(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not value.isdigit():
            raise ApiError("invalid_argument",
                           f"{name} must be a non-negative integer, not {value!r}")
        return int(value)


class HttpApi:
    def __init__(self, ops: AdminOps) -> None:
        self.ops = ops
        self.description = document(ROUTES)
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        for route in ROUTES:
            self.app.router.add_route(route.method, route.path, self._handler(route))
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> int:
        """Serve on HOST:PORT (port 0 picks one); returns the bound port."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise OSError(f"--http-listen must be HOST:PORT, not {listen!r}")
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        return self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.http_status, exc.kind, str(exc), issues=exc.issues,
                          capability_gaps=[{"node": g.node, "missing": list(g.missing)}
                                           for g in exc.gaps])
        except web.HTTPException as exc:  # routing: 404, 405, 413
            code = exc.reason.lower().replace(" ", "_")
            return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal", "internal error (see the MeshKit log)")

    def _handler(self, route: Route):
        operation = getattr(self, route.operation)

        async def handle(request: web.Request) -> web.Response:
            query = _Query(request, route)
            permission = route.permission
            if route.operation == "set_config" and query.flag("dry_run"):
                permission = READ  # a dry run changes nothing
            principal = None
            if permission is not None:
                principal = self.ops.authorize(request.headers.get("Authorization"), permission)
            body = await request.read() if route.body else b""
            if route.body and not body:
                raise ApiError("invalid_argument", f"the request body must be {route.body}")
            result = await operation(request, query, principal, body)
            if isinstance(result, Message):
                result = message_json(result)
            return web.json_response(result)

        return handle

    # ---- operations: (request, query, principal, body) -> message or JSON ----
    async def get_config(self, request, query, principal, body):
        return await self.ops.get_config(principal, query.text("scope"))

    async def set_config(self, request, query, principal, body):
        return await self.ops.set_config(
            principal, query.text("scope"), body, dry_run=query.flag("dry_run"),
            expected_revision=query.number("expected_revision"), force=query.flag("force"))

    async def validate_config(self, request, query, principal, body):
        return await self.ops.validate_config(principal, body, query.text("scope"))

    async def list_nodes(self, request, query, principal, body):
        return self.ops.list_nodes(query.flag("connected"))

    async def get_status(self, request, query, principal, body):
        return self.ops.get_status(query.text("scope"))

    async def tail_audit(self, request, query, principal, body):
        return await self.ops.tail_audit(
            since_unix_ms=query.number("since_unix_ms") or 0,
            after_id=query.number("after_id") or 0,
            scope=query.text("scope"), limit=query.number("limit") or 0)

    async def get_endpoints(self, request, query, principal, body):
        return self.ops.get_endpoints(tuple(query.values.getall("cluster", ())))

    async def set_endpoints(self, request, query, principal, body):
        return await self.ops.set_endpoints(principal, request.match_info["cluster"], body,
                                            expected_revision=query.number("expected_revision"))

    async def delete_endpoints(self, request, query, principal, body):
        return await self.ops.delete_endpoints(
            principal, request.match_info["cluster"],
            expected_revision=query.number("expected_revision"))

    async def openapi(self, request, query, principal, body):
        return self.description
