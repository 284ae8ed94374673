"""The northbound gRPC service (`omnirelay.mesh.v1.MeshAdmin`): what `omnirctl` calls. A thin
adapter over `AdminOps` (ops.py), which the JSON/HTTP API (http.py) shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from omnirelay.config.protos import admin_pb2_grpc

from .auth import MUTATE, READ, Principal
from .ops import AdminOps, ApiError

ERROR_TRAILER = "meshkit-error"


class MeshAdminService(admin_pb2_grpc.MeshAdminServicer):
    def __init__(self, ops: AdminOps) -> None:
        self.ops = ops

    async def _call(self, context: grpc.aio.ServicerContext, permission: str,
                    operation: Callable[[Principal], Awaitable[Any] | Any]):
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
        try:
            principal = self.ops.authorize(authorization, permission)
            result = operation(principal)
            if isinstance(result, Awaitable):
                result = await result
            return result
        except ApiError as exc:  # the kind in a trailer: omnirctl tells MeshKit's own
            # UNAVAILABLE (store down, not the leader) from not reaching MeshKit at all
            await context.abort(exc.grpc_status, str(exc),
                                trailing_metadata=((ERROR_TRAILER, exc.kind),))

    async def GetConfig(self, request, context):
        return await self._call(context, READ,
                                lambda p: self.ops.get_config(p, request.scope))

    async def SetConfig(self, request, context):
        expected = request.expected_revision if request.HasField("expected_revision") else None
        return await self._call(
            context, READ if request.dry_run else MUTATE,
            lambda p: self.ops.set_config(p, request.scope, request.document,
                                          expected_revision=expected, dry_run=request.dry_run,
                                          force=request.force),
        )

    async def ValidateConfig(self, request, context):
        return await self._call(
            context, READ, lambda p: self.ops.validate_config(p, request.document, request.scope)
        )

    async def ListNodes(self, request, context):
        return await self._call(context, READ,
                                lambda p: self.ops.list_nodes(request.connected_only))

    async def GetStatus(self, request, context):
        return await self._call(context, READ, lambda p: self.ops.get_status(request.scope))

    async def TailAudit(self, request, context):
        return await self._call(
            context, READ,
            lambda p: self.ops.tail_audit(since_unix_ms=request.since_unix_ms,
                                          after_id=request.after_id, scope=request.scope,
                                          limit=request.limit),
        )

    async def SetEndpoints(self, request, context):
        expected = request.expected_revision if request.HasField("expected_revision") else None
        return await self._call(
            context, MUTATE,
            lambda p: self.ops.set_endpoints(p, request.cluster, request.endpoints,
                                             expected_revision=expected),
        )

    async def GetEndpoints(self, request, context):
        return await self._call(context, READ,
                                lambda p: self.ops.get_endpoints(tuple(request.clusters)))

    async def DeleteEndpoints(self, request, context):
        expected = request.expected_revision if request.HasField("expected_revision") else None
        return await self._call(
            context, MUTATE,
            lambda p: self.ops.delete_endpoints(p, request.cluster, expected_revision=expected),
        )
