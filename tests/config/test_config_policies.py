"""Cluster and route policies: load balancing with hash keys, health checks, circuit breakers,
outlier detection and retry policies. Defaults, normalization and every rule's exact message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from omnirelay.config import (
    CircuitBreakers,
    Cluster,
    Endpoint,
    HashKey,
    HealthCheck,
    OutlierDetection,
    RetryPolicy,
    config_to_dict,
    load_config,
)

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]


def _cluster(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["clusters"][index]


def _route(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["routes"][index]


def test_defaults_keep_todays_behaviour(doc: Doc) -> None:
    config = load_config(doc)
    cluster = config.cluster("api")
    assert cluster == Cluster(name="api", endpoints=(Endpoint("10.0.0.1", 8080),))
    assert cluster.lb_policy == "round_robin"
    assert cluster.hash_key is None
    assert cluster.health_check is None
    assert cluster.outlier_detection is None
    assert cluster.circuit_breakers == CircuitBreakers(1024, 1024, 1024, 3)
    assert config.route("api").retry_policy is None


def test_empty_mappings_give_the_documented_defaults(doc: Doc) -> None:
    _cluster(doc).update(health_check={}, circuit_breakers={}, outlier_detection={})
    _route(doc)["retry_policy"] = {}
    config = load_config(doc)
    cluster = config.cluster("api")
    assert cluster.health_check == HealthCheck(
        path="/healthz",
        interval=5.0,
        timeout=1.0,
        healthy_threshold=2,
        unhealthy_threshold=3,
        expected_statuses=(200,),
        host=None,
    )
    assert cluster.circuit_breakers == CircuitBreakers()
    assert cluster.outlier_detection == OutlierDetection(5, 5, 30.0, 300.0, 10, 10.0)
    assert config.route("api").retry_policy == RetryPolicy(
        retry_on=("connect-failure",),
        num_retries=1,
        retriable_status_codes=(),
        base_interval=0.025,
        max_interval=0.25,
        budget_percent=20.0,
        min_retry_concurrency=3,
    )


def test_null_optional_policies_are_absent(doc: Doc) -> None:
    plain = load_config(doc)
    _cluster(doc).update(hash_key=None, health_check=None, outlier_detection=None)
    _route(doc)["retry_policy"] = None
    assert load_config(doc) == plain


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "random"])
def test_non_hashing_policies(doc: Doc, policy: str) -> None:
    _cluster(doc)["lb_policy"] = policy
    assert load_config(doc).cluster("api").lb_policy == policy


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hashing_policies_with_hash_keys(doc: Doc, policy: str) -> None:
    _cluster(doc).update(lb_policy=policy, hash_key={"header": "X-User"})
    _cluster(doc, 1).update(lb_policy=policy, hash_key={"source_ip": True})
    config = load_config(doc)
    assert config.cluster("api").hash_key == HashKey(header="x-user")
    assert config.cluster("web").hash_key == HashKey(source_ip=True)
    assert load_config(config_to_dict(config)) == config


def test_full_policies_from_yaml_normalize() -> None:
    text = """
spec:
  listeners: [{name: public, address: 0.0.0.0, port: 8080}]
  routes:
    - name: api
      match: {}
      cluster: api
      retry_policy:
        retry_on: [5xx, retriable-status-codes, reset]
        num_retries: 3
        retriable_status_codes: [503, 429]
        base_interval: 50ms
        max_interval: 1s
        budget_percent: 25
        min_retry_concurrency: 0
  clusters:
    - name: api
      lb_policy: maglev
      hash_key: {header: X-Session}
      endpoints: [{address: 10.0.0.1, port: 8080}]
      health_check:
        path: /ready
        interval: 2s
        timeout: 500ms
        healthy_threshold: 1
        unhealthy_threshold: 2
        expected_statuses: [200, 204]
        host: api.internal
      circuit_breakers: {max_connections: 100, max_retries: 10}
      outlier_detection:
        consecutive_5xx: 3
        base_ejection_time: 10s
        max_ejection_time: 10s
        max_ejection_percent: 50
        interval: 1s
"""
    config = load_config(text)
    route = config.route("api")
    assert route.retry_policy == RetryPolicy(
        retry_on=("5xx", "retriable-status-codes", "reset"),
        num_retries=3,
        retriable_status_codes=(503, 429),
        base_interval=0.05,
        max_interval=1.0,
        budget_percent=25.0,
        min_retry_concurrency=0,
    )
    assert isinstance(route.retry_policy.budget_percent, float)
    cluster = config.cluster("api")
    assert cluster.hash_key == HashKey(header="x-session")
    assert cluster.health_check == HealthCheck("/ready", 2.0, 0.5, 1, 2, (200, 204), "api.internal")
    assert cluster.circuit_breakers == CircuitBreakers(100, 1024, 1024, 10)
    assert cluster.outlier_detection == OutlierDetection(3, 5, 10.0, 10.0, 50, 1.0)
    assert load_config(config_to_dict(config)) == config
    hash(config)


RULES = [
    # lb_policy and hash_key
    (
        lambda d: _cluster(d).update(lb_policy="ring_hash"),
        ["spec.clusters[0].hash_key: required when lb_policy is 'ring_hash'"],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="maglev", hash_key=None),
        ["spec.clusters[0].hash_key: required when lb_policy is 'maglev'"],
    ),
    (
        lambda d: _cluster(d).update(hash_key={"header": "x-user"}),
        [
            (
                "spec.clusters[0].hash_key: only allowed when lb_policy is 'ring_hash' or "
                "'maglev' (lb_policy is 'round_robin')"
            )
        ],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="random", hash_key={"source_ip": True}),
        [
            (
                "spec.clusters[0].hash_key: only allowed when lb_policy is 'ring_hash' or "
                "'maglev' (lb_policy is 'random')"
            )
        ],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="ring_hash", hash_key={}),
        ["spec.clusters[0].hash_key: exactly one of 'header' or 'source_ip: true' is required"],
    ),
    (
        lambda d: _cluster(d).update(
            lb_policy="ring_hash", hash_key={"header": "a", "source_ip": True}
        ),
        ["spec.clusters[0].hash_key: exactly one of 'header' or 'source_ip: true' is required"],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="ring_hash", hash_key={"source_ip": False}),
        ["spec.clusters[0].hash_key: exactly one of 'header' or 'source_ip: true' is required"],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="ring_hash", hash_key={"source_ip": "yes"}),
        ["spec.clusters[0].hash_key.source_ip: expected boolean, got string"],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="maglev", hash_key={"header": "X User"}),
        [
            "spec.clusters[0].hash_key.header: invalid header name 'X User': must be an RFC 9110 token"
        ],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="maglev", hash_key={"headr": "x"}),
        [
            "spec.clusters[0].hash_key.headr: unknown field (did you mean 'header'?)",
            "spec.clusters[0].hash_key: exactly one of 'header' or 'source_ip: true' is required",
        ],
    ),
    (
        lambda d: _cluster(d).update(lb_policy="maglev", hash_key="x-user"),
        ["spec.clusters[0].hash_key: expected mapping, got string"],
    ),
    # health_check
    (
        lambda d: _cluster(d).update(health_check={"intervall": "1s"}),
        ["spec.clusters[0].health_check.intervall: unknown field (did you mean 'interval'?)"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"timeout": "5s"}),
        ["spec.clusters[0].health_check.timeout: 5s must be less than the interval 5s"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"interval": "500ms"}),
        ["spec.clusters[0].health_check.timeout: 1s must be less than the interval 0.5s"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"interval": 0}),
        ["spec.clusters[0].health_check.interval: must be greater than 0"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"healthy_threshold": 0}),
        ["spec.clusters[0].health_check.healthy_threshold: must be at least 1, got 0"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"unhealthy_threshold": 0}),
        ["spec.clusters[0].health_check.unhealthy_threshold: must be at least 1, got 0"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"expected_statuses": [200, 99, 600]}),
        [
            "spec.clusters[0].health_check.expected_statuses[1]: must be between 100 and 599, got 99",
            "spec.clusters[0].health_check.expected_statuses[2]: must be between 100 and 599, got 600",
        ],
    ),
    (
        lambda d: _cluster(d).update(health_check={"expected_statuses": []}),
        ["spec.clusters[0].health_check.expected_statuses: at least one status is required"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"path": "healthz"}),
        ["spec.clusters[0].health_check.path: invalid path 'healthz': must start with '/'"],
    ),
    (
        lambda d: _cluster(d).update(health_check={"host": "a b"}),
        [
            "spec.clusters[0].health_check.host: invalid host 'a b': use printable ASCII without spaces"
        ],
    ),
    (
        lambda d: _cluster(d).update(health_check={"host": ""}),
        ["spec.clusters[0].health_check.host: must not be empty"],
    ),
    # circuit_breakers
    (
        lambda d: _cluster(d).update(circuit_breakers=None),
        ["spec.clusters[0].circuit_breakers: expected mapping, got null"],
    ),
    (
        lambda d: _cluster(d).update(circuit_breakers={"max_connections": 0, "max_retries": 0}),
        [
            "spec.clusters[0].circuit_breakers.max_connections: must be at least 1, got 0",
            "spec.clusters[0].circuit_breakers.max_retries: must be at least 1, got 0",
        ],
    ),
    (
        lambda d: _cluster(d).update(circuit_breakers={"max_request": 5}),
        [
            (
                "spec.clusters[0].circuit_breakers.max_request: unknown field "
                "(did you mean 'max_requests'?)"
            )
        ],
    ),
    # outlier_detection
    (
        lambda d: _cluster(d).update(outlier_detection={"max_ejection_percent": 101}),
        [
            (
                "spec.clusters[0].outlier_detection.max_ejection_percent: must be between 0 and "
                "100, got 101"
            )
        ],
    ),
    (
        lambda d: _cluster(d).update(outlier_detection={"base_ejection_time": "10m"}),
        [
            (
                "spec.clusters[0].outlier_detection.max_ejection_time: 300s is less than "
                "base_ejection_time 600s"
            )
        ],
    ),
    (
        lambda d: _cluster(d).update(outlier_detection={"consecutive_5xx": 0, "interval": "0s"}),
        [
            "spec.clusters[0].outlier_detection.consecutive_5xx: must be at least 1, got 0",
            "spec.clusters[0].outlier_detection.interval: must be greater than 0",
        ],
    ),
    # retry_policy
    (
        lambda d: _route(d).update(retry_policy={"retry_on": ["5xx", "timeout"]}),
        [
            (
                "spec.routes[0].retry_policy.retry_on[1]: unsupported value 'timeout' (allowed: "
                "5xx, gateway-error, connect-failure, reset, retriable-status-codes, cancelled, "
                "deadline-exceeded, internal, resource-exhausted, unavailable)"
            )
        ],
    ),
    (
        lambda d: _route(d).update(retry_policy={"retry_on": []}),
        ["spec.routes[0].retry_policy.retry_on: at least one retry condition is required"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"retry_on": "5xx"}),
        ["spec.routes[0].retry_policy.retry_on: expected list, got string"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"retry_on": ["retriable-status-codes"]}),
        [
            (
                "spec.routes[0].retry_policy.retriable_status_codes: must not be empty when "
                "retry_on includes 'retriable-status-codes'"
            )
        ],
    ),
    (
        lambda d: _route(d).update(retry_policy={"retriable_status_codes": [503, 700]}),
        [
            "spec.routes[0].retry_policy.retriable_status_codes[1]: must be between 100 and 599, got 700"
        ],
    ),
    (
        lambda d: _route(d).update(retry_policy={"num_retries": 11}),
        ["spec.routes[0].retry_policy.num_retries: must be between 0 and 10, got 11"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"base_interval": "1s"}),
        ["spec.routes[0].retry_policy.max_interval: 0.25s is less than base_interval 1s"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"budget_percent": 100.5}),
        ["spec.routes[0].retry_policy.budget_percent: must be between 0 and 100, got 100.5"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"budget_percent": "20%"}),
        ["spec.routes[0].retry_policy.budget_percent: expected number, got string"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"budget_percent": float("nan")}),
        ["spec.routes[0].retry_policy.budget_percent: must be finite, got nan"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"min_retry_concurrency": -1}),
        ["spec.routes[0].retry_policy.min_retry_concurrency: must be at least 0, got -1"],
    ),
    (
        lambda d: _route(d).update(retry_policy={"retries": 2}),
        [("spec.routes[0].retry_policy.retries: unknown field (did you mean 'num_retries'?)")],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), RULES)
def test_policy_rules(
    doc: Doc, issues_of: Issues, mutate: Callable[[Doc], None], expected: list[str]
) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


def test_problems_in_several_policies_are_all_reported(doc: Doc, issues_of: Issues) -> None:
    _cluster(doc).update(
        lb_policy="ring_hash",
        health_check={"healthy_threshold": 0},
        outlier_detection={"max_ejection_percent": -1},
    )
    _route(doc, 1)["retry_policy"] = {"num_retries": -1}
    assert issues_of(doc) == [
        "spec.routes[1].retry_policy.num_retries: must be between 0 and 10, got -1",
        "spec.clusters[0].health_check.healthy_threshold: must be at least 1, got 0",
        (
            "spec.clusters[0].outlier_detection.max_ejection_percent: must be between 0 and 100, "
            "got -1"
        ),
        "spec.clusters[0].hash_key: required when lb_policy is 'ring_hash'",
    ]
