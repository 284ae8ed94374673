"""A filter written against a public Proxy-Wasm SDK (AssemblyScript's @solo-io/proxy-runtime,
built here by the SDK's own compiler: tests/extensions/sdk) through a real Relay: its
configuration reaches the request, it edits the response, denies with the SDK's local
response, buffers a request body to its end (counted by an SDK metric) and fails to start
under a root id it does not know; it pauses a request for an HTTP callout and resumes or
denies it from proxy_on_http_call_response."""
from __future__ import annotations

import logging

import pytest
from aiohttp import web
from authz_server import AuthzServer
from harness import Client, Origin, eventually, get, make_config

import omnirelay
import omnirelay.extensions.wasm.filter
from omnirelay.extensions.wasm import binding_statuses, metrics_snapshot
from omnirelay.filters import FilterConfigError

WASM = "omnirelay.filters.http.wasm"
ROOT_ID = "omnirelay_sdk_test"  # the name filter.ts registers its root context under
KEY = "X-Sdk-Key: k\r\n"
VERDICTS = {"alice": "allow", "bob": "deny"}
BODY_CALLS = "sdk_test.request_body_calls"  # a counter filter.ts defines through the SDK


class Authz(AuthzServer):
    """The callout target: answers x-verdict from a table of users (unknown users: deny)."""

    def __init__(self) -> None:
        super().__init__(self._check)
        self.users: list[str] = []

    async def _check(self, request: web.Request) -> web.Response:
        user = request.headers.get("x-user", "")
        self.users.append(user)
        return web.Response(text="", headers={"x-verdict": VERDICTS.get(user, "deny")})


def sdk_config(plugin: str, origin_port: int, authz_port: int, *, name: str = "sdk",
               root_id: str = ROOT_ID) -> dict:
    wasm = {"path": plugin, "name": name, "root_id": root_id, "configuration": "blue"}
    return make_config(
        routes=[{"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "c",
                 "filters": [{"name": WASM, "config": wasm}]}],
        clusters=[{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": origin_port}]},
                  {"name": "authz", "endpoints": [{"address": "127.0.0.1",
                                                   "port": authz_port}]}])


def status(name: str) -> dict:
    matches = [s for s in binding_statuses() if s["plugin"] == name]
    assert matches, f"no binding status for {name}: {binding_statuses()}"
    return matches[-1]


async def test_sdk_filter_headers_and_local_reply(sdk_filter):
    async with Origin("up") as origin, Authz() as authz:
        cfg = sdk_config(sdk_filter, origin.port, authz.port)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/a", headers=KEY))
            assert r.status == 200, r.body
            assert origin.seen[0].headers.get("x-sdk-config") == "blue"
            assert "x-sdk-verdict" not in origin.seen[0].headers
            assert r.headers.get("x-sdk-response") == "blue"
            assert r.json()["path"] == "/a"

            r = await c.request(get("/b"))  # no key: the SDK's send_local_response
            assert (r.status, r.body) == (403, b"denied by the sdk filter\n")
            assert r.headers.get("x-denied-by") == "proxy-runtime"
            assert len(origin.seen) == 1, "a denied request reached the origin"

            r = await c.request(get("/c", headers=KEY))  # same connection, same VM
            assert r.status == 200 and origin.seen[1].headers.get("x-sdk-config") == "blue"
        assert authz.users == []
    st = status("sdk")
    assert st["state"] == "running" and st["failures"] == 0


def body_calls() -> int:
    found = [m["value"] for m in metrics_snapshot() if m["name"] == BODY_CALLS]
    return found[0] if found else 0


async def post_in_two_chunks(c: Client, first: bytes, second: bytes):
    """The second chunk goes out only once the filter has seen (and buffered) the first."""
    before = body_calls()
    await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nX-Sdk-Key: k\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(first), first))
    await eventually(lambda: body_calls() > before, what="the first body callback")
    await c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
    return await c.response()


async def test_sdk_filter_buffers_the_request_body_and_rejects_it(sdk_filter):
    async with Origin("up") as origin, Authz() as authz:
        cfg = sdk_config(sdk_filter, origin.port, authz.port, name="sdk-body")
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            # StopIterationAndBuffer until the end of the body, which the filter reads whole.
            r = await post_in_two_chunks(c, b"hello", b" world")
            assert r.status == 200, r.body
            assert origin.seen[-1].body == b"hello world"
            assert origin.seen[-1].headers.get("x-sdk-config") == "blue"
            assert r.headers.get("x-sdk-response") == "blue"

            r = await post_in_two_chunks(c, b"a forbid", b"den word")
            assert (r.status, r.body) == (400, b"rejected by the sdk filter\n")
            assert r.headers.get("x-denied-by") == "proxy-runtime"
        assert len(origin.seen) == 1
    assert status("sdk-body")["failures"] == 0


# The SDK dispatches proxy_on_http_call_response by the context id it is called with, which
# must be the root context's (as in Envoy: a call belongs to the root context).
async def test_sdk_filter_pauses_for_a_callout_and_resumes(sdk_filter):
    async with Origin("up") as origin, Authz() as authz:
        cfg = sdk_config(sdk_filter, origin.port, authz.port, name="sdk-callout")
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            # Paused in on_request_headers; the SDK's continue_request resumes it.
            r = await c.request(get("/hello", headers=KEY + "X-Sdk-User: alice\r\n"))
            assert r.status == 200, r.body
            seen = origin.seen[-1].headers
            assert seen.get("x-sdk-verdict") == "allow" and seen.get("x-sdk-config") == "blue"
            assert r.headers.get("x-sdk-response") == "blue"

            # Denied from the callout answer: a local reply while paused.
            r = await c.request(get("/hello", headers=KEY + "X-Sdk-User: bob\r\n"))
            assert (r.status, r.body) == (403, b"denied by authz\n")
            assert len(origin.seen) == 1
            assert authz.users == ["alice", "bob"]
        assert status("sdk-callout")["callouts"] == 2

        # The authorization service is gone: the SDK hands the filter an empty answer.
        cfg = sdk_config(sdk_filter, origin.port, authz.port, name="sdk-callout")
    async with Origin("up") as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/hello", headers=KEY + "X-Sdk-User: alice\r\n"))
            assert (r.status, r.body) == (503, b"authz unavailable\n")
            assert origin.seen == []


def test_sdk_filter_with_an_unknown_root_id_fails_to_start(sdk_filter, caplog):
    caplog.set_level(logging.CRITICAL, logger="omnirelay.wasm")
    # The SDK aborts (proc_exit via wasi_unstable) when no root context has the configured id.
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(sdk_config(sdk_filter, 1, 2, root_id="nope"))
    msg = str(e.value)
    assert msg == "spec.routes[0].filters[0].config: plugin failed to start: exit: proc_exit(255)"
    logged = [r.getMessage() for r in caplog.records if r.name == "omnirelay.wasm.sdk"]
    assert any("Missing root context factory for root id: nope" in m for m in logged), logged
