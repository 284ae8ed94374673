"""Tracing pieces: W3C traceparent parsing, the `tracing` config block (path-precise
errors), and the request hook's cost model (no hook without tracing or a tap; no export
thread until the first span)."""
from __future__ import annotations

import logging
import socket
import threading

import pytest

from omnirelay.config import ConfigError, load_config
from omnirelay.config.model import Tracing
from omnirelay.runtime.build import TableBuilder
from omnirelay.runtime.supervisor import build_checked
from omnirelay.telemetry.tap import TapFilter
from omnirelay.telemetry.tracing import format_traceparent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
T = "spec.listeners[0].tracing"


def doc(tracing=None, protocol="http") -> dict:
    lst = {"name": "edge", "address": "127.0.0.1", "port": 0}
    if protocol != "http":
        lst.update(protocol="tcp", tcp={"cluster": "c"})
    if tracing is not None:
        lst["tracing"] = tracing
    return {"spec": {"listeners": [lst],
                     "routes": [{"name": "r", "match": {"path": {"prefix": "/"}},
                                 "cluster": "c"}],
                     "clusters": [{"name": "c",
                                   "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}}


def issues(document) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(document)
    return [str(i) for i in e.value.issues]


def test_parse_valid_traceparents():
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent(f" 00-{TRACE}-{PARENT}-00 ")[2] == 0
    # a later version may append fields
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-future") is not None


@pytest.mark.parametrize("value", [
    None, "", "garbage", f"00-{TRACE}-{PARENT}", f"00-{TRACE}-{PARENT}-01-extra",
    f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",
    f"00-{TRACE.upper()}-{PARENT}-01", f"00-{TRACE[:-1]}-{PARENT}-01", f"0-{TRACE}-{PARENT}-01"])
def test_invalid_traceparents_are_rejected(value):
    assert parse_traceparent(value) is None


def test_format_round_trips():
    value = format_traceparent(int(TRACE, 16), int(PARENT, 16), 1)
    assert value == f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(value) == (int(TRACE, 16), int(PARENT, 16), 1)


def test_tracing_block_defaults():
    cfg = load_config(doc({"collector": "http://127.0.0.1:4318/v1/traces"}))
    t = cfg.spec.listeners[0].tracing
    assert t == Tracing(collector="http://127.0.0.1:4318/v1/traces")
    assert (t.protocol, t.sampling, t.service_name, t.max_queue, t.max_batch) == (
        "http/protobuf", 1.0, "omnirelay", 2048, 512)
    full = {"collector": "https://otel.example:4317", "protocol": "grpc", "sampling": 0.25,
            "service_name": "edge", "max_queue": 100, "max_batch": 10,
            "export_interval": "250ms", "export_timeout": "2s"}
    t = load_config(doc(full)).spec.listeners[0].tracing
    assert (t.protocol, t.sampling, t.export_interval, t.export_timeout) == (
        "grpc", 0.25, 0.25, 2.0)


def test_tracing_block_errors_name_the_field():
    assert issues(doc({})) == [f"{T}.collector: missing required field"]
    got = issues(doc({"collector": "ftp://x", "protocol": "udp", "sampling": 1.5,
                      "service_name": "", "max_queue": 0, "export_interval": 0,
                      "colector": "x"}))
    assert any(g.startswith(f"{T}.collector: expected an http:// or https:// URL") for g in got)
    assert any(g.startswith(f"{T}.protocol:") for g in got)
    assert any(g.startswith(f"{T}.sampling: must be between 0 and 1") for g in got)
    assert any(g.startswith(f"{T}.service_name: must not be empty") for g in got)
    assert any(g.startswith(f"{T}.max_queue:") for g in got)
    assert any(g.startswith(f"{T}.export_interval:") for g in got)
    assert any(g.startswith(f"{T}.colector:") for g in got)
    assert issues(doc({"collector": "http://h:4318", "max_queue": 10, "max_batch": 20})) == [
        f"{T}.max_batch: must not exceed max_queue (10), got 20"]
    assert issues(doc({"collector": "http://h:99999"})) == [
        f"{T}.collector: invalid port in 'http://h:99999'"]
    assert any(g.startswith(f"{T}: only allowed on 'http' listeners")
               for g in issues(doc({"collector": "http://h:4318"}, protocol="tcp")))


def test_no_hook_without_tracing_and_one_while_a_tap_runs():
    b = TableBuilder()
    built = b.build(load_config(doc()))
    state = built.listeners["edge"]
    assert state.trace is None
    tap = b.taps.start(TapFilter(), 1, 5.0)
    assert state.trace is not None and state.trace.pipeline is None
    b.taps.remove(tap)
    assert state.trace is None


def test_tracing_hook_and_a_shared_lazy_pipeline():
    before = {t.name for t in threading.enumerate()}
    b = TableBuilder()
    cfg = load_config(doc({"collector": "http://127.0.0.1:9/v1/traces"}))
    built = b.build(cfg)
    hook = built.listeners["edge"].trace
    assert hook is not None and hook.config_version == cfg.metadata.version
    (pipeline,) = b.pipelines.values()
    assert pipeline.processor is None  # no thread until a span is recorded
    assert b.build(cfg).listeners["edge"].trace.pipeline is pipeline  # kept on reload
    build_checked(cfg)  # the supervisor's check build starts nothing either
    assert {t.name for t in threading.enumerate()} == before
    b.close_tracing()


def test_an_unreachable_collector_is_logged_once_not_per_batch(caplog, monkeypatch):
    """Real exporter, real (refused) connections: several failed batches, one log line per
    kind of message."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    from omnirelay.telemetry import tracing

    monkeypatch.setattr(tracing._THROTTLE, "last", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    p = tracing.Pipeline(tracing.ExportSettings(
        f"http://127.0.0.1:{port}/v1/traces", "http/protobuf", "t", 64, 1, 0.01, 0.2))
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # three batches, each exported (and failing) by the flush
        p.export(ReadableSpan("GET", SpanContext(1, 1, False, TraceFlags(1)),
                              start_time=1, end_time=2))
        p.flush(2.0)
    p.shutdown()
    counts: dict[str, int] = {}
    for r in caplog.records:
        if r.name.startswith("opentelemetry.exporter"):
            counts[r.msg] = counts.get(r.msg, 0) + 1
    assert counts, "the failure is reported"
    assert all(n == 1 for n in counts.values()), counts
