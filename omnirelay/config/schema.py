"""Decoding of a parsed document into the model, with every field-level check.

The document shape mirrors the dataclasses in `model` (same snake_case names, same defaults),
except that a route match nests its path as `path: {exact | prefix | regex: ...}`, and that a
cluster with `discovery` may leave out `endpoints`. Optional fields accept null for "not set",
so the normalized document (`config_to_dict`, every field spelled out) loads back unchanged.
Decoding never stops at the first problem: each one is recorded as a `ConfigIssue` and the
surrounding object is marked bad, so a single pass reports everything.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, fields
from typing import Any
from urllib.parse import urlsplit

from . import checks
from .errors import ConfigError, ConfigIssue, field_path, item_path
from .frozen import FrozenDict
from .model import (
    ACCESS_LOG_FIELDS,
    TRACING_PROTOCOLS,
    AccessLog,
    Admin,
    CircuitBreakers,
    Cluster,
    Config,
    DirectResponse,
    Discovery,
    Endpoint,
    Extensions,
    FilterSpec,
    HashKey,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    HealthCheck,
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
    SniCertificate,
    SniRoute,
    Spec,
    TcpProxy,
    TlsContext,
    Tracing,
    UpstreamTls,
    WeightedCluster,
)
from .units import format_duration
from .validate import Outline, admin_socket_issues, graph_issues

_ABSENT: Any = object()  # optional field not given: the dataclass default applies
_BAD: Any = object()  # value failed a check; its issue is already recorded

_MATCH_FIELDS = ("hosts", "path", "methods", "headers", "query")
_PATH_FIELDS = ("exact", "prefix", "regex")
_CONDITIONS = ("exact", "regex", "present")  # of a header or query match
_ACTIONS = ("cluster", "weighted_clusters", "direct_response", "redirect")
_FORWARDING = ("cluster", "weighted_clusters")
# Route fields that only mean something when the route forwards to a cluster.
_FORWARDING_ONLY = ("per_try_timeout", "retry_policy", "rewrite", "mirrors")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_REDIRECT_TARGETS = ("scheme", "host", "port", "path", "prefix_rewrite")
_SCHEMES = ("http", "https")
_DISCOVERY_TYPES = ("file", "api")
_BODYLESS_STATUSES = (204, 304)
_RENAMED = {"equals": "exact"}  # old field name -> new one, for upgrade hints
_LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
_HASH_POLICIES = ("ring_hash", "maglev")
_RETRY_ON = (
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    # gRPC status conditions, read from grpc-status in the response headers or trailers
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
_LISTENER_PROTOCOLS = ("http", "tcp", "tls_passthrough")
_L4_PROTOCOLS = ("tcp", "tls_passthrough")
_CLUSTER_PROTOCOLS = ("http1", "http2")
_ALPN_PROTOCOLS = ("h2", "http/1.1")
_TLS_VERSION = checks.one_of(("1.2", "1.3"))
# Listener fields that only mean something when the listener speaks HTTP. On an L4 listener
# they may only hold their default (the normalized document spells every field out).
_HTTP_ONLY = (
    "routes",
    "filters",
    "tls",
    "http2",
    "max_header_bytes",
    "request_timeout",
    "via",
    "xff_trusted_hops",
    "access_log",
    "tracing",
)
_ACCESS_LOG_FORMATS = ("json", "text")
_HTTP_ONLY_HINTS = {
    ("routes", "tcp"): "; a 'tcp' listener forwards every connection to tcp.cluster",
    ("routes", "tls_passthrough"): "; a 'tls_passthrough' listener routes by SNI with sni_routes",
    ("tls", "tcp"): "; to terminate TLS, use protocol 'http' with 'tls'",
    ("tls", "tls_passthrough"): (
        "; 'tls_passthrough' forwards TLS untouched (to terminate TLS, use protocol 'http')"
    ),
}
_WINDOW_MAX = 2**31 - 1

Build = Callable[[Any, str], Any]


def decode_document(document: object) -> tuple[Config | None, list[ConfigIssue]]:
    """The config for a parsed document, or None plus at least one issue."""
    decoder = _Decoder()
    config = decoder.config(document)
    if decoder.issues:
        return None, decoder.issues
    return config, []


def decode_admin(value: object) -> Admin | None:
    """The `admin` block alone (for `Relay(admin=...)`); raises ConfigError with issues at
    `admin.*`. Null gives None."""
    decoder = _Decoder()
    admin = decoder.admin(value, "admin")
    if decoder.issues:
        raise ConfigError(decoder.issues)
    return admin


@functools.cache
def _required(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )


@functools.cache
def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _default(cls: type, name: str) -> Any:
    (f,) = (f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def _effective(values: Mapping[str, Any], cls: type, name: str) -> Any:
    """A decoded field value, with the dataclass default standing in for an absent one."""
    value = values[name]
    return _default(cls, name) if value is _ABSENT else value


def _given(obj: Mapping[str, Any], key: str) -> bool:
    """Whether a raw field is set: present, not null and, for lists, not empty."""
    value = obj.get(key)
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def _one_of(keys: Collection[str]) -> str:
    quoted = [repr(key) for key in keys]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _path_kind(match: object) -> str | None:
    """'exact', 'prefix' or 'regex' for a raw route match; None when it cannot be read."""
    if not isinstance(match, Mapping):
        return None
    if "path" not in match:
        return "prefix"  # the default match, `{prefix: /}`
    path = match["path"]
    if not isinstance(path, Mapping):
        return None
    given = [key for key in _PATH_FIELDS if key in path]
    return given[0] if len(given) == 1 else None


def _unknown_field(key: str, allowed: Collection[str]) -> str:
    renamed = _RENAMED.get(key)
    if renamed in allowed:
        return f"unknown field (renamed to {renamed!r})"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field (allowed: {', '.join(allowed)})"


class _Decoder:
    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def report(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

    # -- generic shapes ---------------------------------------------------------------------

    def mapping(
        self, value: object, path: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> Mapping[str, Any] | None:
        """`value` if it is a mapping; unknown and missing fields are reported either way."""
        if not isinstance(value, Mapping):
            self.report(path, f"expected mapping, got {checks.type_name(value)}")
            return None
        for key in value:
            if not isinstance(key, str):
                self.report(field_path(path, key), "field names must be strings")
            elif key not in allowed:
                self.report(field_path(path, key), _unknown_field(key, allowed))
        for key in required:
            if key not in value:
                self.report(field_path(path, key), "missing required field")
        return value

    def shape(self, value: object, path: str, cls: type) -> Mapping[str, Any] | None:
        """`mapping` with the fields of dataclass `cls`."""
        return self.mapping(value, path, _field_names(cls), _required(cls))

    def sequence(self, value: object, path: str) -> list[Any] | tuple[Any, ...] | None:
        if isinstance(value, (list, tuple)):
            return value
        self.report(path, f"expected list, got {checks.type_name(value)}")
        return None

    def field(self, obj: Mapping[str, Any], path: str, key: str, check: checks.Check) -> Any:
        """obj[key] run through a value check; _ABSENT if not given, _BAD if rejected."""
        if key not in obj:
            return _ABSENT
        return self.checked(check)(obj[key], field_path(path, key))

    def nested(self, obj: Mapping[str, Any], path: str, key: str, build: Build) -> Any:
        """obj[key] run through a path-aware builder; _ABSENT if not given."""
        if key not in obj:
            return _ABSENT
        return build(obj[key], field_path(path, key))

    def checked(self, check: checks.Check) -> Build:
        """A value check turned into a builder that records its rejection."""

        def build(value: object, path: str) -> Any:
            try:
                return check(value)
            except (TypeError, ValueError) as exc:
                self.report(path, str(exc))
                return _BAD

        return build

    def list_of(self, build_item: Build, *, nonempty: str | None = None) -> Build:
        """Builder for a list whose items use `build_item`; `nonempty` is the message for []."""

        def build(value: object, path: str) -> Any:
            items = self.sequence(value, path)
            if items is None:
                return _BAD
            if nonempty and not items:
                self.report(path, nonempty)
                return _BAD
            built = [build_item(item, item_path(path, i)) for i, item in enumerate(items)]
            return _BAD if any(b is _BAD for b in built) else tuple(built)

        return build

    def distinct(
        self, names: list[Any], path: str, kind: str, key: str | None = None, verb: str = "listed"
    ) -> bool:
        """Report items of a list whose name repeats an earlier one; the issue goes on the
        item (or its field `key`)."""
        first: dict[Any, int] = {}
        ok = True
        for index, name in enumerate(names):
            if name in first:
                where = item_path(path, index)
                self.report(
                    field_path(where, key) if key else where,
                    f"{kind} {name!r} is {verb} twice (first at index {first[name]})",
                )
                ok = False
            else:
                first[name] = index
        return ok

    def exactly_one(self, obj: Mapping[str, Any], path: str, keys: Collection[str]) -> bool:
        if sum(_given(obj, key) for key in keys) == 1:
            return True
        self.report(path, f"exactly one of {_one_of(keys)} is required")
        return False

    def build(self, cls: type, values: dict[str, Any]) -> Any:
        """`cls(**values)` unless something was bad or a required field is missing."""
        if any(v is _BAD for v in values.values()):
            return _BAD
        if any(values.get(name, _ABSENT) is _ABSENT for name in _required(cls)):
            return _BAD
        return cls(**{k: v for k, v in values.items() if v is not _ABSENT})

    def frozen(self, value: object, path: str) -> Any:
        """Free-form JSON-compatible data, deeply frozen (for filter configs and rollout)."""
        if isinstance(value, Mapping):
            items = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    self.report(field_path(path, key), "keys must be strings")
                    items[key] = _BAD
                else:
                    items[key] = self.frozen(item, field_path(path, key))
            return _BAD if any(v is _BAD for v in items.values()) else FrozenDict(items)
        if isinstance(value, (list, tuple)):
            built = [self.frozen(item, item_path(path, i)) for i, item in enumerate(value)]
            return _BAD if any(b is _BAD for b in built) else tuple(built)
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, float):
            self.report(path, f"number must be finite, got {value!r}")
        else:
            self.report(path, f"unsupported value of type {checks.type_name(value)}")
        return _BAD

    def frozen_mapping(self, value: object, path: str) -> Any:
        if not isinstance(value, Mapping):
            self.report(path, f"expected mapping, got {checks.type_name(value)}")
            return _BAD
        return self.frozen(value, path)

    # -- document ---------------------------------------------------------------------------

    def config(self, document: object) -> Any:
        if not isinstance(document, Mapping):
            self.report(
                "", f"expected a mapping at the document root, got {checks.type_name(document)}"
            )
            return _BAD
        obj = self.mapping(
            document, "", ("metadata", "spec", "rollout", "admin", "extensions"), ("spec",)
        )
        metadata = self.nested(obj, "", "metadata", self.metadata)
        spec = self.nested(obj, "", "spec", self.spec)
        admin = self.nested(obj, "", "admin", self.admin)
        if isinstance(spec, Spec) and isinstance(admin, Admin):
            self.issues += admin_socket_issues(admin.address, admin.port, spec.listeners)
        return self.build(
            Config,
            {
                "metadata": Metadata() if metadata is _ABSENT else metadata,
                "spec": spec,
                "rollout": self.nested(obj, "", "rollout", self.rollout),
                "admin": admin,
                "extensions": self.nested(obj, "", "extensions", self.extensions),
            },
        )

    def extensions(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Extensions)
        if obj is None:
            return _BAD
        files = self.list_of(self.checked(checks.nonempty_string))
        return self.build(Extensions, {
            "trusted_keys": self.nested(obj, path, "trusted_keys", files),
            "watch_interval": self.field(obj, path, "watch_interval", checks.duration()),
        })

    def admin(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Admin)
        if obj is None:
            return _BAD
        values = {
            "address": self.field(obj, path, "address", checks.listen_address),
            "port": self.field(obj, path, "port", checks.integer(0, 65535)),
            "token": self.field(obj, path, "token", checks.optional(checks.admin_token)),
            "token_file": self.field(
                obj, path, "token_file", checks.optional(checks.nonempty_string)
            ),
        }
        if _given(obj, "token") and _given(obj, "token_file"):
            self.report(path, "at most one of 'token' or 'token_file' may be given")
            return _BAD
        return self.build(Admin, values)

    def metadata(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Metadata)
        if obj is None:
            return _BAD
        return self.build(
            Metadata,
            {
                "version": self.field(obj, path, "version", checks.nonempty_string),
                "epoch": self.field(obj, path, "epoch", checks.integer(0)),
                "ttl": self.field(
                    obj, path, "ttl", checks.optional(checks.duration(positive=True))
                ),
                "author": self.field(obj, path, "author", checks.optional(checks.string)),
                "created": self.field(obj, path, "created", checks.optional(checks.timestamp)),
            },
        )

    def rollout(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Rollout)
        if obj is None:
            return _BAD
        scopes = self.list_of(self.frozen_mapping)
        return self.build(
            Rollout,
            {
                "targets": self.nested(obj, path, "targets", scopes),
                "waves": self.nested(obj, path, "waves", scopes),
            },
        )

    def spec(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Spec)
        if obj is None:
            return _BAD
        sections = {
            key: self.section(obj, path, key, build)
            for key, build in (
                ("listeners", self.listener),
                ("routes", self.route),
                ("clusters", self.cluster),
            )
        }
        if any(section is None for section in sections.values()):
            # Without a whole section, reference checks would only report noise.
            return _BAD
        entries = {key: section for key, (section, _) in sections.items()}
        self.issues += graph_issues(**{key: outlines for key, (_, outlines) in sections.items()})
        return self.build(Spec, entries)

    def section(self, obj: Mapping[str, Any], path: str, key: str, build: Build) -> Any:
        """(decoded entries or _BAD, outlines for graph checks), or None if unreadable."""
        if key not in obj:
            return None
        path = field_path(path, key)
        items = self.sequence(obj[key], path)
        if items is None:
            return None
        built = [build(item, item_path(path, i)) for i, item in enumerate(items)]
        entries = _BAD if any(b is _BAD for b in built) else tuple(built)
        return entries, tuple(_outline(key, item) for item in items)

    # -- spec entries -----------------------------------------------------------------------

    def listener(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Listener)
        if obj is None:
            return _BAD
        values = {
            "name": self.field(obj, path, "name", checks.object_name),
            "address": self.field(obj, path, "address", checks.listen_address),
            "port": self.field(obj, path, "port", checks.integer(0, 65535)),
            "protocol": self.field(obj, path, "protocol", checks.one_of(_LISTENER_PROTOCOLS)),
            "tls": self.nested(obj, path, "tls", self.tls_context),
            "http2": self.nested(obj, path, "http2", self.http2_options),
            "tcp": self.nested(obj, path, "tcp", self.tcp_proxy),
            "sni_routes": self.nested(obj, path, "sni_routes", self.sni_routes),
            "routes": self.nested(obj, path, "routes", self.route_refs),
            "filters": self.nested(obj, path, "filters", self.list_of(self.filter)),
            "max_header_bytes": self.field(
                obj, path, "max_header_bytes", checks.size(1024, 1024 * 1024)
            ),
            "idle_timeout": self.field(obj, path, "idle_timeout", checks.duration()),
            "request_timeout": self.field(obj, path, "request_timeout", checks.duration()),
            "buffer_limit": self.field(obj, path, "buffer_limit", checks.size(1)),
            "via": self.field(obj, path, "via", checks.via_name),
            "xff_trusted_hops": self.field(obj, path, "xff_trusted_hops", checks.integer(0)),
            "access_log": self.nested(obj, path, "access_log", self.access_log),
            "tracing": self.nested(obj, path, "tracing", self.tracing),
        }
        ok = self.listener_protocol(values, path)
        return self.build(Listener, values) if ok else _BAD

    def listener_protocol(self, values: Mapping[str, Any], path: str) -> bool:
        """`tcp` exactly for protocol tcp, `sni_routes` exactly for tls_passthrough, and the
        HTTP-only fields left at their defaults on L4 listeners."""
        protocol = _effective(values, Listener, "protocol")
        if protocol is _BAD:
            return True  # reported; which fields belong is unknowable
        ok = True
        tcp = _effective(values, Listener, "tcp")
        if protocol == "tcp" and tcp is None:
            self.report(field_path(path, "tcp"), "required when protocol is 'tcp'")
            ok = False
        elif protocol != "tcp" and tcp not in (None, _BAD):
            self.report(
                field_path(path, "tcp"),
                f"only allowed when protocol is 'tcp' (protocol is {protocol!r})",
            )
            ok = False
        sni_routes = _effective(values, Listener, "sni_routes")
        if protocol == "tls_passthrough" and sni_routes == ():
            self.report(
                field_path(path, "sni_routes"),
                "at least one SNI route is required when protocol is 'tls_passthrough'",
            )
            ok = False
        elif protocol != "tls_passthrough" and sni_routes not in ((), _BAD):
            self.report(
                field_path(path, "sni_routes"),
                f"only allowed when protocol is 'tls_passthrough' (protocol is {protocol!r})",
            )
            ok = False
        if protocol not in _L4_PROTOCOLS:
            return ok
        for key in _HTTP_ONLY:
            given = values[key]
            if given in (_ABSENT, _BAD) or given == _default(Listener, key):
                continue
            hint = _HTTP_ONLY_HINTS.get((key, protocol), "")
            self.report(
                field_path(path, key),
                f"only allowed on 'http' listeners (protocol is {protocol!r}){hint}",
            )
            ok = False
        idle = values["idle_timeout"]
        if protocol == "tcp" and idle not in (_ABSENT, _BAD) and idle != _default(
            Listener, "idle_timeout"
        ):
            self.report(
                field_path(path, "idle_timeout"),
                "not used by 'tcp' listeners; set tcp.idle_timeout instead",
            )
            ok = False
        return ok

    def access_log(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, AccessLog)
        if obj is None:
            return _BAD
        field_names = self.list_of(
            self.checked(checks.one_of(ACCESS_LOG_FIELDS)),
            nonempty="at least one field is required (omit 'fields' for all)",
        )
        values = {
            "path": self.field(obj, path, "path", checks.nonempty_string),
            "format": self.field(obj, path, "format", checks.one_of(_ACCESS_LOG_FORMATS)),
            "template": self.field(
                obj, path, "template", checks.optional(checks.access_log_template)
            ),
            "sample": self.field(obj, path, "sample", checks.number(0.0, 1.0)),
            "max_per_second": self.field(obj, path, "max_per_second", checks.integer(0)),
            "fields": self.nested(
                obj,
                path,
                "fields",
                lambda v, p: None if v is None else field_names(v, p),
            ),
            "tenant_header": self.field(
                obj, path, "tenant_header", checks.optional(checks.header_name)
            ),
            "tenant_max_per_second": self.field(
                obj, path, "tenant_max_per_second", checks.integer(0)
            ),
        }
        tenant_rate = _effective(values, AccessLog, "tenant_max_per_second")
        if tenant_rate is not _BAD and _given(obj, "tenant_header") != (tenant_rate > 0):
            self.report(path, "'tenant_header' and a 'tenant_max_per_second' above 0 go "
                              "together")
            return _BAD
        fmt = _effective(values, AccessLog, "format")
        template = values["template"]
        if fmt == "json" and template not in (_ABSENT, _BAD, None):
            self.report(
                field_path(path, "template"),
                "only used with format 'text' (JSON records name their fields)",
            )
            return _BAD
        names = values["fields"]
        if names not in (_ABSENT, _BAD, None) and not self.distinct(
            list(names), field_path(path, "fields"), "field"
        ):
            return _BAD
        return self.build(AccessLog, values)

    def tracing(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Tracing)
        if obj is None:
            return _BAD
        values = {
            "collector": self.field(obj, path, "collector", _collector_url),
            "protocol": self.field(obj, path, "protocol", checks.one_of(TRACING_PROTOCOLS)),
            "sampling": self.field(obj, path, "sampling", checks.number(0.0, 1.0)),
            "service_name": self.field(obj, path, "service_name", checks.nonempty_string),
            "max_queue": self.field(obj, path, "max_queue", checks.integer(1, 1 << 20)),
            "max_batch": self.field(obj, path, "max_batch", checks.integer(1, 1 << 16)),
            "export_interval": self.field(
                obj, path, "export_interval", checks.duration(positive=True)
            ),
            "export_timeout": self.field(
                obj, path, "export_timeout", checks.duration(positive=True)
            ),
        }
        queue = _effective(values, Tracing, "max_queue")
        batch = _effective(values, Tracing, "max_batch")
        if _BAD not in (queue, batch) and batch > queue:
            self.report(field_path(path, "max_batch"),
                        f"must not exceed max_queue ({queue}), got {batch}")
            return _BAD
        return self.build(Tracing, values)

    def tls_context(self, value: object, path: str) -> Any:
        # The files are read when the listener is built, not here: a document stays
        # checkable on a machine that does not hold the keys (the control plane).
        if value is None:
            return None
        obj = self.shape(value, path, TlsContext)
        if obj is None:
            return _BAD
        alpn = self.list_of(
            self.checked(checks.one_of(_ALPN_PROTOCOLS)),
            nonempty="at least one ALPN protocol is required",
        )
        values = {
            "cert_file": self.field(obj, path, "cert_file", checks.nonempty_string),
            "key_file": self.field(obj, path, "key_file", checks.nonempty_string),
            "alpn": self.nested(obj, path, "alpn", alpn),
            "client_ca_file": self.field(
                obj, path, "client_ca_file", checks.optional(checks.nonempty_string)
            ),
            "require_client_certificate": self.field(
                obj, path, "require_client_certificate", checks.boolean
            ),
            "client_crl_file": self.field(
                obj, path, "client_crl_file", checks.optional(checks.nonempty_string)
            ),
            "certificates": self.nested(obj, path, "certificates", self.sni_certificates),
            "min_version": self.field(obj, path, "min_version", _TLS_VERSION),
            "max_version": self.field(obj, path, "max_version", _TLS_VERSION),
            "ciphers": self.field(obj, path, "ciphers", checks.optional(checks.nonempty_string)),
        }
        lo, hi = values["min_version"], values["max_version"]
        if lo not in (_ABSENT, _BAD) and hi not in (_ABSENT, _BAD) and lo > hi:
            self.report(field_path(path, "max_version"),
                        f"{hi!r} is below min_version {lo!r}")
            return _BAD
        if values["require_client_certificate"] is True and not _given(obj, "client_ca_file"):
            self.report(
                field_path(path, "require_client_certificate"),
                "needs client_ca_file (the bundle client certificates are verified against)",
            )
            return _BAD
        if _given(obj, "client_crl_file") and not _given(obj, "client_ca_file"):
            self.report(
                field_path(path, "client_crl_file"),
                "needs client_ca_file (the CRLs revoke certificates of those CAs)",
            )
            return _BAD
        protocols = values["alpn"]
        if protocols not in (_ABSENT, _BAD) and not self.distinct(
            list(protocols), field_path(path, "alpn"), "protocol"
        ):
            return _BAD
        return self.build(TlsContext, values)

    def sni_certificates(self, value: object, path: str) -> Any:
        built = self.list_of(self.sni_certificate)(value, path)
        if built is _BAD:
            return _BAD
        # A name must pick one certificate; '*' would shadow the default cert_file.
        ok = True
        first: dict[str, int] = {}
        for index, entry in enumerate(built):
            for i, name in enumerate(entry.server_names):
                where = item_path(field_path(item_path(path, index), "server_names"), i)
                if name == "*":
                    self.report(where, "'*' is what cert_file/key_file are for; list names here")
                    ok = False
                elif name in first and first[name] != index:
                    self.report(where, f"server name {name!r} already has a certificate in "
                                f"{item_path(path, first[name])}")
                    ok = False
                first.setdefault(name, index)
        return built if ok else _BAD

    def sni_certificate(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, SniCertificate)
        if obj is None:
            return _BAD
        names = self.list_of(
            self.checked(checks.server_name), nonempty="at least one server name is required"
        )
        return self.build(SniCertificate, {
            "server_names": self.nested(obj, path, "server_names", names),
            "cert_file": self.field(obj, path, "cert_file", checks.nonempty_string),
            "key_file": self.field(obj, path, "key_file", checks.nonempty_string),
        })

    def upstream_tls(self, value: object, path: str) -> Any:
        # Like listener TLS, the files are read when the cluster is built.
        if value is None:
            return None
        obj = self.shape(value, path, UpstreamTls)
        if obj is None:
            return _BAD
        alpn = self.list_of(self.checked(checks.one_of(_ALPN_PROTOCOLS)))
        values = {
            "sni": self.field(obj, path, "sni", checks.optional(checks.server_name)),
            "ca_file": self.field(obj, path, "ca_file", checks.optional(checks.nonempty_string)),
            "verify": self.field(obj, path, "verify", checks.boolean),
            "cert_file": self.field(obj, path, "cert_file", checks.optional(checks.nonempty_string)),
            "key_file": self.field(obj, path, "key_file", checks.optional(checks.nonempty_string)),
            "alpn": self.nested(obj, path, "alpn", alpn),
            "allowed_spiffe_ids": self.nested(
                obj, path, "allowed_spiffe_ids", self.list_of(self.checked(checks.spiffe_id))
            ),
            "crl_file": self.field(obj, path, "crl_file", checks.optional(checks.nonempty_string)),
        }
        if values["sni"] == "*" or (isinstance(values["sni"], str) and "*" in values["sni"]):
            self.report(field_path(path, "sni"), "must be an exact DNS name, not a wildcard")
            return _BAD
        if _given(obj, "cert_file") != _given(obj, "key_file"):
            missing = "key_file" if _given(obj, "cert_file") else "cert_file"
            self.report(
                field_path(path, missing),
                "cert_file and key_file go together (the client certificate for mTLS)",
            )
            return _BAD
        if values["verify"] is False and _given(obj, "allowed_spiffe_ids"):
            self.report(
                field_path(path, "allowed_spiffe_ids"),
                "needs verify: true (an unverified certificate proves no identity)",
            )
            return _BAD
        if values["verify"] is False and _given(obj, "crl_file"):
            self.report(field_path(path, "crl_file"),
                        "needs verify: true (revocation is checked while verifying)")
            return _BAD
        return self.build(UpstreamTls, values)

    def http2_options(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Http2Options)
        if obj is None:
            return _BAD
        return self.build(
            Http2Options,
            {
                "max_concurrent_streams": self.field(
                    obj, path, "max_concurrent_streams", checks.integer(1, _WINDOW_MAX)
                ),
                "initial_stream_window_size": self.field(
                    obj, path, "initial_stream_window_size", checks.size(65535, _WINDOW_MAX)
                ),
                "initial_connection_window_size": self.field(
                    obj, path, "initial_connection_window_size", checks.size(65535, _WINDOW_MAX)
                ),
            },
        )

    def tcp_proxy(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, TcpProxy)
        if obj is None:
            return _BAD
        return self.build(
            TcpProxy,
            {
                "cluster": self.field(obj, path, "cluster", checks.nonempty_string),
                "idle_timeout": self.field(obj, path, "idle_timeout", checks.duration()),
            },
        )

    def sni_routes(self, value: object, path: str) -> Any:
        built = self.list_of(self.sni_route)(value, path)
        if built is _BAD:
            return _BAD
        # First match wins, so a name listed again, or anything after a '*' route, is dead.
        ok = True
        first: dict[str, int] = {}
        catch_all = None
        for index, route in enumerate(built):
            where = item_path(path, index)
            if catch_all is not None:
                self.report(
                    where,
                    f"unreachable: {item_path(path, catch_all)} already matches every "
                    "server name with '*'",
                )
                ok = False
                continue
            for i, name in enumerate(route.server_names):
                if name in first and first[name] != index:
                    self.report(
                        item_path(field_path(where, "server_names"), i),
                        f"server name {name!r} is already routed by {item_path(path, first[name])}",
                    )
                    ok = False
                first.setdefault(name, index)
            if "*" in route.server_names:
                catch_all = index
        return built if ok else _BAD

    def sni_route(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, SniRoute)
        if obj is None:
            return _BAD
        names = self.list_of(
            self.checked(checks.server_name), nonempty="at least one server name is required"
        )
        values = {
            "server_names": self.nested(obj, path, "server_names", names),
            "cluster": self.field(obj, path, "cluster", checks.nonempty_string),
        }
        server_names = values["server_names"]
        if server_names not in (_ABSENT, _BAD) and not self.distinct(
            list(server_names), field_path(path, "server_names"), "server name"
        ):
            return _BAD
        return self.build(SniRoute, values)

    def route_refs(self, value: object, path: str) -> Any:
        # Whether each name exists is a graph check; here only the shape.
        if value is None:
            return None
        return self.list_of(self.checked(checks.nonempty_string))(value, path)

    def route(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Route)
        if obj is None:
            return _BAD
        values = {
            "name": self.field(obj, path, "name", checks.object_name),
            "match": self.nested(obj, path, "match", self.route_match),
            "cluster": self.field(obj, path, "cluster", checks.optional(checks.nonempty_string)),
            "weighted_clusters": self.nested(
                obj, path, "weighted_clusters", self.weighted_clusters
            ),
            "direct_response": self.nested(obj, path, "direct_response", self.direct_response),
            "redirect": self.nested(obj, path, "redirect", self.redirect),
            "timeout": self.field(obj, path, "timeout", checks.duration()),
            "per_try_timeout": self.field(
                obj, path, "per_try_timeout", checks.optional(checks.duration(positive=True))
            ),
            "max_request_body": self.field(
                obj, path, "max_request_body", checks.optional(checks.size())
            ),
            "filters": self.nested(obj, path, "filters", self.list_of(self.filter)),
            "retry_policy": self.nested(obj, path, "retry_policy", self.retry_policy),
            "rewrite": self.nested(obj, path, "rewrite", self.rewrite),
            "request_headers": self.nested(
                obj, path, "request_headers", self.header_edits(request=True)
            ),
            "response_headers": self.nested(
                obj, path, "response_headers", self.header_edits(request=False)
            ),
            "mirrors": self.nested(obj, path, "mirrors", self.mirrors),
        }
        ok = self.route_action(obj, path)
        ok &= self.needs_prefix_match(obj, path, "rewrite", "prefix")
        ok &= self.needs_prefix_match(obj, path, "redirect", "prefix_rewrite")
        timeout = values["timeout"]
        if timeout is _ABSENT:
            timeout = _default(Route, "timeout")
        per_try = values["per_try_timeout"]
        if timeout is not _BAD and per_try not in (_ABSENT, _BAD, None) and 0 < timeout < per_try:
            self.report(
                field_path(path, "per_try_timeout"),
                f"{format_duration(per_try)} exceeds the route timeout {format_duration(timeout)}",
            )
            ok = False
        return self.build(Route, values) if ok else _BAD

    def route_action(self, obj: Mapping[str, Any], path: str) -> bool:
        """Exactly one action; the fields that need a cluster only with a forwarding one."""
        given = [key for key in _ACTIONS if _given(obj, key)]
        if not given and isinstance(obj.get("weighted_clusters"), (list, tuple)):
            self.report(
                field_path(path, "weighted_clusters"), "at least one weighted cluster is required"
            )
            return False
        if len(given) != 1:
            got = f" (got {' and '.join(map(repr, given))})" if given else ""
            self.report(path, f"exactly one of {_one_of(_ACTIONS)} is required{got}")
            return False
        (action,) = given
        if action in _FORWARDING:
            return True
        misplaced = [key for key in _FORWARDING_ONLY if _given(obj, key)]
        for key in misplaced:
            self.report(
                field_path(path, key),
                f"only allowed on routes that forward to a cluster ('cluster' or "
                f"'weighted_clusters'); this route answers with {action!r}",
            )
        return not misplaced

    def needs_prefix_match(self, obj: Mapping[str, Any], path: str, key: str, sub: str) -> bool:
        """`obj[key][sub]` replaces the matched prefix, so the match must be a path prefix."""
        section = obj.get(key)
        if not isinstance(section, Mapping) or section.get(sub) is None:
            return True
        kind = _path_kind(obj.get("match"))
        if kind in (None, "prefix"):
            return True
        self.report(
            field_path(field_path(path, key), sub),
            f"needs a 'path: {{prefix: ...}}' match to replace (this route matches "
            f"'path: {{{kind}: ...}}')",
        )
        return False

    def weighted_clusters(self, value: object, path: str) -> Any:
        built = self.list_of(self.weighted_cluster)(value, path)
        if built is _BAD or not built:
            return built  # an empty list is reported by route_action when it matters
        ok = self.distinct([entry.name for entry in built], path, "cluster", "name")
        if not sum(entry.weight for entry in built):
            self.report(path, "the weights add up to 0: give at least one cluster a weight above 0")
            ok = False
        return built if ok else _BAD

    def weighted_cluster(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, WeightedCluster)
        if obj is None:
            return _BAD
        return self.build(
            WeightedCluster,
            {
                "name": self.field(obj, path, "name", checks.nonempty_string),
                "weight": self.field(obj, path, "weight", checks.integer(0, 10000)),
            },
        )

    def mirrors(self, value: object, path: str) -> Any:
        built = self.list_of(self.mirror)(value, path)
        if built is _BAD:
            return _BAD
        ok = self.distinct([entry.cluster for entry in built], path, "cluster", "cluster")
        return built if ok else _BAD

    def mirror(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Mirror)
        if obj is None:
            return _BAD
        return self.build(
            Mirror,
            {
                "cluster": self.field(obj, path, "cluster", checks.nonempty_string),
                "percent": self.field(obj, path, "percent", checks.number(0, 100)),
            },
        )

    def rewrite(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Rewrite)
        if obj is None:
            return _BAD
        values = {
            "prefix": self.field(obj, path, "prefix", checks.optional(checks.http_path)),
            "regex": self.field(obj, path, "regex", checks.optional(checks.regex)),
            "substitution": self.field(obj, path, "substitution", checks.optional(checks.string)),
            "host": self.field(obj, path, "host", checks.optional(checks.authority)),
            "auto_host": self.field(obj, path, "auto_host", checks.boolean),
        }
        ok = True
        if _given(obj, "prefix") and _given(obj, "regex"):
            self.report(path, "at most one of 'prefix' or 'regex' may be set")
            ok = False
        regex = values["regex"]
        substitution = values["substitution"]
        substitution_path = field_path(path, "substitution")
        if _given(obj, "regex") and not _given(obj, "substitution"):
            self.report(substitution_path, "required when 'regex' is set")
            ok = False
        elif _given(obj, "substitution") and not _given(obj, "regex"):
            self.report(substitution_path, "only allowed together with 'regex'")
            ok = False
        elif isinstance(regex, str) and isinstance(substitution, str):
            try:
                checks.substitution(regex, substitution)
            except ValueError as exc:
                self.report(substitution_path, str(exc))
                ok = False
        if _given(obj, "host") and obj.get("auto_host") is True:
            self.report(path, "at most one of 'host' or 'auto_host: true' may be set")
            ok = False
        return self.build(Rewrite, values) if ok else _BAD

    def direct_response(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, DirectResponse)
        if obj is None:
            return _BAD
        headers = self.list_of(self.header_value(checks.edited_header_name(request=False)))
        values = {
            "status": self.field(obj, path, "status", checks.integer(200, 599)),
            "body": self.field(obj, path, "body", checks.string),
            "headers": self.nested(obj, path, "headers", headers),
        }
        status = values["status"]
        body = _effective(values, DirectResponse, "body")
        if status in _BODYLESS_STATUSES and isinstance(body, str) and body:
            self.report(field_path(path, "body"), f"must be empty for status {status}")
            return _BAD
        return self.build(DirectResponse, values)

    def redirect(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Redirect)
        if obj is None:
            return _BAD
        target = checks.optional(checks.http_path)
        values = {
            "code": self.field(obj, path, "code", checks.int_one_of(_REDIRECT_CODES)),
            "scheme": self.field(obj, path, "scheme", checks.optional(checks.one_of(_SCHEMES))),
            "host": self.field(obj, path, "host", checks.optional(checks.uri_host)),
            "port": self.field(obj, path, "port", checks.optional(checks.integer(1, 65535))),
            "path": self.field(obj, path, "path", target),
            "prefix_rewrite": self.field(obj, path, "prefix_rewrite", target),
            "strip_query": self.field(obj, path, "strip_query", checks.boolean),
        }
        ok = True
        if _given(obj, "path") and _given(obj, "prefix_rewrite"):
            self.report(path, "at most one of 'path' or 'prefix_rewrite' may be set")
            ok = False
        if not any(_given(obj, key) for key in _REDIRECT_TARGETS) and not obj.get("strip_query"):
            self.report(
                path,
                "redirects to the request's own URL: set at least one of "
                f"{_one_of([*_REDIRECT_TARGETS, 'strip_query: true'])}",
            )
            ok = False
        return self.build(Redirect, values) if ok else _BAD

    def header_edits(self, *, request: bool) -> Build:
        name = checks.edited_header_name(request=request)

        def build(value: object, path: str) -> Any:
            obj = self.shape(value, path, HeaderEdits)
            if obj is None:
                return _BAD
            values = {
                "remove": self.nested(obj, path, "remove", self.list_of(self.checked(name))),
                "set": self.nested(obj, path, "set", self.list_of(self.header_value(name))),
                "add": self.nested(obj, path, "add", self.list_of(self.header_value(name))),
            }
            ok = True
            if values["remove"] not in (_ABSENT, _BAD):
                ok &= self.distinct(list(values["remove"]), field_path(path, "remove"), "header")
            if values["set"] not in (_ABSENT, _BAD):
                names = [header.name for header in values["set"]]
                ok &= self.distinct(names, field_path(path, "set"), "header", "name", "set")
            return self.build(HeaderEdits, values) if ok else _BAD

        return build

    def header_value(self, name: checks.Check) -> Build:
        """Builder for a `{name, value}` header to send, its name checked by `name`."""

        def build(value: object, path: str) -> Any:
            obj = self.shape(value, path, HeaderValue)
            if obj is None:
                return _BAD
            return self.build(
                HeaderValue,
                {
                    "name": self.field(obj, path, "name", name),
                    "value": self.field(obj, path, "value", checks.header_value),
                },
            )

        return build

    def retry_policy(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, RetryPolicy)
        if obj is None:
            return _BAD
        retry_on = self.list_of(
            self.checked(checks.one_of(_RETRY_ON)),
            nonempty="at least one retry condition is required",
        )
        values = {
            "retry_on": self.nested(obj, path, "retry_on", retry_on),
            "num_retries": self.field(obj, path, "num_retries", checks.integer(0, 10)),
            "retriable_status_codes": self.nested(
                obj,
                path,
                "retriable_status_codes",
                self.list_of(self.checked(checks.status_code)),
            ),
            "base_interval": self.field(obj, path, "base_interval", checks.duration(positive=True)),
            "max_interval": self.field(obj, path, "max_interval", checks.duration(positive=True)),
            "budget_percent": self.field(obj, path, "budget_percent", checks.number(0, 100)),
            "min_retry_concurrency": self.field(
                obj, path, "min_retry_concurrency", checks.integer(0)
            ),
        }
        ok = True
        retry_on_value = _effective(values, RetryPolicy, "retry_on")
        codes = _effective(values, RetryPolicy, "retriable_status_codes")
        if (
            retry_on_value is not _BAD
            and codes is not _BAD
            and "retriable-status-codes" in retry_on_value
            and not codes
        ):
            self.report(
                field_path(path, "retriable_status_codes"),
                "must not be empty when retry_on includes 'retriable-status-codes'",
            )
            ok = False
        ok &= self.ordered(values, path, RetryPolicy, "base_interval", "max_interval")
        return self.build(RetryPolicy, values) if ok else _BAD

    def ordered(
        self, values: Mapping[str, Any], path: str, cls: type, low_key: str, high_key: str
    ) -> bool:
        """Check duration field `low_key` <= `high_key`; the issue goes on `high_key`."""
        low = _effective(values, cls, low_key)
        high = _effective(values, cls, high_key)
        if low is _BAD or high is _BAD or low <= high:
            return True
        self.report(
            field_path(path, high_key),
            f"{format_duration(high)} is less than {low_key} {format_duration(low)}",
        )
        return False

    def route_match(self, value: object, path: str) -> Any:
        obj = self.mapping(value, path, _MATCH_FIELDS)
        if obj is None:
            return _BAD
        hosts = self.list_of(
            self.checked(checks.host_pattern), nonempty="at least one host is required"
        )
        values = {"hosts": self.nested(obj, path, "hosts", hosts)}
        paths = self.nested(obj, path, "path", self.path_match)
        values["methods"] = self.nested(obj, path, "methods", self.methods)
        values["headers"] = self.nested(obj, path, "headers", self.list_of(self.header_match))
        values["query"] = self.nested(obj, path, "query", self.list_of(self.query_match))
        if paths is _BAD:
            return _BAD
        if paths is not _ABSENT:
            values.update(paths)
        return self.build(RouteMatch, values)

    def path_match(self, value: object, path: str) -> Any:
        obj = self.mapping(value, path, _PATH_FIELDS)
        if obj is None:
            return _BAD
        given = [key for key in _PATH_FIELDS if key in obj]
        if len(given) != 1:
            self.report(path, f"exactly one of {_one_of(_PATH_FIELDS)} is required")
            return _BAD
        (kind,) = given
        check = checks.regex if kind == "regex" else checks.http_path
        checked = self.field(obj, path, kind, check)
        if checked is _BAD:
            return _BAD
        return {f"path_{key}": checked if key == kind else None for key in _PATH_FIELDS}

    def methods(self, value: object, path: str) -> Any:
        built = self.list_of(self.checked(checks.method))(value, path)
        if built is _BAD:
            return _BAD
        return built if self.distinct(list(built), path, "method") else _BAD

    def header_match(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, HeaderMatch)
        if obj is None:
            return _BAD
        absent_hint = "; to match requests without the header, use 'present: true, invert: true'"
        values = {
            "name": self.field(obj, path, "name", checks.header_name),
            "exact": self.field(obj, path, "exact", checks.optional(checks.header_value)),
            "regex": self.field(obj, path, "regex", checks.optional(checks.regex)),
            "present": self.field(
                obj, path, "present", checks.optional(checks.present(absent_hint))
            ),
            "invert": self.field(obj, path, "invert", checks.boolean),
        }
        if not self.exactly_one(obj, path, _CONDITIONS):
            return _BAD
        return self.build(HeaderMatch, values)

    def query_match(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, QueryMatch)
        if obj is None:
            return _BAD
        values = {
            "name": self.field(obj, path, "name", checks.nonempty_string),
            "exact": self.field(obj, path, "exact", checks.optional(checks.string)),
            "regex": self.field(obj, path, "regex", checks.optional(checks.regex)),
            "present": self.field(obj, path, "present", checks.optional(checks.present())),
        }
        if not self.exactly_one(obj, path, _CONDITIONS):
            return _BAD
        return self.build(QueryMatch, values)

    def filter(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, FilterSpec)
        if obj is None:
            return _BAD
        return self.build(
            FilterSpec,
            {
                "name": self.field(obj, path, "name", checks.dotted_name),
                "config": self.nested(obj, path, "config", self.frozen_mapping),
            },
        )

    def cluster(self, value: object, path: str) -> Any:
        # With discovery, endpoints may come later: the static list may be empty or left out.
        discovered = isinstance(value, Mapping) and value.get("discovery") is not None
        required = [name for name in _required(Cluster) if not discovered or name != "endpoints"]
        obj = self.mapping(value, path, _field_names(Cluster), required)
        if obj is None:
            return _BAD
        endpoints = self.list_of(
            self.endpoint, nonempty=None if discovered else "at least one endpoint is required"
        )
        values = {
            "name": self.field(obj, path, "name", checks.object_name),
            "endpoints": self.nested(obj, path, "endpoints", endpoints),
            "lb_policy": self.field(obj, path, "lb_policy", checks.one_of(_LB_POLICIES)),
            "connect_timeout": self.field(
                obj, path, "connect_timeout", checks.duration(positive=True)
            ),
            "idle_timeout": self.field(obj, path, "idle_timeout", checks.duration()),
            "max_idle_per_endpoint": self.field(
                obj, path, "max_idle_per_endpoint", checks.integer(0)
            ),
            "buffer_limit": self.field(obj, path, "buffer_limit", checks.size(1)),
            "hash_key": self.nested(obj, path, "hash_key", self.hash_key),
            "health_check": self.nested(obj, path, "health_check", self.health_check),
            "circuit_breakers": self.nested(obj, path, "circuit_breakers", self.circuit_breakers),
            "outlier_detection": self.nested(
                obj, path, "outlier_detection", self.outlier_detection
            ),
            "overprovisioning_factor": self.field(
                obj, path, "overprovisioning_factor", checks.number(1)
            ),
            "protocol": self.field(obj, path, "protocol", checks.one_of(_CLUSTER_PROTOCOLS)),
            "http2": self.nested(obj, path, "http2", self.http2_options),
            "tls": self.nested(obj, path, "tls", self.upstream_tls),
            "discovery": self.nested(obj, path, "discovery", self.discovery),
        }
        if discovered and values["endpoints"] is _ABSENT:
            values["endpoints"] = ()
        ok = True
        if values["endpoints"] not in (_ABSENT, _BAD) and not self.distinct_endpoints(
            values["endpoints"], field_path(path, "endpoints")
        ):
            ok = False
        policy = _effective(values, Cluster, "lb_policy")
        hash_key = _effective(values, Cluster, "hash_key")
        if policy is not _BAD and hash_key is not _BAD:
            if policy in _HASH_POLICIES and hash_key is None:
                self.report(field_path(path, "hash_key"), f"required when lb_policy is {policy!r}")
                ok = False
            elif policy not in _HASH_POLICIES and hash_key is not None:
                self.report(
                    field_path(path, "hash_key"),
                    f"only allowed when lb_policy is 'ring_hash' or 'maglev' "
                    f"(lb_policy is {policy!r})",
                )
                ok = False
        return self.build(Cluster, values) if ok else _BAD

    def discovery(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, Discovery)
        if obj is None:
            return _BAD
        values = {
            "type": self.field(obj, path, "type", checks.one_of(_DISCOVERY_TYPES)),
            "path": self.field(obj, path, "path", checks.optional(checks.nonempty_string)),
            "interval": self.field(obj, path, "interval", checks.duration(positive=True)),
        }
        kind = values["type"]
        if kind == "file" and not _given(obj, "path"):
            self.report(field_path(path, "path"), "required when type is 'file'")
            return _BAD
        if kind not in ("file", _BAD, _ABSENT) and _given(obj, "path"):
            self.report(
                field_path(path, "path"), f"only allowed when type is 'file' (type is {kind!r})"
            )
            return _BAD
        return self.build(Discovery, values)

    def hash_key(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, HashKey)
        if obj is None:
            return _BAD
        values = {
            "header": self.field(obj, path, "header", checks.optional(checks.header_name)),
            "source_ip": self.field(obj, path, "source_ip", checks.boolean),
        }
        header = _effective(values, HashKey, "header")
        source_ip = _effective(values, HashKey, "source_ip")
        if header is _BAD or source_ip is _BAD:
            return _BAD
        if (header is None) == (not source_ip):
            self.report(path, "exactly one of 'header' or 'source_ip: true' is required")
            return _BAD
        return self.build(HashKey, values)

    def health_check(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, HealthCheck)
        if obj is None:
            return _BAD
        statuses = self.list_of(
            self.checked(checks.status_code), nonempty="at least one status is required"
        )
        values = {
            "path": self.field(obj, path, "path", checks.http_path),
            "interval": self.field(obj, path, "interval", checks.duration(positive=True)),
            "timeout": self.field(obj, path, "timeout", checks.duration(positive=True)),
            "healthy_threshold": self.field(obj, path, "healthy_threshold", checks.integer(1)),
            "unhealthy_threshold": self.field(obj, path, "unhealthy_threshold", checks.integer(1)),
            "expected_statuses": self.nested(obj, path, "expected_statuses", statuses),
            "host": self.field(obj, path, "host", checks.optional(checks.host_header)),
        }
        interval = _effective(values, HealthCheck, "interval")
        timeout = _effective(values, HealthCheck, "timeout")
        if interval is not _BAD and timeout is not _BAD and timeout >= interval:
            self.report(
                field_path(path, "timeout"),
                f"{format_duration(timeout)} must be less than the interval "
                f"{format_duration(interval)}",
            )
            return _BAD
        return self.build(HealthCheck, values)

    def circuit_breakers(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, CircuitBreakers)
        if obj is None:
            return _BAD
        return self.build(
            CircuitBreakers,
            {
                key: self.field(obj, path, key, checks.integer(1))
                for key in (
                    "max_connections",
                    "max_pending_requests",
                    "max_requests",
                    "max_retries",
                )
            },
        )

    def outlier_detection(self, value: object, path: str) -> Any:
        if value is None:
            return None
        obj = self.shape(value, path, OutlierDetection)
        if obj is None:
            return _BAD
        positive = checks.duration(positive=True)
        values = {
            "consecutive_5xx": self.field(obj, path, "consecutive_5xx", checks.integer(1)),
            "consecutive_gateway_failure": self.field(
                obj, path, "consecutive_gateway_failure", checks.integer(1)
            ),
            "base_ejection_time": self.field(obj, path, "base_ejection_time", positive),
            "max_ejection_time": self.field(obj, path, "max_ejection_time", positive),
            "max_ejection_percent": self.field(
                obj, path, "max_ejection_percent", checks.integer(0, 100)
            ),
            "interval": self.field(obj, path, "interval", positive),
        }
        if not self.ordered(
            values, path, OutlierDetection, "base_ejection_time", "max_ejection_time"
        ):
            return _BAD
        return self.build(OutlierDetection, values)

    def distinct_endpoints(self, endpoints: tuple[Endpoint, ...], path: str) -> bool:
        # A repeated address:port is almost always a copy-paste slip; `weight` covers the rest.
        first: dict[tuple[str, int], int] = {}
        for index, endpoint in enumerate(endpoints):
            key = (endpoint.address.lower(), endpoint.port)
            if key in first:
                self.report(
                    item_path(path, index),
                    f"duplicate endpoint {endpoint.address}:{endpoint.port} "
                    f"(first at {item_path(path, first[key])})",
                )
            else:
                first[key] = index
        return len(first) == len(endpoints)

    def endpoint(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, Endpoint)
        if obj is None:
            return _BAD
        return self.build(
            Endpoint,
            {
                "address": self.field(obj, path, "address", checks.endpoint_address),
                "port": self.field(obj, path, "port", checks.integer(1, 65535)),
                "weight": self.field(obj, path, "weight", checks.integer(1)),
                "priority": self.field(obj, path, "priority", checks.integer(0, 7)),
                "locality": self.field(
                    obj, path, "locality", checks.optional(checks.nonempty_string)
                ),
            },
        )


def _collector_url(value: object) -> str:
    """An OTLP collector: an http(s) URL with a host (the grpc exporter also takes these)."""
    text = checks.nonempty_string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"invalid port in {text!r}") from None
    return text


def _outline(key: str, item: object) -> Outline:
    """The names, references and socket readable from a raw entry of spec section `key`.

    Fields are read with the same checks as decoding, leaving out whatever fails them, so an
    entry with an unrelated problem still takes part in the graph checks.
    """
    if not isinstance(item, Mapping):
        return Outline(name=None)
    name = _readable(checks.object_name, item.get("name"))
    if key == "routes":
        return Outline(
            name,
            cluster=_readable(checks.nonempty_string, item.get("cluster")),
            weighted_clusters=_references(item.get("weighted_clusters"), "name"),
            mirrors=_references(item.get("mirrors"), "cluster"),
        )
    if key == "listeners":
        protocol = _readable(checks.one_of(_LISTENER_PROTOCOLS), item.get("protocol", "http"))
        routes = item.get("routes")
        tcp = item.get("tcp")
        return Outline(
            name,
            # Only the references a listener of its protocol uses: the others are reported
            # as misplaced fields, and an unknown name there would only add noise.
            routes=(
                tuple(_readable(checks.nonempty_string, ref) for ref in routes)
                if isinstance(routes, (list, tuple)) and protocol == "http"
                else None
            ),
            address=_readable(checks.listen_address, item.get("address")),
            port=_readable(checks.integer(0, 65535), item.get("port")),
            tcp_cluster=(
                _readable(checks.nonempty_string, tcp.get("cluster"))
                if isinstance(tcp, Mapping) and protocol == "tcp"
                else None
            ),
            sni_clusters=(
                _references(item.get("sni_routes"), "cluster")
                if protocol == "tls_passthrough"
                else ()
            ),
        )
    return Outline(name)


def _references(items: object, key: str) -> tuple[str | None, ...]:
    """The cluster names in field `key` of each raw list item, None where unreadable."""
    if not isinstance(items, (list, tuple)):
        return ()
    return tuple(
        _readable(checks.nonempty_string, item.get(key)) if isinstance(item, Mapping) else None
        for item in items
    )


def _readable(check: checks.Check, value: object) -> Any:
    try:
        return check(value)
    except (TypeError, ValueError):
        return None
