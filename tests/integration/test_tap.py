"""Admin `POST /tap` on an embedded Relay: a real admin client streams the heads of matching
requests (credentials redacted) until the count or time limit; token, limits, concurrency,
and no request hook left behind once taps end."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import pytest
from harness import HOST, Origin, eventually, get, make_config, one_shot

import omnirelay

TOKEN = "tap-token-123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def relay_for(origin: Origin) -> omnirelay.Relay:
    return omnirelay.Relay(make_config(origin.port),
                           admin={"address": HOST, "port": 0, "token": TOKEN})


def tap_url(relay: omnirelay.Relay, query: str) -> str:
    return f"{relay.admin_url()}/tap?{query}"


async def read_lines(resp: aiohttp.ClientResponse, timeout: float = 10.0) -> list[dict]:
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            line = await resp.content.readline()
            if not line:
                return out
            out.append(json.loads(line))


def state(relay: omnirelay.Relay):
    return relay._listeners["edge"].state


async def test_a_tap_streams_matching_heads_until_its_count():
    async with Origin() as origin, relay_for(origin) as relay, aiohttp.ClientSession() as http:
        assert state(relay).trace is None  # no tap, no tracing: no request hook
        async with http.post(tap_url(relay, "path=/api&max=2&seconds=10"),
                             headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/x-ndjson"
            assert state(relay).trace is not None
            addr = relay.address()
            assert (await one_shot(addr, get("/other"))).status == 200
            secret = "Authorization: Bearer s3cret\r\nCookie: session=abc\r\nX-Debug: 1\r\n"
            assert (await one_shot(addr, get("/api/1?q=2", headers=secret))).status == 200
            assert (await one_shot(addr, get("/api/2"))).status == 200
            assert (await one_shot(addr, get("/api/3"))).status == 200
            lines = await read_lines(resp)
        first, second, done = lines
        assert (first["method"], first["path"], second["path"]) == ("GET", "/api/1?q=2", "/api/2")
        assert first["listener"] == "edge" and first["request_id"]
        headers = {k.lower(): v for k, v in first["headers"]}
        assert headers["authorization"] == "[redacted]" and headers["cookie"] == "[redacted]"
        assert headers["x-debug"] == "1" and headers["host"] == "example.test"
        assert "s3cret" not in json.dumps(lines)
        assert done == {"tap": "done", "reason": "count", "skipped": 0}
        await eventually(lambda: state(relay).trace is None, 2.0, "the hook removed")
        assert len(origin.seen) == 4  # the tap only watched


async def test_a_tap_ends_at_its_time_limit_and_filters_by_header():
    async with Origin() as origin, relay_for(origin) as relay, aiohttp.ClientSession() as http:
        async with http.post(tap_url(relay, "header=x-debug:1&max=10&seconds=0.5"),
                             headers=AUTH) as resp:
            assert resp.status == 200
            addr = relay.address()
            assert (await one_shot(addr, get("/a", headers="X-Debug: 2\r\n"))).status == 200
            assert (await one_shot(addr, get("/b", headers="X-Debug: 1\r\n"))).status == 200
            assert (await one_shot(addr, get("/c"))).status == 200
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            lines = await read_lines(resp)
            assert loop.time() - t0 < 5.0
        assert [x.get("path") for x in lines[:-1]] == ["/b"]
        assert lines[-1]["reason"] == "time"


async def test_requests_answered_before_routing_are_tapped_with_their_status():
    async with Origin() as origin, aiohttp.ClientSession() as http:
        cfg = make_config(origin.port, route={"match": {"path": {"prefix": "/api"}}})
        relay = omnirelay.Relay(cfg, admin={"address": HOST, "port": 0, "token": TOKEN})
        async with relay, http.post(tap_url(relay, "max=1"), headers=AUTH) as resp:
            assert (await one_shot(relay.address(), get("/nowhere"))).status == 404
            lines = await read_lines(resp)
        assert lines[0]["path"] == "/nowhere" and lines[0]["status"] == 404


async def test_tap_needs_the_token_and_checks_its_limits():
    async with Origin() as origin, relay_for(origin) as relay, aiohttp.ClientSession() as http:
        async with http.post(tap_url(relay, "max=1")) as resp:
            assert resp.status == 401
        async with http.post(tap_url(relay, "max=1"),
                             headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 403
        for query, why in (("max=0", "max must be"), ("max=x", "max must be an integer"),
                           ("seconds=0", "seconds must be"), ("seconds=9999", "seconds must be"),
                           ("path=api", "path must be a prefix"), ("header=:v", "header must")):
            async with http.post(tap_url(relay, query), headers=AUTH) as resp:
                assert resp.status == 400, query
                assert why in (await resp.json())["error"], query
        async with http.get(tap_url(relay, "max=1")) as resp:
            assert resp.status == 405
        assert state(relay).trace is None


async def test_at_most_four_taps_and_a_client_that_leaves_ends_its_tap():
    async with Origin() as origin, relay_for(origin) as relay, aiohttp.ClientSession() as http:
        open_taps = [await http.post(tap_url(relay, "max=5&seconds=20"), headers=AUTH)
                     for _ in range(4)]
        assert all(r.status == 200 for r in open_taps)
        async with http.post(tap_url(relay, "max=5"), headers=AUTH) as resp:
            assert resp.status == 429
            assert "wait for one to end" in (await resp.json())["error"]
        hub = relay._builder.taps
        assert len(hub.taps) == 4
        for r in open_taps:
            r.close()  # drop the connection without reading
        await eventually(lambda: not hub.taps, 5.0, "taps ended with their clients")
        await eventually(lambda: state(relay).trace is None, 2.0, "the hook removed")
        assert (await one_shot(relay.address(), get("/"))).status == 200


async def run_cli(*args: str, token: str | None = TOKEN) -> asyncio.subprocess.Process:
    env = {**os.environ, "OMNIRELAY_ADMIN_TOKEN": token or ""}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "omnirelay.cli.main", "tap", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.async_timeout(40)
async def test_the_tap_command_prints_the_stream():
    async with Origin() as origin, relay_for(origin) as relay:
        proc = await run_cli("--admin", relay.admin_url(), "--path", "/api", "--max", "2")
        hub = relay._builder.taps
        await eventually(lambda: hub.taps, 20.0, "the CLI's tap started")
        for path in ("/x", "/api/a", "/api/b"):
            assert (await one_shot(relay.address(), get(path))).status == 200
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        lines = [json.loads(x) for x in out.decode().splitlines()]
        assert [x.get("path") for x in lines] == ["/api/a", "/api/b", None]
        assert lines[-1]["reason"] == "count"
        bad = await run_cli("--admin", relay.admin_url(), token="wrong")
        out, err = await asyncio.wait_for(bad.communicate(), 20)
        assert bad.returncode == 1
        assert "HTTP 403: wrong admin token" in err.decode() and "Traceback" not in err.decode()


async def test_a_tap_on_a_traced_listener_sees_each_request_once():
    from otlp import SERVER, OtlpReceiver
    async with OtlpReceiver() as rx, Origin() as origin, aiohttp.ClientSession() as http:
        cfg = make_config(origin.port, listener={"tracing": {"collector": rx.url}})
        relay = omnirelay.Relay(cfg, admin={"address": HOST, "port": 0, "token": TOKEN})
        async with relay, http.post(tap_url(relay, "max=3&seconds=10"), headers=AUTH) as resp:
            for path in ("/a", "/b", "/c"):
                assert (await one_shot(relay.address(), get(path))).status == 200
            lines = await read_lines(resp)
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(6)
            assert state(relay).trace is not None  # tracing keeps its hook after the tap
        assert [x.get("path") for x in lines] == ["/a", "/b", "/c", None]
        # the tap saw the client's head: no traceparent yet (the proxy adds it per attempt)
        assert all("traceparent" not in dict(x["headers"]) for x in lines[:-1])
        assert sorted(s.attributes["url.path"] for s in spans if s.kind == SERVER) == [
            "/a", "/b", "/c"]
