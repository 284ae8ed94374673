"""Traffic management observed from outside: retries, per-try timeouts, circuit
breakers, outlier ejection and load-balancing policies, against real upstreams
that misbehave on purpose."""
from __future__ import annotations

import asyncio
import collections
import time

from harness import (
    Client,
    RawServer,
    eventually,
    free_port,
    get,
    make_config,
    one_shot,
    raw_response,
    read_request,
)

import omnirelay


def scripted(statuses):
    """A keep-alive upstream answering the given statuses in order, then 200s."""
    async def handler(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            n = len(srv.requests)
            status = statuses[n - 1] if n <= len(statuses) else 200
            writer.write(raw_response(status, f"attempt {n}".encode(), reason="X"))
            await writer.drain()
    return handler


def named(name: str, status: int = 200, delay: float = 0.0):
    async def handler(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            if delay:
                await asyncio.sleep(delay)
            writer.write(raw_response(status, name.encode(), reason="X"))
            await writer.drain()
    return handler


async def hang(reader, writer, srv):
    srv.requests.append(await read_request(reader))
    await reader.read()


async def test_503_twice_then_200_is_retried():
    async with RawServer(scripted([503, 503])) as srv:
        cfg = make_config(srv.port, route={"retry_policy": {
            "retry_on": ["5xx"], "num_retries": 3, "base_interval": "5ms"}})
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/r"))
            stats = relay.stats()["listeners"]["edge"]
        assert r.status == 200 and r.body == b"attempt 3"
        assert len(srv.requests) == 3
        assert stats["upstream_rq_retry"] == 2


async def test_without_a_retry_policy_the_503_is_passed_through():
    async with RawServer(scripted([503])) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        r = await one_shot(relay.address(), get("/r"))
    assert r.status == 503 and len(srv.requests) == 1


async def test_retries_are_bounded_by_num_retries():
    async with RawServer(scripted([503] * 10)) as srv:
        cfg = make_config(srv.port, route={"retry_policy": {
            "retry_on": ["gateway-error"], "num_retries": 2, "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/r"))
    assert r.status == 503 and r.body == b"attempt 3" and len(srv.requests) == 3


async def test_retriable_status_codes_only_retry_listed_codes():
    async with RawServer(scripted([409, 500])) as srv:
        cfg = make_config(srv.port, route={"retry_policy": {
            "retry_on": ["retriable-status-codes"], "retriable_status_codes": [409],
            "num_retries": 3, "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/r"))
    # 409 is retried, the 500 that follows is not listed: it goes to the client.
    assert r.status == 500 and len(srv.requests) == 2


async def test_request_body_is_replayed_on_retry():
    async with RawServer(scripted([503])) as srv:
        cfg = make_config(srv.port, route={"retry_policy": {
            "retry_on": ["5xx"], "num_retries": 1, "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            body = b"x" * 50_000
            r = await one_shot(relay.address(), b"POST /p HTTP/1.1\r\nHost: a\r\n"
                               b"Content-Length: 50000\r\n\r\n" + body, "POST")
    assert r.status == 200
    assert [q.body for q in srv.requests] == [body, body]


async def test_body_past_the_buffer_limit_is_not_retried():
    async with RawServer(scripted([503])) as srv:
        cfg = make_config(srv.port, listener={"buffer_limit": 65536}, route={"retry_policy": {
            "retry_on": ["5xx"], "num_retries": 2, "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            body = b"y" * 200_000
            r = await one_shot(relay.address(), b"POST /p HTTP/1.1\r\nHost: a\r\n"
                               b"Content-Length: 200000\r\n\r\n" + body, "POST")
    assert r.status == 503 and len(srv.requests) == 1


async def test_hung_upstream_trips_the_per_try_timeout_and_is_retried():
    async with RawServer(hang) as srv:
        cfg = make_config(srv.port, route={"timeout": "5s", "per_try_timeout": "200ms",
                                           "retry_policy": {"retry_on": ["reset"],
                                                            "num_retries": 1,
                                                            "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            t0 = time.monotonic()
            r = await one_shot(relay.address(), get("/slow"))
            elapsed = time.monotonic() - t0
            stats = relay.stats()["listeners"]["edge"]
    assert r.status == 504
    assert 0.35 < elapsed < 2.0
    assert len(srv.requests) == 2 and stats["upstream_rq_per_try_timeout"] == 2


async def test_connect_failure_is_retried_on_another_endpoint():
    dead = free_port()
    async with RawServer(named("good")) as good:
        cfg = make_config(good.port, cluster={"endpoints": [
            {"address": "127.0.0.1", "port": dead}, {"address": "127.0.0.1", "port": good.port}]},
            route={"retry_policy": {"retry_on": ["connect-failure"], "num_retries": 2,
                                    "base_interval": "1ms"}})
        async with omnirelay.Relay(cfg) as relay:
            results = [await one_shot(relay.address(), get(f"/{i}")) for i in range(6)]
    assert [r.status for r in results] == [200] * 6


async def test_ten_concurrent_over_max_requests_five_get_503_with_the_reason():
    async with RawServer(named("slow", delay=0.4)) as srv:
        cfg = make_config(srv.port, cluster={"circuit_breakers": {"max_requests": 5}})
        async with omnirelay.Relay(cfg) as relay:
            results = await asyncio.gather(*(one_shot(relay.address(), get(f"/{i}"))
                                             for i in range(10)))
            overflows = relay._builder.clusters["c"].overflows
    by_status = collections.Counter(r.status for r in results)
    assert by_status == {200: 5, 503: 5}
    reasons = {r.headers.get("x-omnirelay-reason") for r in results if r.status == 503}
    assert reasons == {"upstream_overflow_max_requests"}
    assert overflows == 5


async def test_max_pending_requests_overflow():
    async with RawServer(named("slow", delay=0.3)) as srv:
        cfg = make_config(srv.port, cluster={"circuit_breakers": {"max_pending_requests": 2}})
        async with omnirelay.Relay(cfg) as relay:
            # All connect at once: only two may wait for a new connection.
            results = await asyncio.gather(*(one_shot(relay.address(), get(f"/{i}"))
                                             for i in range(6)))
    reasons = [r.headers.get("x-omnirelay-reason") for r in results if r.status == 503]
    assert sum(r.status == 200 for r in results) >= 2
    assert reasons and set(reasons) == {"upstream_overflow_max_pending_requests"}


async def test_failing_endpoint_is_ejected_and_traffic_moves():
    async with RawServer(named("bad", 500)) as bad, RawServer(named("good")) as good:
        cfg = make_config(good.port, cluster={
            "endpoints": [{"address": "127.0.0.1", "port": bad.port},
                          {"address": "127.0.0.1", "port": good.port}],
            "outlier_detection": {"consecutive_5xx": 3, "base_ejection_time": "30s",
                                  "max_ejection_percent": 50}})
        async with omnirelay.Relay(cfg) as relay:
            async with await Client.open(relay.address()) as c:
                first = [await c.request(get(f"/a{i}")) for i in range(8)]
                later = [await c.request(get(f"/b{i}")) for i in range(10)]
            eps = {e["address"]: e for e in relay.stats()["clusters"]["c"]["endpoints"]}
            # The ejection survives a reload that keeps the endpoint.
            await relay.reload(cfg)
            eps_after = {e["address"]: e for e in relay.stats()["clusters"]["c"]["endpoints"]}
    assert sum(r.status == 500 for r in first) == 3
    assert [r.body for r in later] == [b"good"] * 10
    assert eps[f"127.0.0.1:{bad.port}"]["ejected"] and eps[f"127.0.0.1:{bad.port}"]["ejections"] == 1
    assert not eps[f"127.0.0.1:{good.port}"]["ejected"]
    assert eps_after[f"127.0.0.1:{bad.port}"]["ejected"]


async def _spread(policy: str, header_values, hash_key=None):
    servers = [RawServer(named(f"ep{i}")) for i in range(3)]
    for s in servers:
        await s.start()
    try:
        cluster = {"lb_policy": policy, "endpoints": [
            {"address": "127.0.0.1", "port": s.port} for s in servers]}
        if hash_key:
            cluster["hash_key"] = hash_key
        async with omnirelay.Relay(make_config(servers[0].port, cluster=cluster)) as relay:
            out = []
            for v in header_values:
                r = await one_shot(relay.address(), get("/", headers=f"x-user: {v}\r\n"))
                assert r.status == 200
                out.append((v, r.body))
            return out
    finally:
        for s in servers:
            await s.stop()


async def test_ring_hash_and_maglev_are_sticky_per_key_and_spread_keys():
    keys = [f"user-{i}" for i in range(30)]
    for policy in ("ring_hash", "maglev"):
        out = await _spread(policy, keys + keys, hash_key={"header": "x-user"})
        chosen = collections.defaultdict(set)
        for k, body in out:
            chosen[k].add(body)
        assert all(len(v) == 1 for v in chosen.values()), policy
        assert len({b for v in chosen.values() for b in v}) == 3, policy


async def test_round_robin_random_and_least_request_use_every_endpoint():
    for policy in ("round_robin", "random", "least_request"):
        out = await _spread(policy, range(30))
        counts = collections.Counter(body for _, body in out)
        assert set(counts) == {b"ep0", b"ep1", b"ep2"}, (policy, counts)
        if policy == "round_robin":
            assert set(counts.values()) == {10}


async def test_unhealthy_endpoints_are_skipped_until_all_are():
    async with RawServer(named("a")) as a, RawServer(named("b")) as b:
        cfg = make_config(a.port, cluster={"endpoints": [
            {"address": "127.0.0.1", "port": a.port}, {"address": "127.0.0.1", "port": b.port}]})
        async with omnirelay.Relay(cfg) as relay:
            eps = relay._builder.clusters["c"].endpoints
            eps[0].healthy = False
            only_b = [(await one_shot(relay.address(), get("/"))).body for _ in range(4)]
            eps[1].healthy = False          # panic: every endpoint is used again
            both = {(await one_shot(relay.address(), get("/"))).body for _ in range(6)}
    assert only_b == [b"b"] * 4
    assert both == {b"a", b"b"}


def health_endpoint(name: str, healthy: bool):
    async def handler(reader, writer, srv):
        while True:
            req = await read_request(reader)
            if req.start_line.split()[1] == "/healthz":
                writer.write(raw_response(200 if healthy else 503, b"hc", "Connection: close\r\n"))
                await writer.drain()
                writer.close()
                return
            srv.requests.append(req)
            writer.write(raw_response(200, name.encode()))
            await writer.drain()
    return handler


async def test_relay_runs_the_configured_health_checks():
    async with RawServer(health_endpoint("sick", False)) as sick, \
            RawServer(health_endpoint("fine", True)) as fine:
        cfg = make_config(fine.port, cluster={
            "endpoints": [{"address": "127.0.0.1", "port": sick.port},
                          {"address": "127.0.0.1", "port": fine.port}],
            "health_check": {"interval": "50ms", "timeout": "40ms", "unhealthy_threshold": 2}})
        async with omnirelay.Relay(cfg) as relay:
            def sick_down():
                st = relay.stats()["health"].get("c", {}).get(f"127.0.0.1:{sick.port}")
                return st is not None and not st["healthy"]
            await eventually(sick_down, timeout=3, what="sick endpoint marked unhealthy")
            bodies = [(await one_shot(relay.address(), get(f"/{i}"))).body for i in range(6)]
    assert bodies == [b"fine"] * 6
