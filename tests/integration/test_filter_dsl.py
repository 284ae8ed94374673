"""omnirelay.filters.http.dsl through a real Relay, real upstreams and real signed tokens:
header edits seen by the origin and the client, routing to another cluster, local replies,
JWT-claim conditions, per-key rate limiting and the step budget's failure policy."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harness import Client, Origin, cluster, get, make_config, one_shot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))
from jwt_keys import AUDIENCE, ISSUER, jwks, token

import omnirelay
from omnirelay.extensions.dsl import filter as dsl_filter
from omnirelay.filters import FilterConfigError

DSL = "omnirelay.filters.http.dsl"


def dsl(rules: str, **config) -> dict:
    return {"name": DSL, "config": {"rules": rules, **config}}


def headers_of(seen) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in seen.headers:
        out.setdefault(k.lower(), []).append(v)
    return out


async def test_request_and_response_headers_are_edited():
    rules = """
        when path prefix "/api/" and header("x-tenant") in ["a", "b"] {
            set request header "x-tier" = "gold-" + header("x-tenant")
            remove request header "x-secret"
            set response header "x-served-by" = "rules"
            remove response header "x-origin"
        }
        when true { add request header "x-seen" = method + " " + path }
    """
    async with Origin() as origin:
        cfg = make_config(origin.port, route={"filters": [dsl(rules)]})
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r1 = await c.request(get("/api/x?y=1", headers="X-Tenant: b\r\nX-Secret: s\r\n"))
            r2 = await c.request(get("/other", headers="X-Tenant: b\r\nX-Secret: s\r\n"))
        assert r1.status == 200 and r2.status == 200
        h1, h2 = headers_of(origin.seen[0]), headers_of(origin.seen[1])
        assert h1["x-tier"] == ["gold-b"] and "x-secret" not in h1
        assert h1["x-seen"] == ["GET /api/x"]
        assert "x-tier" not in h2 and h2["x-secret"] == ["s"] and h2["x-seen"] == ["GET /other"]
        assert r1.headers.get("x-served-by") == "rules" and "x-origin" not in r1.headers
        assert "x-served-by" not in r2.headers and r2.headers.get("x-origin") == "origin"


@pytest.mark.parametrize("where", ["route", "listener"])
async def test_route_sends_the_request_to_another_cluster(where):
    rules = 'when header("x-canary") == "1" or query("v") == "2" { route "cb" }'
    route = {"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "ca"}
    if where == "route":
        route["filters"] = [dsl(rules)]
    async with Origin("a") as a, Origin("b") as b:
        cfg = make_config(routes=[route], clusters=[cluster("ca", a.port), cluster("cb", b.port)],
                          listener={"filters": [dsl(rules)]} if where == "listener" else None)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            rs = [await c.request(get("/x")),
                  await c.request(get("/x", headers="X-Canary: 1\r\n")),
                  await c.request(get("/x?v=2"))]
            assert [r.headers.get("x-origin") for r in rs] == ["a", "b", "b"]
            assert relay._builder.upstream_stats[("r", "cb")].rq_total == 2
        assert len(a.seen) == 1 and len(b.seen) == 2


async def test_unknown_cluster_and_syntax_errors_fail_the_config_load():
    base = {"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "c"}
    cfg = make_config(1, routes=[{**base, "filters": [
        dsl('when true {\n  route "nowhere"\n}')]}])
    with pytest.raises(FilterConfigError) as info:
        omnirelay.Relay(cfg)
    assert str(info.value) == ("spec.routes[0].filters[0].config: rules:2:9: route to unknown "
                               "cluster 'nowhere' (clusters: c)")
    cfg = make_config(1, listener={"filters": [dsl('when method == "GET" {\n  reply 700\n}')]})
    with pytest.raises(FilterConfigError) as info:
        omnirelay.Relay(cfg)
    first, src, caret = str(info.value).split("\n")
    assert first == ("spec.listeners[0].filters[0].config: rules:2:9: the status of a reply "
                     "must be from 200 to 599, got 700")
    assert src.strip() == "reply 700" and caret.strip() == "^"


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_route_on_a_route_without_cluster_follows_the_failure_policy(policy):
    rules = 'when true { set response header "x-rule" = "1"; route "c" }'
    async with Origin() as origin:
        direct = {"name": "r", "match": {"path": {"prefix": "/"}},
                  "direct_response": {"status": 200, "body": "direct\n"}}
        cfg = make_config(origin.port, listener={"filters": [dsl(rules, failure_policy=policy)]},
                          routes=[direct])
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/"))
        if policy == "fail_open":
            assert (r.status, r.body) == (200, b"direct\n")
        else:
            assert (r.status, r.body) == (503, b"rule evaluation failed\n")
        assert origin.seen == []


async def test_local_reply_answers_without_the_upstream():
    rules = """
        when source.ip in 127.0.0.0/8 and path prefix "/admin" {
            set response header "x-why" = "admin is internal"
            reply 403 "no admin from " + source.ip + "\\n"
        }
    """
    async with Origin() as origin:
        cfg = make_config(origin.port, listener={"filters": [dsl(rules)]})
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/admin/users"))
            assert (r.status, r.body) == (403, b"no admin from 127.0.0.1\n")
            assert r.headers.get("x-why") == "admin is internal"
            assert r.headers.get("x-omnirelay-reason") == "dsl_reply"
            # the connection stays usable
            assert (await c.request(get("/public"))).status == 200
        assert [s.path for s in origin.seen] == ["/public"]


async def test_jwt_claim_conditions_on_a_verified_token():
    jwt = {"name": "omnirelay.filters.http.jwt_authn", "config": {
        "providers": {"idp": {"issuer": ISSUER, "audiences": [AUDIENCE],
                              "local_jwks": {"inline": json.dumps(jwks("ed"))}}},
        "rules": [{"prefix": "/", "require": "optional"}]}}
    rules = """
        when jwt.claim("realm_access.roles") == "admin" {
            set request header "x-user" = jwt.claim("sub"); set request header "x-role" = "admin"
        }
        when path prefix "/admin" and not (jwt.claim("realm_access.roles") == "admin") {
            reply 403 "admins only"
        }
    """
    admin = token("ed", sub="alice", realm_access={"roles": ["reader", "admin"]})
    reader = token("ed", sub="bob", realm_access={"roles": ["reader"]})
    async with Origin() as origin:
        cfg = make_config(origin.port, route={"filters": [jwt, dsl(rules)]})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            r_admin = await one_shot(addr, get("/admin", headers=f"Authorization: Bearer "
                                                                  f"{admin}\r\n"))
            r_reader = await one_shot(addr, get("/admin", headers=f"Authorization: Bearer "
                                                                   f"{reader}\r\n"))
            r_anon = await one_shot(addr, get("/admin"))
            r_public = await one_shot(addr, get("/public", headers=f"Authorization: Bearer "
                                                                    f"{reader}\r\n"))
        assert r_admin.status == 200 and r_public.status == 200
        assert (r_reader.status, r_reader.body) == (403, b"admins only")
        assert (r_anon.status, r_anon.body) == (403, b"admins only")
        seen = {s.path: headers_of(s) for s in origin.seen}
        assert seen["/admin"]["x-user"] == ["alice"] and seen["/admin"]["x-role"] == ["admin"]
        assert "x-role" not in seen["/public"]


async def test_ratelimit_key_gives_each_key_its_own_bucket():
    rl = {"name": "omnirelay.filters.http.local_ratelimit",
          "config": {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "1h",
                     "key": "dsl", "max_keys": 100}}
    rules = 'when true { ratelimit_key "user:" + header("x-user") }'
    async with Origin() as origin:
        cfg = make_config(origin.port, route={"filters": [dsl(rules), rl]})
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            async def status(user: str | None) -> int:
                h = f"X-User: {user}\r\n" if user else ""
                return (await c.request(get("/", headers=h))).status
            alice = [await status("alice") for _ in range(3)]
            bob = [await status("bob") for _ in range(3)]
            anon = [await status(None) for _ in range(3)]
        assert alice == [200, 200, 429] and bob == [200, 200, 429] and anon == [200, 200, 429]
        assert len(origin.seen) == 6


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_budget_exceeded_follows_the_failure_policy(policy):
    # 51 rules: 51 steps of conditions, and one per action of the rules that match. A
    # request without x-many takes 52 steps, one with it 102; the budget is 60.
    rules = "\n".join(f'when header("x-many") exists {{ set request header "x-r{i}" = "1" }}'
                      for i in range(50))
    rules += '\nwhen true { set request header "x-last" = "1" }'
    f = dsl(rules, step_budget=60, failure_policy=policy)
    binding = "spec.routes[0].filters[0]"      # counters are kept by place in the config
    before = dsl_filter.stats().get(binding, dict.fromkeys(dsl_filter.DslCounters.NAMES, 0))
    async with Origin() as origin:
        cfg = make_config(origin.port, route={"name": f"budget-{policy}", "filters": [f]})
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            small = await c.request(get("/small"))
            big = await c.request(get("/big", headers="X-Many: 1\r\n"))
        assert small.status == 200
        assert headers_of(origin.seen[0])["x-last"] == ["1"]
        if policy == "fail_closed":
            assert big.status == 503 and big.body == b"rule evaluation failed\n"
            assert big.headers.get("x-omnirelay-reason") == "dsl_fail_closed"
            assert [s.path for s in origin.seen] == ["/small"]
        else:
            assert big.status == 200
            h = headers_of(origin.seen[1])
            # none of the rules' edits were applied
            assert "x-r0" not in h and "x-last" not in h
        after = dsl_filter.stats()[binding]
        assert {k: after[k] - before[k] for k in after} == {
            "evaluations": 2, "matches": 1, "budget_exceeded": 1, "failures": 0}

