"""Route matching through the proxy, and config reload while serving."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from harness import Client, Origin, RawServer, cluster, get, make_config, read_request

import omnirelay
from omnirelay.filters import FilterConfigError

ROUTES = [
    {"name": "api-host", "match": {"hosts": ["api.example.com"]}, "cluster": "a"},
    {"name": "v1-host", "match": {"hosts": ["v1.example.com", "alt.example.com:8443"],
                                  "path": {"prefix": "/v1/"}}, "cluster": "b"},
    {"name": "health", "match": {"path": {"exact": "/healthz"}}, "cluster": "c"},
    {"name": "ipv6", "match": {"hosts": ["[::1]"], "path": {"prefix": "/ipv6"}}, "cluster": "c"},
    {"name": "canary", "match": {"path": {"prefix": "/v1/"},
                                 "headers": [{"name": "X-Env", "exact": "canary"}]},
     "cluster": "d"},
]

CASES = [
    # (host, path, extra headers, expected origin or 404)
    ("api.example.com", "/healthz", "", "a"),            # first match wins over /healthz
    ("api.example.com:8080", "/anything", "", "a"),      # port ignored for a port-less pattern
    ("API.Example.COM", "/x", "", "a"),                  # host is case-insensitive
    ("api.example.com.evil.test", "/x", "", 404),
    ("v1.example.com", "/v1/items", "", "b"),
    ("v1.example.com", "/v2/items", "", 404),
    ("alt.example.com:8443", "/v1/items", "", "b"),      # pattern with a port
    ("alt.example.com:9443", "/v1/items", "", 404),
    ("other.test", "/healthz", "", "c"),
    ("[::1]", "/ipv6", "", "c"),
    ("[::1]:8080", "/ipv6", "", "c"),
    ("[::2]", "/ipv6", "", 404),
    ("other.test", "/healthz?probe=1", "", "c"),         # query is not part of the path
    ("other.test", "/healthz/deep", "", 404),            # exact means exact
    ("other.test", "/healthzz", "", 404),
    ("other.test", "/v1/x", "X-Env: canary\r\n", "d"),
    ("v1.example.com", "/v1/x", "X-Env: canary\r\n", "b"),  # earlier route wins
    ("other.test", "/v1/x", "X-Env: Canary\r\n", 404),     # value compared exactly
    ("other.test", "/v1/x", "X-Env: canary-2\r\n", 404),
    ("other.test", "/v1/x", "X-Env: prod\r\nX-Env: canary\r\n", "d"),  # any of the values
    ("other.test", "/v1/x", "", 404),
    ("other.test", "/V1/x", "X-Env: canary\r\n", 404),     # paths are case-sensitive
]

WILDCARD_ROUTES = [
    {"name": "exact", "match": {"hosts": ["www.example.com"]}, "cluster": "a"},
    {"name": "wild", "match": {"hosts": ["*.example.com"]}, "cluster": "b"},
]

WILDCARD_CASES = [
    ("www.example.com", "/", "", "a"),                   # earlier exact route wins
    ("x.example.com", "/", "", "b"),
    ("a.b.example.com", "/", "", "b"),                   # several labels
    ("X.EXAMPLE.COM:8080", "/", "", "b"),
    ("example.com", "/", "", 404),                       # needs at least one label
    ("evil-example.com", "/", "", 404),
    ("x.example.com.evil.test", "/", "", 404),
]


async def run_cases(routes, cases, names):
    async with origins(*names) as ups:
        cfg = make_config(routes=routes,
                          clusters=[cluster(n, o.port) for n, o in ups.items()])
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            got = []
            for host, path, extra, _ in cases:
                r = await c.request(get(path, host=host, headers=extra))
                got.append(r.headers.get("x-origin") if r.status == 200 else r.status)
    mismatches = [(case[:3], case[3], have) for case, have in zip(cases, got)
                  if case[3] != have]
    assert not mismatches, "\n".join(f"{c}: expected {w}, got {h}" for c, w, h in mismatches)


@contextlib.asynccontextmanager
async def origins(*names):
    async with contextlib.AsyncExitStack() as stack:
        yield {n: await stack.enter_async_context(Origin(n)) for n in names}


async def test_route_matching_host_path_headers_first_match_wins():
    await run_cases(ROUTES, CASES, ("a", "b", "c", "d"))


async def test_route_matching_wildcard_hosts():
    await run_cases(WILDCARD_ROUTES, WILDCARD_CASES, ("a", "b"))


async def test_absolute_form_target_routed_by_path_and_forwarded_in_origin_form():
    async with origins("a", "b", "c", "d") as ups:
        cfg = make_config(routes=ROUTES, clusters=[cluster(n, o.port) for n, o in ups.items()])
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(b"GET http://other.test/healthz?x=1 HTTP/1.1\r\n"
                                b"Host: other.test\r\n\r\n")
        assert r.status == 200 and r.headers.get("x-origin") == "c"
        assert ups["c"].seen[0].path == "/healthz?x=1"


async def test_absolute_form_authority_overrides_host_header():
    """RFC 9112 3.2.2: with an absolute-form target the Host header is ignored and
    replaced by the target's authority (for routing and for the upstream)."""
    async with origins("a", "b", "c", "d") as ups:
        cfg = make_config(routes=ROUTES, clusters=[cluster(n, o.port) for n, o in ups.items()])
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(b"GET http://api.example.com/x HTTP/1.1\r\n"
                                b"Host: other.test\r\n\r\n")
        assert r.status == 200
        assert r.headers.get("x-origin") == "a", \
            f"routed by the Host header instead of the target authority: {r.start_line}"
        assert ups["a"].seen[0].headers.getall("host") == ["api.example.com"]


def two_route_config(port_one, port_two, *, new=False):
    if not new:
        routes = [{"name": "old", "match": {"path": {"prefix": "/old"}}, "cluster": "one"}]
    else:
        routes = [{"name": "new", "match": {"path": {"prefix": "/new"}}, "cluster": "two"},
                  {"name": "old", "match": {"path": {"prefix": "/old"}}, "cluster": "two"}]
    return make_config(routes=routes, clusters=[cluster("one", port_one), cluster("two", port_two)],
                       metadata={"version": "v2" if new else "v1"})


async def test_reload_keeps_open_connections_and_applies_new_routes():
    async with origins("one", "two") as ups:
        one, two = ups["one"], ups["two"]
        async with omnirelay.Relay(two_route_config(one.port, two.port)) as relay:
            addr = relay.address()
            async with await Client.open(addr) as kept:
                r = await kept.request(get("/old"))
                assert r.headers.get("x-origin") == "one"
                assert (await kept.request(get("/new"))).status == 404

                await relay.reload(two_route_config(one.port, two.port, new=True))
                assert relay.config_version == "v2"
                assert relay.address() == addr   # same socket

                r = await kept.request(get("/new"))
                assert r.status == 200 and r.headers.get("x-origin") == "two"
                r = await kept.request(get("/old"))
                assert r.headers.get("x-origin") == "two"
                async with await Client.open(addr) as fresh:
                    r = await fresh.request(get("/new"))
                    assert r.headers.get("x-origin") == "two"


async def test_reload_does_not_disturb_in_flight_request():
    release = asyncio.Event()

    async def slow(reader, writer, srv):
        await read_request(reader)
        srv.event.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()
        await reader.read()

    async with RawServer(slow) as srv, Origin("two") as two:
        cfg1 = make_config(routes=[{"name": "r", "match": {}, "cluster": "one"}],
                           clusters=[cluster("one", srv.port)])
        cfg2 = make_config(routes=[{"name": "r", "match": {}, "cluster": "two"}],
                           clusters=[cluster("two", two.port)])
        async with omnirelay.Relay(cfg1) as relay, await Client.open(relay.address()) as c:
            await c.send(get("/inflight"))
            await asyncio.wait_for(srv.event.wait(), 5)
            await relay.reload(cfg2)
            release.set()
            r = await c.response()
            assert r.status == 200 and r.body == b"slow"
            r = await c.request(get("/after"))
            assert r.headers.get("x-origin") == "two"


async def test_invalid_reload_raises_and_old_config_keeps_serving():
    async with origins("one", "two") as ups:
        one, two = ups["one"], ups["two"]
        async with (
            omnirelay.Relay(two_route_config(one.port, two.port)) as relay,
            await Client.open(relay.address()) as kept,
        ):
            assert (await kept.request(get("/old"))).headers.get("x-origin") == "one"

            dangling = two_route_config(one.port, two.port, new=True)
            dangling["spec"]["routes"][0]["cluster"] = "missing"
            with pytest.raises(omnirelay.ConfigError) as err:
                await relay.reload(dangling)
            assert "missing" in str(err.value)

            bad_filter = two_route_config(one.port, two.port, new=True)
            bad_filter["spec"]["routes"][0]["filters"] = [{"name": "tests.no_such_filter"}]
            with pytest.raises(FilterConfigError):
                await relay.reload(bad_filter)

            assert relay.config_version == "v1"
            assert (await kept.request(get("/old"))).headers.get("x-origin") == "one"
            assert (await kept.request(get("/new"))).status == 404
            async with await Client.open(relay.address()) as fresh:
                assert (await fresh.request(get("/old"))).headers.get("x-origin") == "one"


async def test_weighted_round_robin_across_endpoints():
    async with origins("heavy", "light") as ups:
        cfg = make_config(clusters=[{"name": "c", "endpoints": [
            {"address": "127.0.0.1", "port": ups["heavy"].port, "weight": 2},
            {"address": "127.0.0.1", "port": ups["light"].port, "weight": 1}]}])
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            names = [(await c.request(get(f"/{i}"))).headers.get("x-origin")
                     for i in range(30)]
        assert names.count("heavy") == 20 and names.count("light") == 10, names


async def test_stop_drains_in_flight_request_and_refuses_new_connections():
    release = asyncio.Event()

    async def slow(reader, writer, srv):
        await read_request(reader)
        srv.event.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndrained")
        await writer.drain()
        await reader.read()

    async with RawServer(slow) as srv:
        relay = omnirelay.Relay(make_config(srv.port))
        await relay.start()
        addr = relay.address()
        idle = await Client.open(addr)
        busy = await Client.open(addr)
        await busy.send(get("/inflight"))
        await asyncio.wait_for(srv.event.wait(), 5)
        stopping = asyncio.ensure_future(relay.stop(drain_timeout=5))
        # The idle keep-alive connection is closed at once ...
        rest, _ = await idle.closed(timeout=2)
        assert rest == b""
        # ... no new connection is accepted ...
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection(*addr), 2)
        # ... and the in-flight request still completes, then its connection closes.
        assert not stopping.done()
        release.set()
        r = await busy.response()
        assert r.status == 200 and r.body == b"drained"
        assert r.headers.get("connection", "").lower() == "close"
        rest, _ = await busy.closed(timeout=2)
        assert rest == b""
        await asyncio.wait_for(stopping, 2)
        await idle.close()
        await busy.close()


async def test_reload_moving_a_listener_to_another_port():
    from harness import free_port

    async with Origin("one") as one:
        p1, p2 = free_port(), free_port()
        cfg1 = make_config(one.port, listener={"port": p1})
        cfg2 = make_config(one.port, listener={"port": p2})
        async with omnirelay.Relay(cfg1) as relay:
            assert relay.address()[1] == p1
            kept = await Client.open(("127.0.0.1", p1))
            assert (await kept.request(get("/"))).status == 200
            await relay.reload(cfg2)
            assert relay.address()[1] == p2
            async with await Client.open(("127.0.0.1", p2)) as fresh:
                assert (await fresh.request(get("/"))).status == 200
            # The old listener drains: its idle keep-alive connection is closed ...
            rest, _ = await kept.closed(timeout=2)
            assert rest == b""
            await kept.close()
            # ... and it accepts nothing new.
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", p1), 2)
