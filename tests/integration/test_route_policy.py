"""Route actions and request shaping, observed from outside: matching on method, regex,
headers and query; rewrites; header edits; direct responses; redirects; weighted
splitting; traffic shadowing; priority failover."""
from __future__ import annotations

import asyncio
import contextlib
import time

from harness import (
    Client,
    Origin,
    RawServer,
    assert_quiescent,
    cluster,
    eventually,
    get,
    make_config,
    read_request,
)

import omnirelay


@contextlib.asynccontextmanager
async def origins(*names):
    async with contextlib.AsyncExitStack() as stack:
        yield {n: await stack.enter_async_context(Origin(n)) for n in names}


def clusters_for(ups):
    return [cluster(n, o.port) for n, o in ups.items()]


async def test_match_on_method_regex_header_and_query():
    routes = [
        {"name": "post", "match": {"methods": ["POST"], "path": {"prefix": "/items"}},
         "cluster": "a"},
        {"name": "item", "match": {"path": {"regex": "/items/[0-9]+"}}, "cluster": "b"},
        {"name": "beta", "match": {"headers": [{"name": "x-beta", "present": True},
                                               {"name": "x-tier", "regex": "gold|silver"}]},
         "cluster": "c"},
        {"name": "debug", "match": {"query": [{"name": "debug", "exact": "on"}]},
         "cluster": "c"},
        {"name": "not-internal", "match": {
            "headers": [{"name": "x-internal", "present": True, "invert": True}]},
         "cluster": "d"},
    ]
    cases = [
        (b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "a"),
        (get("/items/12"), "b"),
        (get("/items/12x", headers="x-internal: 1\r\n"), 404),
        (get("/x", headers="x-beta: 1\r\nx-tier: gold\r\n"), "c"),
        (get("/x", headers="x-beta: 1\r\nx-tier: bronze\r\n"), "d"),
        (get("/x?debug=on", headers="x-internal: 1\r\n"), "c"),
        (get("/x?debug=off", headers="x-internal: 1\r\n"), 404),
        (get("/x"), "d"),
    ]
    async with origins("a", "b", "c", "d") as ups:
        cfg = make_config(routes=routes, clusters=clusters_for(ups))
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            got = []
            for raw, _ in cases:
                r = await c.request(raw, raw.split(b" ")[0].decode())
                got.append(r.headers.get("x-origin") if r.status == 200 else r.status)
    assert got == [want for _, want in cases]


async def test_rewrites_and_header_edits_reach_the_upstream_and_client():
    routes = [
        {"name": "api", "match": {"path": {"prefix": "/api/"}}, "cluster": "a",
         "rewrite": {"prefix": "/v2/", "host": "internal.svc"},
         "request_headers": {"remove": ["x-secret"], "set": [{"name": "x-env", "value": "prod"}],
                             "add": [{"name": "x-added", "value": "1"}]},
         "response_headers": {"remove": ["x-origin"],
                              "add": [{"name": "x-served-by", "value": "edge"}]}},
        {"name": "legacy", "match": {"path": {"prefix": "/legacy/"}}, "cluster": "a",
         "rewrite": {"regex": "^/legacy/([a-z]+)/([0-9]+)$", "substitution": r"/\2/\1",
                     "auto_host": True}},
    ]
    async with origins("a") as ups:
        a = ups["a"]
        cfg = make_config(routes=routes, clusters=clusters_for(ups))
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/api/users?id=7", host="edge.test",
                                    headers="x-secret: s\r\nx-env: dev\r\nx-env: qa\r\n"))
            assert r.status == 200
            assert "x-origin" not in r.headers and r.headers.get("x-served-by") == "edge"
            seen = a.seen[-1]
            assert seen.path == "/v2/users?id=7"
            assert seen.headers.getall("host") == ["internal.svc"]
            assert seen.headers.getall("x-env") == ["prod"]
            assert seen.headers.get("x-added") == "1" and "x-secret" not in seen.headers
            r = await c.request(get("/legacy/orders/42?q=1", host="edge.test"))
            assert r.status == 200 and r.headers.get("x-origin") == "a"
            seen = a.seen[-1]
            assert seen.path == "/42/orders?q=1"
            assert seen.headers.getall("host") == [f"127.0.0.1:{a.port}"]


async def test_direct_responses_and_redirects():
    routes = [
        {"name": "ping", "match": {"path": {"exact": "/ping"}},
         "direct_response": {"status": 200, "body": '{"ok": true}',
                             "headers": [{"name": "content-type",
                                          "value": "application/json"}]},
         "response_headers": {"add": [{"name": "cache-control", "value": "no-store"}]}},
        {"name": "gone", "match": {"path": {"prefix": "/old"}}, "direct_response": {"status": 410}},
        {"name": "https", "match": {"hosts": ["plain.test"]},
         "redirect": {"scheme": "https", "code": 308}},
        {"name": "moved", "match": {"path": {"prefix": "/docs/"}},
         "redirect": {"host": "docs.test", "prefix_rewrite": "/manual/", "code": 302}},
    ]
    async with origins("a") as ups:
        cfg = make_config(routes=routes, clusters=clusters_for(ups))
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/ping"))
            assert (r.status, r.body, r.headers.getall("content-type")) == (
                200, b'{"ok": true}', ["application/json"])
            assert r.headers.get("cache-control") == "no-store"
            assert "x-omnirelay-reason" not in r.headers and r.headers.get("x-request-id")
            r = await c.request(get("/old/page"))
            assert r.status == 410 and r.body == b""
            r = await c.request(get("/a?b=1", host="plain.test:80"))
            assert r.status == 308 and r.headers.get("location") == "https://plain.test/a?b=1"
            r = await c.request(get("/docs/intro?x", host="www.test:8080"))
            assert r.status == 302
            assert r.headers.get("location") == "http://docs.test:8080/manual/intro?x"
            # The connection stayed usable throughout.
            assert (await c.request(get("/ping"))).status == 200
        assert ups["a"].seen == []


async def test_weighted_clusters_split_traffic_by_weight():
    routes = [{"name": "split", "match": {"path": {"prefix": "/"}},
               "weighted_clusters": [{"name": "a", "weight": 75}, {"name": "b", "weight": 25},
                                     {"name": "c", "weight": 0}]}]
    n = 400
    async with origins("a", "b", "c") as ups:
        cfg = make_config(routes=routes, clusters=clusters_for(ups))
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            counts = {"a": 0, "b": 0, "c": 0}
            for _ in range(n):
                r = await c.request(get("/"))
                counts[r.headers.get("x-origin")] += 1
    assert counts["c"] == 0
    # 75% of 400 = 300; 5 standard deviations is about +-43.
    assert 255 <= counts["a"] <= 345, counts


async def test_mirrors_get_a_copy_and_never_slow_the_primary():
    hung = asyncio.Event()

    async def never_answers(reader, writer, server):
        server.requests.append(await read_request(reader))
        hung.set()
        await asyncio.sleep(30)

    async with origins("a", "shadow") as ups, RawServer(never_answers) as stuck:
        await stuck.start()
        clusters = clusters_for(ups) + [cluster("stuck", stuck.port),
                                        cluster("closed", 1)]
        routes = [{"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "a",
                   "timeout": "5s",
                   "mirrors": [{"cluster": "shadow"}, {"cluster": "stuck"},
                               {"cluster": "closed", "percent": 100}]}]
        cfg = make_config(routes=routes, clusters=clusters)
        async with omnirelay.Relay(cfg) as relay:
            async with await Client.open(relay.address()) as c:
                body = b"x" * 100_000
                t0 = time.monotonic()
                r = await c.request(b"POST /orders?id=1 HTTP/1.1\r\nHost: shop.test:8080\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body, "POST")
                elapsed = time.monotonic() - t0
                assert r.status == 200 and r.headers.get("x-origin") == "a"
                assert elapsed < 1.0, f"a hung mirror slowed the primary: {elapsed:.2f}s"
                await eventually(lambda: len(ups["shadow"].seen) == 1, 5, "shadow copy")
                seen = ups["shadow"].seen[0]
                assert (seen.method, seen.path, seen.body) == ("POST", "/orders?id=1", body)
                assert seen.headers.getall("host") == ["shop.test-shadow:8080"]
                await asyncio.wait_for(hung.wait(), 5)
                assert stuck.requests[0].body == body
                # Chunked bodies are mirrored too; every response was the primary's.
                r = await c.request(b"PUT /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                                    b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "PUT")
                assert r.status == 200 and r.headers.get("x-origin") == "a"
                await eventually(lambda: len(ups["shadow"].seen) == 2, 5, "chunked shadow")
                assert ups["shadow"].seen[1].body == b"hello"
            st = relay.stats()["listeners"]["edge"]
            assert st["upstream_rq_shadow"] == 6
            await eventually(lambda: relay.stats()["listeners"]["edge"][
                "upstream_rq_shadow_failed"] >= 2, 5, "failed shadows to the closed port")


async def test_mirror_percentage_samples_requests():
    routes = [{"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "a",
               "mirrors": [{"cluster": "shadow", "percent": 25}]}]
    async with origins("a", "shadow") as ups:
        cfg = make_config(routes=routes, clusters=clusters_for(ups))
        async with omnirelay.Relay(cfg) as relay:
            async with await Client.open(relay.address()) as c:
                for _ in range(400):
                    assert (await c.request(get("/"))).status == 200
            await assert_quiescent(relay)
            shadows = relay.stats()["listeners"]["edge"]["upstream_rq_shadow"]
    assert 55 <= shadows <= 145, shadows      # 100 +- 5 sigma


async def test_priority_failover_when_the_preferred_level_is_ejected():
    """Priority 0 serves while healthy; when its endpoint is ejected for 5xx, traffic
    spills to priority 1."""
    async def fails(reader, writer, server):
        while True:
            server.requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with origins("backup") as ups, RawServer(fails) as bad:
        await bad.start()
        clusters = [{"name": "c", "endpoints": [
            {"address": "127.0.0.1", "port": bad.port, "priority": 0, "locality": "zone-a"},
            {"address": "127.0.0.1", "port": ups["backup"].port, "priority": 1,
             "locality": "zone-b"}],
            "outlier_detection": {"consecutive_5xx": 2, "max_ejection_percent": 100}}]
        cfg = make_config(clusters=clusters)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            statuses = [(await c.request(get("/"))).status for _ in range(2)]
            assert statuses == [503, 503]
            r = await c.request(get("/"))
            assert r.status == 200 and r.headers.get("x-origin") == "backup"
            eps = relay.stats()["clusters"]["c"]["endpoints"]
            assert [(e["priority"], e["locality"], e["ejected"]) for e in eps] == [
                (0, "zone-a", True), (1, "zone-b", False)]
