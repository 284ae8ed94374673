"""Tracing end to end: a real origin, a Relay with `tracing` set and a local OTLP/HTTP
receiver. Propagation (traceparent continued, started, replaced; tracestate passed), the
SERVER span and one CLIENT span per upstream attempt, and nothing at all with tracing off."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys

import pytest
from harness import (
    Origin,
    RawServer,
    free_port,
    get,
    make_config,
    one_shot,
    raw_response,
    read_request,
)
from otlp import CLIENT, SERVER, STATUS_ERROR, OtlpGrpcReceiver, OtlpReceiver

import omnirelay
from omnirelay.telemetry.tracing import parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def tracing(receiver: OtlpReceiver, **extra) -> dict:
    return {"tracing": {"collector": receiver.url, "service_name": "edge-proxy",
                        "export_interval": 0.05, **extra}}


def traceparent_seen(origin: Origin, i: int = -1) -> tuple[int, int, int]:
    value = origin.seen[i].headers.get("traceparent")
    assert value is not None, "the origin got no traceparent"
    parsed = parse_traceparent(value)
    assert parsed is not None, f"the origin got an invalid traceparent {value!r}"
    return parsed


async def test_a_client_trace_is_continued_with_server_and_client_spans():
    async with OtlpReceiver() as rx, Origin() as origin:
        cfg = make_config(origin.port, listener=tracing(rx), metadata={"version": "v42"})
        async with omnirelay.Relay(cfg) as relay:
            headers = (f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"
                       "tracestate: vendor=abc\r\n")
            resp = await one_shot(relay.address(), get("/items?x=1", headers=headers))
            assert resp.status == 200
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(2)
        tid, pid, flags = traceparent_seen(origin)
        assert f"{tid:032x}" == TRACE and flags == 1
        assert f"{pid:016x}" != PARENT  # our attempt's span is the origin's parent
        assert origin.seen[-1].headers.get("tracestate") == "vendor=abc"
        server = next(s for s in spans if s.kind == SERVER)
        client = next(s for s in spans if s.kind == CLIENT)
        assert server.trace_id == client.trace_id == TRACE
        assert server.parent_span_id == PARENT
        assert client.parent_span_id == server.span_id
        assert client.span_id == f"{pid:016x}"
        assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
        assert server.attributes["http.request.method"] == "GET"
        assert server.attributes["url.path"] == "/items"
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["server.address"] == "example.test"
        for s in (server, client):
            assert s.attributes["omnirelay.route"] == "r"
            assert s.attributes["omnirelay.cluster"] == "c"
            assert s.attributes["omnirelay.config_version"] == "v42"
            assert s.resource["service.name"] == "edge-proxy"
            assert s.status_code != STATUS_ERROR
        assert client.attributes["server.port"] == origin.port
        assert client.attributes["http.response.status_code"] == 200


async def test_a_request_without_traceparent_starts_a_trace():
    async with OtlpReceiver() as rx, Origin() as origin:
        async with omnirelay.Relay(make_config(origin.port, listener=tracing(rx))) as relay:
            resp = await one_shot(relay.address(), get("/"))
            assert resp.status == 200
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(2)
        tid, pid, flags = traceparent_seen(origin)
        assert flags == 1  # sampling 1.0
        server = next(s for s in spans if s.kind == SERVER)
        assert server.trace_id == f"{tid:032x}"
        assert server.parent_span_id == ""  # a root span
        (client,) = [s for s in spans if s.kind == CLIENT]
        assert client.span_id == f"{pid:016x}"


async def test_an_invalid_traceparent_is_replaced_and_its_tracestate_dropped():
    async with OtlpReceiver() as rx, Origin() as origin:
        async with omnirelay.Relay(make_config(origin.port, listener=tracing(rx))) as relay:
            bad = [f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE.upper()}-{PARENT}-01",
                   f"ff-{TRACE}-{PARENT}-01", "garbage", f"00-{TRACE}-{PARENT}-01-extra"]
            for value in bad:
                resp = await one_shot(relay.address(), get(
                    "/", headers=f"traceparent: {value}\r\ntracestate: a=b\r\n"))
                assert resp.status == 200
        assert len(origin.seen) == len(bad)
        for i in range(len(bad)):
            tid, _, _ = traceparent_seen(origin, i)
            assert f"{tid:032x}" != TRACE
            assert origin.seen[i].headers.get("tracestate") is None


async def test_retries_give_one_client_span_per_attempt():
    async def flaky(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            status = 503 if len(srv.requests) == 1 else 200
            writer.write(raw_response(status, b"x"))
            await writer.drain()

    async with OtlpReceiver() as rx, RawServer(flaky) as up:
        cfg = make_config(up.port, listener=tracing(rx), route={
            "retry_policy": {"retry_on": ["5xx"], "num_retries": 2,
                             "base_interval": "1ms", "max_interval": "2ms"}})
        async with omnirelay.Relay(cfg) as relay:
            resp = await one_shot(relay.address(), get(
                "/", headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"))
            assert resp.status == 200
        # Relay.stop exported what was queued: no flush call needed.
        spans = await rx.wait_spans(3)
    sent = [parse_traceparent(r.headers.get("traceparent")) for r in up.requests]
    assert len(sent) == 2 and all(s is not None and f"{s[0]:032x}" == TRACE for s in sent)
    assert sent[0][1] != sent[1][1]  # each attempt is its own span
    server = next(s for s in spans if s.kind == SERVER)
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert [s.span_id for s in attempts] == [f"{s[1]:016x}" for s in sent]
    assert all(s.parent_span_id == server.span_id for s in attempts)
    assert [s.attributes["http.response.status_code"] for s in attempts] == [503, 200]
    assert attempts[0].status_code == STATUS_ERROR and attempts[1].status_code != STATUS_ERROR
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert attempts[0].end_ns <= attempts[1].start_ns
    assert server.attributes["omnirelay.attempts"] == 2
    assert server.attributes["http.response.status_code"] == 200


async def test_a_connect_failure_and_a_local_reply_are_errors():
    async with OtlpReceiver() as rx:
        cfg = make_config(free_port(), listener=tracing(rx), routes=[
            {"name": "dead", "match": {"path": {"prefix": "/dead"}}, "cluster": "c"},
            {"name": "teapot", "match": {"path": {"prefix": "/tea"}},
             "direct_response": {"status": 418, "body": "short and stout"}}])
        async with omnirelay.Relay(cfg) as relay:
            assert (await one_shot(relay.address(), get("/dead"))).status == 503
            assert (await one_shot(relay.address(), get("/tea"))).status == 418
            assert (await one_shot(relay.address(), get("/nowhere"))).status == 404
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(4)
    servers = {s.attributes["url.path"]: s for s in spans if s.kind == SERVER}
    assert set(servers) == {"/dead", "/tea", "/nowhere"}
    dead = servers["/dead"]
    assert dead.status_code == STATUS_ERROR and dead.attributes["error.type"]
    (attempt,) = [s for s in spans if s.kind == CLIENT]
    assert attempt.parent_span_id == dead.span_id and attempt.status_code == STATUS_ERROR
    assert "http.response.status_code" not in attempt.attributes
    assert servers["/tea"].attributes["http.response.status_code"] == 418
    assert servers["/tea"].attributes["omnirelay.route"] == "teapot"
    assert servers["/nowhere"].attributes["http.response.status_code"] == 404


async def test_an_unsampled_trace_is_propagated_but_not_exported():
    async with OtlpReceiver() as rx, Origin() as origin:
        relay = omnirelay.Relay(make_config(origin.port, listener=tracing(rx)))
        async with relay:
            resp = await one_shot(relay.address(), get(
                "/", headers=f"traceparent: 00-{TRACE}-{PARENT}-00\r\n"))
            assert resp.status == 200
            # a sampled request after it, as the marker that exports went through
            resp = await one_shot(relay.address(), get("/after"))
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(2)
    tid, _, flags = traceparent_seen(origin, 0)
    assert f"{tid:032x}" == TRACE and flags == 0
    assert rx.trace(TRACE) == []
    assert {s.attributes.get("url.path") for s in spans if s.kind == SERVER} == {"/after"}


async def test_sampling_zero_records_no_new_trace():
    async with OtlpReceiver() as rx, Origin() as origin:
        cfg = make_config(origin.port, listener=tracing(rx, sampling=0))
        async with omnirelay.Relay(cfg) as relay:
            for _ in range(5):
                assert (await one_shot(relay.address(), get("/"))).status == 200
            assert await relay.flush_traces(5.0)
            assert relay._builder.pipelines  # tracing is on: propagation still happens
            assert sum(p.spans for p in relay._builder.pipelines.values()) == 0
    assert all(traceparent_seen(origin, i)[2] == 0 for i in range(5))
    assert rx.spans == []


async def test_tracing_off_adds_nothing_and_passes_the_client_header_through():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        assert (await one_shot(relay.address(), get("/"))).status == 200
        value = f"00-{TRACE}-{PARENT}-01"
        resp = await one_shot(relay.address(), get("/", headers=f"traceparent: {value}\r\n"))
        assert resp.status == 200
        state = relay._listeners["edge"].state
        assert state.trace is None
    assert origin.seen[0].headers.get("traceparent") is None
    assert origin.seen[1].headers.get("traceparent") == value


async def test_a_reload_labels_spans_with_the_new_config_version():
    async with OtlpReceiver() as rx, Origin() as origin:
        cfg = make_config(origin.port, listener=tracing(rx), metadata={"version": "one"})
        async with omnirelay.Relay(cfg) as relay:
            assert (await one_shot(relay.address(), get("/a"))).status == 200
            pipeline = next(iter(relay._builder.pipelines.values()))
            cfg["metadata"]["version"] = "two"
            await relay.reload(cfg)
            # the same export settings keep the same pipeline
            assert next(iter(relay._builder.pipelines.values())) is pipeline
            assert (await one_shot(relay.address(), get("/b"))).status == 200
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(4)
    versions = {s.attributes["url.path"]: s.attributes["omnirelay.config_version"]
                for s in spans if s.kind == SERVER}
    assert versions == {"/a": "one", "/b": "two"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_an_http2_client_to_an_http2_cluster_is_traced():
    async with OtlpReceiver() as rx, Origin() as origin:
        # aiohttp speaks HTTP/1.1 only: an h2 hop in front of it is the relay itself
        inner_cfg = make_config(origin.port)
        async with omnirelay.Relay(inner_cfg) as inner:
            cfg = make_config(inner.address()[1], listener=tracing(rx),
                              cluster={"protocol": "http2"})
            async with omnirelay.Relay(cfg) as relay:
                host, port = relay.address()
                proc = await asyncio.create_subprocess_exec(
                    "curl", "--silent", "--http2-prior-knowledge", "-H",
                    f"traceparent: 00-{TRACE}-{PARENT}-01", f"http://{host}:{port}/h2",
                    stdout=asyncio.subprocess.PIPE)
                out, _ = await asyncio.wait_for(proc.communicate(), 15)
                assert proc.returncode == 0 and b'"path": "/h2"' in out
                assert await relay.flush_traces(5.0)
                spans = await rx.wait_spans(2)
    tid, pid, _ = traceparent_seen(origin)
    assert f"{tid:032x}" == TRACE
    server = next(s for s in spans if s.kind == SERVER)
    client = next(s for s in spans if s.kind == CLIENT)
    assert server.attributes["network.protocol.version"] == "2"
    assert server.parent_span_id == PARENT and client.span_id == f"{pid:016x}"


@pytest.mark.async_timeout(40)
async def test_omnirelay_run_workers_trace_and_flush_on_sigterm(tmp_path):
    """Real `omnirelay run` with two workers: each exports its spans, and SIGTERM flushes
    what is queued (export_interval is long, so only the shutdown flush sends them)."""
    async with OtlpReceiver() as rx, Origin() as origin:
        cfg = make_config(origin.port, listener={"tracing": {
            "collector": rx.url, "export_interval": "60s"}}, metadata={"version": "run-7"})
        path = tmp_path / "relay.json"
        path.write_text(json.dumps(cfg))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "omnirelay.cli.main", "run", "-c", str(path), "--workers", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            m = re.search(r"listener edge on http://([\d.]+):(\d+)", line.decode())
            assert m, line
            addr = (m[1], int(m[2]))
            for i in range(6):
                resp = await one_shot(addr, get(f"/w{i}", headers="Connection: close\r\n"))
                assert resp.status == 200
            assert rx.spans == []  # nothing exported before the shutdown flush
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        spans = await rx.wait_spans(12, timeout=5)
    servers = [s for s in spans if s.kind == SERVER]
    assert sorted(s.attributes["url.path"] for s in servers) == [f"/w{i}" for i in range(6)]
    assert {s.attributes["omnirelay.config_version"] for s in spans} == {"run-7"}
    assert len({s.trace_id for s in servers}) == 6


async def test_spans_go_over_otlp_grpc():
    async with OtlpGrpcReceiver() as rx, Origin() as origin:
        cfg = make_config(origin.port, listener=tracing(rx, protocol="grpc"))
        async with omnirelay.Relay(cfg) as relay:
            resp = await one_shot(relay.address(), get(
                "/g", headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"))
            assert resp.status == 200
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(2)
    assert {s.kind for s in spans} == {SERVER, CLIENT}
    assert all(s.trace_id == TRACE for s in spans)
    assert next(s for s in spans if s.kind == SERVER).attributes["url.path"] == "/g"


async def test_malformed_requests_are_harmless_with_tracing_on(caplog):
    async with OtlpReceiver() as rx, Origin() as origin:
        relay = omnirelay.Relay(make_config(origin.port, listener=tracing(rx)))
        async with relay:
            bad = await one_shot(relay.address(), b"GARBAGE\r\n\r\n")
            assert bad.status == 400
            raw = b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"  # ambiguous Host
            assert (await one_shot(relay.address(), raw)).status in (200, 400)
            assert (await one_shot(relay.address(), get("/ok"))).status == 200
            assert await relay.flush_traces(5.0)
            spans = await rx.wait_spans(2)
    assert "/ok" in {s.attributes.get("url.path") for s in spans if s.kind == SERVER}
    assert not [r for r in caplog.records if r.name == "omnirelay.tracing"]
