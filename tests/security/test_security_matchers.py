"""omnirelay.security.matchers and the RBAC policy engine, on stand-in streams."""
from __future__ import annotations

import pytest

from omnirelay._core import HeaderMap
from omnirelay.security.jwt import JWT_METADATA_KEY
from omnirelay.security.matchers import (
    CidrSet,
    claim_matcher,
    header_matcher,
    normalize_path,
    string_matcher,
)
from omnirelay.security.rbac import RequestView, compile_policies, first_match


@pytest.mark.parametrize("target, path", [
    ("/", "/"),
    ("/api/v1?x=/../admin", "/api/v1"),
    ("/public/../admin", "/admin"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2e/admin/", "/admin/"),
    ("/a/./b//c", "/a/b/c"),
    ("//admin", "/admin"),
    ("/a\\..\\admin", "/admin"),
    ("/../../etc", "/etc"),
    ("/a/b/..", "/a/"),
    ("/%61dmin", "/admin"),
    ("/a%2Fb", "/a%2Fb"),                   # encoded slashes stay encoded
    ("/a%20b", "/a%20b"),
    ("*", "/*"),
])
def test_normalize_path(target, path):
    assert normalize_path(target) == path


def test_string_matchers():
    assert string_matcher({"exact": "a"}, "m")("a")
    assert not string_matcher({"exact": "a"}, "m")("A")
    assert string_matcher({"exact": "a", "ignore_case": True}, "m")("A")
    assert string_matcher({"prefix": "/api/"}, "m")("/api/x")
    assert string_matcher({"suffix": ".json"}, "m")("/a.json")
    assert string_matcher({"contains": "adm"}, "m")("/xadmx")
    rx = string_matcher({"regex": "/v[0-9]+/users"}, "m")
    assert rx("/v2/users") and not rx("/v2/users/x")           # full match
    for bad, msg in [({}, "exactly one"), ({"exact": "a", "prefix": "b"}, "exactly one"),
                     ({"regex": "("}, "invalid regular"), ({"exact": 1}, "must be a string"),
                     ({"prefix": ""}, "must not be empty"), ({"nope": 1}, "unknown keys")]:
        with pytest.raises((ValueError, TypeError), match=msg):
            string_matcher(bad, "m")


def test_header_matchers():
    h = HeaderMap.from_items([("x-env", "prod"), ("x-tag", "a"), ("x-tag", "b")])
    assert header_matcher({"name": "X-Env", "exact": "prod"}, "h")(h)
    assert not header_matcher({"name": "x-env", "exact": "dev"}, "h")(h)
    assert header_matcher({"name": "x-env", "exact": "dev", "invert": True}, "h")(h)
    assert header_matcher({"name": "x-tag", "exact": "a,b"}, "h")(h)
    assert header_matcher({"name": "x-none", "present": False}, "h")(h)
    assert header_matcher({"name": "x-env", "present": True}, "h")(h)
    assert not header_matcher({"name": "x-none", "prefix": "p"}, "h")(h)
    with pytest.raises(ValueError, match="name is required"):
        header_matcher({"exact": "x"}, "h")
    with pytest.raises(ValueError, match="invalid header name"):
        header_matcher({"name": "a b", "exact": "x"}, "h")


def test_cidr_sets():
    s = CidrSet(("10.0.0.0/8", "192.168.1.7", "fd00::/8"), "c")
    assert "10.1.2.3" in s and "192.168.1.7" in s and "fd00::1" in s
    assert "::ffff:10.9.9.9" in s                       # IPv4-mapped
    assert "11.0.0.1" not in s and "fe80::1" not in s
    assert "unknown" not in s and "" not in s and None not in s
    with pytest.raises(ValueError, match=r"c\[0\]: invalid CIDR"):
        CidrSet(("10.0.0.0/33",), "c")


def test_claim_matchers():
    claims = {"sub": "alice", "groups": ["dev", "ops"], "admin": True, "level": 3,
              "realm_access": {"roles": ["reader"]}, "https://example.com/tier": "gold"}
    assert claim_matcher({"claim": "sub", "exact": "alice"}, "c")(claims)
    assert claim_matcher({"claim": "groups", "exact": "ops"}, "c")(claims)
    assert not claim_matcher({"claim": "groups", "exact": "root"}, "c")(claims)
    assert claim_matcher({"claim": ["realm_access", "roles"], "prefix": "read"}, "c")(claims)
    assert claim_matcher({"claim": "https://example.com/tier", "exact": "gold"}, "c")(claims)
    assert claim_matcher({"claim": "admin", "exact": True}, "c")(claims)
    assert not claim_matcher({"claim": "level", "exact": True}, "c")(claims)
    assert claim_matcher({"claim": "level", "exact": 3}, "c")(claims)
    assert not claim_matcher({"claim": "admin", "exact": 1}, "c")(claims)    # bool is not 1
    assert not claim_matcher({"claim": "level", "exact": "3"}, "c")(claims)
    assert claim_matcher({"claim": "email", "present": False}, "c")(claims)
    assert not claim_matcher({"claim": "sub", "exact": "alice"}, "c")(None)


# --------------------------------------------------------------------------- RBAC engine


class FakeStream:
    def __init__(self, path="/", method="GET", host="api.test", peer="127.0.0.1",
                 headers=(), claims=None):
        self.path = path
        self.method_name = method
        self.authority = host
        self.peer = peer
        self.request_headers = HeaderMap.from_items([("host", host), *headers])
        self.metadata = ({JWT_METADATA_KEY: {"provider": "idp", "claims": claims}}
                         if claims is not None else None)


POLICIES = {
    "admins": {
        "permissions": [{"path": {"prefix": "/admin/"}}],
        "principals": [{"and": [{"source_ip": "10.0.0.0/8"},
                                {"jwt_claim": {"claim": "groups", "exact": "admin"}}]}],
    },
    "readers": {
        "permissions": [{"and": [{"method": ["GET", "HEAD"]},
                                 {"not": {"path": {"prefix": "/admin/"}}}]}],
        "principals": [{"authenticated": True}],
    },
    "internal-host": {
        "permissions": [{"host": {"suffix": ".internal"}}],
        "principals": [{"header": {"name": "x-internal", "exact": "yes"}}],
    },
    "workload": {
        "permissions": [{"any": True}],
        "principals": [{"spiffe_id": {"prefix": "spiffe://prod.test/"}}],
    },
}
COMPILED = compile_policies(POLICIES, "policies")


@pytest.mark.parametrize("stream, policy", [
    (FakeStream("/admin/x", peer="10.1.1.1", claims={"groups": ["admin"]}), "admins"),
    (FakeStream("/admin/x", peer="10.1.1.1", claims={"groups": ["dev"]}), None),
    (FakeStream("/admin/x", peer="127.0.0.1", claims={"groups": ["admin"]}), None),
    (FakeStream("/public/../admin/x", method="GET", claims={"sub": "a"}), None),
    (FakeStream("/docs", method="GET", claims={"sub": "a"}), "readers"),
    (FakeStream("/docs", method="POST", claims={"sub": "a"}), None),
    (FakeStream("/docs", method="GET"), None),
    (FakeStream("/x", host="svc.internal:8080", headers=[("x-internal", "yes")]),
     "internal-host"),
    (FakeStream("/x", host="svc.internal", headers=[("x-internal", "no")]), None),
    (FakeStream("/x"), None),                    # no SPIFFE ID is available today
])
def test_policy_matrix(stream, policy):
    assert first_match(COMPILED, RequestView(stream)) == policy


def test_policy_config_errors():
    def err(policies):
        with pytest.raises((ValueError, TypeError)) as ei:
            compile_policies(policies, "policies")
        return str(ei.value)

    assert "policies.p.principals is required" in err({"p": {"permissions": [{"any": True}]}})
    assert "non-empty list" in err({"p": {"permissions": [], "principals": [{"any": True}]}})
    assert "unknown rule 'paths'" in err(
        {"p": {"permissions": [{"paths": "/"}], "principals": [{"any": True}]}})
    assert "exactly one of" in err(
        {"p": {"permissions": [{"any": True, "path": "/"}], "principals": [{"any": True}]}})
    assert "policies.p.principals[0].source_ip[1]: invalid CIDR" in err(
        {"p": {"permissions": [{"any": True}], "principals": [{"source_ip": ["1.2.3.4", "x"]}]}})
    assert "must be true" in err({"p": {"permissions": [{"any": False}],
                                        "principals": [{"any": True}]}})
    assert "unknown keys ['suffix']" in err(
        {"p": {"permissions": [{"any": True}],
               "principals": [{"spiffe_id": {"suffix": "x"}}]}})
