"""Property tests: generated valid configs survive config_to_dict, JSON and YAML unchanged."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timedelta, timezone

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from omnirelay.config import (
    CircuitBreakers,
    Cluster,
    Config,
    DirectResponse,
    Discovery,
    Endpoint,
    FilterSpec,
    FrozenDict,
    HashKey,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    Http2Options,
    Listener,
    Metadata,
    Mirror,
    OutlierDetection,
    QueryMatch,
    Redirect,
    RetryPolicy,
    Rewrite,
    Rollout,
    Route,
    RouteMatch,
    SniRoute,
    Spec,
    TcpProxy,
    TlsContext,
    WeightedCluster,
    canonical_json,
    config_to_dict,
    load_config,
)
from omnirelay.config import HealthCheck as HealthCheckConfig
from omnirelay.config.checks import MANAGED_HEADERS

# -- leaf values ---------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,12}", fullmatch=True)
seconds = st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.integers(0, 10**6).map(float)
positive_seconds = seconds.filter(lambda s: s > 0)
sizes = st.integers(0, 2**40)
ports = st.integers(1, 65535)

_label = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,6}[a-z0-9])?", fullmatch=True)
# The last label starts with a letter: an all-numeric one would have to be a valid IPv4 address.
_tld = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
dns_names = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_label, max_size=3), _tld
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)

_port_suffix = st.none() | ports.map(lambda p: f":{p}")
host_patterns = st.one_of(
    st.just("*"),
    st.builds(lambda h, p: h + (p or ""), dns_names | ipv4, _port_suffix),
    st.builds(lambda h, p: f"*.{h}" + (p or ""), dns_names, _port_suffix),
    st.builds(lambda h, p: f"[{h}]" + (p or ""), ipv6, _port_suffix),
)
authorities = st.builds(
    lambda h, p: h + (p or ""), dns_names | ipv4 | ipv6.map(lambda a: f"[{a}]"), _port_suffix
)
_path_chars = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "?#")
paths = st.text(_path_chars, max_size=20).map(lambda p: "/" + p)
header_names = st.from_regex(r"[!#$%&'*+.^_`|~0-9a-z-]{1,12}", fullmatch=True)
header_values = st.from_regex(r"([!-~]([ \t!-~]{0,10}[!-~])?)?", fullmatch=True)
edited_header_names = header_names.filter(lambda name: name not in MANAGED_HEADERS)
regexes = st.sampled_from(
    [r"/a/(\d+)", r"^/v[12]/.*$", r"(?i)/x", r"[a-z]+", r".*", r"(?P<id>\w+)"]
)
http_methods = st.lists(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"]),
    unique=True,
    max_size=3,
).map(tuple)
free_text = st.text(max_size=12)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | free_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(free_text, inner, max_size=3),
    max_leaves=8,
)
frozen_mappings = st.dictionaries(free_text, json_values, max_size=3).map(FrozenDict)
filters = st.lists(
    st.builds(
        FilterSpec,
        name=st.from_regex(r"[a-z_][a-z0-9_]{0,5}(\.[a-z_][a-z0-9_]{0,5}){0,3}", fullmatch=True),
        config=frozen_mappings,
    ),
    max_size=2,
).map(tuple)


def _timestamp(moment: datetime, offset_minutes: int) -> str:
    return moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()


timestamps = st.builds(
    _timestamp, st.datetimes(datetime(1970, 1, 2), datetime(9999, 1, 1)), st.integers(-1439, 1439)
)

# -- config objects ------------------------------------------------------------------------------

metadata = st.builds(
    Metadata,
    version=st.text(min_size=1, max_size=10),
    epoch=st.integers(0, 2**63),
    ttl=st.none() | positive_seconds,
    author=st.none() | free_text,
    created=st.none() | timestamps,
)

rollouts = st.none() | st.builds(
    Rollout,
    targets=st.lists(frozen_mappings, max_size=2).map(tuple),
    waves=st.lists(frozen_mappings, max_size=2).map(tuple),
)

endpoints = st.builds(
    Endpoint,
    address=ipv4 | ipv6 | dns_names,
    port=ports,
    weight=st.integers(1, 1000),
    priority=st.integers(0, 7),
    locality=st.none() | st.text(min_size=1, max_size=12),
)
discoveries = st.builds(
    Discovery,
    type=st.just("file"),
    path=st.text(min_size=1, max_size=12),
    interval=positive_seconds,
) | st.builds(Discovery, type=st.just("api"), interval=positive_seconds)


statuses = st.integers(100, 599)
hash_keys = st.builds(HashKey, header=header_names) | st.just(HashKey(source_ip=True))
circuit_breakers = st.builds(
    CircuitBreakers,
    max_connections=st.integers(1, 2**20),
    max_pending_requests=st.integers(1, 2**20),
    max_requests=st.integers(1, 2**20),
    max_retries=st.integers(1, 100),
)


@st.composite
def health_checks(draw: st.DrawFn) -> HealthCheckConfig:
    pair = st.tuples(positive_seconds, positive_seconds).filter(lambda p: p[0] != p[1])
    timeout, interval = sorted(draw(pair))
    return HealthCheckConfig(
        path=draw(paths),
        interval=interval,
        timeout=timeout,
        healthy_threshold=draw(st.integers(1, 10)),
        unhealthy_threshold=draw(st.integers(1, 10)),
        expected_statuses=tuple(draw(st.lists(statuses, min_size=1, max_size=3))),
        host=draw(st.none() | dns_names),
    )


@st.composite
def outlier_detections(draw: st.DrawFn) -> OutlierDetection:
    base, top = sorted(draw(st.lists(positive_seconds, min_size=2, max_size=2)))
    return OutlierDetection(
        consecutive_5xx=draw(st.integers(1, 100)),
        consecutive_gateway_failure=draw(st.integers(1, 100)),
        base_ejection_time=base,
        max_ejection_time=top,
        max_ejection_percent=draw(st.integers(0, 100)),
        interval=draw(positive_seconds),
    )


_RETRY_ON = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
]
_WINDOW = st.integers(65535, 2**31 - 1)
http2_options = st.just(Http2Options()) | st.builds(
    Http2Options,
    max_concurrent_streams=st.integers(1, 2**31 - 1),
    initial_stream_window_size=_WINDOW,
    initial_connection_window_size=_WINDOW,
)


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    retry_on = tuple(draw(st.lists(st.sampled_from(_RETRY_ON), min_size=1, max_size=3)))
    codes = draw(st.lists(statuses, min_size=int("retriable-status-codes" in retry_on), max_size=3))
    base, top = sorted(draw(st.lists(positive_seconds, min_size=2, max_size=2)))
    return RetryPolicy(
        retry_on=retry_on,
        num_retries=draw(st.integers(0, 10)),
        retriable_status_codes=tuple(codes),
        base_interval=base,
        max_interval=top,
        budget_percent=draw(st.floats(0, 100) | st.integers(0, 100).map(float)),
        min_retry_concurrency=draw(st.integers(0, 1000)),
    )


@st.composite
def clusters(draw: st.DrawFn, name: str) -> Cluster:
    lb_policy = draw(
        st.sampled_from(["round_robin", "least_request", "random", "ring_hash", "maglev"])
    )
    discovery = draw(st.none() | discoveries)
    return Cluster(
        overprovisioning_factor=draw(st.floats(1, 1e6) | st.integers(1, 10).map(float)),
        discovery=discovery,
        lb_policy=lb_policy,
        hash_key=draw(hash_keys) if lb_policy in ("ring_hash", "maglev") else None,
        health_check=draw(st.none() | health_checks()),
        circuit_breakers=draw(circuit_breakers),
        outlier_detection=draw(st.none() | outlier_detections()),
        name=name,
        endpoints=tuple(
            draw(
                st.lists(
                    endpoints,
                    min_size=0 if discovery else 1,
                    max_size=4,
                    unique_by=lambda e: (e.address.lower(), e.port),
                )
            )
        ),
        connect_timeout=draw(positive_seconds),
        idle_timeout=draw(seconds),
        max_idle_per_endpoint=draw(st.integers(0, 10_000)),
        buffer_limit=draw(st.integers(1, 2**32)),
        protocol=draw(st.sampled_from(["http1", "http2"])),
        http2=draw(http2_options),
    )


header_matches = st.one_of(
    st.builds(HeaderMatch, header_names, exact=header_values, invert=st.booleans()),
    st.builds(HeaderMatch, header_names, regex=regexes, invert=st.booleans()),
    st.builds(HeaderMatch, header_names, present=st.just(True), invert=st.booleans()),
)
query_matches = st.one_of(
    st.builds(QueryMatch, free_text.filter(bool), exact=free_text),
    st.builds(QueryMatch, free_text.filter(bool), regex=regexes),
    st.builds(QueryMatch, free_text.filter(bool), present=st.just(True)),
)
header_lists = st.lists(st.builds(HeaderValue, edited_header_names, header_values), max_size=2)


@st.composite
def header_edits(draw: st.DrawFn) -> HeaderEdits:
    return HeaderEdits(
        remove=tuple(draw(st.lists(edited_header_names, unique=True, max_size=2))),
        set=tuple(draw(header_lists.filter(lambda hs: len({h.name for h in hs}) == len(hs)))),
        add=tuple(draw(header_lists)),
    )


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kind = draw(st.sampled_from(["exact", "prefix", "regex"]))
    path = draw(regexes if kind == "regex" else paths)
    return RouteMatch(
        hosts=tuple(draw(st.lists(host_patterns, min_size=1, max_size=3))),
        path_exact=path if kind == "exact" else None,
        path_prefix=path if kind == "prefix" else None,
        path_regex=path if kind == "regex" else None,
        methods=draw(http_methods),
        headers=tuple(draw(st.lists(header_matches, max_size=2))),
        query=tuple(draw(st.lists(query_matches, max_size=2))),
    )


@st.composite
def rewrites(draw: st.DrawFn, prefix_match: bool) -> Rewrite:
    path_kind = draw(
        st.sampled_from(["prefix", "regex", None] if prefix_match else ["regex", None])
    )
    regex = draw(regexes) if path_kind == "regex" else None
    host_kind = draw(st.sampled_from(["host", "auto", None]))
    return Rewrite(
        prefix=draw(paths) if path_kind == "prefix" else None,
        regex=regex,
        substitution=draw(st.sampled_from(["/", r"/b/\g<0>", ""])) if regex else None,
        host=draw(authorities) if host_kind == "host" else None,
        auto_host=host_kind == "auto",
    )


@st.composite
def redirects(draw: st.DrawFn, prefix_match: bool) -> Redirect:
    path_kind = draw(st.sampled_from(["path", "prefix", None] if prefix_match else ["path", None]))
    redirect = Redirect(
        code=draw(st.sampled_from([301, 302, 303, 307, 308])),
        scheme=draw(st.none() | st.sampled_from(["http", "https"])),
        host=draw(st.none() | dns_names | ipv4 | ipv6.map(lambda a: f"[{a}]")),
        port=draw(st.none() | ports),
        path=draw(paths) if path_kind == "path" else None,
        prefix_rewrite=draw(paths) if path_kind == "prefix" else None,
        strip_query=draw(st.booleans()),
    )
    targets = (
        redirect.scheme,
        redirect.host,
        redirect.port,
        redirect.path,
        redirect.prefix_rewrite,
    )
    if all(target is None for target in targets) and not redirect.strip_query:
        redirect = Redirect(redirect.code, strip_query=True)
    return redirect


@st.composite
def direct_responses(draw: st.DrawFn) -> DirectResponse:
    status = draw(st.integers(200, 599))
    return DirectResponse(
        status=status,
        body="" if status in (204, 304) else draw(st.text(max_size=12)),
        headers=tuple(draw(header_lists)),
    )


@st.composite
def routes(draw: st.DrawFn, name: str, cluster_names: list[str]) -> Route:
    timeout = draw(seconds)
    per_try = draw(st.none() | positive_seconds)
    if per_try is not None and timeout > 0:
        per_try = min(per_try, timeout)
    match = draw(route_matches())
    prefix_match = match.path_prefix is not None
    action = draw(st.sampled_from(["cluster", "weighted", "direct", "redirect"]))
    forwarding = action in ("cluster", "weighted")
    weighted = ()
    if action == "weighted":
        names = draw(st.lists(st.sampled_from(cluster_names), min_size=1, unique=True))
        weights = draw(st.lists(st.integers(0, 10000), min_size=len(names), max_size=len(names)))
        if not sum(weights):
            weights[0] = 1
        weighted = tuple(map(WeightedCluster, names, weights))
    mirror_names = draw(st.lists(st.sampled_from(cluster_names), unique=True, max_size=2))
    return Route(
        name=name,
        match=match,
        cluster=draw(st.sampled_from(cluster_names)) if action == "cluster" else None,
        weighted_clusters=weighted,
        direct_response=draw(direct_responses()) if action == "direct" else None,
        redirect=draw(redirects(prefix_match)) if action == "redirect" else None,
        timeout=timeout,
        per_try_timeout=per_try if forwarding else None,
        max_request_body=draw(st.none() | sizes),
        filters=draw(filters),
        retry_policy=draw(st.none() | retry_policies()) if forwarding else None,
        rewrite=draw(st.none() | rewrites(prefix_match)) if forwarding else None,
        request_headers=draw(header_edits()),
        response_headers=draw(header_edits()),
        mirrors=tuple(
            Mirror(cluster, draw(st.floats(0, 100) | st.just(100.0)))
            for cluster in (mirror_names if forwarding else ())
        ),
    )


tls_contexts = st.builds(
    TlsContext,
    cert_file=st.text(min_size=1, max_size=12),
    key_file=st.text(min_size=1, max_size=12),
    alpn=st.lists(st.sampled_from(["h2", "http/1.1"]), min_size=1, unique=True).map(tuple),
)
server_names = st.one_of(dns_names, dns_names.map(lambda n: f"*.{n}"))


@st.composite
def sni_routes(draw: st.DrawFn, cluster_names: list[str]) -> tuple[SniRoute, ...]:
    # Names are unique across routes, and '*' only in the last one (anything else is dead).
    names = draw(st.lists(server_names, min_size=1, max_size=6, unique=True))
    cuts = sorted(draw(st.sets(st.integers(1, len(names) - 1), max_size=2))) if len(names) > 1 else []
    groups = [names[i:j] for i, j in zip([0, *cuts], [*cuts, len(names)], strict=True)]
    if draw(st.booleans()):
        groups[-1] = [*groups[-1], "*"]
    return tuple(SniRoute(tuple(g), draw(st.sampled_from(cluster_names))) for g in groups)


@st.composite
def l4_listeners(draw: st.DrawFn, name: str, cluster_names: list[str]) -> Listener:
    protocol = draw(st.sampled_from(["tcp", "tls_passthrough"]))
    tcp = None
    if protocol == "tcp":
        tcp = TcpProxy(draw(st.sampled_from(cluster_names)), draw(seconds))
    return Listener(
        name=name,
        address=draw(ipv4 | ipv6 | st.just("localhost")),
        port=draw(st.integers(0, 65535)),
        protocol=protocol,
        tcp=tcp,
        sni_routes=draw(sni_routes(cluster_names)) if protocol == "tls_passthrough" else (),
        idle_timeout=draw(seconds) if protocol == "tls_passthrough" else 300.0,
        buffer_limit=draw(st.integers(1, 2**32)),
    )


@st.composite
def listeners(draw: st.DrawFn, name: str, route_names: list[str],
              cluster_names: list[str]) -> Listener:
    if draw(st.integers(0, 3)) == 0:
        return draw(l4_listeners(name, cluster_names))
    refs = st.none()
    if route_names:
        refs |= st.lists(st.sampled_from(route_names), unique=True).map(tuple)
    return Listener(
        name=name,
        address=draw(ipv4 | ipv6 | st.just("localhost")),
        port=draw(st.integers(0, 65535)),
        tls=draw(st.none() | tls_contexts),
        http2=draw(http2_options),
        routes=draw(refs),
        filters=draw(filters),
        max_header_bytes=draw(st.integers(1024, 1024 * 1024)),
        idle_timeout=draw(seconds),
        request_timeout=draw(seconds),
        buffer_limit=draw(st.integers(1, 2**32)),
        via=draw(st.just("") | st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,10}", fullmatch=True)),
        xff_trusted_hops=draw(st.integers(0, 16)),
    )


def _socket_key(listener: Listener) -> object:
    if listener.port == 0:
        return object()  # ephemeral ports never collide
    address = listener.address
    return (address if address == "localhost" else ipaddress.ip_address(address), listener.port)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    cluster_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    route_names = draw(st.lists(names, max_size=4, unique=True))
    listener_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    drawn = [draw(listeners(name, route_names, cluster_names)) for name in listener_names]
    seen: set[object] = set()
    distinct = []
    for listener in drawn:
        key = _socket_key(listener)
        if key not in seen:
            seen.add(key)
            distinct.append(listener)
    return Config(
        metadata=draw(metadata),
        spec=Spec(
            listeners=tuple(distinct),
            routes=tuple(draw(routes(name, cluster_names)) for name in route_names),
            clusters=tuple(draw(clusters(name)) for name in cluster_names),
        ),
        rollout=draw(rollouts),
    )


# -- properties ----------------------------------------------------------------------------------

_settings = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(configs())
def test_dict_round_trip(config: Config) -> None:
    loaded = load_config(config_to_dict(config))
    assert loaded == config
    assert hash(loaded) == hash(config)


@_settings
@given(configs())
def test_canonical_json_round_trip(config: Config) -> None:
    encoded = canonical_json(config)
    loaded = load_config(encoded)
    assert loaded == config
    assert canonical_json(loaded) == encoded
    assert json.loads(encoded) == config_to_dict(config)


@_settings
@given(configs())
def test_yaml_round_trip(config: Config) -> None:
    assert load_config(yaml.safe_dump(config_to_dict(config))) == config


SHAPES = {
    "exact path": lambda c: any(r.match.path_exact is not None for r in c.spec.routes),
    "headers": lambda c: any(r.match.headers for r in c.spec.routes),
    "route filters": lambda c: any(r.filters for r in c.spec.routes),
    "per-try timeout": lambda c: any(r.per_try_timeout is not None for r in c.spec.routes),
    "listener routes": lambda c: any(listener.routes for listener in c.spec.listeners),
    "several listeners": lambda c: len(c.spec.listeners) > 1,
    "rollout waves": lambda c: c.rollout is not None and bool(c.rollout.waves),
    "several endpoints": lambda c: any(len(cl.endpoints) > 1 for cl in c.spec.clusters),
    "hash key": lambda c: any(cl.hash_key is not None for cl in c.spec.clusters),
    "health check": lambda c: any(cl.health_check is not None for cl in c.spec.clusters),
    "outlier detection": lambda c: any(cl.outlier_detection for cl in c.spec.clusters),
    "retry policy": lambda c: any(r.retry_policy is not None for r in c.spec.routes),
    "regex path": lambda c: any(r.match.path_regex is not None for r in c.spec.routes),
    "methods": lambda c: any(r.match.methods for r in c.spec.routes),
    "query": lambda c: any(r.match.query for r in c.spec.routes),
    "weighted clusters": lambda c: any(r.weighted_clusters for r in c.spec.routes),
    "direct response": lambda c: any(r.direct_response for r in c.spec.routes),
    "redirect": lambda c: any(r.redirect for r in c.spec.routes),
    "rewrite": lambda c: any(r.rewrite for r in c.spec.routes),
    "mirrors": lambda c: any(r.mirrors for r in c.spec.routes),
    "header edits": lambda c: any(r.request_headers.set for r in c.spec.routes),
    "discovery": lambda c: any(cl.discovery for cl in c.spec.clusters),
    "discovery without endpoints": lambda c: any(
        cl.discovery and not cl.endpoints for cl in c.spec.clusters
    ),
    "endpoint priority": lambda c: any(
        e.priority and e.locality for cl in c.spec.clusters for e in cl.endpoints
    ),
    "tcp listener": lambda c: any(lst.tcp for lst in c.spec.listeners),
    "sni routes": lambda c: any(len(lst.sni_routes) > 1 for lst in c.spec.listeners),
    "sni catch-all": lambda c: any(
        "*" in r.server_names for lst in c.spec.listeners for r in lst.sni_routes
    ),
    "tls termination": lambda c: any(lst.tls for lst in c.spec.listeners),
    "listener http2": lambda c: any(lst.http2 != Http2Options() for lst in c.spec.listeners),
    "http2 cluster": lambda c: any(cl.protocol == "http2" for cl in c.spec.clusters),
    "grpc retry": lambda c: any(
        r.retry_policy
        and {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
        & set(r.retry_policy.retry_on)
        for r in c.spec.routes
    ),
}


def test_generator_reaches_interesting_shapes() -> None:
    """Guard against the strategy silently collapsing to trivial configs."""
    missing = set(SHAPES)

    @settings(max_examples=300, phases=[Phase.generate], database=None, deadline=None,
              derandomize=True)
    @given(configs())
    def probe(config: Config) -> None:
        missing.difference_update(name for name in list(missing) if SHAPES[name](config))

    probe()
    assert not missing
