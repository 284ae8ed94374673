"""Key sources (omnirelay.security.jwks), the side-fetch client (omnirelay.security.upstream)
and the jwt_authn filter's config checking."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from aiohttp import web
from jwt_keys import jwks

import omnirelay.security.jwks as jwks_mod
from omnirelay.filters.http.jwt_authn import parse_config
from omnirelay.security.jwks import LocalJwks, LocalJwksConfig, RemoteJwks, RemoteJwksConfig
from omnirelay.security.upstream import (
    FetchError,
    HttpUri,
    candidate_endpoints,
    fetch_from_cluster,
    find_cluster,
    http_get,
    publish_clusters,
)
from omnirelay.security.util import Counters


def write_atomic(path, doc) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def test_local_file_is_reread_when_it_changes(tmp_path, caplog):
    path = tmp_path / "jwks.json"
    write_atomic(path, jwks("rsa"))
    src = LocalJwks(LocalJwksConfig(file=str(path), check_interval=0.0), "t")
    assert [k.kid for k in src.current(time.monotonic()).keys] == ["rsa"]
    write_atomic(path, jwks("rsa", "ec"))
    assert [k.kid for k in src.current(time.monotonic()).keys] == ["rsa", "ec"]
    # A broken file keeps the last good keys; so does a missing one.
    path.write_text("{")
    assert len(src.current(time.monotonic())) == 2
    assert "cannot reload" in caplog.text
    path.unlink()
    assert len(src.current(time.monotonic())) == 2
    write_atomic(path, jwks("ed"))
    assert [k.kid for k in src.current(time.monotonic()).keys] == ["ed"]


def test_local_file_is_checked_at_most_every_check_interval(tmp_path):
    path = tmp_path / "jwks.json"
    write_atomic(path, jwks("rsa"))
    src = LocalJwks(LocalJwksConfig(file=str(path), check_interval=3600.0), "t")
    write_atomic(path, jwks("ec"))
    assert [k.kid for k in src.current(time.monotonic()).keys] == ["rsa"]
    assert [k.kid for k in src.current(time.monotonic() + 3601).keys] == ["ec"]


def test_local_file_errors_at_config_time(tmp_path):
    with pytest.raises(ValueError, match="p.file: cannot use .*missing.json"):
        LocalJwks(LocalJwksConfig(file=str(tmp_path / "missing.json")), "p")
    (tmp_path / "bad.json").write_text('{"keys": []}')
    with pytest.raises(ValueError, match="no usable signing key"):
        LocalJwks(LocalJwksConfig(file=str(tmp_path / "bad.json")), "p")


class FakeFetch:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.doc = jwks("rsa")

    async def __call__(self, cluster, uri, *, timeout, limit):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise FetchError("boom")
        return json.dumps(self.doc).encode()


def remote(monkeypatch, **kw) -> tuple[RemoteJwks, FakeFetch]:
    fake = FakeFetch()
    monkeypatch.setattr(jwks_mod, "fetch_from_cluster", fake)
    cfg = RemoteJwksConfig("idp", HttpUri.parse("http://idp/jwks", "uri"), **kw)
    return RemoteJwks(cfg, "t", Counters()), fake


async def test_remote_single_flight_and_cache(monkeypatch):
    src, fake = remote(monkeypatch)
    fake.gate = asyncio.Event()
    now = time.monotonic()
    assert src.current(now) is None
    tasks = {src.wait_task(now) for _ in range(20)}
    assert len(tasks) == 1
    fake.gate.set()
    await tasks.pop()
    assert fake.calls == 1 and src.counters["jwks_fetch"] == 1
    assert [k.kid for k in src.current(time.monotonic()).keys] == ["rsa"]
    assert fake.calls == 1


async def test_remote_refresh_stale_while_revalidate_and_backoff(monkeypatch):
    src, fake = remote(monkeypatch, refresh_interval=10.0, stale_ttl=100.0)
    await src.wait_task(time.monotonic())

    def aged(seconds: float) -> float:
        """Make the cached keys ``seconds`` old; returns now."""
        now = time.monotonic()
        src.fetched_at = now - seconds
        return now

    # Fresh: no refresh.
    assert src.current(aged(5)) is not None and src.inflight.done() and fake.calls == 1
    # Due: the cached keys are used while a refresh runs in the background.
    fake.fail = True
    assert src.current(aged(11)) is not None
    await src.inflight
    assert fake.calls == 2 and src.failures == 1 and src.counters["jwks_fetch_failed"] == 1
    # Backing off: no new attempt right away, the stale keys are still served.
    assert src.current(aged(50)) is not None
    assert src.wait_task(time.monotonic()) is None
    assert fake.calls == 2
    # Past refresh_interval + stale_ttl the keys are dropped (fail closed).
    assert src.current(aged(111)) is None
    # After the backoff a fetch may run again and recovers.
    fake.fail = False
    src.next_attempt = 0
    task = src.wait_task(time.monotonic())
    assert task is not None
    await task
    assert src.failures == 0 and src.current(time.monotonic()) is not None


async def test_remote_refetch_for_unknown_kid_is_rate_limited(monkeypatch):
    src, fake = remote(monkeypatch, min_refetch_interval=60.0)
    await src.wait_task(time.monotonic())
    assert src.refetch_task(time.monotonic()) is None            # just fetched
    assert fake.calls == 1
    task = src.refetch_task(time.monotonic() + 61)
    assert task is not None
    await task
    assert fake.calls == 2


async def test_remote_backoff_grows_and_is_capped(monkeypatch):
    src, fake = remote(monkeypatch, refresh_interval=600.0)
    fake.fail = True
    delays = []
    for _ in range(9):
        src.next_attempt = 0
        await src.wait_task(time.monotonic())
        delays.append(round(src.next_attempt - time.monotonic()))
    assert delays[:3] == [0, 1, 2] and delays[-1] == 30
    assert src.current(time.monotonic()) is None


# --------------------------------------------------------------------------- side fetches


class Owner:
    pass


async def test_http_get_and_fetch_from_cluster():
    from omnirelay._core import Cluster

    hits = []

    async def chunked(request):
        hits.append(request.headers.get("host"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"keys"')
        await resp.write(b": []}")
        await resp.write_eof()
        return resp

    async def plain(request):
        return web.Response(body=b"x" * 100)

    async def missing(request):
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/plain", plain)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        uri = HttpUri.parse("http://idp.test/chunked", "u")
        assert await http_get("127.0.0.1", port, uri, timeout=2) == (200, b'{"keys": []}')
        assert hits == ["idp.test"]
        status, body = await http_get("127.0.0.1", port, HttpUri.parse("http://h/plain", "u"),
                                      timeout=2)
        assert (status, len(body)) == (200, 100)
        with pytest.raises(FetchError, match="limit 10"):
            await http_get("127.0.0.1", port, HttpUri.parse("http://h/plain", "u"), timeout=2,
                           limit=10)

        core = Cluster("idp-unit")
        core.set_endpoints([("127.0.0.1", 1, 1), ("127.0.0.1", port, 1)])
        owner = Owner()
        publish_clusters(owner, {"idp-unit": core})
        assert find_cluster("idp-unit") is core
        # The first endpoint refuses connections: the next one answers.
        body = await fetch_from_cluster("idp-unit", uri, timeout=2)
        assert body == b'{"keys": []}'
        # Unhealthy endpoints are tried last.
        core.endpoints[1].healthy = False
        assert candidate_endpoints(core)[0].port == 1
        with pytest.raises(FetchError, match="HTTP 404"):
            await fetch_from_cluster("idp-unit", HttpUri.parse("http://h/missing", "u"),
                                     timeout=2)
        with pytest.raises(FetchError, match="not known"):
            await fetch_from_cluster("nope", uri, timeout=2)
        del owner
        import gc
        gc.collect()
        assert find_cluster("idp-unit") is None
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- filter config

PROVIDER = {"issuer": "https://idp.test", "local_jwks": {"inline": jwks("rsa")}}


@pytest.mark.parametrize("config, message", [
    ({}, "providers is required"),
    ({"providers": {}}, "providers must not be empty"),
    ({"providers": {"p": PROVIDER}, "nope": 1}, "unknown keys ['nope']"),
    ({"providers": {"p": {"local_jwks": {"inline": jwks("rsa")}}}}, "providers.p.issuer is required"),
    ({"providers": {"p": {"issuer": "i"}}}, "exactly one of local_jwks, remote_jwks"),
    ({"providers": {"p": {**PROVIDER, "algorithms": ["HS256"]}}}, "'HS256' is never accepted"),
    ({"providers": {"p": {**PROVIDER, "algorithms": ["none"]}}}, "'none' is never accepted"),
    ({"providers": {"p": {**PROVIDER, "algorithms": ["PS999"]}}}, "unsupported 'PS999'"),
    ({"providers": {"p": PROVIDER, "q": PROVIDER}}, "also the issuer of provider 'p'"),
    ({"providers": {"p": {**PROVIDER, "clock_skew": "soon"}}}, "providers.p.clock_skew"),
    ({"providers": {"p": {"issuer": "i", "remote_jwks": {"cluster": "c"}}}},
     "providers.p.remote_jwks.uri is required"),
    ({"providers": {"p": {"issuer": "i", "remote_jwks": {"cluster": "c", "uri": "ftp://x/"}}}},
     "absolute http:// or https:// URI"),
    ({"providers": {"p": {"issuer": "i", "remote_jwks": {"cluster": "c", "uri": "http://x/",
                                                         "timeout": 0}}}},
     "timeout must be greater than 0"),
    ({"providers": {"p": PROVIDER}, "rules": [{"prefix": "/", "providers": ["q"]}]},
     "rules[0].providers: unknown providers ['q']"),
    ({"providers": {"p": PROVIDER}, "rules": [{"prefix": "/", "require": "maybe"}]},
     "rules[0].require must be one of"),
    ({"providers": {"p": PROVIDER}, "rules": [{"prefix": "api"}]}, "must start with '/'"),
    ({"providers": {"p": PROVIDER}, "realm": 'a"b'}, "realm must not contain quotes"),
    ({"providers": {"p": PROVIDER}, "token": {}}, "at least one header or query parameter"),
    ({"providers": {"p": PROVIDER}, "forward_payload_header": "x y"}, "invalid header name"),
])
def test_jwt_config_errors(config, message):
    with pytest.raises((ValueError, TypeError)) as ei:
        parse_config(config)
    assert message in str(ei.value)


def test_jwt_config_defaults():
    cfg = parse_config({"providers": {"p": PROVIDER}})
    (p,) = cfg.providers
    assert p.algorithms == {"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"}
    assert p.clock_skew == 60.0 and p.require_expiration and not p.audiences
    assert cfg.headers == (("authorization", "Bearer "),) and cfg.query_params == ()
    assert [(r.prefix, r.require) for r in cfg.rules] == [("/", "required")]
    assert cfg.realm == "omnirelay" and not cfg.strip_token
