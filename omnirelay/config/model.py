"""The config model: frozen, slotted dataclasses holding tuples, so a whole `Config` is hashable.

Values here are already normalized (durations in float seconds, sizes in int bytes, hosts and
header names lowercased). Instances are built by `load_config`, which runs every check; the
classes themselves do not re-validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from .frozen import FrozenDict


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str  # IP literal or DNS name
    port: int
    weight: int = 1  # 1..128
    priority: int = 0  # 0 = most preferred; traffic spills to higher numbers as health drops
    locality: str | None = None  # label such as "us-east-1/us-east-1a"; reported, not routed on


@dataclass(frozen=True, slots=True)
class Discovery:
    """Where a cluster's endpoints come from besides the static list.

    `file`: a JSON or YAML file holding a list of endpoints (the `endpoints` shape), re-read when
    it changes, polled every `interval`. `api`: pushed through `Relay.set_endpoints` or the
    control-plane client. Static `endpoints`, if given, serve until the first update arrives.
    """

    type: str  # "file" | "api"
    path: str | None = None  # set exactly when type == "file"
    interval: float = 1.0


@dataclass(frozen=True, slots=True)
class HashKey:
    """What ring_hash / maglev hash on. Exactly one of `header` / `source_ip` is set."""

    header: str | None = None  # lowercased RFC 9110 token
    source_ip: bool = False


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP health checking of every endpoint of a cluster."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0  # < interval
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_statuses: tuple[int, ...] = (200,)
    host: str | None = None  # None = "address:port" of the endpoint


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0  # >= base_ejection_time
    max_ejection_percent: int = 10
    interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Http2Options:
    """HTTP/2 settings we advertise and enforce, on a listener or toward a cluster."""

    max_concurrent_streams: int = 100  # 1..2147483647
    initial_stream_window_size: int = 262144  # 65535..2147483647 bytes
    initial_connection_window_size: int = 1048576  # 65535..2147483647 bytes


# Fields of an access log record, in JSON key order; a text template names them as
# %FIELD% tokens (any case). Documented in docs/configuration.md.
ACCESS_LOG_FIELDS = (
    "timestamp",
    "request_id",
    "listener",
    "peer",
    "method",
    "authority",
    "path",
    "protocol",
    "route",
    "cluster",
    "upstream",
    "status",
    "flags",
    "retries",
    "reason",
    "request_bytes",
    "response_bytes",
    "duration_ms",
    "upstream_ms",
    "user_agent",
)


@dataclass(frozen=True, slots=True)
class AccessLog:
    """A listener's access log: one record per finished request (docs/configuration.md)."""

    path: str  # a file, or "-" for stdout
    format: str = "json"  # "json" | "text"
    template: str | None = None  # text only; %FIELD% tokens; None = the default line
    sample: float = 1.0  # share of requests logged, 0..1
    max_per_second: int = 0  # token bucket (burst = one second); 0 = unlimited
    fields: tuple[str, ...] | None = None  # subset of ACCESS_LOG_FIELDS; None = all
    # Per-tenant token buckets (burst = one second) keyed by this request header's value;
    # both set (rate > 0) or neither. Requests without the header share the "" tenant.
    tenant_header: str | None = None
    tenant_max_per_second: int = 0


TRACING_PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True, slots=True)
class Tracing:
    """A listener's distributed tracing: W3C traceparent propagation and OTLP span export
    (docs/configuration.md)."""

    collector: str  # OTLP endpoint URL: http(s)://host:port/v1/traces, or host:port for grpc
    protocol: str = "http/protobuf"  # TRACING_PROTOCOLS
    sampling: float = 1.0  # share of new traces recorded; a parent's sampled flag wins
    service_name: str = "omnirelay"
    max_queue: int = 2048  # spans held for export; more are dropped
    max_batch: int = 512  # spans per export request
    export_interval: float = 1.0  # seconds between exports
    export_timeout: float = 10.0  # seconds an export may take


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS origination toward a cluster's endpoints."""

    sni: str | None = None  # server_name sent and verified; None = the endpoint's address
    ca_file: str | None = None  # PEM trust bundle; None = the system's
    verify: bool = True  # False skips certificate and name checks (testing only)
    cert_file: str | None = None  # client certificate chain for mTLS (with key_file)
    key_file: str | None = None
    alpn: tuple[str, ...] = ()  # offered; "h2" for `protocol: http2` clusters
    allowed_spiffe_ids: tuple[str, ...] = ()  # the peer's URI SAN must be one of these
    crl_file: str | None = None  # PEM CRLs: a revoked server certificate fails the connect


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb_policy: str = "round_robin"
    connect_timeout: float = 1.0
    idle_timeout: float = 60.0  # 0 disables
    max_idle_per_endpoint: int = 64
    buffer_limit: int = 1048576
    hash_key: HashKey | None = None  # set exactly when lb_policy is ring_hash or maglev
    health_check: HealthCheck | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = None
    overprovisioning_factor: float = 1.4  # >= 1.0; see priority failover in docs
    protocol: str = "http1"  # upstream HTTP version: "http1" | "http2" (prior knowledge or ALPN)
    tls: UpstreamTls | None = None
    http2: Http2Options = Http2Options()
    discovery: Discovery | None = None  # endpoints may be empty only when this is set


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Exactly one of `exact` / `regex` / `present` is set; `invert` negates the result.

    A header that occurs several times matches if any of its values does. Regexes are
    Python `re` syntax and must match the whole value.
    """

    name: str  # lowercased RFC 9110 token
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None  # only True is accepted; absence is `present: true, invert: true`
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """A query-string parameter; exactly one of `exact` / `regex` / `present` is set.

    Names and values are compared after percent-decoding ('+' is a space).
    """

    name: str
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None  # only True is accepted


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All given conditions must hold. Exactly one of `path_exact` / `path_prefix` /
    `path_regex` is set (the path excludes the query string; a regex must match it whole)."""

    hosts: tuple[str, ...] = ("*",)
    path_exact: str | None = None
    path_prefix: str | None = "/"
    path_regex: str | None = None
    methods: tuple[str, ...] = ()  # uppercase tokens; empty = any method
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderValue:
    name: str  # lowercased RFC 9110 token
    value: str


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Applied in this order: remove, set (replace all values), add (append)."""

    remove: tuple[str, ...] = ()  # lowercased names
    set: tuple[HeaderValue, ...] = ()
    add: tuple[HeaderValue, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int  # 0..10000; a route's weights sum to > 0


@dataclass(frozen=True, slots=True)
class Mirror:
    """Traffic shadowing: a copy of `percent` of the route's requests goes to `cluster`."""

    cluster: str
    percent: float = 100.0  # 0..100


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Upstream-bound request rewrites. At most one of `prefix` / `regex`; at most one of
    `host` / `auto_host`. `prefix` needs a `path_prefix` match and replaces the matched prefix;
    `regex` + `substitution` (Python `re.sub` template) rewrite the path, query kept."""

    prefix: str | None = None
    regex: str | None = None
    substitution: str | None = None  # set exactly when regex is
    host: str | None = None  # literal Host sent upstream
    auto_host: bool = False  # Host becomes the chosen endpoint's "address:port"


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int  # 200..599
    body: str = ""
    headers: tuple[HeaderValue, ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect answered by the proxy. Unset parts keep the request's own; at most one of
    `path` / `prefix_rewrite` (the latter needs a `path_prefix` match)."""

    code: int = 301  # 301, 302, 303, 307, 308
    scheme: str | None = None  # "http" | "https"
    host: str | None = None
    port: int | None = None  # 1..65535; dropped when it is the scheme's default
    path: str | None = None
    prefix_rewrite: str | None = None
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class FilterSpec:
    name: str  # dotted identifier; resolved to an implementation at build time, not here
    config: FrozenDict = field(default_factory=FrozenDict)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: tuple[str, ...] = ("connect-failure",)
    num_retries: int = 1
    retriable_status_codes: tuple[int, ...] = ()
    base_interval: float = 0.025
    max_interval: float = 0.25  # >= base_interval
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class Route:
    """Exactly one action is set: `cluster`, `weighted_clusters`, `direct_response` or
    `redirect`. `rewrite`, `mirrors`, `retry_policy` and the timeouts need a cluster action."""

    name: str
    match: RouteMatch
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    direct_response: DirectResponse | None = None
    redirect: Redirect | None = None
    timeout: float = 15.0  # 0 disables
    per_try_timeout: float | None = None
    max_request_body: int | None = None
    filters: tuple[FilterSpec, ...] = ()
    retry_policy: RetryPolicy | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """A certificate a TLS listener presents to clients asking for one of its server names."""

    server_names: tuple[str, ...]  # exact names or '*.suffix'; matched case-insensitively
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class TlsContext:
    """TLS termination on a listener, optionally verifying client certificates (mTLS)."""

    cert_file: str  # PEM certificate chain: the default (no SNI, or no `certificates` match)
    key_file: str  # PEM private key
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # offered in preference order
    client_ca_file: str | None = None  # PEM bundle client certificates are verified against
    require_client_certificate: bool = False  # needs client_ca_file; False = optional
    client_crl_file: str | None = None  # PEM CRLs (one per CA): revoked client certs refused
    certificates: tuple[SniCertificate, ...] = ()  # per server name, chosen by SNI
    min_version: str = "1.2"  # "1.2" | "1.3"
    max_version: str = "1.3"
    ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2; None = OpenSSL's secure default


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """A `protocol: tcp` listener forwards raw bytes to one cluster."""

    cluster: str
    idle_timeout: float = 3600.0  # 0 disables; both directions idle this long closes


@dataclass(frozen=True, slots=True)
class SniRoute:
    """A `protocol: tls_passthrough` listener picks a cluster by the ClientHello's SNI
    without terminating TLS. Names are exact, `*.suffix` or `*` (also a ClientHello
    without SNI); first match wins."""

    server_names: tuple[str, ...]
    cluster: str


@dataclass(frozen=True, slots=True)
class Listener:
    """`protocol: http` (HTTP/1.1 and HTTP/2: h2c by prior knowledge, h2 by ALPN when `tls`
    is set) routes requests; `tcp` sets `tcp`; `tls_passthrough` sets `sni_routes`. Routes,
    filters and the HTTP fields apply only to `http` listeners."""

    name: str
    address: str  # IP literal or "localhost"
    port: int  # 0 = ephemeral
    protocol: str = "http"  # "http" | "tcp" | "tls_passthrough"
    tls: TlsContext | None = None  # http only
    http2: Http2Options = Http2Options()
    tcp: TcpProxy | None = None  # set exactly when protocol == "tcp"
    sni_routes: tuple[SniRoute, ...] = ()  # non-empty exactly when protocol == "tls_passthrough"
    routes: tuple[str, ...] | None = None  # route names in match order; None = all, document order
    filters: tuple[FilterSpec, ...] = ()
    max_header_bytes: int = 65536
    idle_timeout: float = 300.0  # 0 disables
    request_timeout: float = 60.0  # 0 disables
    buffer_limit: int = 1048576
    via: str = "omnirelay"  # empty = do not add a Via header
    xff_trusted_hops: int = 0
    access_log: AccessLog | None = None  # http only
    tracing: Tracing | None = None  # http only


@dataclass(frozen=True, slots=True)
class Metadata:
    version: str = "0"
    epoch: int = 0
    ttl: float | None = None
    author: str | None = None
    created: str | None = None  # RFC 3339 timestamp, kept as written


@dataclass(frozen=True, slots=True)
class Spec:
    listeners: tuple[Listener, ...]
    routes: tuple[Route, ...]
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True, slots=True)
class Rollout:
    """Structurally checked only; its meaning arrives with the rollout feature."""

    targets: tuple[FrozenDict, ...] = ()
    waves: tuple[FrozenDict, ...] = ()


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin HTTP listener of a node: health, readiness, metrics, stats, config dump and
    the token-protected mutations (drain, log level). Node-local, like the listeners' sockets.
    At most one of `token` / `token_file`; with neither, the mutations answer 403."""

    address: str = "127.0.0.1"  # IP literal or "localhost"; keep it on loopback
    port: int = 9901  # 0 = any free port
    token: str | None = None  # bearer token for POST endpoints
    token_file: str | None = None  # a file holding the token (read when the admin starts)


@dataclass(frozen=True, slots=True)
class Extensions:
    """Signed extension packages (docs/extensions.md): whose signatures this node trusts and
    how often package files are re-checked for a new version (hot reload)."""

    # Trust bundle files (JSON, as `omnirelay ext keygen --bundle` writes) or PEM Ed25519
    # public keys, read when a config that loads a package is built.
    trusted_keys: tuple[str, ...] = ()
    watch_interval: float = 1.0  # seconds between checks of package files; 0 disables


_Named = TypeVar("_Named", Listener, Route, Cluster)


def _by_name(entries: tuple[_Named, ...], name: str, kind: str) -> _Named:
    # Linear scan: lookups happen while building runtime tables, never per request.
    for entry in entries:
        if entry.name == name:
            return entry
    raise KeyError(f"no {kind} named {name!r}")


@dataclass(frozen=True, slots=True)
class Config:
    metadata: Metadata
    spec: Spec
    rollout: Rollout | None = None
    admin: Admin | None = None  # no admin listener unless given
    extensions: Extensions | None = None  # no package trust unless given

    def cluster(self, name: str) -> Cluster:
        """The cluster called `name`; KeyError if there is none."""
        return _by_name(self.spec.clusters, name, "cluster")

    def route(self, name: str) -> Route:
        """The route called `name`; KeyError if there is none."""
        return _by_name(self.spec.routes, name, "route")

    def listener(self, name: str) -> Listener:
        """The listener called `name`; KeyError if there is none."""
        return _by_name(self.spec.listeners, name, "listener")

    def routes_for(self, listener: Listener | str) -> tuple[Route, ...]:
        """The routes a listener (or listener name) evaluates, in match order."""
        if isinstance(listener, str):
            listener = self.listener(listener)
        if listener.routes is None:
            return self.spec.routes
        return tuple(self.route(name) for name in listener.routes)
