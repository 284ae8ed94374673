"""omnirelay.filters.http.jwt_authn through a real Relay, a real upstream and real tokens
signed by keys generated here (RSA 2048, EC P-256, Ed25519).

JWKS fetched from a URL go to an aiohttp server on loopback named as a cluster of the
config. Key sources are shared per (config, place in the config), so each test uses a
JWKS URI of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Self

import pytest
from aiohttp import web
from harness import HOST, Client, Origin, cluster, eventually, get, make_config, one_shot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))
from jwt_keys import (
    AUDIENCE,
    ISSUER,
    forged,
    hs256_with_public_key,
    jwks,
    tampered,
    token,
    unsigned,
)

import omnirelay
from omnirelay.filters import FilterConfigError
from omnirelay.filters.http import jwt_authn
from omnirelay.security.upstream import publish_clusters

JWT = "omnirelay.filters.http.jwt_authn"
def now() -> int:
    return int(time.time())


def provider(**over) -> dict:
    p = {"issuer": ISSUER, "audiences": [AUDIENCE],
         "local_jwks": {"inline": json.dumps(jwks("rsa", "ec", "ed"))}}
    p.update(over)
    return p


def jwt_config(port: int, routes: list[dict] | None = None, clusters: list[dict] | None = None,
               **config) -> dict:
    config.setdefault("providers", {"idp": provider()})
    f = {"name": JWT, "config": config}
    if routes is None:
        return make_config(port, route={"filters": [f]}, clusters=clusters)
    for r in routes:
        r.setdefault("filters", [f])
    return make_config(port, routes=routes, clusters=clusters)


def bearer(t: str) -> str:
    return f"Authorization: Bearer {t}\r\n"


def challenge(error: str | None = None, description: str | None = None,
              realm: str = "omnirelay") -> str:
    if error is None:
        return f'Bearer realm="{realm}"'
    return f'Bearer realm="{realm}", error="{error}", error_description="{description}"'


def assert_refused(r, description: str, reason: str = "jwt_invalid") -> None:
    assert r.status == 401, (r.start_line, r.body)
    assert r.headers.get("www-authenticate") == challenge("invalid_token", description), r.headers
    assert r.headers.get("x-omnirelay-reason") == reason
    assert r.body == f"{description}\n".encode()


def publish(relay: omnirelay.Relay) -> None:
    # Stands in for the runtime hook that publishes each built config's clusters (see
    # omnirelay/security/upstream.py); harmless once the runtime calls it itself.
    publish_clusters(relay._builder, relay._builder.clusters)


# --------------------------------------------------------------------------- local keys


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
async def test_valid_tokens_are_accepted_and_forwarded(kind):
    async with Origin() as origin:
        cfg = jwt_config(origin.port, forward_payload_header="x-jwt-payload")
        async with omnirelay.Relay(cfg) as relay:
            t = token(kind)
            r = await one_shot(relay.address(), get(
                "/api", headers=bearer(t) + "x-jwt-payload: spoofed\r\n"))
            assert r.status == 200, r.body
            # No credentials: the payload header a client sends never reaches the upstream.
            r2 = await one_shot(relay.address(), get("/api", headers="x-jwt-payload: x\r\n"))
            assert r2.status == 401
    (seen,) = origin.seen
    assert seen.headers.get("authorization") == f"Bearer {t}"
    assert seen.headers.getall("x-jwt-payload") == [t.split(".")[1]]


async def test_refused_tokens_get_401_with_the_reason():
    cases = [
        ("forged RSA", forged("rsa"), "signature verification failed"),
        ("forged EC", forged("ec"), "signature verification failed"),
        ("forged Ed25519", forged("ed"), "signature verification failed"),
        ("tampered", tampered("rsa"), "signature verification failed"),
        ("expired", token("ec", exp=now() - 3600), "token expired"),
        ("not yet valid", token("ed", nbf=now() + 3600), "token not yet valid"),
        ("wrong issuer", token("rsa", iss="https://evil.test"), "issuer not allowed"),
        ("no issuer", token("rsa", iss=None), "issuer not allowed"),
        ("wrong audience", token("rsa", aud="other.test"), "audience not allowed"),
        ("no exp", token("ec", exp=None), "missing exp claim"),
        ("alg none", unsigned("none"), "unsupported algorithm"),
        ("HS256 keyed with the RSA public key", hs256_with_public_key("rsa"),
         "unsupported algorithm"),
        ("HS256 keyed with the EC public key", hs256_with_public_key("ec"),
         "unsupported algorithm"),
        ("unknown kid", token("rsa", kid="rotated-away"), "unknown key id"),
        ("EC token naming the RSA kid", token("ec", kid="rsa"), "unknown key id"),
        ("malformed", "not-a-jwt", "malformed token"),
        ("malformed segments", "a.b.c", "malformed token"),
        ("bad base64", "eyJhbGciOiJSUzI1NiJ9.e30.c2l+", "malformed token"),
    ]
    async with Origin() as origin:
        cfg = jwt_config(origin.port)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            for i, (name, t, description) in enumerate(cases):
                r = await c.request(get(f"/case/{i}", headers=bearer(t)))
                try:
                    assert_refused(r, description)
                except AssertionError as e:
                    raise AssertionError(f"{name}: {e}") from None
            # "Bearer" and nothing else: no credentials (the parser trims the space).
            r = await c.request(get("/empty", headers=bearer("")))
            assert r.status == 401 and r.headers.get("www-authenticate") == challenge()
        binding = "spec.routes[0].filters[0]"
        counts = jwt_authn.stats()[binding]
        assert counts["denied_bad_signature"] >= 4 and counts["denied_bad_algorithm"] >= 3
    assert origin.seen == []


async def test_missing_token_gets_a_challenge_without_error():
    async with Origin() as origin:
        cfg = jwt_config(origin.port, realm="api.example")
        async with omnirelay.Relay(cfg) as relay:
            for extra in ("", "Authorization: Basic YWxpY2U6cHc=\r\n"):
                r = await one_shot(relay.address(), get("/", headers=extra))
                assert r.status == 401
                assert r.headers.get("www-authenticate") == 'Bearer realm="api.example"'
                assert r.headers.get("x-omnirelay-reason") == "jwt_missing"
            # The scheme is case-insensitive (RFC 7235).
            r = await one_shot(relay.address(), get("/", headers=f"Authorization: bearer "
                                                    f"{token('ed')}\r\n"))
            assert r.status == 200
    assert len(origin.seen) == 1


async def test_rules_skip_optional_required_on_normalized_paths():
    rules = [{"prefix": "/public/", "require": "skip"},
             {"prefix": "/maybe/", "require": "optional"},
             {"prefix": "/api/", "require": "required"}]
    async with Origin() as origin:
        cfg = jwt_config(origin.port, rules=rules)
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()

            async def status(path, t=None):
                return (await one_shot(addr, get(path, headers=bearer(t) if t else ""))).status

            assert await status("/public/x") == 200
            assert await status("/public/x", "garbage") == 200      # skip: not even parsed
            assert await status("/maybe/x") == 200
            assert await status("/maybe/x", token("ec")) == 200
            assert await status("/maybe/x", forged("ec")) == 401     # present: must be valid
            assert await status("/api/x") == 401
            assert await status("/api/x", token("rsa")) == 200
            # Dot segments cannot borrow a laxer rule.
            assert await status("/public/../api/x") == 401
            assert await status("/public/%2e%2e/api/x") == 401
            assert await status("/maybe/..//api/x") == 401
            # No rule matches: required (fail closed).
            assert await status("/other") == 401
            assert await status("/other", token("ed")) == 200
    assert [s.path for s in origin.seen] == ["/public/x", "/public/x", "/maybe/x", "/maybe/x",
                                             "/api/x", "/other"]


async def test_rule_providers_and_multiple_providers_by_issuer():
    other = provider(issuer="https://other.test", audiences=[],
                     local_jwks={"inline": json.dumps(jwks("ec"))})
    rules = [{"prefix": "/idp-only/", "providers": ["idp"]}, {"prefix": "/"}]
    async with Origin() as origin:
        cfg = jwt_config(origin.port, rules=rules,
                         providers={"idp": provider(), "other": other})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            t_other = token("ec", iss="https://other.test", aud=None)
            assert (await one_shot(addr, get("/x", headers=bearer(t_other)))).status == 200
            r = await one_shot(addr, get("/idp-only/x", headers=bearer(t_other)))
            assert_refused(r, "issuer not allowed")
            # A token of the other issuer signed with a key only idp has: refused.
            r = await one_shot(addr, get("/x", headers=bearer(
                token("rsa", iss="https://other.test", aud=None))))
            assert_refused(r, "unknown key id")


async def test_query_parameter_tokens_strip_and_multiple_tokens():
    async with Origin() as origin:
        cfg = jwt_config(origin.port, strip_token=True,
                         token={"headers": [{"name": "authorization", "prefix": "Bearer "},
                                            {"name": "x-token"}],
                                "query_params": ["access_token"]})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            t = token("ed")
            assert (await one_shot(addr, get(f"/q?a=1&access_token={t}&b=2"))).status == 200
            assert (await one_shot(addr, get("/h", headers=bearer(t)))).status == 200
            assert (await one_shot(addr, get("/x", headers=f"x-token: {t}\r\n"))).status == 200
            r = await one_shot(addr, get(f"/two?access_token={t}", headers=bearer(t)))
            assert r.status == 400
            assert r.headers.get("www-authenticate") == challenge(
                "invalid_request", "more than one token")
            r = await one_shot(addr, get("/two", headers=bearer(t) + bearer(t)))
            assert r.status == 400
    q, h, x = origin.seen
    assert q.path == "/q?a=1&b=2"
    assert "authorization" not in h.headers and "x-token" not in x.headers


async def test_clock_skew_is_configurable():
    t = token("rsa", exp=now() - 30)
    async with Origin() as origin:
        cfg = jwt_config(origin.port, providers={"idp": provider(clock_skew="60s")})
        async with omnirelay.Relay(cfg) as relay:
            assert (await one_shot(relay.address(), get("/", headers=bearer(t)))).status == 200
            await relay.reload(jwt_config(origin.port,
                                          providers={"idp": provider(clock_skew=0)}))
            assert_refused(await one_shot(relay.address(), get("/", headers=bearer(t))),
                           "token expired")
            # A token verified (and cached) while valid is refused once it expires.
            exp = int(time.time()) + 1
            short = token("ed", exp=exp)
            assert (await one_shot(relay.address(), get("/", headers=bearer(short)))).status == 200
            await asyncio.sleep(max(0.0, exp - time.time()) + 0.01)
            assert_refused(await one_shot(relay.address(), get("/", headers=bearer(short))),
                           "token expired")


async def test_jwks_file_rotation_is_picked_up_without_restart(tmp_path):
    path = tmp_path / "jwks.json"

    def write(doc):
        tmp = tmp_path / "jwks.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    write(jwks("rsa"))
    p = provider(local_jwks={"file": str(path), "check_interval": "50ms"})
    async with Origin() as origin:
        cfg = jwt_config(origin.port, providers={"idp": p})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            new = token("ec")
            assert_refused(await one_shot(addr, get("/", headers=bearer(new))), "unknown key id")
            assert (await one_shot(addr, get("/", headers=bearer(token("rsa"))))).status == 200
            write(jwks("rsa", "ec"))                       # the new key is published

            async def accepted(t):
                return (await one_shot(addr, get("/", headers=bearer(t)))).status == 200

            deadline = time.monotonic() + 3
            while not await accepted(new):
                assert time.monotonic() < deadline, "rotated key not picked up"
                await asyncio.sleep(0.02)
            write(jwks("ec"))                              # the old key is retired
            old = token("rsa")
            deadline = time.monotonic() + 3
            while await accepted(old):
                assert time.monotonic() < deadline, "retired key still accepted"
                await asyncio.sleep(0.02)
            assert await accepted(new)


# --------------------------------------------------------------------------- remote keys


class JwksServer:
    """Serves a JWK Set on any path and counts the fetches."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.status = 200
        self.fetches = 0
        self.hosts: list[str] = []
        self.gate: asyncio.Event | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.hosts.append(request.headers.get("host", ""))
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.json_response(self.doc)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        assert self._runner is not None
        await self._runner.cleanup()


def remote_config(origin: Origin, idp: JwksServer, path: str, **remote) -> dict:
    """The provider's keys come from ``http://idp.test/<path>/jwks.json`` on cluster idp."""
    p = provider()
    del p["local_jwks"]
    p["remote_jwks"] = {"cluster": "idp", "uri": f"http://idp.test/{path}/jwks.json", **remote}
    return jwt_config(origin.port, providers={"idp": p},
                      clusters=[cluster("c", origin.port), cluster("idp", idp.port)])


async def test_remote_jwks_fetched_once_through_the_cluster_and_cached():
    async with Origin() as origin, JwksServer(jwks("rsa", "ed")) as idp:
        cfg = remote_config(origin, idp, "cached", min_refetch_interval="1s")
        async with omnirelay.Relay(cfg) as relay:
            publish(relay)
            addr = relay.address()
            idp.gate = asyncio.Event()
            # Ten requests arrive before any key: all wait for one fetch.
            pending = [asyncio.ensure_future(one_shot(addr, get(f"/{i}", headers=bearer(
                token("rsa" if i % 2 else "ed"))))) for i in range(10)]
            await eventually(lambda: idp.fetches == 1, what="the first fetch")
            await asyncio.sleep(0.05)
            assert not any(p.done() for p in pending)     # paused, not refused
            idp.gate.set()
            assert [r.status for r in await asyncio.gather(*pending)] == [200] * 10
            for i in range(10):
                r = await one_shot(addr, get("/again", headers=bearer(token("ed"))))
                assert r.status == 200
            assert idp.fetches == 1
            assert idp.hosts == ["idp.test"]
            # A reload that keeps the provider keeps its keys.
            await relay.reload(cfg)
            publish(relay)
            assert (await one_shot(addr, get("/", headers=bearer(token("rsa"))))).status == 200
            assert idp.fetches == 1
            # The issuer rotates: a token with a new kid triggers one refetch and passes...
            idp.doc = jwks("rsa", "ed", "ec")
            await asyncio.sleep(1.05)                       # min_refetch_interval
            assert (await one_shot(addr, get("/", headers=bearer(token("ec"))))).status == 200
            assert idp.fetches == 2
            # ...but unknown kids cannot make the proxy fetch on every request.
            for _ in range(5):
                r = await one_shot(addr, get("/", headers=bearer(token("rsa", kid="bogus"))))
                assert_refused(r, "unknown key id")
            assert idp.fetches == 2
            counts = jwt_authn.stats()["spec.routes[0].filters[0]"]
            assert counts["jwks_fetch"] >= 2
    assert len(origin.seen) == 22


async def test_remote_jwks_unavailable_fails_closed_then_recovers():
    async with Origin() as origin, JwksServer(jwks("ec")) as idp:
        idp.status = 503
        cfg = remote_config(origin, idp, "down")
        async with omnirelay.Relay(cfg) as relay:
            publish(relay)
            addr = relay.address()
            r = await one_shot(addr, get("/", headers=bearer(token("ec"))))
            assert_refused(r, "signing keys unavailable", reason="jwks_unavailable")
            assert idp.fetches == 1
            # Backing off: refused at once, without another fetch.
            r = await one_shot(addr, get("/", headers=bearer(token("ec"))))
            assert_refused(r, "signing keys unavailable", reason="jwks_unavailable")
            assert idp.fetches == 1
            idp.status = 200
            deadline = time.monotonic() + 3
            while (await one_shot(addr, get("/", headers=bearer(token("ec"))))).status != 200:
                assert time.monotonic() < deadline, "never recovered"
                await asyncio.sleep(0.05)
            assert idp.fetches == 2
    assert len(origin.seen) == 1


async def test_remote_jwks_stale_while_revalidate():
    async with Origin() as origin, JwksServer(jwks("rsa")) as idp:
        cfg = remote_config(origin, idp, "stale", refresh_interval="200ms", stale_ttl="30s")
        async with omnirelay.Relay(cfg) as relay:
            publish(relay)
            addr = relay.address()
            assert (await one_shot(addr, get("/", headers=bearer(token("rsa"))))).status == 200
            idp.status = 500
            await asyncio.sleep(0.25)
            statuses = []
            for _ in range(20):
                r = await one_shot(addr, get("/", headers=bearer(token("rsa"))))
                statuses.append(r.status)
                await asyncio.sleep(0.01)
            assert statuses == [200] * 20              # the cached keys keep serving
            assert 2 <= idp.fetches <= 3                # refreshes tried, with backoff


async def test_pending_request_whose_client_leaves_is_dropped_cleanly():
    async with Origin() as origin, JwksServer(jwks("ed")) as idp:
        cfg = remote_config(origin, idp, "leaver")
        async with omnirelay.Relay(cfg) as relay:
            publish(relay)
            addr = relay.address()
            idp.gate = asyncio.Event()
            c = await Client.open(addr)
            await c.send(get("/gone", headers=bearer(token("ed"))))
            await eventually(lambda: idp.fetches == 1)
            await c.close()
            await asyncio.sleep(0.05)
            idp.gate.set()
            await asyncio.sleep(0.05)
            assert (await one_shot(addr, get("/", headers=bearer(token("ed"))))).status == 200
    assert [s.path for s in origin.seen] == ["/"]


async def test_unknown_cluster_fails_closed():
    async with Origin() as origin, JwksServer(jwks("ed")) as idp:
        cfg = remote_config(origin, idp, "nocluster")
        cfg["spec"]["routes"][0]["filters"][0]["config"]["providers"]["idp"]["remote_jwks"][
            "cluster"] = "typo"
        async with omnirelay.Relay(cfg) as relay:
            publish(relay)
            r = await one_shot(relay.address(), get("/", headers=bearer(token("ed"))))
            assert_refused(r, "signing keys unavailable", reason="jwks_unavailable")


async def test_bad_config_is_rejected_with_the_key():
    async with Origin() as origin:
        cfg = jwt_config(origin.port, providers={"idp": provider(algorithms=["RS256", "HS256"])})
        with pytest.raises(FilterConfigError) as ei:
            omnirelay.Relay(cfg)
        assert str(ei.value).startswith(
            "spec.routes[0].filters[0].config: providers.idp.algorithms: 'HS256' is never "
            "accepted")
