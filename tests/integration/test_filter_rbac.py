"""omnirelay.filters.http.rbac through a real Relay and a real upstream, behind the JWT filter
(real tokens) for the claim-based principals."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from harness import Client, Origin, make_config, one_shot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))
from jwt_keys import AUDIENCE, ISSUER, jwks, token

import omnirelay
import omnirelay.filters.http.jwt_authn
from omnirelay import CONTINUE, FilterFactory, HttpFilter, register
from omnirelay.filters import FilterConfigError
from omnirelay.filters.http import rbac

JWT_FILTER = {"name": "omnirelay.filters.http.jwt_authn", "config": {
    "providers": {"idp": {"issuer": ISSUER, "audiences": [AUDIENCE],
                          "local_jwks": {"inline": json.dumps(jwks("rsa", "ec"))}}},
    "rules": [{"prefix": "/", "require": "optional"}]}}


class _Probe(HttpFilter):
    """Copies the RBAC decision from stream.metadata into a request header."""

    def on_request_headers(self, stream, end_stream):
        d = (stream.metadata or {}).get(rbac.METADATA_KEY)
        if d is not None:
            stream.request_headers.set(
                "x-rbac", f"allowed={d['allowed']} policy={d['policy']} shadow={d['shadow']}")
        return CONTINUE


@register("tests.rbac_probe")
class _ProbeFactory(FilterFactory):
    filter_class = _Probe


def rbac_config(port: int, probe: bool = False, **config) -> dict:
    filters = [JWT_FILTER, {"name": rbac.NAME, "config": config}]
    if probe:
        filters.append({"name": "tests.rbac_probe"})
    return make_config(port, route={"filters": filters})


def request(method: str, path: str, *, host: str = "api.test", headers: str = "",
            tok: str | None = None) -> bytes:
    if tok is not None:
        headers += f"Authorization: Bearer {tok}\r\n"
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()


def assert_denied(r) -> None:
    assert r.status == 403, (r.start_line, r.body)
    assert r.headers.get("x-omnirelay-reason") == "rbac_denied"
    assert r.body == b"RBAC: access denied\n"


ALLOW_POLICIES = {
    "public-read": {
        "permissions": [{"and": [{"method": ["GET", "HEAD"]}, {"path": {"prefix": "/public/"}}]}],
        "principals": [{"any": True}]},
    "admins": {
        "permissions": [{"path": {"prefix": "/admin/"}}],
        "principals": [{"jwt_claim": {"claim": "groups", "exact": "admin"}}]},
    "writers": {
        "permissions": [{"and": [{"method": ["POST", "PUT", "DELETE"]},
                                 {"path": {"regex": "/api/v[0-9]+/.*"}}]}],
        "principals": [{"and": [{"authenticated": True},
                                {"jwt_claim": {"claim": "scope",
                                               "regex": "(.* )?write( .*)?"}}]}]},
    "readers": {
        "permissions": [{"and": [{"method": "GET"}, {"path": {"prefix": "/api/"}}]}],
        "principals": [{"authenticated": True}]},
    "loopback-health": {
        "permissions": [{"path": {"exact": "/healthz"}}],
        "principals": [{"source_ip": ["127.0.0.0/8", "::1/128"]}]},
    "lan-only": {
        "permissions": [{"path": {"prefix": "/lan/"}}],
        "principals": [{"source_ip": "10.0.0.0/8"}]},
    "beta-header": {
        "permissions": [{"and": [{"path": {"prefix": "/beta/"}},
                                 {"header": {"name": "x-beta", "exact": "1"}}]}],
        "principals": [{"any": True}]},
    "internal-host": {
        "permissions": [{"host": {"exact": "internal.test"}}],
        "principals": [{"header": {"name": "x-team", "present": True}}]},
    "mesh": {
        "permissions": [{"path": {"prefix": "/mesh/"}}],
        "principals": [{"spiffe_id": {"prefix": "spiffe://prod.test/"}}]},
}

# Tokens are minted when a request is sent (they expire).
def admin() -> str:
    return token("rsa", groups=["dev", "admin"], scope="read")


def writer() -> str:
    return token("ec", groups=["dev"], scope="read write")


def reader() -> str:
    return token("rsa", groups=["dev"], scope="read")


# (method, path, kwargs, allowed?)
MATRIX = [
    ("GET", "/public/doc", {}, True),
    ("HEAD", "/public/doc", {}, True),
    ("POST", "/public/doc", {}, False),                          # method
    ("GET", "/public/../admin/x", {}, False),                    # path normalized
    ("GET", "/admin/users", {"tok": admin}, True),               # claim in a list
    ("GET", "/admin/users", {"tok": reader}, False),
    ("GET", "/admin/users", {}, False),
    ("POST", "/api/v1/items", {"tok": writer}, True),            # regex path + claim regex
    ("POST", "/api/v1/items", {"tok": reader}, False),
    ("POST", "/api/items", {"tok": writer}, False),              # regex is a full match
    ("GET", "/api/items", {"tok": reader}, True),
    ("GET", "/api/items", {}, False),                            # not authenticated
    ("GET", "/healthz", {}, True),                               # source CIDR
    ("GET", "/healthz/x", {}, False),
    ("GET", "/lan/x", {}, False),                                # 127.0.0.1 not in 10/8
    ("GET", "/beta/x", {"headers": "x-beta: 1\r\n"}, True),
    ("GET", "/beta/x", {"headers": "x-beta: 2\r\n"}, False),
    ("GET", "/beta/x", {}, False),
    ("GET", "/x", {"host": "internal.test:8080", "headers": "x-team: a\r\n"}, True),
    ("GET", "/x", {"host": "internal.test"}, False),
    ("GET", "/x", {"host": "other.test", "headers": "x-team: a\r\n"}, False),
    ("GET", "/mesh/x", {}, False),                               # no peer SPIFFE ID yet
]


async def test_allow_matrix():
    async with Origin() as origin:
        cfg = rbac_config(origin.port, action="ALLOW", policies=ALLOW_POLICIES)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            for method, path, kw, allowed in MATRIX:
                kw = {k: v() if callable(v) else v for k, v in kw.items()}
                r = await c.request(request(method, path, **kw), method)
                if allowed:
                    assert r.status == 200, (method, path, kw, r.start_line)
                else:
                    try:
                        assert_denied(r)
                    except AssertionError as e:
                        raise AssertionError(f"{method} {path} {kw}: {e}") from None
    want = [(m, p) for m, p, _, ok in MATRIX if ok]
    assert [(s.method, s.path) for s in origin.seen] == want


async def test_deny_action_names_the_policy_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="omnirelay.filters.rbac")
    policies = {
        "block-debug": {"permissions": [{"path": {"prefix": "/debug/"}}],
                        "principals": [{"any": True}]},
        "block-bob": {"permissions": [{"any": True}],
                      "principals": [{"jwt_claim": {"claim": "sub", "exact": "bob"}}]},
        "block-outside": {"permissions": [{"any": True}],
                          "principals": [{"not": {"source_ip": "127.0.0.0/8"}}]},
    }
    async with Origin() as origin:
        cfg = rbac_config(origin.port, action="DENY", policies=policies)
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            assert (await one_shot(addr, request("GET", "/x"))).status == 200
            assert (await one_shot(addr, request("GET", "/x", tok=token("rsa")))).status == 200
            assert_denied(await one_shot(addr, request("GET", "/debug/vars")))
            assert_denied(await one_shot(addr, request("GET", "/x", tok=token("ec", sub="bob"))))
    assert [s.path for s in origin.seen] == ["/x", "/x"]
    lines = [r.getMessage() for r in caplog.records if r.name == "omnirelay.filters.rbac"]
    assert any("denied GET /debug/vars" in m and "'block-debug'" in m for m in lines), lines
    assert any("'block-bob'" in m for m in lines), lines


async def test_empty_allow_policy_set_denies_everything():
    async with Origin() as origin:
        cfg = rbac_config(origin.port, policies={})
        async with omnirelay.Relay(cfg) as relay:
            assert_denied(await one_shot(relay.address(), request("GET", "/")))
        assert origin.seen == []


async def test_shadow_mode_lets_traffic_through_and_records_the_would_be_denial(caplog):
    caplog.set_level(logging.INFO, logger="omnirelay.filters.rbac")
    policies = {"readers": {"permissions": [{"method": "GET"}],
                            "principals": [{"authenticated": True}]}}
    async with Origin() as origin:
        cfg = rbac_config(origin.port, probe=True, action="ALLOW", shadow=True,
                          policies=policies)
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            binding = "spec.routes[0].filters[1]"
            before = rbac.stats().get(binding, {})
            assert (await one_shot(addr, request("GET", "/a", tok=token("rsa")))).status == 200
            assert (await one_shot(addr, request("POST", "/b", tok=token("rsa")))).status == 200
            assert (await one_shot(addr, request("GET", "/c"))).status == 200
            after = rbac.stats()[binding]
    assert after.get("shadow_denied", 0) - before.get("shadow_denied", 0) == 2
    assert after.get("shadow_allowed", 0) - before.get("shadow_allowed", 0) == 1
    assert after.get("denied", 0) == before.get("denied", 0)
    decisions = [s.headers.get("x-rbac") for s in origin.seen]
    assert decisions == ["allowed=True policy=readers shadow=True",
                         "allowed=False policy=None shadow=True",
                         "allowed=False policy=None shadow=True"]
    lines = [r.getMessage() for r in caplog.records if r.name == "omnirelay.filters.rbac"]
    assert sum("shadow: would deny" in m for m in lines) == 2, lines
    assert any("would deny POST /b" in m and "no policy matched" in m for m in lines)


async def test_bad_policies_are_rejected_with_the_key():
    async with Origin() as origin:
        cfg = rbac_config(origin.port, policies={
            "p": {"permissions": [{"any": True}],
                  "principals": [{"source_ip": ["10.0.0.0/8", "10.0.0.300/32"]}]}})
        with pytest.raises(FilterConfigError) as ei:
            omnirelay.Relay(cfg)
        assert str(ei.value).startswith(
            "spec.routes[0].filters[1].config: policies.p.principals[0].source_ip[1]: "
            "invalid CIDR '10.0.0.300/32'")
        with pytest.raises(FilterConfigError, match="action must be ALLOW or DENY"):
            omnirelay.Relay(rbac_config(origin.port, action="MAYBE", policies={}))
