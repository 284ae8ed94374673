"""Decoding of a parsed document into the model, with every field-level check.

The document shape mirrors the dataclasses in `model` (same snake_case names, same defaults),
except that a route match nests its path as `path: {exact: ...}` or `path: {prefix: ...}`.
Decoding never stops at the first problem: each one is recorded as a `ConfigIssue` and the
surrounding object is marked bad, so a single pass reports everything.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, fields
from typing import Any

from . import checks
from .errors import ConfigIssue, field_path, item_path
from .frozen import FrozenDict
from .model import (
    CircuitBreakers,
    Cluster,
    Config,
    Endpoint,
    FilterSpec,
    HashKey,
    HeaderMatch,
    HealthCheck,
    Listener,
    Metadata,
    OutlierDetection,
    RetryPolicy,
    Rollout,
    Route,
    RouteMatch,
    Spec,
)
from .units import format_duration
from .validate import Outline, graph_issues

_ABSENT: Any = object()  # optional field not given: the dataclass default applies
_BAD: Any = object()  # value failed a check; its issue is already recorded

_MATCH_FIELDS = ("hosts", "path", "headers")
_PATH_FIELDS = ("exact", "prefix")
_LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
_HASH_POLICIES = ("ring_hash", "maglev")
_RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes")

Build = Callable[[Any, str], Any]


def decode_document(document: object) -> tuple[Config | None, list[ConfigIssue]]:
    """The config for a parsed document, or None plus at least one issue."""
    decoder = _Decoder()
    config = decoder.config(document)
    if decoder.issues:
        return None, decoder.issues
    return config, []


def _required(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )


def _default(cls: type, name: str) -> Any:
    (f,) = (f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def _effective(values: Mapping[str, Any], cls: type, name: str) -> Any:
    """A decoded field value, with the dataclass default standing in for an absent one."""
    value = values[name]
    return _default(cls, name) if value is _ABSENT else value


def _unknown_field(key: str, allowed: Collection[str]) -> str:
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
        return self.mapping(value, path, [f.name for f in fields(cls)], _required(cls))

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
        obj = self.mapping(document, "", ("metadata", "spec", "rollout"), ("spec",))
        metadata = self.nested(obj, "", "metadata", self.metadata)
        return self.build(
            Config,
            {
                "metadata": Metadata() if metadata is _ABSENT else metadata,
                "spec": self.nested(obj, "", "spec", self.spec),
                "rollout": self.nested(obj, "", "rollout", self.rollout),
            },
        )

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
        return self.build(
            Listener,
            {
                "name": self.field(obj, path, "name", checks.object_name),
                "address": self.field(obj, path, "address", checks.listen_address),
                "port": self.field(obj, path, "port", checks.integer(0, 65535)),
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
            },
        )

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
            "cluster": self.field(obj, path, "cluster", checks.nonempty_string),
            "timeout": self.field(obj, path, "timeout", checks.duration()),
            "per_try_timeout": self.field(
                obj, path, "per_try_timeout", checks.optional(checks.duration(positive=True))
            ),
            "max_request_body": self.field(
                obj, path, "max_request_body", checks.optional(checks.size())
            ),
            "filters": self.nested(obj, path, "filters", self.list_of(self.filter)),
            "retry_policy": self.nested(obj, path, "retry_policy", self.retry_policy),
        }
        timeout = values["timeout"]
        if timeout is _ABSENT:
            timeout = _default(Route, "timeout")
        per_try = values["per_try_timeout"]
        if timeout is not _BAD and per_try not in (_ABSENT, _BAD, None) and 0 < timeout < per_try:
            self.report(
                field_path(path, "per_try_timeout"),
                f"{format_duration(per_try)} exceeds the route timeout {format_duration(timeout)}",
            )
            return _BAD
        return self.build(Route, values)

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
        values["headers"] = self.nested(obj, path, "headers", self.list_of(self.header_match))
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
            self.report(path, "exactly one of 'exact' or 'prefix' is required")
            return _BAD
        (kind,) = given
        checked = self.field(obj, path, kind, checks.http_path)
        if checked is _BAD:
            return _BAD
        return {
            "path_exact": checked if kind == "exact" else None,
            "path_prefix": checked if kind == "prefix" else None,
        }

    def header_match(self, value: object, path: str) -> Any:
        obj = self.shape(value, path, HeaderMatch)
        if obj is None:
            return _BAD
        return self.build(
            HeaderMatch,
            {
                "name": self.field(obj, path, "name", checks.header_name),
                "equals": self.field(obj, path, "equals", checks.header_value),
            },
        )

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
        obj = self.shape(value, path, Cluster)
        if obj is None:
            return _BAD
        endpoints = self.list_of(self.endpoint, nonempty="at least one endpoint is required")
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
        }
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
            },
        )


def _outline(key: str, item: object) -> Outline:
    """The names, references and socket readable from a raw entry of spec section `key`.

    Fields are read with the same checks as decoding, leaving out whatever fails them, so an
    entry with an unrelated problem still takes part in the graph checks.
    """
    if not isinstance(item, Mapping):
        return Outline(name=None)
    name = _readable(checks.object_name, item.get("name"))
    if key == "routes":
        return Outline(name, cluster=_readable(checks.nonempty_string, item.get("cluster")))
    if key == "listeners":
        routes = item.get("routes")
        return Outline(
            name,
            routes=(
                tuple(_readable(checks.nonempty_string, ref) for ref in routes)
                if isinstance(routes, (list, tuple))
                else None
            ),
            address=_readable(checks.listen_address, item.get("address")),
            port=_readable(checks.integer(0, 65535), item.get("port")),
        )
    return Outline(name)


def _readable(check: checks.Check, value: object) -> Any:
    try:
        return check(value)
    except (TypeError, ValueError):
        return None
