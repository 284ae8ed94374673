"""omnirelay.filters.http.local_ratelimit through a real Relay and a real upstream.

Each test uses a config no other test uses: buckets are kept per (config, place in the
config) while a loaded config refers to them, so distinct configs keep tests independent.
"""
from __future__ import annotations

import asyncio
import gc
import time

import pytest
from harness import Client, Origin, get, make_config, one_shot

import omnirelay
from omnirelay.filters import FilterConfigError

RL = "omnirelay.filters.http.local_ratelimit"


def rl_filter(**config) -> dict:
    return {"name": RL, "config": config}


def rl_config(port: int, **config) -> dict:
    return make_config(port, route={"filters": [rl_filter(**config)]})


def assert_limited(r, limit: int, reset: int | None = None, status: int = 429) -> None:
    assert r.status == status, r.start_line
    assert r.body == b"local rate limit exceeded\n"
    assert r.headers.get("x-omnirelay-reason") == "local_rate_limited"
    assert r.headers.get("x-ratelimit-limit") == str(limit)
    assert r.headers.get("x-ratelimit-remaining") == "0"
    reset_hdr = r.headers.get("x-ratelimit-reset")
    assert reset_hdr is not None and reset_hdr.isdigit() and int(reset_hdr) >= 1, r.headers
    assert r.headers.get("retry-after") == reset_hdr
    if reset is not None:
        assert int(reset_hdr) == reset, r.headers


async def test_bucket_of_3_allows_3_then_429():
    async with Origin() as origin:
        cfg = rl_config(origin.port, max_tokens=3, tokens_per_fill=3, fill_interval="10s")
        async with omnirelay.Relay(cfg) as relay:
            rs = [await one_shot(relay.address(), get(f"/{i}")) for i in range(5)]
            assert [r.status for r in rs] == [200, 200, 200, 429, 429]
            for r, remaining in zip(rs[:3], ("2", "1", "0"), strict=True):
                assert r.headers.get("x-ratelimit-limit") == "3"
                assert r.headers.get("x-ratelimit-remaining") == remaining
                assert "x-omnirelay-reason" not in r.headers
                assert "retry-after" not in r.headers
            for r in rs[3:]:
                assert_limited(r, 3, reset=10)
        assert [s.path for s in origin.seen] == ["/0", "/1", "/2"]


async def test_keepalive_connection_shares_the_bucket_and_custom_status():
    async with Origin() as origin:
        cfg = rl_config(origin.port, max_tokens=2, tokens_per_fill=1, fill_interval=30,
                        status=503)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            assert (await c.request(get("/a"))).status == 200
            assert (await c.request(get("/b"))).status == 200
            r = await c.request(get("/c"))
            assert_limited(r, 2, reset=30, status=503)
            # A local reply to a complete request keeps the connection open.
            assert_limited(await c.request(get("/d")), 2, status=503)
        assert len(origin.seen) == 2


async def test_tokens_come_back_after_fill_interval():
    async with Origin() as origin:
        cfg = rl_config(origin.port, max_tokens=2, tokens_per_fill=1, fill_interval="200ms")
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            assert [(await one_shot(addr, get("/"))).status for _ in range(2)] == [200, 200]
            r = await one_shot(addr, get("/"))
            if r.status == 200:          # a fill happened already on a slow machine
                r = await one_shot(addr, get("/"))
            assert_limited(r, 2, reset=1)
            t0 = time.monotonic()
            # Poll until a token is back; each 429 costs nothing.
            while True:
                r = await one_shot(addr, get("/again"))
                if r.status == 200:
                    break
                assert_limited(r, 2)
                assert time.monotonic() - t0 < 2, "no token back within 2 s"
                await asyncio.sleep(0.02)
            assert r.headers.get("x-ratelimit-remaining") == "0"
            # One token per fill: the next request right away is limited again.
            assert (await one_shot(addr, get("/"))).status == 429
        assert origin.seen[-1].path == "/again"


def test_token_bucket_arithmetic():
    from omnirelay.filters.http.local_ratelimit import LocalRateLimitConfig, TokenBucket

    b = TokenBucket(LocalRateLimitConfig(max_tokens=2, tokens_per_fill=5, fill_interval=1.0),
                    now=100.0)
    assert [b.take(100.0), b.take(100.1), b.take(100.2)] == [1, 0, -1]
    assert b.reset_after(100.2) == 1
    assert b.take(100.99) == -1                 # fills are whole intervals
    assert b.take(101.0) == 1                   # +5, capped at max_tokens 2
    assert b.take(150.0) == 1                   # long idle: still capped
    b.take(150.0)
    assert b.take(150.0) == -1
    # The schedule stays on whole intervals from creation: next fill at 151.0.
    assert b.reset_after(150.5) == 1
    slow = TokenBucket(LocalRateLimitConfig(1, 1, 7.5), now=0.0)
    assert slow.take(0.0) == 0 and slow.take(0.1) == -1
    assert slow.reset_after(0.1) == 8           # ceil(7.4)
    assert slow.take(7.5) == 0


async def test_bucket_kept_across_reload_with_same_config():
    async with Origin() as origin:
        cfg = rl_config(origin.port, max_tokens=2, tokens_per_fill=2, fill_interval="20s")
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            assert [(await one_shot(addr, get("/"))).status for _ in range(2)] == [200, 200]
            await relay.reload(cfg)
            assert_limited(await one_shot(addr, get("/")), 2)
            # Another config for the filter: a new, full bucket.
            changed = rl_config(origin.port, max_tokens=3, tokens_per_fill=2, fill_interval="20s")
            await relay.reload(changed)
            statuses = [(await one_shot(addr, get("/"))).status for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            # Back to the first config: its bucket was freed once no loaded config used it,
            # so it starts full again.
            gc.collect()
            await relay.reload(cfg)
            assert (await one_shot(addr, get("/"))).status == 200
        assert len(origin.seen) == 6


async def test_each_route_binding_has_its_own_bucket_listener_binding_is_shared():
    same = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "25s"}
    async with Origin() as origin:
        routes = [
            {"name": "a", "match": {"path": {"prefix": "/a"}}, "cluster": "c",
             "filters": [rl_filter(**same)]},
            {"name": "b", "match": {"path": {"prefix": "/b"}}, "cluster": "c",
             "filters": [rl_filter(**same)]},
        ]
        cfg = make_config(origin.port, routes=routes)
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            assert (await one_shot(addr, get("/a"))).status == 200
            assert (await one_shot(addr, get("/a"))).status == 429
            assert (await one_shot(addr, get("/b"))).status == 200
            assert (await one_shot(addr, get("/b"))).status == 429

        plain = [{k: v for k, v in r.items() if k != "filters"} for r in routes]
        cfg = make_config(origin.port, routes=plain,
                          listener={"filters": [rl_filter(max_tokens=2, tokens_per_fill=1,
                                                          fill_interval="25s")]})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            statuses = [(await one_shot(addr, get(p))).status for p in ("/a", "/b", "/a", "/b")]
            assert statuses == [200, 200, 429, 429]
        assert len(origin.seen) == 4


async def test_registered_as_builtin():
    assert RL in omnirelay.filters.registry.known_filters()


_OK = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}


@pytest.mark.parametrize(("change", "named"), [
    ({"bogus": 1}, "bogus"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"tokens_per_fill": None}, "tokens_per_fill"),
    ({"tokens_per_fill": -2}, "tokens_per_fill"),
    ({"fill_interval": None}, "fill_interval"),
    ({"fill_interval": 0}, "fill_interval"),
    ({"fill_interval": "0s"}, "fill_interval"),
    ({"fill_interval": "often"}, "fill_interval"),
    ({"fill_interval": "-1s"}, "fill_interval"),
    ({"status": 200}, "status"),
    ({"status": "429"}, "status"),
])
def test_invalid_config_is_rejected_naming_the_key(change, named):
    config = {**_OK, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(FilterConfigError) as err:
        omnirelay.Relay(rl_config(1, **config))
    msg = str(err.value)
    assert named in msg, msg
    assert "spec.routes[0].filters[0].config" in msg, msg
