"""Routing features: path regexes, methods, header and query matches, route actions (cluster,
weighted clusters, direct responses, redirects), rewrites, header edits, mirrors, endpoint
priority and locality, overprovisioning and discovery. Decoded values and exact issues."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from omnirelay.config import (
    Cluster,
    ConfigError,
    DirectResponse,
    Discovery,
    Endpoint,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    Mirror,
    QueryMatch,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
    WeightedCluster,
    canonical_json,
    config_to_dict,
    load_config,
)

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]

NEEDS_CLUSTER = (
    "only allowed on routes that forward to a cluster ('cluster' or 'weighted_clusters'); "
    "this route answers with '{}'"
)
ONE_ACTION = (
    "exactly one of 'cluster', 'weighted_clusters', 'direct_response' or 'redirect' is required"
)
MANAGED = "hop-by-hop and framing headers are managed by the proxy"


def _route(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["routes"][index]


def _match(doc: Doc, index: int = 0) -> Doc:
    return _route(doc, index)["match"]


def _cluster(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["clusters"][index]


def _answer(doc: Doc, **action: Any) -> None:
    """Make route 0 answer with `action` instead of forwarding to its cluster."""
    route = _route(doc)
    del route["cluster"]
    route.update(action)


FULL_YAML = r"""
spec:
  listeners: [{name: public, address: 0.0.0.0, port: 8080}]
  routes:
    - name: items
      match:
        hosts: [api.example.com]
        path: {regex: '/items/(\d+)'}
        methods: [GET, HEAD]
        headers:
          - {name: X-Env, exact: canary}
          - {name: X-Debug, present: true, invert: true}
          - {name: User-Agent, regex: '.*Mobile.*'}
        query:
          - {name: page, regex: '\d+'}
          - {name: preview, present: true}
          - {name: lang, exact: en}
      weighted_clusters:
        - {name: api, weight: 90}
        - {name: api-next, weight: 10}
      rewrite: {regex: '^/items/(\d+)$', substitution: '/v2/items/\1', auto_host: true}
      request_headers:
        remove: [X-Internal]
        set: [{name: X-Route, value: items}]
        add: [{name: Via-Tag, value: a}, {name: Via-Tag, value: b}]
      response_headers:
        set: [{name: Cache-Control, value: no-store}]
      mirrors:
        - {cluster: shadow, percent: 12.5}
    - name: api
      match: {path: {prefix: /api/}}
      cluster: api
      rewrite: {prefix: /, host: "API.internal:8443"}
    - name: teapot
      match: {path: {exact: /teapot}}
      direct_response:
        status: 418
        body: "short and stout\n"
        headers: [{name: Content-Type, value: text/plain}]
    - name: old
      match: {path: {prefix: /old/}}
      redirect:
        code: 308
        scheme: https
        host: WWW.example.com
        port: 8443
        prefix_rewrite: /new/
        strip_query: true
  clusters:
    - name: api
      overprovisioning_factor: 2
      endpoints:
        - {address: 10.0.0.1, port: 80, priority: 0, locality: eu-west-1/a}
        - {address: 10.0.0.2, port: 80, weight: 3, priority: 1}
    - name: api-next
      discovery: {type: file, path: /etc/omnirelay/api-next.yaml, interval: 500ms}
    - name: shadow
      discovery: {type: api}
      endpoints: []
"""


def test_every_new_field_decodes_to_the_model() -> None:
    config = load_config(FULL_YAML)
    items = config.route("items")
    assert items.match == RouteMatch(
        hosts=("api.example.com",),
        path_exact=None,
        path_prefix=None,
        path_regex=r"/items/(\d+)",
        methods=("GET", "HEAD"),
        headers=(
            HeaderMatch("x-env", exact="canary"),
            HeaderMatch("x-debug", present=True, invert=True),
            HeaderMatch("user-agent", regex=".*Mobile.*"),
        ),
        query=(
            QueryMatch("page", regex=r"\d+"),
            QueryMatch("preview", present=True),
            QueryMatch("lang", exact="en"),
        ),
    )
    assert items.cluster is None
    assert items.weighted_clusters == (WeightedCluster("api", 90), WeightedCluster("api-next", 10))
    assert items.rewrite == Rewrite(
        regex=r"^/items/(\d+)$", substitution=r"/v2/items/\1", auto_host=True
    )
    assert items.request_headers == HeaderEdits(
        remove=("x-internal",),
        set=(HeaderValue("x-route", "items"),),
        add=(HeaderValue("via-tag", "a"), HeaderValue("via-tag", "b")),
    )
    assert items.response_headers == HeaderEdits(set=(HeaderValue("cache-control", "no-store"),))
    assert items.mirrors == (Mirror("shadow", 12.5),)
    assert config.route("api").rewrite == Rewrite(prefix="/", host="api.internal:8443")
    assert config.route("teapot").direct_response == DirectResponse(
        418, "short and stout\n", (HeaderValue("content-type", "text/plain"),)
    )
    assert config.route("old").redirect == Redirect(
        code=308,
        scheme="https",
        host="www.example.com",
        port=8443,
        prefix_rewrite="/new/",
        strip_query=True,
    )
    api = config.cluster("api")
    assert api.overprovisioning_factor == 2.0 and isinstance(api.overprovisioning_factor, float)
    assert api.endpoints == (
        Endpoint("10.0.0.1", 80, priority=0, locality="eu-west-1/a"),
        Endpoint("10.0.0.2", 80, weight=3, priority=1),
    )
    assert config.cluster("api-next") == Cluster(
        name="api-next",
        endpoints=(),
        discovery=Discovery("file", "/etc/omnirelay/api-next.yaml", 0.5),
    )
    assert config.cluster("shadow").discovery == Discovery("api")
    assert config.cluster("shadow").endpoints == ()
    hash(config)


def test_new_fields_round_trip_and_canonical_form_is_stable() -> None:
    config = load_config(FULL_YAML)
    document = config_to_dict(config)
    assert load_config(document) == config
    encoded = canonical_json(config)
    assert load_config(encoded) == config
    assert canonical_json(load_config(encoded)) == encoded
    assert load_config(yaml.safe_dump(document)) == config
    # Every field is spelled out: unset actions as null / [], path kinds nested.
    items = json.loads(encoded)["spec"]["routes"][0]
    assert items["cluster"] is None and items["direct_response"] is None
    assert items["match"]["path"] == {"regex": r"/items/(\d+)"}
    assert items["match"]["headers"][1] == {
        "name": "x-debug",
        "exact": None,
        "regex": None,
        "present": True,
        "invert": True,
    }
    assert items["rewrite"]["prefix"] is None
    api = json.loads(encoded)["spec"]["routes"][1]
    assert api["weighted_clusters"] == [] and api["mirrors"] == []
    assert api["request_headers"] == {"remove": [], "set": [], "add": []}


def test_defaults_of_the_new_fields(doc: Doc) -> None:
    config = load_config(doc)
    route = config.route("api")
    assert route.match.path_regex is None and route.match.methods == ()
    assert route.match.query == ()
    assert route.weighted_clusters == () and route.direct_response is None
    assert route.redirect is None and route.rewrite is None and route.mirrors == ()
    assert route.request_headers == route.response_headers == HeaderEdits()
    cluster = config.cluster("api")
    assert cluster.overprovisioning_factor == 1.4 and cluster.discovery is None
    assert cluster.endpoints[0] == Endpoint("10.0.0.1", 8080, weight=1, priority=0, locality=None)


def test_empty_mappings_give_the_documented_defaults(doc: Doc) -> None:
    _route(doc).update(rewrite={}, request_headers={}, response_headers={})
    _route(doc, 1).pop("cluster")
    _route(doc, 1)["redirect"] = {"scheme": "https"}
    _cluster(doc)["discovery"] = {"type": "api"}
    config = load_config(doc)
    assert config.route("api").rewrite == Rewrite(None, None, None, None, False)
    assert config.route("web").redirect == Redirect(301, "https", None, None, None, None, False)
    assert config.cluster("api").discovery == Discovery("api", None, 1.0)


def test_null_means_unset(doc: Doc) -> None:
    plain = load_config(doc)
    _route(doc).update(
        weighted_clusters=[], direct_response=None, redirect=None, rewrite=None, mirrors=[]
    )
    _match(doc).update(headers=[{"name": "x-a", "exact": "1", "regex": None, "present": None}])
    _cluster(doc)["endpoints"][0]["locality"] = None
    _cluster(doc)["discovery"] = None
    config = load_config(doc)
    assert config.route("api").match.headers == (HeaderMatch("x-a", exact="1"),)
    assert config.spec.clusters == plain.spec.clusters


ACCEPTED = [
    lambda d: _match(d).update(methods=["GET", "PURGE", "M-SEARCH"]),
    lambda d: _match(d).update(methods=[]),
    lambda d: _match(d).update(path={"regex": "(?i)/API/.*"}),
    lambda d: _match(d).update(headers=[{"name": "x-a", "exact": ""}]),
    lambda d: _match(d).update(
        query=[{"name": "q", "exact": ""}, {"name": "a b", "present": True}]
    ),
    lambda d: _route(d).update(rewrite={"regex": "/(?P<rest>.*)", "substitution": r"/\g<rest>"}),
    lambda d: _route(d).update(rewrite={"regex": "^/api", "substitution": ""}),
    lambda d: _route(d).update(rewrite={"host": "[2001:db8::1]:8080", "auto_host": False}),
    lambda d: _route(d).update(rewrite={"host": "10.0.0.1"}),
    lambda d: _route(d).update(mirrors=[{"cluster": "web", "percent": 0}, {"cluster": "api"}]),
    lambda d: _route(d).update(
        request_headers={"remove": ["x-a"], "set": [{"name": "x-a", "value": ""}]}
    ),
    lambda d: _route(d).update(
        response_headers={"add": [{"name": "set-cookie", "value": "a=1"}] * 2}
    ),
    lambda d: _answer(
        d, weighted_clusters=[{"name": "api", "weight": 0}, {"name": "web", "weight": 10000}]
    ),
    lambda d: _answer(d, direct_response={"status": 599, "body": "x"}),
    lambda d: _answer(d, direct_response={"status": 204, "body": ""}),
    lambda d: _answer(d, redirect={"strip_query": True}, request_headers={"set": []}),
    lambda d: _answer(d, redirect={"host": "[::1]", "path": "/"}, timeout="1s"),
    lambda d: _answer(d, redirect={"prefix_rewrite": "/v2/"}),
    lambda d: _answer(d, redirect={"port": 65535}, rewrite=None, mirrors=[], retry_policy=None),
    lambda d: _cluster(d).update(overprovisioning_factor=1),
    lambda d: _cluster(d).update(overprovisioning_factor=1e9),
    lambda d: _cluster(d)["endpoints"][0].update(priority=7, locality="x"),
    lambda d: _cluster(d).update(endpoints=[], discovery={"type": "api", "interval": "2m"}),
    lambda d: _cluster(d).update(discovery={"type": "file", "path": "eps.json"}),
]


@pytest.mark.parametrize("mutate", ACCEPTED)
def test_accepted(doc: Doc, mutate: Callable[[Doc], None]) -> None:
    mutate(doc)
    config = load_config(doc)
    assert load_config(config_to_dict(config)) == config


RULES = [
    # path regex
    (
        lambda d: _match(d).update(path={"regex": "/a/("}),
        [
            (
                "spec.routes[0].match.path.regex: invalid regex '/a/(': missing ), "
                "unterminated subpattern at position 3"
            )
        ],
    ),
    (
        lambda d: _match(d).update(path={"regex": ""}),
        ["spec.routes[0].match.path.regex: must not be empty"],
    ),
    (
        lambda d: _match(d).update(path={"regex": "/a", "prefix": "/a"}),
        ["spec.routes[0].match.path: exactly one of 'exact', 'prefix' or 'regex' is required"],
    ),
    (
        lambda d: _match(d).update(path={"regexp": "/a"}),
        [
            "spec.routes[0].match.path.regexp: unknown field (did you mean 'regex'?)",
            "spec.routes[0].match.path: exactly one of 'exact', 'prefix' or 'regex' is required",
        ],
    ),
    # methods
    (
        lambda d: _match(d).update(methods=["get"]),
        [
            (
                "spec.routes[0].match.methods[0]: invalid method 'get': methods are "
                "case-sensitive, write 'GET'"
            )
        ],
    ),
    (
        lambda d: _match(d).update(methods=["GET", "GE T", 1]),
        [
            "spec.routes[0].match.methods[1]: invalid method 'GE T': must be an RFC 9110 token",
            "spec.routes[0].match.methods[2]: expected string, got integer (quote it)",
        ],
    ),
    (
        lambda d: _match(d).update(methods=["GET", "POST", "GET"]),
        ["spec.routes[0].match.methods[2]: method 'GET' is listed twice (first at index 0)"],
    ),
    (
        lambda d: _match(d).update(methods="GET"),
        ["spec.routes[0].match.methods: expected list, got string"],
    ),
    # header matches
    (
        lambda d: _match(d).update(headers=[{"name": "x-a"}]),
        [
            "spec.routes[0].match.headers[0]: exactly one of 'exact', 'regex' or 'present' is required"
        ],
    ),
    (
        lambda d: _match(d).update(headers=[{"name": "x-a", "exact": "1", "regex": "1"}]),
        [
            "spec.routes[0].match.headers[0]: exactly one of 'exact', 'regex' or 'present' is required"
        ],
    ),
    (
        lambda d: _match(d).update(headers=[{"name": "x-a", "present": False}]),
        [
            (
                "spec.routes[0].match.headers[0].present: only true is accepted; to match "
                "requests without the header, use 'present: true, invert: true'"
            )
        ],
    ),
    (
        lambda d: _match(d).update(headers=[{"name": "x-a", "present": "yes"}]),
        ["spec.routes[0].match.headers[0].present: expected boolean, got string"],
    ),
    (
        lambda d: _match(d).update(headers=[{"name": "x-a", "regex": "[", "invert": 1}]),
        [
            (
                "spec.routes[0].match.headers[0].regex: invalid regex '[': unterminated "
                "character set at position 0"
            ),
            "spec.routes[0].match.headers[0].invert: expected boolean, got integer",
        ],
    ),
    (
        lambda d: _match(d).update(headers=[{"name": "x-a", "equals": "1"}]),
        [
            "spec.routes[0].match.headers[0].equals: unknown field (renamed to 'exact')",
            "spec.routes[0].match.headers[0]: exactly one of 'exact', 'regex' or 'present' is required",
        ],
    ),
    (
        lambda d: _match(d).update(headers=[{"exact": "1"}]),
        ["spec.routes[0].match.headers[0].name: missing required field"],
    ),
    # query matches
    (
        lambda d: _match(d).update(query=[{"name": "", "exact": "1"}]),
        ["spec.routes[0].match.query[0].name: must not be empty"],
    ),
    (
        lambda d: _match(d).update(query=[{"name": "q", "present": False}]),
        ["spec.routes[0].match.query[0].present: only true is accepted"],
    ),
    (
        lambda d: _match(d).update(query=[{"name": "q"}, {"name": "r", "regex": "*"}]),
        [
            "spec.routes[0].match.query[0]: exactly one of 'exact', 'regex' or 'present' is required",
            "spec.routes[0].match.query[1].regex: invalid regex '*': nothing to repeat at position 0",
        ],
    ),
    (
        lambda d: _match(d).update(query=[{"name": "q", "exact": 1}]),
        ["spec.routes[0].match.query[0].exact: expected string, got integer (quote it)"],
    ),
    (
        lambda d: _match(d).update(query=[{"name": "q", "present": True, "invert": True}]),
        [
            "spec.routes[0].match.query[0].invert: unknown field (allowed: name, exact, regex, present)"
        ],
    ),
    # actions
    (
        lambda d: _route(d).update(direct_response={"status": 200}),
        [f"spec.routes[0]: {ONE_ACTION} (got 'cluster' and 'direct_response')"],
    ),
    (
        lambda d: _route(d).update(cluster=None),
        [f"spec.routes[0]: {ONE_ACTION}"],
    ),
    (
        lambda d: _answer(d, weighted_clusters=[]),
        ["spec.routes[0].weighted_clusters: at least one weighted cluster is required"],
    ),
    (
        lambda d: _route(d).update(cluster=""),
        ["spec.routes[0].cluster: must not be empty"],
    ),
    # weighted clusters
    (
        lambda d: _answer(
            d, weighted_clusters=[{"name": "api", "weight": 0}, {"name": "web", "weight": 0}]
        ),
        [
            (
                "spec.routes[0].weighted_clusters: the weights add up to 0: give at least one "
                "cluster a weight above 0"
            )
        ],
    ),
    (
        lambda d: _answer(
            d, weighted_clusters=[{"name": "api", "weight": 1}, {"name": "api", "weight": 2}]
        ),
        [
            "spec.routes[0].weighted_clusters[1].name: cluster 'api' is listed twice (first at index 0)"
        ],
    ),
    (
        lambda d: _answer(
            d, weighted_clusters=[{"name": "api", "weight": 10001}, {"name": "web", "weight": -1}]
        ),
        [
            "spec.routes[0].weighted_clusters[0].weight: must be between 0 and 10000, got 10001",
            "spec.routes[0].weighted_clusters[1].weight: must be between 0 and 10000, got -1",
        ],
    ),
    (
        lambda d: _answer(d, weighted_clusters=[{"name": "api"}]),
        ["spec.routes[0].weighted_clusters[0].weight: missing required field"],
    ),
    (
        lambda d: _answer(d, weighted_clusters=[{"name": "api", "weight": 1.5}]),
        ["spec.routes[0].weighted_clusters[0].weight: expected integer, got number"],
    ),
    # fields that need a forwarding action
    (
        lambda d: _answer(
            d,
            direct_response={"status": 200},
            per_try_timeout="1s",
            retry_policy={},
            rewrite={},
            mirrors=[{"cluster": "web"}],
        ),
        [
            f"spec.routes[0].per_try_timeout: {NEEDS_CLUSTER.format('direct_response')}",
            f"spec.routes[0].retry_policy: {NEEDS_CLUSTER.format('direct_response')}",
            f"spec.routes[0].rewrite: {NEEDS_CLUSTER.format('direct_response')}",
            f"spec.routes[0].mirrors: {NEEDS_CLUSTER.format('direct_response')}",
        ],
    ),
    (
        lambda d: _answer(d, redirect={"scheme": "https"}, rewrite={"prefix": "/"}),
        [f"spec.routes[0].rewrite: {NEEDS_CLUSTER.format('redirect')}"],
    ),
    # mirrors
    (
        lambda d: _route(d).update(mirrors=[{"cluster": "web", "percent": 100.5}]),
        ["spec.routes[0].mirrors[0].percent: must be between 0 and 100, got 100.5"],
    ),
    (
        lambda d: _route(d).update(mirrors=[{"cluster": "web"}, {"cluster": "web", "percent": 1}]),
        ["spec.routes[0].mirrors[1].cluster: cluster 'web' is listed twice (first at index 0)"],
    ),
    (
        lambda d: _route(d).update(mirrors=[{"percent": 1}]),
        ["spec.routes[0].mirrors[0].cluster: missing required field"],
    ),
    (
        lambda d: _route(d).update(mirrors={"cluster": "web"}),
        ["spec.routes[0].mirrors: expected list, got mapping"],
    ),
    # rewrite
    (
        lambda d: _route(d).update(rewrite={"prefix": "/v2/", "regex": "/a", "substitution": "/"}),
        ["spec.routes[0].rewrite: at most one of 'prefix' or 'regex' may be set"],
    ),
    (
        lambda d: _route(d).update(rewrite={"regex": "/a"}),
        ["spec.routes[0].rewrite.substitution: required when 'regex' is set"],
    ),
    (
        lambda d: _route(d).update(rewrite={"substitution": "/b"}),
        ["spec.routes[0].rewrite.substitution: only allowed together with 'regex'"],
    ),
    (
        lambda d: _route(d).update(rewrite={"regex": "/a/(\\d+)", "substitution": "/b/\\2"}),
        [
            (
                "spec.routes[0].rewrite.substitution: invalid substitution '/b/\\\\2': invalid "
                "group reference 2 at position 4"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"regex": "/a", "substitution": "/\\g<id>"}),
        [
            (
                "spec.routes[0].rewrite.substitution: invalid substitution '/\\\\g<id>': "
                "unknown group name 'id'"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"regex": "/a", "substitution": "\\q"}),
        [
            (
                "spec.routes[0].rewrite.substitution: invalid substitution '\\\\q': bad escape "
                "\\q at position 0"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"regex": "(", "substitution": "/"}),
        [
            (
                "spec.routes[0].rewrite.regex: invalid regex '(': missing ), unterminated "
                "subpattern at position 0"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"prefix": "v2"}),
        ["spec.routes[0].rewrite.prefix: invalid path 'v2': must start with '/'"],
    ),
    (
        lambda d: _route(d).update(rewrite={"host": "a.internal", "auto_host": True}),
        ["spec.routes[0].rewrite: at most one of 'host' or 'auto_host: true' may be set"],
    ),
    (
        lambda d: _route(d).update(rewrite={"host": "a b"}),
        [
            (
                "spec.routes[0].rewrite.host: invalid host 'a b': expected a DNS name or an IP "
                "address (IPv6 in brackets), optionally with ':port'"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"host": "::1"}),
        [
            (
                "spec.routes[0].rewrite.host: invalid host '::1': expected a DNS name or an IP "
                "address (IPv6 in brackets), optionally with ':port'"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"host": "a.internal:70000"}),
        [
            (
                "spec.routes[0].rewrite.host: invalid host 'a.internal:70000': port must be "
                "between 1 and 65535"
            )
        ],
    ),
    (
        lambda d: (
            _match(d).update(path={"exact": "/a"}),
            _route(d).update(rewrite={"prefix": "/"}),
        ),
        [
            (
                "spec.routes[0].rewrite.prefix: needs a 'path: {prefix: ...}' match to replace "
                "(this route matches 'path: {exact: ...}')"
            )
        ],
    ),
    (
        lambda d: (
            _match(d).update(path={"regex": "/a.*"}),
            _route(d).update(rewrite={"prefix": "/"}),
        ),
        [
            (
                "spec.routes[0].rewrite.prefix: needs a 'path: {prefix: ...}' match to replace "
                "(this route matches 'path: {regex: ...}')"
            )
        ],
    ),
    (
        lambda d: _route(d).update(rewrite={"auto_host": "yes"}),
        ["spec.routes[0].rewrite.auto_host: expected boolean, got string"],
    ),
    # direct_response
    (
        lambda d: _answer(d, direct_response={"status": 199}),
        ["spec.routes[0].direct_response.status: must be between 200 and 599, got 199"],
    ),
    (
        lambda d: _answer(d, direct_response={"body": "x"}),
        ["spec.routes[0].direct_response.status: missing required field"],
    ),
    (
        lambda d: _answer(d, direct_response={"status": 304, "body": "x"}),
        ["spec.routes[0].direct_response.body: must be empty for status 304"],
    ),
    (
        lambda d: _answer(
            d,
            direct_response={
                "status": 200,
                "headers": [
                    {"name": "Content-Length", "value": "1"},
                    {"name": "x-a", "value": " a"},
                    {"name": "x-b"},
                ],
            },
        ),
        [
            f"spec.routes[0].direct_response.headers[0].name: cannot edit 'content-length': {MANAGED}",
            (
                "spec.routes[0].direct_response.headers[1].value: invalid header value ' a': "
                "leading or trailing whitespace"
            ),
            "spec.routes[0].direct_response.headers[2].value: missing required field",
        ],
    ),
    (
        lambda d: _answer(d, direct_response={"status": 200, "body": 5}),
        ["spec.routes[0].direct_response.body: expected string, got integer (quote it)"],
    ),
    # redirect
    (
        lambda d: _answer(d, redirect={}),
        [
            (
                "spec.routes[0].redirect: redirects to the request's own URL: set at least one "
                "of 'scheme', 'host', 'port', 'path', 'prefix_rewrite' or 'strip_query: true'"
            )
        ],
    ),
    (
        lambda d: _answer(d, redirect={"code": 300, "scheme": "ftp"}),
        [
            "spec.routes[0].redirect.code: unsupported value 300 (allowed: 301, 302, 303, 307, 308)",
            "spec.routes[0].redirect.scheme: unsupported value 'ftp' (allowed: http, https)",
        ],
    ),
    (
        lambda d: _answer(d, redirect={"code": "301", "host": "x.com"}),
        ["spec.routes[0].redirect.code: expected integer, got string"],
    ),
    (
        lambda d: _answer(d, redirect={"host": "a.com:8443"}),
        [
            "spec.routes[0].redirect.host: invalid host 'a.com:8443': give the port in 'port', not in 'host'"
        ],
    ),
    (
        lambda d: _answer(d, redirect={"host": "2001:db8::1"}),
        [
            (
                "spec.routes[0].redirect.host: invalid host '2001:db8::1': expected a DNS name or "
                "an IP address (IPv6 in brackets)"
            )
        ],
    ),
    (
        lambda d: _answer(d, redirect={"port": 0}),
        ["spec.routes[0].redirect.port: must be between 1 and 65535, got 0"],
    ),
    (
        lambda d: _answer(d, redirect={"path": "new"}),
        ["spec.routes[0].redirect.path: invalid path 'new': must start with '/'"],
    ),
    (
        lambda d: _answer(d, redirect={"path": "/a", "prefix_rewrite": "/b/"}),
        ["spec.routes[0].redirect: at most one of 'path' or 'prefix_rewrite' may be set"],
    ),
    (
        lambda d: (
            _match(d).update(path={"exact": "/a"}),
            _answer(d, redirect={"prefix_rewrite": "/b/"}),
        ),
        [
            (
                "spec.routes[0].redirect.prefix_rewrite: needs a 'path: {prefix: ...}' match to "
                "replace (this route matches 'path: {exact: ...}')"
            )
        ],
    ),
    # header edits
    (
        lambda d: _route(d).update(request_headers={"remove": ["Host"]}),
        [
            (
                "spec.routes[0].request_headers.remove[0]: cannot edit 'host' here: change the "
                "upstream Host with rewrite.host or rewrite.auto_host"
            )
        ],
    ),
    (
        lambda d: _route(d).update(
            request_headers={
                "remove": ["connection", "keep-alive"],
                "set": [{"name": "Transfer-Encoding", "value": "chunked"}],
                "add": [{"name": "te", "value": "trailers"}],
            },
            response_headers={
                "remove": ["host", "trailer"],
                "set": [{"name": "content-length", "value": "0"}],
                "add": [
                    {"name": "upgrade", "value": "h2c"},
                    {"name": "proxy-connection", "value": "x"},
                ],
            },
        ),
        [
            f"spec.routes[0].request_headers.remove[0]: cannot edit 'connection': {MANAGED}",
            f"spec.routes[0].request_headers.remove[1]: cannot edit 'keep-alive': {MANAGED}",
            f"spec.routes[0].request_headers.set[0].name: cannot edit 'transfer-encoding': {MANAGED}",
            f"spec.routes[0].request_headers.add[0].name: cannot edit 'te': {MANAGED}",
            f"spec.routes[0].response_headers.remove[0]: cannot edit 'host': {MANAGED}",
            f"spec.routes[0].response_headers.remove[1]: cannot edit 'trailer': {MANAGED}",
            f"spec.routes[0].response_headers.set[0].name: cannot edit 'content-length': {MANAGED}",
            f"spec.routes[0].response_headers.add[0].name: cannot edit 'upgrade': {MANAGED}",
            f"spec.routes[0].response_headers.add[1].name: cannot edit 'proxy-connection': {MANAGED}",
        ],
    ),
    (
        lambda d: _route(d).update(
            request_headers={
                "remove": ["x-a", "X-A"],
                "set": [{"name": "x-b", "value": "1"}, {"name": "X-B", "value": "2"}],
            }
        ),
        [
            "spec.routes[0].request_headers.remove[1]: header 'x-a' is listed twice (first at index 0)",
            "spec.routes[0].request_headers.set[1].name: header 'x-b' is set twice (first at index 0)",
        ],
    ),
    (
        lambda d: _route(d).update(request_headers={"set": [{"name": "x a", "value": "1"}]}),
        [
            "spec.routes[0].request_headers.set[0].name: invalid header name 'x a': must be an RFC 9110 token"
        ],
    ),
    (
        lambda d: _route(d).update(response_headers={"add": [{"name": "x-a", "value": "a\nb"}]}),
        [
            (
                "spec.routes[0].response_headers.add[0].value: invalid header value 'a\\nb': use "
                "printable ASCII, spaces and tabs"
            )
        ],
    ),
    (
        lambda d: _route(d).update(request_headers={"sett": []}),
        ["spec.routes[0].request_headers.sett: unknown field (did you mean 'set'?)"],
    ),
    (
        lambda d: _route(d).update(request_headers=None),
        ["spec.routes[0].request_headers: expected mapping, got null"],
    ),
    # endpoints
    (
        lambda d: _cluster(d)["endpoints"][0].update(priority=8),
        ["spec.clusters[0].endpoints[0].priority: must be between 0 and 7, got 8"],
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].update(priority=-1, locality=""),
        [
            "spec.clusters[0].endpoints[0].priority: must be between 0 and 7, got -1",
            "spec.clusters[0].endpoints[0].locality: must not be empty",
        ],
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].update(locality=3),
        ["spec.clusters[0].endpoints[0].locality: expected string, got integer (quote it)"],
    ),
    (
        lambda d: _cluster(d)["endpoints"].append(
            {"address": "10.0.0.1", "port": 8080, "priority": 1}
        ),
        [
            (
                "spec.clusters[0].endpoints[1]: duplicate endpoint 10.0.0.1:8080 "
                "(first at spec.clusters[0].endpoints[0])"
            )
        ],
    ),
    # overprovisioning_factor
    (
        lambda d: _cluster(d).update(overprovisioning_factor=0.99),
        ["spec.clusters[0].overprovisioning_factor: must be at least 1, got 0.99"],
    ),
    (
        lambda d: _cluster(d).update(overprovisioning_factor="140%"),
        ["spec.clusters[0].overprovisioning_factor: expected number, got string"],
    ),
    (
        lambda d: _cluster(d).update(overprovisioning_factor=float("inf")),
        ["spec.clusters[0].overprovisioning_factor: must be finite, got inf"],
    ),
    # discovery
    (
        lambda d: _cluster(d).update(discovery={"type": "dns"}),
        ["spec.clusters[0].discovery.type: unsupported value 'dns' (allowed: file, api)"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"path": "eps.yaml"}),
        ["spec.clusters[0].discovery.type: missing required field"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "file"}),
        ["spec.clusters[0].discovery.path: required when type is 'file'"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "file", "path": ""}),
        ["spec.clusters[0].discovery.path: must not be empty"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "api", "path": "eps.yaml"}),
        ["spec.clusters[0].discovery.path: only allowed when type is 'file' (type is 'api')"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "api", "interval": 0}),
        ["spec.clusters[0].discovery.interval: must be greater than 0"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "api", "interval": "1 s"}),
        [
            (
                "spec.clusters[0].discovery.interval: invalid duration '1 s': expected seconds as "
                "a number or a string like '250ms', '1.5s', '2m', '1h', '500us'"
            )
        ],
    ),
    (
        lambda d: _cluster(d).update(discovery="file"),
        ["spec.clusters[0].discovery: expected mapping, got string"],
    ),
    (
        lambda d: _cluster(d).update(discovery={"type": "api", "intervall": "1s"}),
        ["spec.clusters[0].discovery.intervall: unknown field (did you mean 'interval'?)"],
    ),
    (
        lambda d: _cluster(d).pop("endpoints"),
        ["spec.clusters[0].endpoints: missing required field"],
    ),
    (
        lambda d: _cluster(d).update(endpoints=[], discovery=None),
        ["spec.clusters[0].endpoints: at least one endpoint is required"],
    ),
    (
        # A broken discovery still excuses the missing endpoints: one problem, one issue.
        lambda d: (_cluster(d).pop("endpoints"), _cluster(d).update(discovery={"type": "dns"})),
        ["spec.clusters[0].discovery.type: unsupported value 'dns' (allowed: file, api)"],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), RULES)
def test_rules(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: list[str]
) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


# -- graph rules ---------------------------------------------------------------------------------

GRAPH_RULES = [
    (
        lambda d: _answer(
            d, weighted_clusters=[{"name": "api", "weight": 1}, {"name": "wbe", "weight": 1}]
        ),
        [
            (
                "spec.routes[0].weighted_clusters[1].name: unknown cluster 'wbe' "
                "(did you mean 'web'? known: api, web)"
            )
        ],
    ),
    (
        lambda d: _route(d, 1).update(mirrors=[{"cluster": "shadow"}, {"cluster": "ap"}]),
        [
            "spec.routes[1].mirrors[0].cluster: unknown cluster 'shadow' (known: api, web)",
            "spec.routes[1].mirrors[1].cluster: unknown cluster 'ap' (did you mean 'api'? known: api, web)",
        ],
    ),
    (
        # References are checked even when the entry has unrelated problems.
        lambda d: _route(d).update(
            timeout="soon",
            mirrors=[{"cluster": "nope", "percent": 200}, 5],
        ),
        [
            (
                "spec.routes[0].timeout: invalid duration 'soon': expected seconds as a number or "
                "a string like '250ms', '1.5s', '2m', '1h', '500us'"
            ),
            "spec.routes[0].mirrors[0].percent: must be between 0 and 100, got 200",
            "spec.routes[0].mirrors[1]: expected mapping, got integer",
            "spec.routes[0].mirrors[0].cluster: unknown cluster 'nope' (known: api, web)",
        ],
    ),
    (
        lambda d: (
            d["spec"].update(clusters=[]) or _route(d, 1).update(mirrors=[{"cluster": "web"}])
        ),
        [
            "spec.routes[0].cluster: unknown cluster 'api' (no clusters are defined)",
            "spec.routes[1].cluster: unknown cluster 'web' (no clusters are defined)",
            "spec.routes[1].mirrors[0].cluster: unknown cluster 'web' (no clusters are defined)",
        ],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), GRAPH_RULES)
def test_graph_rules(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: list[str]
) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


def test_routes_without_a_cluster_need_no_cluster_reference(doc: Doc) -> None:
    _answer(doc, direct_response={"status": 200})
    doc["spec"]["clusters"] = [_cluster(doc, 1)]
    assert load_config(doc).route("api").cluster is None


def test_all_issues_are_reported_together(doc: Doc, issues_of: Issues) -> None:
    _match(doc).update(methods=["get"], path={"regex": "("})
    _route(doc).update(rewrite={"substitution": "x"}, mirrors=[{"cluster": "nope"}])
    _route(doc, 1).update(redirect={"code": 399, "scheme": "https"})
    _cluster(doc).update(overprovisioning_factor=0, discovery={"type": "file"})
    assert issues_of(doc) == [
        (
            "spec.routes[0].match.path.regex: invalid regex '(': missing ), unterminated "
            "subpattern at position 0"
        ),
        (
            "spec.routes[0].match.methods[0]: invalid method 'get': methods are case-sensitive, "
            "write 'GET'"
        ),
        "spec.routes[0].rewrite.substitution: only allowed together with 'regex'",
        "spec.routes[1].redirect.code: unsupported value 399 (allowed: 301, 302, 303, 307, 308)",
        f"spec.routes[1]: {ONE_ACTION} (got 'cluster' and 'redirect')",
        "spec.clusters[0].overprovisioning_factor: must be at least 1, got 0",
        "spec.clusters[0].discovery.path: required when type is 'file'",
        "spec.routes[0].mirrors[0].cluster: unknown cluster 'nope' (known: api, web)",
    ]


# -- every mapping rejects unknown fields ------------------------------------------------------


def _mapping_paths(node: Any, path: str = "") -> list[tuple[str, dict]]:
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _mapping_paths(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _mapping_paths(item, f"{path}[{index}]")
    return found


def test_unknown_field_is_reported_at_every_new_mapping() -> None:
    document = config_to_dict(load_config(FULL_YAML))
    nodes = _mapping_paths(document)
    assert {
        "spec.routes[0].match.path",
        "spec.routes[0].match.headers[0]",
        "spec.routes[0].match.query[0]",
        "spec.routes[0].weighted_clusters[0]",
        "spec.routes[0].rewrite",
        "spec.routes[0].request_headers",
        "spec.routes[0].request_headers.set[0]",
        "spec.routes[0].mirrors[0]",
        "spec.routes[2].direct_response",
        "spec.routes[2].direct_response.headers[0]",
        "spec.routes[3].redirect",
        "spec.clusters[1].discovery",
    } <= {path for path, _ in nodes}
    for path, node in nodes:
        node["zz_extra"] = 1
        with pytest.raises(ConfigError) as caught:
            load_config(copy.deepcopy(document))
        del node["zz_extra"]
        (issue,) = caught.value.issues
        assert issue.path == (f"{path}.zz_extra" if path else "zz_extra")
        assert issue.message.startswith("unknown field (allowed: ")


def test_route_and_cluster_field_lists_cover_the_model() -> None:
    """The document accepts exactly the model's fields (besides the nested path)."""
    document = config_to_dict(load_config(FULL_YAML))
    assert set(document["spec"]["routes"][0]) == set(Route.__dataclass_fields__)
    assert set(document["spec"]["clusters"][0]) == set(Cluster.__dataclass_fields__)
