"""The metric list: Prometheus naming rules, the exposition format, and docs in step."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from omnirelay.telemetry.metrics import (
    BY_NAME,
    COUNTER,
    HISTOGRAM,
    HISTOGRAM_BOUNDS,
    METRICS,
    exposition,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
NAME = re.compile(r"^omnirelay_[a-z0-9_]+$")


def test_names_follow_prometheus_conventions():
    assert len(BY_NAME) == len(METRICS), "a metric is declared twice"
    for m in METRICS:
        assert NAME.match(m.name), m.name
        assert m.name.endswith("_total") == (m.kind == COUNTER), m.name
        if m.kind == HISTOGRAM:
            assert m.name.endswith("_seconds"), m.name
        assert m.help.endswith("."), m.name
        assert "le" not in m.labels and len(set(m.labels)) == len(m.labels)


def test_histogram_bounds_are_increasing():
    assert list(HISTOGRAM_BOUNDS) == sorted(set(HISTOGRAM_BOUNDS))
    assert len(HISTOGRAM_BOUNDS) == 16


def test_exposition_parses_back():
    hist = [0] * 17 + [0.0]
    hist[0], hist[5], hist[16], hist[-1] = 2, 1, 1, 61.0213
    series = {
        ("omnirelay_downstream_requests_total", ("edge", "2xx")): 7,
        ("omnirelay_downstream_connections_active", ("edge",)): 2,
        ("omnirelay_upstream_request_duration_seconds", ("api", "r1")): hist,
        ("omnirelay_config_info", ("v7", "3")): 1,
        ("omnirelay_workers", ()): 2,
    }
    families = {f.name: f for f in text_string_to_metric_families(exposition(series).decode())}
    assert {f.name for f in families.values()} == {
        m.name.removesuffix("_total") for m in METRICS}
    (req,) = families["omnirelay_downstream_requests"].samples
    assert req.name == "omnirelay_downstream_requests_total"
    assert req.labels == {"listener": "edge", "code_class": "2xx"} and req.value == 7
    samples = {(s.name, s.labels.get("le")): s.value
               for s in families["omnirelay_upstream_request_duration_seconds"].samples}
    assert samples[("omnirelay_upstream_request_duration_seconds_bucket", "0.0005")] == 2
    assert samples[("omnirelay_upstream_request_duration_seconds_bucket", "0.025")] == 3
    assert samples[("omnirelay_upstream_request_duration_seconds_bucket", "60.0")] == 3
    assert samples[("omnirelay_upstream_request_duration_seconds_bucket", "+Inf")] == 4
    assert samples[("omnirelay_upstream_request_duration_seconds_count", None)] == 4
    assert samples[("omnirelay_upstream_request_duration_seconds_sum", None)] == 61.0213
    (info,) = families["omnirelay_config_info"].samples
    assert info.labels == {"version": "v7", "epoch": "3"} and info.value == 1


def test_every_metric_is_documented():
    """docs/operations.md has one table row per metric: name, type, labels."""
    rows = re.findall(r"^\| `(omnirelay_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", DOCS.read_text(),
                      re.MULTILINE)
    documented = {name: (kind, tuple(re.findall(r"`(\w+)`", labels)))
                  for name, kind, labels in rows}
    declared = {m.name: (m.kind, m.labels) for m in METRICS}
    assert documented == declared
