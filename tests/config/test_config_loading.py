"""Sources, parsing, normalization, defaults and the model's helpers."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import pytest
import yaml

from omnirelay.config import (
    Cluster,
    Config,
    ConfigError,
    ConfigIssue,
    Endpoint,
    FilterSpec,
    FrozenDict,
    HeaderMatch,
    Listener,
    Metadata,
    Route,
    RouteMatch,
    config_to_dict,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "edge.yaml"
DOCS = REPO / "docs" / "configuration.md"


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert [listener.name for listener in config.spec.listeners] == ["public", "internal"]
    assert [route.name for route in config.routes_for("internal")] == ["api-canary", "api"]
    assert config.routes_for("public") == config.spec.routes
    canary = config.route("api-canary")
    assert canary.match.headers == (HeaderMatch("x-env", "canary"),)
    assert canary.match.hosts == ("api.example.com", "*.api.example.com")
    assert canary.per_try_timeout == 1.5
    assert config.route("healthz").match.path_exact == "/healthz"
    assert config.route("healthz").match.path_prefix is None
    assert config.cluster("api").connect_timeout == 0.25
    assert config.cluster("web").buffer_limit == 256 * 1024
    assert config.listener("public").max_header_bytes == 32 * 1024
    assert config.metadata.created == "2024-05-01T12:00:00Z"
    assert load_config(config_to_dict(config)) == config


def test_example_via_every_source_kind(tmp_path: Path) -> None:
    expected = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    assert load_config(str(EXAMPLE)) == expected
    assert load_config(text) == expected
    assert load_config(text.encode()) == expected
    assert load_config(yaml.safe_load(text)) == expected
    as_json = json.dumps(yaml.safe_load(text), indent=2)
    assert load_config(as_json) == expected
    assert load_config(as_json.encode()) == expected
    json_file = tmp_path / "edge.json"
    json_file.write_text(as_json)
    assert load_config(json_file) == expected
    assert load_config(str(json_file)) == expected
    yml_file = tmp_path / "edge.yml"
    yml_file.write_text(text)
    assert load_config(yml_file) == expected


def _docs_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_docs_examples_load() -> None:
    """Every YAML snippet in the reference, merged into the example config, still loads."""
    blocks = _docs_yaml_blocks()
    assert len(blocks) >= 6
    for block in blocks:
        document = yaml.safe_load(EXAMPLE.read_text())
        spec = document["spec"]
        for key, value in yaml.safe_load(block).items():
            if key in ("metadata", "rollout", "admin", "extensions"):
                document[key] = value
            elif key == "filters":
                spec["routes"][0]["filters"] = value
            else:
                by_name = {entry["name"]: entry for entry in spec[key]}
                by_name.update({entry["name"]: entry for entry in value})
                spec[key] = list(by_name.values())
        load_config(document)


def test_json_is_parsed_as_json_not_yaml_1_1() -> None:
    # PyYAML would read 1e-05 as a string and refuse U+007F.
    document = {
        "metadata": {"ttl": 1e-05, "author": "a\x7fb"},
        "spec": {
            "listeners": [{"name": "l", "address": "::", "port": 0}],
            "routes": [],
            "clusters": [],
        },
    }
    config = load_config(json.dumps(document, ensure_ascii=False))
    assert config.metadata.ttl == 1e-05
    assert config.metadata.author == "a\x7fb"


def test_yaml_keeps_timestamps_as_text() -> None:
    text = """
metadata:
  ttl: 1000
  created: 2024-05-01T12:00:00+02:00
spec: {listeners: [{name: l, address: 127.0.0.1, port: 0}], routes: [], clusters: []}
"""
    metadata = load_config(text).metadata
    assert metadata.ttl == 1000.0
    assert metadata.created == "2024-05-01T12:00:00+02:00"


def test_flow_style_yaml_that_is_not_json_still_parses() -> None:
    text = "{spec: {listeners: [{name: l, address: 127.0.0.1, port: 0}], routes: [], clusters: []}}"
    assert load_config(text).spec.listeners[0].name == "l"


def test_defaults(doc: dict) -> None:
    config = load_config(doc)
    assert config.metadata == Metadata()
    assert config.rollout is None
    listener = config.spec.listeners[0]
    assert listener == Listener(name="public", address="0.0.0.0", port=8080)
    assert listener.routes is None and listener.max_header_bytes == 65536
    assert listener.via == "omnirelay" and listener.idle_timeout == 300.0
    web = config.route("web")
    assert web.match == RouteMatch() == RouteMatch(hosts=("*",), path_prefix="/")
    assert web.timeout == 15.0 and web.per_try_timeout is None and web.filters == ()
    cluster = config.cluster("api")
    assert cluster == Cluster(name="api", endpoints=(Endpoint("10.0.0.1", 8080),))
    assert cluster.lb_policy == "round_robin" and cluster.buffer_limit == 1048576


def test_normalization(doc: dict) -> None:
    doc["spec"]["routes"][0]["match"] = {
        "hosts": ["API.Example.COM", "*.Example.com:8443", "[::1]:8080", "10.0.0.1"],
        "headers": [{"name": "X-Env", "exact": "Canary"}],
    }
    doc["spec"]["routes"][0]["timeout"] = "1m30s"
    doc["spec"]["routes"][0]["max_request_body"] = "10KB"
    doc["spec"]["listeners"][0]["max_header_bytes"] = "64KiB"
    route = load_config(doc).route("api")
    assert route.match.hosts == ("api.example.com", "*.example.com:8443", "[::1]:8080", "10.0.0.1")
    assert route.match.headers == (HeaderMatch("x-env", "Canary"),)
    assert route.timeout == 90.0 and isinstance(route.timeout, float)
    assert route.max_request_body == 10_000


def test_filters_and_rollout_become_frozen(doc: dict) -> None:
    doc["spec"]["routes"][0]["filters"] = [
        {"name": "omnirelay.filters.http.headers", "config": {"set": [{"x-a": "1"}], "n": 1.5}},
        {"name": "acme.noop"},
    ]
    doc["rollout"] = {"waves": [{"percent": 10, "nodes": ["a", "b"]}]}
    config = load_config(doc)
    first, second = config.route("api").filters
    assert first.config == {"set": ({"x-a": "1"},), "n": 1.5}
    assert isinstance(first.config, FrozenDict) and isinstance(first.config["set"][0], FrozenDict)
    assert second == FilterSpec("acme.noop")
    assert config.rollout is not None
    assert config.rollout.targets == ()
    assert config.rollout.waves == (FrozenDict({"percent": 10, "nodes": ("a", "b")}),)
    hash(config)


def test_rollout_null_is_absent(doc: dict) -> None:
    doc["rollout"] = None
    assert load_config(doc).rollout is None


def test_tuples_and_mappings_are_accepted_as_parsed_input(doc: dict) -> None:
    doc["spec"]["routes"] = tuple(doc["spec"]["routes"])
    doc["spec"]["clusters"][0] = FrozenDict(doc["spec"]["clusters"][0])
    assert [route.name for route in load_config(doc).spec.routes] == ["api", "web"]


def test_config_is_immutable_hashable_and_picklable() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.spec = None  # type: ignore[misc]
    assert hash(config) == hash(load_config(EXAMPLE))
    assert pickle.loads(pickle.dumps(config)) == config
    assert all(type(getattr(config.spec, f)) is tuple for f in ("listeners", "routes", "clusters"))


def test_lookup_helpers(doc: dict) -> None:
    doc["spec"]["listeners"][0]["routes"] = ["web", "api"]
    config = load_config(doc)
    assert isinstance(config, Config)
    assert config.cluster("web").endpoints[0].address == "10.0.0.2"
    assert isinstance(config.route("api"), Route)
    listener = config.listener("public")
    assert [r.name for r in config.routes_for(listener)] == ["web", "api"]
    assert config.routes_for("public") == config.routes_for(listener)
    for lookup in (config.cluster, config.route, config.listener):
        with pytest.raises(KeyError, match="no .* named 'missing'"):
            lookup("missing")


def test_empty_listener_route_list_means_no_routes(doc: dict) -> None:
    doc["spec"]["listeners"][0]["routes"] = []
    assert load_config(doc).routes_for("public") == ()


def test_config_error_shape_and_pickling() -> None:
    error = ConfigError([ConfigIssue("spec.routes[0].cluster", "unknown"), ConfigIssue("", "x")])
    assert str(error) == "spec.routes[0].cluster: unknown\nx"
    clone = pickle.loads(pickle.dumps(error))
    assert clone.issues == error.issues and str(clone) == str(error)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="unsupported config source of type int"):
        load_config(42)  # type: ignore[arg-type]
