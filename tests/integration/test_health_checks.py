"""Active HTTP health checking (omnirelay.clusters.health) against real upstreams on
127.0.0.1: endpoints flip unhealthy and back at the thresholds, reloads keep counters, and
the proxy stops sending traffic to an endpoint the checker took out."""

from __future__ import annotations

import asyncio
import socket

from harness import HOST, RawServer, eventually, make_config, raw_response, read_request

import omnirelay
from omnirelay.clusters import HealthChecker, HealthCheckers
from omnirelay.config import HealthCheck, load_config

FAST = HealthCheck(interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2)


async def health_handler(reader, writer, srv: RawServer) -> None:
    """Answers one request with the status in srv.state["status"] (200 unless set)."""
    req = await read_request(reader)
    srv.requests.append(req)
    status = srv.state.get("status", 200)
    writer.write(raw_response(status, body=b"ok", reason="X", headers="Connection: close\r\n"))
    await writer.drain()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(*ports: int, health_check: dict | None = None) -> dict:
    cluster = {"endpoints": [{"address": HOST, "port": p} for p in ports]}
    if health_check is not None:
        cluster["health_check"] = health_check
    return make_config(cluster=cluster)


def _endpoints(relay: omnirelay.Relay, name: str = "c") -> dict[int, object]:
    return {e.port: e for e in relay._builder.clusters[name].endpoints}


async def test_bad_endpoint_goes_unhealthy_and_comes_back() -> None:
    good = await RawServer(health_handler).start()
    bad = await RawServer(health_handler).start()
    bad.state["status"] = 503
    relay = omnirelay.Relay(_config(good.port, bad.port))
    cluster = relay._builder.clusters["c"]
    eps = _endpoints(relay)
    assert eps[good.port].healthy and eps[bad.port].healthy
    checker = HealthChecker(cluster, FAST)
    checker.start()
    try:
        await eventually(lambda: not eps[bad.port].healthy, 5.0, "bad endpoint unhealthy")
        assert eps[good.port].healthy
        status = checker.status()
        assert status[f"{HOST}:{bad.port}"]["healthy"] is False
        assert status[f"{HOST}:{bad.port}"]["last_status"] == 503
        assert status[f"{HOST}:{bad.port}"]["last_error"] == "unexpected status 503"
        assert status[f"{HOST}:{good.port}"]["last_status"] == 200

        # The probe itself: GET path, Host = address:port, Connection: close, our agent.
        req = good.requests[0]
        assert req.method == "GET" and req.target == "/healthz"
        assert req.headers.get("host") == f"{HOST}:{good.port}"
        assert req.headers.get("connection") == "close"
        assert req.headers.get("user-agent") == "omnirelay-healthcheck"

        bad.state["status"] = 200
        await eventually(lambda: eps[bad.port].healthy, 5.0, "bad endpoint healthy again")
        assert checker.status()[f"{HOST}:{bad.port}"]["consecutive_successes"] >= 2
        assert eps[good.port].healthy
    finally:
        await checker.stop()
        await good.stop()
        await bad.stop()


async def test_endpoint_that_refuses_connections_goes_unhealthy() -> None:
    good = await RawServer(health_handler).start()
    dead = _free_port()
    relay = omnirelay.Relay(_config(good.port, dead))
    eps = _endpoints(relay)
    checker = HealthChecker(relay._builder.clusters["c"], FAST)
    checker.start()
    try:
        await eventually(lambda: not eps[dead].healthy, 5.0, "dead endpoint unhealthy")
        assert eps[good.port].healthy
        entry = checker.status()[f"{HOST}:{dead}"]
        assert entry["last_status"] is None and entry["consecutive_failures"] >= 2
        assert entry["last_error"]
    finally:
        await checker.stop()
        await good.stop()
    # Stopping leaves no endpoint taken out.
    assert all(e.healthy for e in eps.values())


async def test_timeout_counts_as_failure_and_custom_host_path_statuses() -> None:
    async def silent(reader, writer, srv: RawServer) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    slow = await RawServer(silent).start()
    ok = await RawServer(health_handler).start()
    ok.state["status"] = 204
    relay = omnirelay.Relay(_config(ok.port, slow.port))
    eps = _endpoints(relay)
    hc = HealthCheck(
        path="/ready",
        interval=0.1,
        timeout=0.05,
        healthy_threshold=1,
        unhealthy_threshold=1,
        expected_statuses=(200, 204),
        host="svc.internal",
    )
    checker = HealthChecker(relay._builder.clusters["c"], hc)
    checker.start()
    try:
        await eventually(lambda: not eps[slow.port].healthy, 5.0, "slow endpoint unhealthy")
        assert "timed out" in checker.status()[f"{HOST}:{slow.port}"]["last_error"]
        await eventually(lambda: bool(ok.requests), 5.0, "probe received")
        assert eps[ok.port].healthy
        assert ok.requests[0].target == "/ready"
        assert ok.requests[0].headers.get("host") == "svc.internal"
    finally:
        await checker.stop()
        await ok.stop()
        await slow.stop()


async def test_update_keeps_counters_of_endpoints_that_stay() -> None:
    a = await RawServer(health_handler).start()
    b = await RawServer(health_handler).start()
    c = await RawServer(health_handler).start()
    b.state["status"] = 500
    relay = omnirelay.Relay(_config(a.port, b.port))
    checker = HealthChecker(relay._builder.clusters["c"], FAST)
    checker.start()
    try:
        eps = _endpoints(relay)
        await eventually(lambda: not eps[b.port].healthy, 5.0, "b unhealthy")
        # Reload: a is dropped, b stays (still failing), c is new.
        await relay.reload(_config(b.port, c.port))
        checker.update(relay._builder.clusters["c"], FAST)
        eps = _endpoints(relay)
        assert not eps[b.port].healthy  # kept, not reset by the update
        assert set(checker.status()) == {f"{HOST}:{b.port}", f"{HOST}:{c.port}"}
        before = checker.status()[f"{HOST}:{b.port}"]["consecutive_failures"]
        await eventually(lambda: bool(c.requests), 5.0, "new endpoint probed")
        assert eps[c.port].healthy
        assert checker.status()[f"{HOST}:{b.port}"]["consecutive_failures"] >= before
        seen_by_a = len(a.requests)
        await asyncio.sleep(0.2)
        assert len(a.requests) <= seen_by_a + 1  # its loop was cancelled
    finally:
        await checker.stop()
        for srv in (a, b, c):
            await srv.stop()


async def test_relay_skips_the_unhealthy_endpoint() -> None:
    """With HealthCheckers wired the way the Relay will wire them, traffic avoids the
    endpoint whose health check fails, and returns to it once it passes."""

    async def app(reader, writer, srv: RawServer) -> None:
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            if req.target == "/healthz":
                status = srv.state.get("status", 200)
                writer.write(raw_response(status, headers="Connection: close\r\n"))
                await writer.drain()
                return
            writer.write(raw_response(body=srv.state["name"].encode()))
            await writer.drain()

    one = await RawServer(app).start()
    two = await RawServer(app).start()
    one.state["name"], two.state["name"] = "one", "two"
    two.state["status"] = 503
    hc = {"interval": "50ms", "timeout": "40ms", "healthy_threshold": 1, "unhealthy_threshold": 1}
    config = load_config(_config(one.port, two.port, health_check=hc))
    checkers = HealthCheckers()
    async with omnirelay.Relay(config) as relay:
        checkers.sync(relay.config, relay._builder.clusters)
        try:
            eps = _endpoints(relay)
            await eventually(lambda: not eps[two.port].healthy, 5.0, "two unhealthy")
            bodies = [await _get_body(relay) for _ in range(6)]
            assert bodies == ["one"] * 6
            two.state["status"] = 200
            await eventually(lambda: eps[two.port].healthy, 5.0, "two healthy")
            bodies = {await _get_body(relay) for _ in range(6)}
            assert bodies == {"one", "two"}
            assert set(checkers.status()["c"]) == {f"{HOST}:{one.port}", f"{HOST}:{two.port}"}
            # A reload without health_check stops the checker and puts endpoints back.
            await relay.reload(_config(one.port, two.port))
            checkers.sync(relay.config, relay._builder.clusters)
            assert "c" not in checkers
        finally:
            await checkers.stop()
    assert all(e.healthy for e in eps.values())
    await one.stop()
    await two.stop()


async def _get_body(relay: omnirelay.Relay) -> str:
    host, port = relay.address()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()
