"""The JSON/HTTP northbound API of a real `meshkit serve --http-listen` process, called over real
HTTP (urllib): bearer tokens scoped read/mutate, config get/put (CAS)/validate/dry-run, nodes,
status, audit, endpoints, JSON errors, and /openapi.json (valid OpenAPI 3.1 describing every
route that is served)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from mkharness import MeshKitProcess, document, wait_for
from openapi_spec_validator import validate as validate_openapi

from meshkit.api.http import ROUTES
from meshkit.api.openapi import document as openapi_document


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mk = MeshKitProcess(tmp_path_factory.mktemp("meshkit-http"))
    mk.extra_args = ["--http-listen", "127.0.0.1:0"]
    mk.start()
    try:
        yield mk
    finally:
        mk.stop()


def call(server, method: str, path: str, token: str | None = "mutate",
         body: bytes | dict | None = None):
    """(status, headers, JSON body) of one request."""
    token = {"mutate": server.mutate_token, "read": server.read_token}.get(token, token)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"http://{server.http_address}{path}", data=data,
                                     method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, json.loads(exc.read())


def test_openapi_is_valid_and_describes_every_served_route(server):
    status, headers, doc = call(server, "GET", "/openapi.json", token=None)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    validate_openapi(doc)  # raises on an invalid OpenAPI 3.1 document
    assert doc["openapi"].startswith("3.1")
    assert doc == json.loads(json.dumps(openapi_document(ROUTES)))
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.path) for r in ROUTES}
    for route in ROUTES:  # every described route is served (auth is checked before anything)
        path = route.path.replace("{cluster}", "c")
        status, _, body = call(server, route.method, path, token=None,
                               body=b"{}" if route.body else None)
        assert status == (200 if route.permission is None else 401), (route, body)
        op = doc["paths"][route.path][route.method.lower()]
        assert "200" in op["responses"]
        if route.permission:
            assert {"401", "403"} <= set(op["responses"])


def test_tokens_are_scoped(server):
    status, headers, body = call(server, "GET", "/v1/nodes", token=None)
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = call(server, "GET", "/v1/nodes", token="mk_not-a-token")
    assert status == 401 and "unknown bearer token" in body["error"]["message"]
    doc = document("http-read", routes=("a",))
    status, _, body = call(server, "PUT", "/v1/config?scope=tenant/readonly", token="read",
                           body=doc)
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert "read-only" in body["error"]["message"]
    status, _, body = call(server, "PUT", "/v1/config?scope=tenant/readonly&dry_run=true",
                           token="read", body=doc)
    assert status == 200 and body["dry_run"] is True
    status, _, body = call(server, "GET", "/v1/config?scope=tenant/readonly", token="read")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_config_put_get_cas_and_invalid(server):
    scope = "region/http-eu"
    status, _, first = call(server, "PUT", f"/v1/config?scope={scope}",
                            body=document("h1", routes=("a",)))
    assert status == 200, first
    assert first["scope"] == scope and first["revision"] > 0 and first["key_id"]
    assert isinstance(first["revision"], int) and first["dry_run"] is False
    status, _, record = call(server, "GET", f"/v1/config?scope={scope}", token="read")
    assert status == 200 and record["revision"] == first["revision"]
    assert record["version"] == "h1" and record["actor"] == "token:ops"
    assert [r["name"] for r in record["document"]["spec"]["routes"]] == ["a"]

    # YAML body, compare-and-swap on the revision read.
    yaml_doc = json.dumps(document("h2", routes=("a", "b"))).encode()  # JSON is YAML
    status, _, second = call(server, "PUT",
                             f"/v1/config?scope={scope}&expected_revision={first['revision']}",
                             body=yaml_doc)
    assert status == 200 and second["revision"] > first["revision"]
    assert "+ route b" in second["summary"]
    status, _, body = call(server, "PUT",
                           f"/v1/config?scope={scope}&expected_revision={first['revision']}",
                           body=document("h3"))
    assert status == 409 and body["error"]["code"] == "revision_conflict"

    bad = document("bad")
    bad["spec"]["routes"][0]["cluster"] = "missing"
    status, _, body = call(server, "PUT", f"/v1/config?scope={scope}", body=bad)
    assert status == 422 and body["error"]["code"] == "invalid_config"
    assert any("spec.routes[0]" in i["path"] for i in body["error"]["issues"])

    status, _, body = call(server, "POST", f"/v1/config/validate?scope={scope}", token="read",
                           body=document("h4", routes=("a",)))
    assert status == 200 and body["valid"] is True and "- route b" in body["summary"]
    status, _, body = call(server, "POST", "/v1/config/validate", token="read", body=bad)
    assert status == 200 and body["valid"] is False and body["issues"]


def test_bad_requests_are_json_errors(server):
    status, _, body = call(server, "GET", "/v1/config?scope=planet/x", token="read")
    assert status == 400 and "bad scope" in body["error"]["message"]
    status, _, body = call(server, "GET", "/v1/audit?limit=many", token="read")
    assert status == 400 and "limit" in body["error"]["message"]
    status, _, body = call(server, "GET", "/v1/nodes?colour=red", token="read")
    assert status == 400 and "colour" in body["error"]["message"]
    status, _, body = call(server, "PUT", "/v1/config?scope=tenant/empty", body=b"")
    assert status == 400 and "body" in body["error"]["message"]
    status, _, body = call(server, "GET", "/v1/nowhere", token="read")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = call(server, "DELETE", "/v1/config", token="read")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_nodes_status_audit_and_endpoints(server):
    scope = "tenant/http-nodes"
    since = int(time.time() * 1000)
    published = server.publish(document("n1"), scope=scope)
    node = server.watch("http-node-1", tenant="http-nodes")
    try:
        snap = node.snapshot()
        node.ack(snap)

        def acked():
            status, _, body = call(server, "GET", f"/v1/status?scope={scope}", token="read")
            assert status == 200
            nodes = {n["id"]: n for n in body["nodes"]}
            n = nodes.get("http-node-1")
            return body if n and n["applied_version"] == "n1" else None

        body = wait_for(acked)
        n = body["nodes"][0]
        assert n["drift"] is False and n["desired_version"] == "n1" and n["connected"] is True
        assert n["last_seen_unix_ms"] >= since
        assert body["leadership"]["is_leader"] is True and body["leadership"]["store"] == "sqlite"
        assert body["leadership"]["leader_address"] == server.address
        assert isinstance(body["discovery_generation"], int)
        assert body["scopes"] == [{"scope": scope, "revision": published.revision,
                                   "version": "n1", "epoch": published.epoch,
                                   "sha256": published.sha256, "nodes": 1, "drifting": 0}]
        status, _, body = call(server, "GET", "/v1/nodes?connected=true", token="read")
        assert status == 200 and "http-node-1" in {n["id"] for n in body["nodes"]}
    finally:
        node.close()

    status, _, body = call(server, "GET", f"/v1/audit?since_unix_ms={since}&scope={scope}",
                           token="read")
    assert status == 200
    actions = [e["action"] for e in body["entries"]]
    assert "write" in actions and "push" in actions
    assert all(e["timestamp_unix_ms"] >= since for e in body["entries"])
    status, _, body = call(server, "GET", f"/v1/audit?scope={scope}&limit=1", token="read")
    assert status == 200 and len(body["entries"]) == 1

    status, _, body = call(server, "PUT", "/v1/endpoints/web",
                           body=b'[{"address": "127.0.0.1", "port": 8080}]')
    assert status == 200 and body["generation"] >= 1
    generation = body["generation"]
    status, _, body = call(server, "PUT", "/v1/endpoints/web?expected_revision=1",
                           body=b'[{"address": "127.0.0.1", "port": 8081}]')
    assert status == 409 and body["error"]["code"] == "revision_conflict", body
    status, _, body = call(server, "PUT", f"/v1/endpoints/web?expected_revision={generation}",
                           body=b'[{"address": "127.0.0.1", "port": 8081}]')
    assert status == 200 and body["generation"] > generation
    generation = body["generation"]
    status, _, body = call(server, "GET", "/v1/status", token="read")
    assert status == 200 and body["discovery_generation"] == generation
    status, _, body = call(server, "GET", "/v1/endpoints?cluster=web&cluster=none",
                           token="read")
    assert status == 200 and body["generation"] == generation
    assert body["clusters"] == [{"cluster": "web", "revision": generation, "endpoints": [
        {"address": "127.0.0.1", "port": 8081, "weight": 1, "priority": 0, "locality": ""}]}]
    status, _, body = call(server, "GET", "/v1/endpoints?cluster=bad/name", token="read")
    assert status == 400 and "bad cluster name" in body["error"]["message"]
    status, _, body = call(server, "PUT", "/v1/endpoints/web", token="read",
                           body=b'[{"address": "127.0.0.1", "port": 8080}]')
    assert status == 403


def test_delete_endpoints(server):
    status, _, body = call(server, "PUT", "/v1/endpoints/doomed",
                           body=b'[{"address": "127.0.0.1", "port": 8080}]')
    assert status == 200
    written = body["generation"]
    status, _, body = call(server, "DELETE", "/v1/endpoints/doomed", token="read")
    assert status == 403 and body["error"]["code"] == "permission_denied"
    status, _, body = call(server, "DELETE", "/v1/endpoints/doomed?expected_revision=x")
    assert status == 400 and "expected_revision" in body["error"]["message"]
    status, _, body = call(server, "DELETE",
                           f"/v1/endpoints/doomed?expected_revision={written + 1000}")
    assert status == 409 and body["error"]["code"] == "revision_conflict", body
    status, _, body = call(server, "DELETE", f"/v1/endpoints/doomed?expected_revision={written}")
    assert status == 200 and body["generation"] > written, body
    deleted = body["generation"]
    status, _, body = call(server, "GET", "/v1/endpoints?cluster=doomed", token="read")
    assert status == 200 and body["clusters"] == [] and body["generation"] >= deleted
    status, _, body = call(server, "DELETE", "/v1/endpoints/doomed")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert "'doomed' has no endpoint list" in body["error"]["message"]
    status, _, body = call(server, "GET", "/v1/audit?scope=cluster/doomed", token="read")
    assert [e["action"] for e in body["entries"]] == [
        "set-endpoints", "conflict", "delete-endpoints", "not-found"]
