"""Evaluating compiled rules: the meaning of each test and action, absent values, list
claims, the step budget, and the filter's failure policy and counters. The request is a
small holder of the HttpStream attributes the rules use, around the core's real HeaderMap
(tests/integration/test_filter_dsl.py runs rules on real streams through a Relay)."""
from __future__ import annotations

import pytest

from omnirelay._core import HeaderMap, LocalReply
from omnirelay.config import FilterSpec
from omnirelay.extensions.dsl import BudgetExceeded, DslEvalError, compile_rules
from omnirelay.extensions.dsl import compiler as c
from omnirelay.extensions.dsl.filter import DslFactory, stats
from omnirelay.filters import CONTINUE, FilterConfigError
from omnirelay.filters.http.local_ratelimit import (
    KEY_METADATA,
    KeyedBuckets,
    LocalRateLimitFactory,
)
from omnirelay.filters.registry import build_factory


class Req:
    """The attributes of an HttpStream that rules read and write."""

    def __init__(self, method="GET", target="/", headers=(), peer="127.0.0.1",
                 identity=None, claims=None, clusters=("a", "b")):
        self.method_name = method
        self.path = target
        self.peer = peer
        self.peer_identity = identity
        self.request_headers = HeaderMap()
        for n, v in headers:
            self.request_headers.add(n, v)
        self.response_headers = HeaderMap()
        self.metadata = ({"omnirelay.jwt_authn": {"claims": claims}} if claims is not None
                         else None)
        self.clusters = clusters
        self.cluster = None

    @property
    def authority(self):
        return self.request_headers.get("host")

    def set_cluster(self, name):
        if name not in self.clusters:
            raise ValueError(f"unknown cluster {name!r}")
        self.cluster = name


def matches(cond: str, req: Req) -> bool:
    effects, matched = compile_rules(f"when {cond} {{ }}").evaluate(req)
    assert effects == []
    return matched == 1


@pytest.mark.parametrize(("cond", "want"), [
    ('method == "POST"', True),
    ('method == "post"', False),
    ('method != "GET"', True),
    ('path == "/api/v1/users"', True),            # the query is not part of the path
    ('path ~ "^/api/"', True),
    ('path ~ "users$"', True),
    ('path ~ "^/users"', False),
    ('path prefix "/api"', True),
    ('path suffix "/users"', True),
    ('path contains "v1"', True),
    ('host == "shop.example.com"', True),         # lowercased, port dropped
    ('header("X-Tenant") in ["a", "b"]', True),
    ('header("x-tenant") in ["c"]', False),
    ('header("x-multi") == "1,2"', True),         # several values joined by ","
    ('header("x-missing") == ""', False),         # absent is not the empty string
    ('header("x-missing") != "a"', True),
    ('header("x-missing") exists', False),
    ('header("x-tenant") exists', True),
    ('header("x-missing") prefix ""', False),
    ('query("page") == "2"', True),
    ('query("q") == "a b&c"', True),              # decoded
    ('query("empty") exists and query("empty") == ""', True),
    ('query("nope") exists', False),
    ('source.ip == "10.1.2.3"', True),
    ('source.ip in 10.0.0.0/8', True),
    ('source.ip in [192.168.0.0/16, "fd00::/8"]', False),
    ('source.identity exists', False),
    ('header("x-tenant") == header("x-tenant-copy")', True),
    ('header("x-tenant") == header("x-missing")', False),
    ('"a" == header("x-tenant")', True),
    ('path prefix "/api/" + header("x-version")', True),
    ('not (method == "GET" or method == "PUT") and true', True),
    ('false or method == "GET"', False),
])
def test_conditions(cond, want):
    req = Req("POST", "/api/v1/users?page=2&q=a+b%26c&empty=&page=3",
              headers=[("host", "Shop.Example.COM:8443"), ("x-tenant", "a"),
                       ("x-tenant-copy", "a"), ("x-multi", "1"), ("x-multi", "2"),
                       ("x-version", "v1")],
              peer="10.1.2.3")
    assert matches(cond, req) is want


def test_path_is_normalized_for_decisions():
    req = Req(target="/public/%2e%2e/admin?x=1")
    assert matches('path == "/admin"', req)


def test_ipv6_and_mapped_sources():
    assert matches('source.ip in "fd00::/8"', Req(peer="fd00::5"))
    assert matches('source.ip in 10.0.0.0/8', Req(peer="::ffff:10.0.0.7"))
    assert not matches('source.ip in 10.0.0.0/8', Req(peer="unknown"))


def test_spiffe_identity():
    req = Req(identity="spiffe://mesh.test/ns/a/sa/web")
    assert matches('source.identity prefix "spiffe://mesh.test/ns/a/"', req)
    assert matches("source.identity exists", req)


CLAIMS = {"sub": "alice", "admin": True, "level": 3, "ratio": 0.5,
          "realm_access": {"roles": ["reader", "writer", 7]},
          "https://x.example/tier": "gold", "obj": {"a": 1}, "nothing": None}


@pytest.mark.parametrize(("cond", "want"), [
    ('jwt.claim("sub") == "alice"', True),
    ('jwt.claim("admin") == "true"', True),
    ('jwt.claim("level") == "3"', True),
    ('jwt.claim("ratio") == "0.5"', True),
    ('jwt.claim("realm_access.roles") == "writer"', True),     # any element
    ('jwt.claim("realm_access.roles") == "7"', True),
    ('jwt.claim("realm_access.roles") in ["admin", "reader"]', True),
    ('jwt.claim("realm_access.roles") ~ "^wr"', True),
    ('jwt.claim("realm_access.roles") != "writer"', False),    # not (any element ==)
    ('jwt.claim("realm_access.roles") == "admin"', False),
    ('header("x-roles") == jwt.claim("realm_access.roles")', True),  # joined by ","
    ('jwt.claim("https://x.example/tier") == "gold"', True),   # the claim of that name...
    ('jwt.claim("realm_access.roles") == "reader"', True),    # ... else a dotted path
    ('jwt.claim("obj") exists', False),
    ('jwt.claim("nothing") exists', False),
    ('jwt.claim("sub.x") exists', False),
    ('jwt.claim("realm_access.roles") exists', True),
])
def test_claims(cond, want):
    req = Req(claims=CLAIMS, headers=[("x-roles", "reader,writer,7")])
    assert matches(cond, req) is want


def test_claim_names_with_dots_use_several_arguments():
    assert matches('jwt.claim("https://x.example/tier", "tier") == "gold"',
                   Req(claims={"https://x.example/tier": {"tier": "gold"}}))
    rules = compile_rules('when true { set request header "t" = '
                          'jwt.claim("https://x.example/tier", "x") + "|" + jwt.claim("a", "b") }')
    effects, _ = rules.evaluate(Req(claims={"https://x.example/tier": {"x": "gold"},
                                            "a": {"b": "c"}}))
    assert effects == [(c.REQUEST_SET, "t", "gold|c")]


def test_no_token_means_no_claims():
    assert not matches('jwt.claim("sub") exists', Req())
    assert matches('jwt.claim("sub") != "alice"', Req())


def test_actions_and_values():
    p = compile_rules("""
        when true {
            set request header "x-user" = "u:" + header("x-user-id") + ":" + query("q")
            add request header "x-seen" = method
            remove request header "cookie"
            set response header "x-r" = path
            add response header "x-a" = "1"
            remove response header "server"
            ratelimit_key header("x-missing") + "/" + source.ip
            route "b"
        }
        when false { route "a" }
    """)
    effects, matched = p.evaluate(Req(target="/p?q=%41", headers=[("x-user-id", "7")]))
    assert matched == 1
    assert effects == [
        (c.REQUEST_SET, "x-user", "u:7:A"), (c.REQUEST_ADD, "x-seen", "GET"),
        (c.REQUEST_REMOVE, "cookie", None), (c.RESPONSE_SET, "x-r", "/p"),
        (c.RESPONSE_ADD, "x-a", "1"), (c.RESPONSE_REMOVE, "server", None),
        (c.RATELIMIT_KEY, "/127.0.0.1", None), (c.ROUTE, "b", None)]


def test_all_matching_rules_run_in_order_until_stop_or_reply():
    p = compile_rules("""
        when true { set request header "a" = "1" }
        when method == "GET" { set request header "b" = "2"; stop; set request header "c" = "3" }
        when true { set request header "d" = "4" }
    """)
    effects, matched = p.evaluate(Req())
    assert [e[1] for e in effects] == ["a", "b"] and matched == 2
    p = compile_rules("""
        when true { set response header "x" = "1" }
        when header("x-deny") exists { reply 403 "denied " + header("x-deny") }
        when true { route "a" }
    """)
    effects, _ = p.evaluate(Req(headers=[("x-deny", "you")]))
    assert effects[-1] == (c.REPLY, 403, "denied you") and len(effects) == 2
    effects, _ = p.evaluate(Req())
    assert effects[-1] == (c.ROUTE, "a", None)


def test_computed_header_values_are_checked():
    p = compile_rules('when true { set request header "x" = query("v") }')
    assert p.evaluate(Req(target="/?v=ok"))[0] == [(c.REQUEST_SET, "x", "ok")]
    for bad in ("a%0d%0aevil: 1", "%00", "%E2%82%AC"):
        with pytest.raises(DslEvalError, match="CR, LF, NUL"):
            p.evaluate(Req(target=f"/?v={bad}"))
    # Latin-1 characters are fine (header values are Latin-1 on the wire).
    assert p.evaluate(Req(target="/?v=%C3%A9"))[0] == [(c.REQUEST_SET, "x", "\u00e9")]


def test_regex_is_linear_time():
    # Catastrophic for a backtracking engine; RE2 answers at once.
    p = compile_rules('when header("x") ~ "^(a+)+$" { stop }')
    assert p.evaluate(Req(headers=[("x", "a" * 5000 + "b")])) == ([], 0)
    assert p.evaluate(Req(headers=[("x", "aaaa")]))[1] == 1


# --------------------------------------------------------------------------- budget


def test_budget_counts_condition_tests_and_actions():
    text = """
        when method == "GET" and path == "/" { set request header "a" = "1" }   # 2 + 1
        when method == "PUT" or path == "/x" { set request header "b" = "1" }   # 2 (no match)
        when true { stop }                                                      # 1 + 1
    """
    assert compile_rules(text, step_budget=7).evaluate(Req())[1] == 2
    with pytest.raises(BudgetExceeded, match="step budget of 6 exceeded"):
        compile_rules(text, step_budget=6).evaluate(Req())
    # An unmatched rule's actions cost nothing: a DELETE uses 2 + 2 + 2.
    assert compile_rules(text, step_budget=6).evaluate(Req("DELETE", "/y"))[1] == 1


def test_cidr_tests_cost_one_step_per_range():
    p = compile_rules("when source.ip in [10.0.0.0/8, 11.0.0.0/8, 12.0.0.0/8] {}",
                      step_budget=2)
    with pytest.raises(BudgetExceeded):
        p.evaluate(Req())


def test_a_huge_rule_set_stops_at_the_budget():
    text = "\n".join(f'when true {{ set request header "h{i}" = "{i}" }}' for i in range(5000))
    p = compile_rules(text, step_budget=1000)
    with pytest.raises(BudgetExceeded):
        p.evaluate(Req())
    p.budget = 10000
    assert p.evaluate(Req())[1] == 5000


# --------------------------------------------------------------------------- the filter


def factory(rules: str, binding: str = "", **config) -> DslFactory:
    return DslFactory({"rules": rules, **config}, binding=binding)


def test_filter_applies_effects_and_defers_response_edits():
    f = factory('when true { set request header "x-a" = "1"; set response header "x-b" = '
                'header("x-id"); route "b"; ratelimit_key "k" }')
    assert f.overridden_hooks() == {"on_request_headers", "on_response_headers"}
    req = Req(headers=[("x-id", "42")])
    flt = f.create()
    assert flt.on_request_headers(req, True) == CONTINUE
    assert req.request_headers.get("x-a") == "1" and req.cluster == "b"
    assert req.metadata == {KEY_METADATA: "k"}
    assert "x-b" not in req.response_headers
    assert flt.on_response_headers(req, False) == CONTINUE
    assert req.response_headers.get("x-b") == "42"
    assert f.stats() == {"evaluations": 1, "matches": 1, "budget_exceeded": 0, "failures": 0}


def test_reply_carries_the_response_edits_made_before_it():
    f = factory('when true { set response header "x-why" = "rule"; reply 451 "gone" }')
    r = f.create().on_request_headers(Req(), True)
    assert isinstance(r, LocalReply) and (r.status, r.body) == (451, b"gone")
    assert r.headers == [("x-why", "rule")] and r.reason == "dsl_reply"


def test_no_response_hook_without_response_actions():
    assert factory('when true { set request header "a" = "1" }').overridden_hooks() == {
        "on_request_headers"}


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_failure_policy(policy):
    f = factory("\n".join('when true { set request header "x" = "1" }' for _ in range(10)),
                step_budget=5, failure_policy=policy)
    req = Req()
    r = f.create().on_request_headers(req, True)
    assert "x" not in req.request_headers            # nothing applied
    if policy == "fail_open":
        assert r == CONTINUE
    else:
        assert isinstance(r, LocalReply) and r.status == 503
        assert r.reason == "dsl_fail_closed"
    f2 = factory('when true { set request header "x" = query("v") }', failure_policy=policy)
    r2 = f2.create().on_request_headers(Req(target="/?v=%0a"), True)
    assert (r2 == CONTINUE) is (policy == "fail_open")
    f3 = factory('when true { route "nowhere" }', failure_policy=policy)
    r3 = f3.create().on_request_headers(Req(), True)
    assert (r3 == CONTINUE) is (policy == "fail_open")
    assert (f.stats()["budget_exceeded"], f.stats()["failures"]) == (1, 0)
    assert (f2.stats()["failures"], f3.stats()["failures"]) == (1, 1)


def test_counters_are_kept_by_binding_across_reloads():
    binding = "tests.dsl_eval.counters[0]"
    for _ in range(2):   # a reload builds a new factory for the same place
        f = factory('when method == "GET" { stop } when true { stop }', binding=binding)
        f.create().on_request_headers(Req(), True)
        f.create().on_request_headers(Req("PUT"), True)
    assert stats()[binding] == {"evaluations": 4, "matches": 4, "budget_exceeded": 0,
                                "failures": 0}


@pytest.mark.parametrize(("config", "words"), [
    ({}, "rules is required"),
    ({"rules": 5}, "rules must be a string"),
    ({"rules": "", "step_budget": 0}, "step_budget must be an integer from 1"),
    ({"rules": "", "step_budget": True}, "step_budget"),
    ({"rules": "", "failure_policy": "open"}, "failure_policy must be one of"),
    ({"rules": "", "budget": 3}, "unknown keys ['budget']"),
    ({"rules": "when true {\n  route 3\n}"}, "rules:2:9: expected a cluster name"),
])
def test_config_errors_name_the_path(config, words):
    with pytest.raises(FilterConfigError) as info:
        build_factory(FilterSpec(name="omnirelay.filters.http.dsl", config=config),
                      "spec.routes[2].filters[0]")
    msg = str(info.value)
    assert msg.startswith("spec.routes[2].filters[0].config: ") and words in msg, msg


def test_unknown_clusters_are_refused_when_the_config_is_built():
    spec = FilterSpec(name="omnirelay.filters.http.dsl",
                      config={"rules": 'when true {\n  route "a"\n  route "zz"\n}'})
    with pytest.raises(FilterConfigError) as info:
        build_factory(spec, "spec.listeners[0].filters[1]", frozenset({"a", "b"}))
    assert str(info.value) == ("spec.listeners[0].filters[1].config: rules:3:9: route to "
                               "unknown cluster 'zz' (clusters: a, b)")
    assert build_factory(spec, "x", frozenset({"a", "zz"})).program.routes[1][0] == "zz"


# --------------------------------------------------------------------------- rate-limit keys


def test_keyed_buckets_are_bounded_lru():
    f = LocalRateLimitFactory({"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1h",
                               "key": "dsl", "max_keys": 2})
    keyed = f.bucket
    assert isinstance(keyed, KeyedBuckets)

    def status(key):
        req = Req()
        if key is not None:
            req.metadata = {KEY_METADATA: key}
        r = f.create().on_request_headers(req, True)
        return r.status if isinstance(r, LocalReply) else 200

    assert [status("a"), status("b"), status("a"), status("b")] == [200, 200, 429, 429]
    assert status("c") == 200 and len(keyed) == 2          # "a" (least recent) dropped
    assert status("b") == 429 and status("a") == 200       # "a" came back full
    assert status(None) == 200 and status(None) == 429     # keyless requests share one


@pytest.mark.parametrize(("config", "words"), [
    ({"key": "header"}, "key must be one of ['dsl']"),
    ({"max_keys": 5}, "max_keys applies only with key"),
    ({"key": "dsl", "max_keys": 0}, "max_keys must be >= 1"),
])
def test_ratelimit_key_config_errors(config, words):
    base = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        LocalRateLimitFactory({**base, **config})
