"""A realistic large route table for the `routes` benchmark scenario and its micro benchmark.

`large_config()` returns a config document (a plain dict, ready for `load_config` or
`json.dumps`) with one listener, 100 virtual hosts of 10 routes each (1,000 routes), a default
catch-all route at the very end, and 100 clusters whose endpoints all point at one origin.

Per virtual host `svc-NN.example.internal` (also reachable as `svc-NN`), in this order:

    0  exact   /healthz
    1  exact   /api/v1/status
    2  prefix  /api/v1/orders/   + header x-canary: always   -> the next service's cluster
    3  prefix  /api/v1/orders/
    4  prefix  /api/v1/users/    + header x-tenant: internal
    5  prefix  /api/v1/users/
    6  prefix  /api/v2/
    7  prefix  /static/
    8  prefix  /admin/           + header x-admin: "1"
    9  prefix  /api/v1/payments/                  <- REQUESTS["last_vhost"] hits svc-99's

then `default`: hosts ["*"], prefix "/"                 <- REQUESTS["catch_all"] hits it

Both measured requests use the path `/api/v1/payments/42`, so on every virtual host but the
target the path of route 9 matches and only the host comparison rejects it: a linear scan does
the most work possible before it reaches the route that answers. The benchmark's requests
carry none of the matched headers, so header routes never match.

Clusters are `backend-00` .. `backend-99`; virtual host NN sends its traffic to `backend-NN`
(its canary route to the next one) and the default route to `backend-00`. A quarter of the
clusters (NN = 2 mod 4) get a second endpoint, `localhost` on the same origin port (the config
rejects a repeated address:port within a cluster). The clusters of both measured routes keep a
single 127.0.0.1 endpoint, like the 1-route config they are compared with, so that the upstream
side is the same and only the route table differs.

Header matches are written `{name, exact}` (the config's current header-match syntax).
"""
from __future__ import annotations

VHOSTS = 100
ROUTES_PER_VHOST = 10
CLUSTERS = 100
DOMAIN = "example.internal"
LISTENER = "bench"  # the same listener name as the 1-route config in run.py

# request name -> (Host header, path, name of the route it must reach)
REQUESTS = {
    "last_vhost": (f"svc-{VHOSTS - 1:02d}.{DOMAIN}", "/api/v1/payments/42",
                   f"svc-{VHOSTS - 1:02d}-payments"),
    "catch_all": (f"unknown.{DOMAIN}", "/api/v1/payments/42", "default"),
}


def _prefix(p: str) -> dict:
    return {"path": {"prefix": p}}


def _exact(p: str) -> dict:
    return {"path": {"exact": p}}


def _header(name: str, value: str) -> dict:
    return {"headers": [{"name": name, "exact": value}]}


# (route suffix, match conditions other than hosts, cluster offset from the vhost's own)
VHOST_ROUTES: list[tuple[str, dict, int]] = [
    ("healthz", _exact("/healthz"), 0),
    ("status", _exact("/api/v1/status"), 0),
    ("orders-canary", {**_prefix("/api/v1/orders/"), **_header("x-canary", "always")}, 1),
    ("orders", _prefix("/api/v1/orders/"), 0),
    ("users-internal", {**_prefix("/api/v1/users/"), **_header("x-tenant", "internal")}, 0),
    ("users", _prefix("/api/v1/users/"), 0),
    ("v2", _prefix("/api/v2/"), 0),
    ("static", _prefix("/static/"), 0),
    ("admin", {**_prefix("/admin/"), **_header("x-admin", "1")}, 0),
    ("payments", _prefix("/api/v1/payments/"), 0),
]
assert len(VHOST_ROUTES) == ROUTES_PER_VHOST


def _cluster(n: int) -> str:
    return f"backend-{n % CLUSTERS:02d}"


def large_config(listener_port: int, origin_port: int, *, host: str = "127.0.0.1",
                 header_matches: bool = True) -> dict:
    """The 1,000-route + default-route config; every endpoint is the origin.

    `header_matches=False` drops the header conditions (the routes stay, so the table keeps its
    size and order); it exists only for trees whose config layer cannot load them.
    """
    routes = []
    for v in range(VHOSTS):
        svc = f"svc-{v:02d}"
        hosts = [f"{svc}.{DOMAIN}", svc]
        for suffix, match, offset in VHOST_ROUTES:
            if not header_matches:
                match = {k: val for k, val in match.items() if k != "headers"}
            routes.append({"name": f"{svc}-{suffix}", "match": {"hosts": hosts, **match},
                           "cluster": _cluster(v + offset)})
    routes.append({"name": "default", "match": {"hosts": ["*"], "path": {"prefix": "/"}},
                   "cluster": _cluster(0)})

    measured = {r["cluster"] for r in routes if r["name"] in {t for *_, t in REQUESTS.values()}}
    clusters = []
    for c in range(CLUSTERS):
        name = _cluster(c)
        endpoints = [{"address": host, "port": origin_port}]
        if c % 4 == 2 and name not in measured:
            endpoints.append({"address": "localhost", "port": origin_port})
        clusters.append({"name": name, "endpoints": endpoints})
    return {"spec": {
        "listeners": [{"name": LISTENER, "address": host, "port": listener_port}],
        "routes": routes,
        "clusters": clusters,
    }}


def probes(header_matches: bool = True) -> list[tuple[str, str, list[tuple[str, str]], str]]:
    """(Host, path, headers, the route it must reach) for the large table: the measured
    requests (with the headers wrk sends) and a few that check the table works as described."""
    out = [(host, path, [("user-agent", "wrk")], want) for host, path, want in REQUESTS.values()]
    orders = (f"svc-07.{DOMAIN}", "/api/v1/orders/1")
    out += [
        ("svc-07", "/healthz", [], "svc-07-healthz"),
        ("svc-07", "/healthz/x", [], "default"),
    ]
    if header_matches:  # a header route needs its header with exactly its value
        out += [
            (*orders, [], "svc-07-orders"),
            (*orders, [("x-canary", "always")], "svc-07-orders-canary"),
            (*orders, [("x-canary", "never")], "svc-07-orders"),
        ]
    return out


def mismatches(table, header_matches: bool = True) -> list[str]:
    """What the built table (the core's RouteTable for LISTENER) gets wrong among `probes()`."""
    wrong = []
    for host, path, headers, want in probes(header_matches):
        entry = table.match_request(host, path, headers)
        got = entry.name if entry is not None else None
        if got != want:
            wrong.append(f"Host {host} {path} {headers} reaches {got!r}, want {want!r}")
    return wrong
