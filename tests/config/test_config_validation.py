"""Every validation rule, checked by the exact "path: message" lines it produces."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omnirelay.config import ConfigError, config_to_dict, load_config

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]


def _listener(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["listeners"][index]


def _route(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["routes"][index]


def _cluster(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["clusters"][index]


def _add_listener(doc: Doc, **fields: Any) -> None:
    doc["spec"]["listeners"].append(
        {"name": "second", "address": "0.0.0.0", "port": 9090, **fields}
    )


# -- unknown fields -----------------------------------------------------------------------------

UNKNOWN_FIELDS = [
    (lambda d: d.__setitem__("metdata", {}), "metdata: unknown field (did you mean 'metadata'?)"),
    (
        lambda d: d.__setitem__("metadata", {"autor": "x"}),
        "metadata.autor: unknown field (did you mean 'author'?)",
    ),
    (
        lambda d: d["spec"].__setitem__("listner", []),
        "spec.listner: unknown field (did you mean 'listeners'?)",
    ),
    (
        lambda d: _listener(d).__setitem__("adress", "::"),
        "spec.listeners[0].adress: unknown field (did you mean 'address'?)",
    ),
    (
        lambda d: _route(d).__setitem__("timout", "1s"),
        "spec.routes[0].timout: unknown field (did you mean 'timeout'?)",
    ),
    (
        lambda d: _route(d)["match"].__setitem__("host", ["a.com"]),
        "spec.routes[0].match.host: unknown field (did you mean 'hosts'?)",
    ),
    (
        lambda d: _route(d)["match"]["path"].__setitem__("prefx", "/"),
        "spec.routes[0].match.path.prefx: unknown field (did you mean 'prefix'?)",
    ),
    (
        lambda d: _route(d)["match"].__setitem__(
            "headers", [{"name": "a", "exact": "b", "exatc": "b"}]
        ),
        "spec.routes[0].match.headers[0].exatc: unknown field (did you mean 'exact'?)",
    ),
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "a.b", "confg": {}}]),
        "spec.routes[0].filters[0].confg: unknown field (did you mean 'config'?)",
    ),
    (
        lambda d: _listener(d).__setitem__("filters", [{"name": "a.b", "Config": {}}]),
        "spec.listeners[0].filters[0].Config: unknown field (did you mean 'config'?)",
    ),
    (
        lambda d: _cluster(d).__setitem__("lbPolicy", "round_robin"),
        "spec.clusters[0].lbPolicy: unknown field (did you mean 'lb_policy'?)",
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].__setitem__("wieght", 2),
        "spec.clusters[0].endpoints[0].wieght: unknown field (did you mean 'weight'?)",
    ),
    (
        lambda d: d.__setitem__("rollout", {"wave": []}),
        "rollout.wave: unknown field (did you mean 'waves'?)",
    ),
    (
        lambda d: _route(d)["match"].__setitem__("x.y", 1),
        'spec.routes[0].match["x.y"]: unknown field (allowed: hosts, path, methods, headers, query)',
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].__setitem__("zzz", 1),
        (
            "spec.clusters[0].endpoints[0].zzz: unknown field "
            "(allowed: address, port, weight, priority, locality)"
        ),
    ),
    (
        lambda d: _listener(d).__setitem__(7, 1),
        "spec.listeners[0][7]: field names must be strings",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), UNKNOWN_FIELDS)
def test_unknown_fields_are_rejected_everywhere(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: str
) -> None:
    mutate(doc)
    assert issues_of(doc) == [expected]


# -- types, required fields, value checks ------------------------------------------------------

FIELD_RULES = [
    # document shape
    (lambda d: d.clear(), ["spec: missing required field"]),
    (lambda d: d.__setitem__("spec", []), ["spec: expected mapping, got list"]),
    (lambda d: d["spec"].pop("clusters"), ["spec.clusters: missing required field"]),
    (
        lambda d: d["spec"].__setitem__("routes", {"api": {}}),
        ["spec.routes: expected list, got mapping"],
    ),
    (lambda d: d.__setitem__("metadata", None), ["metadata: expected mapping, got null"]),
    # listeners
    (
        lambda d: d["spec"].__setitem__("listeners", []),
        ["spec.listeners: at least one listener is required"],
    ),
    (
        lambda d: d["spec"]["listeners"].append("l2"),
        ["spec.listeners[1]: expected mapping, got string"],
    ),
    (lambda d: _listener(d).pop("address"), ["spec.listeners[0].address: missing required field"]),
    (
        lambda d: _listener(d).__setitem__("port", "8080"),
        ["spec.listeners[0].port: expected integer, got string"],
    ),
    (
        lambda d: _listener(d).__setitem__("port", 8080.0),
        ["spec.listeners[0].port: expected integer, got number"],
    ),
    (
        lambda d: _listener(d).__setitem__("port", True),
        ["spec.listeners[0].port: expected integer, got boolean"],
    ),
    (
        lambda d: _listener(d).__setitem__("port", 65536),
        ["spec.listeners[0].port: must be between 0 and 65535, got 65536"],
    ),
    (
        lambda d: _listener(d).__setitem__("name", "my listener"),
        [
            (
                "spec.listeners[0].name: invalid name 'my listener': use 1-128 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("name", 12),
        ["spec.listeners[0].name: expected string, got integer (quote it)"],
    ),
    (
        lambda d: _listener(d).__setitem__("address", "example.com"),
        [
            "spec.listeners[0].address: invalid address 'example.com': expected an IP address or 'localhost'"
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("address", "[::1]"),
        [
            (
                "spec.listeners[0].address: invalid address '[::1]': expected an IP address or "
                "'localhost' (write IPv6 addresses without brackets)"
            )
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("max_header_bytes", 512),
        ["spec.listeners[0].max_header_bytes: must be between 1024 and 1048576 bytes, got 512"],
    ),
    (
        lambda d: _listener(d).__setitem__("max_header_bytes", "2MiB"),
        ["spec.listeners[0].max_header_bytes: must be between 1024 and 1048576 bytes, got 2097152"],
    ),
    (
        lambda d: _listener(d).__setitem__("buffer_limit", "1mb"),
        [
            (
                "spec.listeners[0].buffer_limit: invalid size '1mb': expected bytes as an integer "
                "or a string like '512B', '64KiB', '1MiB', '10KB', '1GB'"
            )
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("buffer_limit", 0),
        ["spec.listeners[0].buffer_limit: must be at least 1 bytes, got 0"],
    ),
    (
        lambda d: _listener(d).__setitem__("idle_timeout", "10 s"),
        [
            (
                "spec.listeners[0].idle_timeout: invalid duration '10 s': expected seconds as a "
                "number or a string like '250ms', '1.5s', '2m', '1h', '500us'"
            )
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("request_timeout", -5),
        ["spec.listeners[0].request_timeout: invalid duration -5: must not be negative"],
    ),
    (
        lambda d: _listener(d).__setitem__("via", "my proxy"),
        ["spec.listeners[0].via: invalid via name 'my proxy': must be an RFC 9110 token or empty"],
    ),
    (
        lambda d: _listener(d).__setitem__("xff_trusted_hops", -1),
        ["spec.listeners[0].xff_trusted_hops: must be at least 0, got -1"],
    ),
    (
        lambda d: _listener(d).__setitem__("routes", "api"),
        ["spec.listeners[0].routes: expected list, got string"],
    ),
    (
        lambda d: _listener(d).__setitem__("routes", ["api", ""]),
        ["spec.listeners[0].routes[1]: must not be empty"],
    ),
    # routes
    (
        lambda d: _route(d).pop("cluster"),
        [
            (
                "spec.routes[0]: exactly one of 'cluster', 'weighted_clusters', "
                "'direct_response' or 'redirect' is required"
            )
        ],
    ),
    (lambda d: _route(d).pop("match"), ["spec.routes[0].match: missing required field"]),
    (
        lambda d: _route(d).__setitem__("timeout", True),
        [
            (
                "spec.routes[0].timeout: invalid duration True: expected seconds as a number or "
                "a string like '250ms', '1.5s', '2m', '1h', '500us'"
            )
        ],
    ),
    (
        lambda d: _route(d).__setitem__("timeout", math.nan),
        ["spec.routes[0].timeout: invalid duration nan: must be finite"],
    ),
    (
        lambda d: _route(d).update(timeout="15s", per_try_timeout="20s"),
        ["spec.routes[0].per_try_timeout: 20s exceeds the route timeout 15s"],
    ),
    (
        lambda d: _route(d).update(per_try_timeout="16s"),
        ["spec.routes[0].per_try_timeout: 16s exceeds the route timeout 15s"],
    ),
    (
        lambda d: _route(d).update(per_try_timeout=0),
        ["spec.routes[0].per_try_timeout: must be greater than 0"],
    ),
    (
        lambda d: _route(d).update(max_request_body=-1),
        ["spec.routes[0].max_request_body: invalid size -1: must not be negative"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("path", {"exact": "/a", "prefix": "/b"}),
        ["spec.routes[0].match.path: exactly one of 'exact', 'prefix' or 'regex' is required"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("path", {}),
        ["spec.routes[0].match.path: exactly one of 'exact', 'prefix' or 'regex' is required"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("path", "/api/"),
        ["spec.routes[0].match.path: expected mapping, got string"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("path", {"prefix": "api/"}),
        ["spec.routes[0].match.path.prefix: invalid path 'api/': must start with '/'"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("path", {"exact": "/a?b=1"}),
        [
            (
                "spec.routes[0].match.path.exact: invalid path '/a?b=1': use printable ASCII "
                "without spaces, '?' or '#' (percent-encode other bytes)"
            )
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("hosts", []),
        ["spec.routes[0].match.hosts: at least one host is required"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("hosts", [""]),
        ["spec.routes[0].match.hosts[0]: must not be empty"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("hosts", ["a.*.com", "*example.com", "*:80"]),
        [
            (
                "spec.routes[0].match.hosts[0]: invalid host 'a.*.com': '*' is only allowed alone "
                "or as a leading '*.' label"
            ),
            (
                "spec.routes[0].match.hosts[1]: invalid host '*example.com': '*' is only allowed "
                "alone or as a leading '*.' label"
            ),
            (
                "spec.routes[0].match.hosts[2]: invalid host '*:80': '*' is only allowed alone "
                "or as a leading '*.' label"
            ),
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("hosts", ["a..com", "-a.com", "a.com:0", "::1"]),
        [
            (
                "spec.routes[0].match.hosts[0]: invalid host 'a..com': use '*', '*.example.com' "
                "or an exact host, optionally with ':port'"
            ),
            (
                "spec.routes[0].match.hosts[1]: invalid host '-a.com': use '*', '*.example.com' "
                "or an exact host, optionally with ':port'"
            ),
            "spec.routes[0].match.hosts[2]: invalid host 'a.com:0': port must be between 1 and 65535",
            (
                "spec.routes[0].match.hosts[3]: invalid host '::1': use '*', '*.example.com' "
                "or an exact host, optionally with ':port'"
            ),
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("headers", [{"name": "X Env", "exact": "a"}]),
        [
            "spec.routes[0].match.headers[0].name: invalid header name 'X Env': must be an RFC 9110 token"
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("headers", [{"name": "x-a", "exact": "a\nb"}]),
        [
            (
                "spec.routes[0].match.headers[0].exact: invalid header value 'a\\nb': use "
                "printable ASCII, spaces and tabs"
            )
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("headers", [{"name": "x-a", "exact": " a"}]),
        [
            "spec.routes[0].match.headers[0].exact: invalid header value ' a': leading or trailing whitespace"
        ],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("headers", [{"name": "x-a", "exact": True}]),
        ["spec.routes[0].match.headers[0].exact: expected string, got boolean (quote it)"],
    ),
    (
        lambda d: _route(d)["match"].__setitem__("headers", [{"name": "x-a"}]),
        [
            "spec.routes[0].match.headers[0]: exactly one of 'exact', 'regex' or 'present' is required"
        ],
    ),
    # filters
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "add header"}]),
        [
            (
                "spec.routes[0].filters[0].name: invalid filter name 'add header': expected a "
                "dotted identifier like 'omnirelay.filters.http.headers'"
            )
        ],
    ),
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "a", "config": [1]}]),
        ["spec.routes[0].filters[0].config: expected mapping, got list"],
    ),
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "a", "config": {"x": [1, math.inf]}}]),
        ["spec.routes[0].filters[0].config.x[1]: number must be finite, got inf"],
    ),
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "a", "config": {"x": {1: "y"}}}]),
        ["spec.routes[0].filters[0].config.x[1]: keys must be strings"],
    ),
    (
        lambda d: _route(d).__setitem__("filters", [{"name": "a", "config": {"x": b"raw"}}]),
        ["spec.routes[0].filters[0].config.x: unsupported value of type bytes"],
    ),
    # clusters and endpoints
    (
        lambda d: _cluster(d).__setitem__("endpoints", []),
        ["spec.clusters[0].endpoints: at least one endpoint is required"],
    ),
    (
        lambda d: _cluster(d).pop("endpoints"),
        ["spec.clusters[0].endpoints: missing required field"],
    ),
    (
        lambda d: _cluster(d).__setitem__("lb_policy", "least_conn"),
        [
            (
                "spec.clusters[0].lb_policy: unsupported value 'least_conn' (allowed: "
                "round_robin, least_request, random, ring_hash, maglev)"
            )
        ],
    ),
    (
        lambda d: _cluster(d).__setitem__("connect_timeout", 0),
        ["spec.clusters[0].connect_timeout: must be greater than 0"],
    ),
    (
        lambda d: _cluster(d).__setitem__("max_idle_per_endpoint", -1),
        ["spec.clusters[0].max_idle_per_endpoint: must be at least 0, got -1"],
    ),
    (
        lambda d: _cluster(d).__setitem__(
            "endpoints",
            [{"address": "a.internal", "port": 0}, {"address": "b.internal", "port": 65536}],
        ),
        [
            "spec.clusters[0].endpoints[0].port: must be between 1 and 65535, got 0",
            "spec.clusters[0].endpoints[1].port: must be between 1 and 65535, got 65536",
        ],
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].__setitem__("weight", 0),
        ["spec.clusters[0].endpoints[0].weight: must be at least 1, got 0"],
    ),
    (
        lambda d: _cluster(d)["endpoints"][0].__setitem__("address", "300.1.1.1"),
        [
            (
                "spec.clusters[0].endpoints[0].address: invalid address '300.1.1.1': expected an IP "
                "address or DNS name"
            )
        ],
    ),
    (
        lambda d: _cluster(d)["endpoints"].append(
            {"address": "10.0.0.1", "port": 8080, "weight": 3}
        ),
        [
            (
                "spec.clusters[0].endpoints[1]: duplicate endpoint 10.0.0.1:8080 "
                "(first at spec.clusters[0].endpoints[0])"
            )
        ],
    ),
    # metadata and rollout
    (
        lambda d: d.__setitem__("metadata", {"version": 1.2}),
        ["metadata.version: expected string, got number (quote it)"],
    ),
    (lambda d: d.__setitem__("metadata", {"version": ""}), ["metadata.version: must not be empty"]),
    (
        lambda d: d.__setitem__("metadata", {"epoch": -1}),
        ["metadata.epoch: must be at least 0, got -1"],
    ),
    (lambda d: d.__setitem__("metadata", {"ttl": "0s"}), ["metadata.ttl: must be greater than 0"]),
    (
        lambda d: d.__setitem__("metadata", {"created": "2024-05-01"}),
        [
            (
                "metadata.created: invalid timestamp '2024-05-01': expected RFC 3339 like "
                "'2024-05-01T12:00:00Z'"
            )
        ],
    ),
    (
        lambda d: d.__setitem__("rollout", {"targets": {"region": "eu"}}),
        ["rollout.targets: expected list, got mapping"],
    ),
    (
        lambda d: d.__setitem__("rollout", {"waves": [{"percent": 10}, "all"]}),
        ["rollout.waves[1]: expected mapping, got string"],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), FIELD_RULES)
def test_field_rules(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: list[str]
) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


ACCEPTED = [
    lambda d: _route(d).update(timeout="15s", per_try_timeout="15s"),
    lambda d: _route(d).update(timeout=0, per_try_timeout="1h"),
    lambda d: _route(d).update(per_try_timeout=None, max_request_body=0),
    lambda d: _listener(d).update(max_header_bytes="1KiB"),
    lambda d: _listener(d).update(max_header_bytes="1MiB", via="", xff_trusted_hops=2),
    lambda d: _listener(d).update(address="localhost", port=0, routes=None),
    lambda d: _listener(d).update(address="fe80::1%eth0"),
    lambda d: _route(d)["match"].update(
        hosts=["*", "*.example.com", "example.com:8443", "[2001:db8::1]:443", "under_score.io"]
    ),
    lambda d: _cluster(d)["endpoints"].append({"address": "2001:db8::2", "port": 80}),
    lambda d: _cluster(d)["endpoints"].append({"address": "10.0.0.1", "port": 8081}),
    lambda d: d.__setitem__("metadata", {"created": "2024-05-01T12:00:00.5+05:30", "ttl": 60}),
    lambda d: d.__setitem__("rollout", {"targets": [], "waves": [{"percent": 5.5, "tags": None}]}),
]


@pytest.mark.parametrize("mutate", ACCEPTED)
def test_accepted_edge_values(doc: Doc, mutate: Callable[[Doc], None]) -> None:
    mutate(doc)
    load_config(doc)


# -- graph rules ---------------------------------------------------------------------------------

GRAPH_RULES = [
    (
        lambda d: _route(d, 1).__setitem__("cluster", "billing"),
        ["spec.routes[1].cluster: unknown cluster 'billing' (known: api, web)"],
    ),
    (
        lambda d: _route(d, 1).__setitem__("cluster", "wbe"),
        ["spec.routes[1].cluster: unknown cluster 'wbe' (did you mean 'web'? known: api, web)"],
    ),
    (
        lambda d: d["spec"].update(clusters=[]),
        [
            "spec.routes[0].cluster: unknown cluster 'api' (no clusters are defined)",
            "spec.routes[1].cluster: unknown cluster 'web' (no clusters are defined)",
        ],
    ),
    (
        lambda d: d["spec"]["routes"].append({"name": "api", "match": {}, "cluster": "web"}),
        ["spec.routes[2].name: duplicate route name 'api' (first defined at spec.routes[0])"],
    ),
    (
        lambda d: d["spec"]["clusters"].append(
            {"name": "web", "endpoints": [{"address": "10.0.0.9", "port": 1}]}
        ),
        ["spec.clusters[2].name: duplicate cluster name 'web' (first defined at spec.clusters[1])"],
    ),
    (
        lambda d: _add_listener(d, name="public"),
        [
            "spec.listeners[1].name: duplicate listener name 'public' (first defined at spec.listeners[0])"
        ],
    ),
    (
        lambda d: _listener(d).__setitem__("routes", ["web", "apii", "web"]),
        [
            "spec.listeners[0].routes[1]: unknown route 'apii' (did you mean 'api'? known: api, web)",
            "spec.listeners[0].routes[2]: route 'web' is listed twice (first at index 0)",
        ],
    ),
    (
        lambda d: _add_listener(d, port=8080),
        [
            "spec.listeners[1].port: 0.0.0.0:8080 is already used by listener 'public' (spec.listeners[0])"
        ],
    ),
    (
        lambda d: (
            _listener(d).update(address="::1"),
            _add_listener(d, address="0:0::1", port=8080),
        ),
        [
            "spec.listeners[1].port: [0:0::1]:8080 is already used by listener 'public' (spec.listeners[0])"
        ],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), GRAPH_RULES)
def test_graph_rules(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: list[str]
) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


def test_sockets_that_may_coexist(doc: Doc) -> None:
    _listener(doc)["port"] = 0
    _add_listener(doc, name="ephemeral", port=0)  # two ephemeral ports never collide
    _add_listener(doc, name="loopback", address="127.0.0.1", port=9090)  # wildcard + specific
    _add_listener(doc, name="v6", address="::", port=9090)  # other address family
    load_config(doc)


def test_many_known_names_are_cut_short(doc: Doc, issues_of: Issues) -> None:
    doc["spec"]["clusters"] = [
        {"name": f"c{i:02}", "endpoints": [{"address": "10.0.0.1", "port": 80}]} for i in range(12)
    ]
    doc["spec"]["routes"] = [{"name": "r", "match": {}, "cluster": "zzz"}]
    assert issues_of(doc) == [
        (
            "spec.routes[0].cluster: unknown cluster 'zzz' "
            "(known: c00, c01, c02, c03, c04, c05, c06, c07, c08, c09, ... (2 more))"
        )
    ]


# -- one pass -------------------------------------------------------------------------------------


def test_all_issues_are_reported_together(doc: Doc, issues_of: Issues) -> None:
    doc["metadata"] = {"epoch": "1"}
    _listener(doc).update(port=-1, prot=1)
    _route(doc).update(cluster="billing", timout="1s")
    _route(doc, 1)["match"]["path"] = {"prefix": "x"}
    _cluster(doc)["endpoints"] = []
    doc["spec"]["clusters"].append({"name": "web", "endpoints": [{"address": "a.b", "port": 1}]})
    assert issues_of(doc) == [
        "metadata.epoch: expected integer, got string",
        "spec.listeners[0].prot: unknown field (did you mean 'port'?)",
        "spec.listeners[0].port: must be between 0 and 65535, got -1",
        "spec.routes[0].timout: unknown field (did you mean 'timeout'?)",
        "spec.routes[1].match.path.prefix: invalid path 'x': must start with '/'",
        "spec.clusters[0].endpoints: at least one endpoint is required",
        "spec.clusters[2].name: duplicate cluster name 'web' (first defined at spec.clusters[1])",
        "spec.routes[0].cluster: unknown cluster 'billing' (known: api, web)",
    ]


def test_references_to_broken_entries_are_not_reported_twice(doc: Doc, issues_of: Issues) -> None:
    # The cluster "api" is declared, just broken; the route pointing at it is fine.
    _cluster(doc)["connect_timeout"] = "soon"
    issues = issues_of(doc)
    assert len(issues) == 1 and issues[0].startswith("spec.clusters[0].connect_timeout:")


def test_unreadable_section_skips_graph_checks(doc: Doc, issues_of: Issues) -> None:
    doc["spec"]["clusters"] = "api"
    assert issues_of(doc) == ["spec.clusters: expected list, got string"]


# -- parsing errors ------------------------------------------------------------------------------


def test_document_root_must_be_a_mapping(issues_of: Issues) -> None:
    assert issues_of("- a\n- b\n") == ["expected a mapping at the document root, got list"]
    assert issues_of("") == ["expected a mapping at the document root, got null"]


def test_yaml_syntax_error_has_a_location(issues_of: Issues) -> None:
    assert issues_of("spec:\n  listeners: [\n") == [
        "<text>: invalid YAML: expected the node content, but found '<stream end>' (line 3, column 1)"
    ]


def test_duplicate_yaml_keys_are_rejected(issues_of: Issues) -> None:
    text = "spec:\n  routes: []\n  routes: []\n"
    assert issues_of(text) == ["<text>: invalid YAML: duplicate key 'routes' (line 3, column 3)"]


def test_yaml_anchors_and_merge_keys_still_work() -> None:
    # Keys brought in by a merge may be overridden without counting as duplicates.
    text = """
spec:
  listeners: [{name: l, address: 127.0.0.1, port: 0}]
  clusters: [{name: c, endpoints: [{address: 10.0.0.1, port: 80}]}]
  routes:
    - &base {name: a, match: {}, cluster: c, timeout: 5s}
    - <<: *base
      name: b
"""
    config = load_config(text)
    assert config.route("b").timeout == 5.0


def test_duplicate_json_keys_are_rejected(issues_of: Issues) -> None:
    assert issues_of('{"spec": {}, "spec": {}}') == ["<text>: invalid JSON: duplicate key 'spec'"]


def test_invalid_json_file(tmp_path: Path, issues_of: Issues) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"spec": ')
    assert issues_of(path) == [f"{path}: invalid JSON: Expecting value: line 1 column 10 (char 9)"]


def test_missing_file(tmp_path: Path, issues_of: Issues) -> None:
    path = tmp_path / "missing.yaml"
    assert issues_of(path) == [f"{path}: cannot read config: No such file or directory"]
    assert issues_of(str(path)) == [f"{path}: cannot read config: No such file or directory"]


def test_absurd_nesting_is_an_issue_not_a_crash(doc: Doc, issues_of: Issues) -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"x": deep}
    _route(doc)["filters"] = [{"name": "a", "config": deep}]
    assert issues_of(doc) == ["the document is nested too deeply"]
    assert issues_of("[" * 5000 + "]" * 5000) == ["the document is nested too deeply"]


def _mapping_nodes(node: Any, path: str) -> list[tuple[str, dict]]:
    """Every schema mapping in a normalized document with its path; free-form data excluded."""
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            if key == "config" and path.split(".")[-1].startswith("filters["):
                continue  # filter config is free-form
            if path == "rollout":
                continue  # targets and waves are free-form
            found += _mapping_nodes(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _mapping_nodes(item, f"{path}[{index}]")
    return found


def test_unknown_field_is_reported_at_every_schema_mapping() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "edge.yaml"
    document = config_to_dict(load_config(example))
    document["rollout"] = {"targets": [], "waves": []}
    nodes = _mapping_nodes(document, "")
    assert {
        "",
        "metadata",
        "rollout",
        "spec",
        "spec.listeners[0].filters[0]",
        "spec.routes[0].match.path",
        "spec.routes[0].match.headers[0]",
        "spec.clusters[0].endpoints[0]",
    } <= {path for path, _ in nodes}
    for path, node in nodes:
        node["zz_extra"] = 1
        with pytest.raises(ConfigError) as caught:
            load_config(document)
        del node["zz_extra"]
        (issue,) = caught.value.issues
        assert issue.path == (f"{path}.zz_extra" if path else "zz_extra")
        assert issue.message.startswith("unknown field (allowed: ")
    load_config(document)
