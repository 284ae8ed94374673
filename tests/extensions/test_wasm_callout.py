"""Proxy-Wasm HTTP callouts (proxy_http_call) through a real Relay: a plugin pauses each
request, asks an authorization service that is a cluster of the config, and continues,
denies or fails closed from proxy_on_http_call_response; a stream that goes away while
its call is in flight does not disturb the VM."""
from __future__ import annotations

import asyncio

from aiohttp import web
from authz_server import AuthzServer
from harness import Client, Origin, get, make_config

import omnirelay
import omnirelay.extensions.wasm.filter
from omnirelay.extensions.wasm import binding_statuses

WASM = "omnirelay.filters.http.wasm"


class Authz(AuthzServer):
    """The authorization service: alice is allowed, slow waits until released, others not."""

    def __init__(self) -> None:
        super().__init__(self._check)
        self.calls: list[dict[str, str]] = []
        self.release = asyncio.Event()

    async def _check(self, request: web.Request) -> web.Response:
        self.calls.append({"path": request.path, "user": request.headers.get("x-user", ""),
                           "host": request.headers.get("host", "")})
        user = request.headers.get("x-user")
        if user == "slow":
            await self.release.wait()
        if user == "alice":
            return web.Response(text=f"ok:{user}", headers={"x-verdict": "allow"})
        return web.Response(status=403, text="no", headers={"x-verdict": "deny"})

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await super().__aexit__(*exc)


def config(origin_port: int, authz_port: int, plugin: str) -> dict:
    return make_config(
        routes=[{"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "c",
                 "filters": [{"name": WASM, "config": {"path": plugin, "name": "authz-plugin",
                                                       "configuration": "authz"}}]}],
        clusters=[{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": origin_port}]},
                  {"name": "authz", "endpoints": [{"address": "127.0.0.1",
                                                   "port": authz_port}]}])


def status() -> dict:
    return [s for s in binding_statuses() if s["plugin"] == "authz-plugin"][-1]


async def test_callout_allows_denies_and_fails_closed(wasm_module):
    plugin = wasm_module("callout.c")
    async with Origin("up") as origin, Authz() as authz:
        async with omnirelay.Relay(config(origin.port, authz.port, plugin)) as relay:
            async with await Client.open(relay.address()) as c:
                r = await c.request(get("/hello", headers="X-User: alice\r\n"))
                assert r.status == 200, r.body
                seen = origin.seen[-1].headers
                assert seen.get("x-authz") == "ok:alice" and seen.get("x-verdict") == "allow"
                assert authz.calls[-1] == {"path": "/check", "user": "alice",
                                           "host": "authz.internal"}

                r = await c.request(get("/hello", headers="X-User: bob\r\n"))
                assert (r.status, r.body) == (403, b"denied\n")
                assert r.headers.get("x-verdict") == "deny"
                assert len(origin.seen) == 1, "a denied request reached the origin"

            # A client that leaves while its call is in flight: the late answer is dropped.
            slow = await Client.open(relay.address())
            await slow.send(get("/slow", headers="X-User: slow\r\n"))
            for _ in range(200):
                if any(call["user"] == "slow" for call in authz.calls):
                    break
                await asyncio.sleep(0.01)
            await slow.close()
            authz.release.set()
            async with await Client.open(relay.address()) as c:
                r = await c.request(get("/again", headers="X-User: alice\r\n"))
                assert r.status == 200
            assert status()["callouts"] == 4 and status()["state"] == "running"

        # The authorization service is gone: the call fails and the plugin answers 503.
        cfg = config(origin.port, authz.port, plugin)
    async with Origin("up") as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/hello", headers="X-User: alice\r\n"))
            assert (r.status, r.body) == (503, b"authz unavailable\n")
            assert status()["callout_failures"] >= 1
