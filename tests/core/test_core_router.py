"""The compiled route table, matched with bytes alone (no sockets)."""
from __future__ import annotations

import pytest

from omnirelay._core import Cluster, HeaderEdits, HeaderMap, RouteEntry, RouteTable

A, B, C = Cluster("a"), Cluster("b"), Cluster("c")


def table(*entries):
    return RouteTable(entries)


def name(t, host="x.test", path="/", headers=(), method="GET"):
    e = t.match_request(host, path, list(headers), method=method)
    return e.name if e is not None else None


def test_methods_restrict_a_route():
    t = table(RouteEntry("writes", A, methods=("POST", "PUT")), RouteEntry("rest", B))
    assert name(t, method="POST") == "writes"
    assert name(t, method="PUT") == "writes"
    assert name(t, method="GET") == "rest"
    assert name(t, method="post") == "rest"      # methods are case-sensitive


def test_path_regex_matches_the_whole_path_without_the_query():
    t = table(RouteEntry("user", A, path=r"/users/[0-9]+", path_kind="regex"))
    assert name(t, path="/users/42") == "user"
    assert name(t, path="/users/42?tab=1") == "user"
    assert name(t, path="/users/42/x") is None
    assert name(t, path="/v1/users/42") is None


@pytest.mark.parametrize("spec,headers,expected", [
    (("x-a", "present", None, False), [("X-A", "")], True),
    (("x-a", "present", None, False), [], False),
    (("x-a", "present", None, True), [], True),                    # absent
    (("x-a", "present", None, True), [("x-a", "1")], False),
    (("x-a", "exact", "v1", False), [("x-a", "v2"), ("x-a", "v1")], True),
    (("x-a", "exact", "v1", True), [("x-a", "v1")], False),
    (("x-a", "exact", "v1", True), [("x-a", "v2")], True),
    (("x-a", "exact", "v1", True), [], True),
    (("x-a", "regex", r"v[0-9]+", False), [("x-a", "v12")], True),
    (("x-a", "regex", r"v[0-9]+", False), [("x-a", "v12x")], False),  # whole value
    (("x-a", "regex", r"v[0-9]+", True), [("x-a", "beta")], True),
])
def test_header_matchers(spec, headers, expected):
    t = table(RouteEntry("h", A, headers=[spec]))
    assert (name(t, headers=headers) == "h") is expected


@pytest.mark.parametrize("spec,path,expected", [
    (("debug", "present", None), "/?debug", True),
    (("debug", "present", None), "/?debug=1&x=2", True),
    (("debug", "present", None), "/?nodebug=1", False),
    (("v", "exact", "a b"), "/?v=a%20b", True),                     # percent-decoded
    (("v", "exact", "a b"), "/?v=a+b", True),
    (("v", "exact", "ä"), "/?v=%C3%A4", True),
    (("v", "exact", "a"), "/?v=b&v=a", True),                        # any value
    (("v", "regex", r"[0-9]{3}"), "/?v=123", True),
    (("v", "regex", r"[0-9]{3}"), "/?v=1234", False),
    (("v", "exact", "a"), "/", False),
])
def test_query_matchers(spec, path, expected):
    t = table(RouteEntry("q", A, query=[spec]))
    assert (name(t, path=path) == "q") is expected


def test_host_index_keeps_document_order_across_exact_and_wildcard_routes():
    t = table(
        RouteEntry("generic-a", A, path="/a"),
        RouteEntry("host", B, hosts=("h.test",)),
        RouteEntry("host-port", B, hosts=("h.test:8080",), path="/p"),
        RouteEntry("suffix", C, hosts=("*.test",), path="/s"),
        RouteEntry("catch", C),
    )
    assert name(t, "h.test", "/a") == "generic-a"        # earlier generic route wins
    assert name(t, "H.TEST", "/b") == "host"
    assert name(t, "h.test:8080", "/p") == "host"        # "h.test" covers any port, and is first
    assert name(t, "o.test", "/s") == "suffix"
    assert name(t, "o.test", "/b") == "catch"
    t2 = table(RouteEntry("host-port", B, hosts=("h.test:8080",), path="/p"),
               RouteEntry("host", B, hosts=("h.test",)), RouteEntry("catch", C))
    assert name(t2, "h.test:8080", "/p") == "host-port"
    assert name(t2, "h.test:9090", "/p") == "host"
    assert name(t2, "h.test", "/p") == "host"


def test_a_thousand_routes_pick_the_right_one():
    entries = [RouteEntry(f"r{v}-{i}", A, hosts=(f"svc-{v}.test",), path=f"/api/{i}/")
               for v in range(100) for i in range(10)]
    entries.append(RouteEntry("default", B))
    t = table(*entries)
    assert name(t, "svc-99.test", "/api/9/x") == "r99-9"
    assert name(t, "svc-0.test", "/api/0/") == "r0-0"
    assert name(t, "svc-5.test", "/other") == "default"
    assert name(t, "nope.test", "/api/1/") == "default"


def test_weighted_clusters_and_rewrites():
    e = RouteEntry("w", weighted=[(A, 1), (B, 3)], path="/api/", prefix_rewrite="/v2/")
    assert e.rewritten("/api/users?x=1") == "/v2/users?x=1"
    e = RouteEntry("r", A, regex_rewrite=r"^/old/([^/]+)$", regex_substitution=r"/new/\1")
    assert e.rewritten("/old/abc?q") == "/new/abc?q"
    assert e.rewritten("/keep/abc") == "/keep/abc"


@pytest.mark.parametrize("redirect,authority,target,location", [
    ({"scheme": "https"}, "a.test:80", "/x?y=1", "https://a.test/x?y=1"),
    ({"scheme": "https", "port": 8443}, "a.test", "/x", "https://a.test:8443/x"),
    ({"host": "b.test"}, "a.test:8080", "/x", "http://b.test:8080/x"),
    ({"host": "b.test:9000"}, "a.test:8080", "/x", "http://b.test:9000/x"),
    ({"path": "/new"}, "a.test", "/old?q=1", "http://a.test/new?q=1"),
    ({"path": "/new", "strip_query": True}, "a.test", "/old?q=1", "http://a.test/new"),
    ({"prefix_rewrite": "/v2/"}, "a.test", "/v1/items?q", "http://a.test/v2/items?q"),
    ({"port": 80}, "a.test:8080", "/", "http://a.test/"),
    ({"scheme": "http"}, "[::1]:8080", "/", "http://[::1]:8080/"),
])
def test_redirect_locations(redirect, authority, target, location):
    e = RouteEntry("rd", redirect=redirect, path="/v1/")
    assert e.location(b"http", authority.encode(), target.encode()).decode() == location


def test_header_edits_remove_then_set_then_add():
    h = HeaderMap.from_items([("x-a", "1"), ("x-b", "1"), ("x-b", "2"), ("x-c", "1")])
    HeaderEdits(remove=["x-a"], set=[("x-b", "new")], add=[("x-c", "2")]).apply_to(h)
    assert h.getall("x-a") == []
    assert h.getall("x-b") == ["new"]
    assert h.getall("x-c") == ["1", "2"]
