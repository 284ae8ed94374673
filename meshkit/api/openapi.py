"""The OpenAPI 3.1 description of the JSON/HTTP API (`GET /openapi.json`), built from its route
table (http.ROUTES) and the admin.proto messages the routes return, so it cannot drift from
what is served: a route is described from the same entry that registers it, and a response
schema from the same message that is encoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_INTEGERS = {
    FieldDescriptor.TYPE_UINT32: ("integer", 0),
    FieldDescriptor.TYPE_UINT64: ("integer", 0),
    FieldDescriptor.TYPE_INT32: ("integer", None),
    FieldDescriptor.TYPE_INT64: ("integer", None),
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # "string" | "integer" | "boolean"
    description: str
    where: str = "query"  # "query" | "path"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # OpenAPI template: /v1/endpoints/{cluster}
    operation: str  # operationId and the HttpApi handler method name
    summary: str
    permission: str | None  # "read", "mutate" or None (no token)
    response: Descriptor | None  # the admin.proto message of a 200 body
    params: tuple[Param, ...] = ()
    body: str | None = None  # what the request body holds, if any
    errors: tuple[int, ...] = ()


_ERROR_TEXT = {
    400: "Bad request: a malformed parameter or scope",
    401: "No token, or an unknown one",
    403: "A read token on a mutating call",
    404: "Not found: no config in the scope, no endpoint list to delete",
    409: "Compare-and-swap conflict, or capability gaps (error.code says which)",
    422: "Invalid document: every issue with its path",
    503: "The store is unavailable (store_unavailable), this replica is not the leader "
         "(not_leader), or written but not served in time (unavailable)",
}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _message_schema(field.message_type, schemas)
        schema: dict[str, Any] = {"$ref": f"#/components/schemas/{field.message_type.name}"}
    elif field.type == FieldDescriptor.TYPE_BYTES:  # config documents: decoded JSON
        schema = {"type": "object", "description": "the config document (canonical JSON)"}
    elif field.type == FieldDescriptor.TYPE_BOOL:
        schema = {"type": "boolean"}
    elif field.type in _INTEGERS:
        kind, minimum = _INTEGERS[field.type]
        schema = {"type": kind} if minimum is None else {"type": kind, "minimum": minimum}
    else:
        schema = {"type": "string"}
    return {"type": "array", "items": schema} if field.is_repeated else schema


def _message_schema(message: Descriptor, schemas: dict[str, Any]) -> None:
    if message.name in schemas:
        return
    schemas[message.name] = {}  # placeholder: recursion stops here
    schemas[message.name] = {
        "type": "object",
        "properties": {f.name: _field_schema(f, schemas) for f in message.fields},
    }


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable kind"},
                "message": {"type": "string"},
                "issues": {"type": "array", "items": {"$ref": "#/components/schemas/ConfigIssue"}},
                "capability_gaps": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/CapabilityGap"}},
            },
        }},
    }


def document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `routes`."""
    from omnirelay.config.protos import admin_pb2

    schemas: dict[str, Any] = {}
    for message in (admin_pb2.ConfigIssue, admin_pb2.CapabilityGap):
        _message_schema(message.DESCRIPTOR, schemas)
    schemas["Error"] = _error_schema()
    paths: dict[str, Any] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.where == "path",
                 "description": p.description, "schema": {"type": p.kind}}
                for p in route.params
            ],
            "responses": {},
        }
        if route.permission is None:
            operation["security"] = []
        else:
            operation["description"] = f"Needs a `{route.permission}` token."
        if route.body:
            operation["requestBody"] = {
                "required": True,
                "description": route.body,
                "content": {
                    "application/json": {"schema": {}},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        if route.response is not None:
            _message_schema(route.response, schemas)
            ok = {"$ref": f"#/components/schemas/{route.response.name}"}
        else:
            ok = {"type": "object"}
        operation["responses"]["200"] = {
            "description": "OK", "content": {"application/json": {"schema": ok}}}
        codes = route.errors + ((401, 403) if route.permission else ())
        for code in sorted(set(codes)):
            operation["responses"][str(code)] = {
                "description": _ERROR_TEXT[code],
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MeshKit northbound API",
            "version": "1",  # the API's version (its paths are /v1/...)
            "description": "MeshKit's JSON/HTTP API: the operations of the gRPC MeshAdmin "
                           "service (protos/admin.proto) with the same bearer tokens.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
