"""Structured access logs from a real Relay: JSON records for successes, local replies,
retries and timeouts; sampling; the rate limit; the text template; HTTP/2 via curl."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from harness import (
    RawServer,
    eventually,
    free_port,
    get,
    make_config,
    one_shot,
    raw_response,
    read_request,
)

import omnirelay


def ok_handler(delay: float = 0.0, status: int = 200):
    async def handler(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            if delay:
                await asyncio.sleep(delay)
            writer.write(raw_response(status, b"hello", reason="X"))
            await writer.drain()
    return handler


def scripted(statuses):
    async def handler(reader, writer, srv):
        while True:
            req = await read_request(reader)
            srv.requests.append(req)
            n = len(srv.requests)
            status = statuses[n - 1] if n <= len(statuses) else 200
            writer.write(raw_response(status, b"attempt", reason="X"))
            await writer.drain()
    return handler


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    await eventually(lambda: len(lines(path)) >= n, timeout, f"{n} access log lines")
    return lines(path)


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in lines(path)]


def logger(relay: omnirelay.Relay, name: str = "edge"):
    return relay._builder.access_logs[name]


async def test_json_records_for_200_404_503_retry_and_timeout(tmp_path: Path):
    log_path = tmp_path / "access.log"
    dead = free_port()
    async with RawServer(ok_handler()) as good, \
            RawServer(scripted([503])) as flaky, \
            RawServer(ok_handler(delay=2.0)) as slow:
        cfg = make_config(
            listener={"access_log": {"path": str(log_path)}},
            routes=[
                {"name": "ok", "match": {"path": {"prefix": "/ok"}}, "cluster": "good"},
                {"name": "dead", "match": {"path": {"prefix": "/dead"}}, "cluster": "dead"},
                {"name": "retry", "match": {"path": {"prefix": "/retry"}}, "cluster": "flaky",
                 "retry_policy": {"retry_on": ["5xx"], "num_retries": 2,
                                  "base_interval": "5ms"}},
                {"name": "slow", "match": {"path": {"prefix": "/slow"}}, "cluster": "slow",
                 "timeout": "200ms"},
            ],
            clusters=[
                {"name": "good", "endpoints": [{"address": "127.0.0.1", "port": good.port}]},
                {"name": "dead", "endpoints": [{"address": "127.0.0.1", "port": dead}]},
                {"name": "flaky", "endpoints": [{"address": "127.0.0.1", "port": flaky.port}]},
                {"name": "slow", "endpoints": [{"address": "127.0.0.1", "port": slow.port}]},
            ])
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            t0 = time.time()
            r = await one_shot(addr, get("/ok/a?x=1", headers="User-Agent: tester/1\r\n"
                                         "X-Request-Id: rid-1\r\n"))
            assert r.status == 200
            assert (await one_shot(addr, get("/nothing"))).status == 404
            assert (await one_shot(addr, get("/dead"))).status == 503
            assert (await one_shot(addr, get("/retry"))).status == 200
            assert (await one_shot(addr, get("/slow"))).status == 504
            await wait_lines(log_path, 5)
            stats = logger(relay).stats()
    recs = {r["path"]: r for r in records(log_path)}
    ok = recs["/ok/a?x=1"]
    assert ok["status"] == 200 and ok["method"] == "GET" and ok["protocol"] == "HTTP/1.1"
    assert ok["route"] == "ok" and ok["cluster"] == "good"
    assert ok["upstream"] == f"127.0.0.1:{good.port}"
    assert ok["authority"] == "example.test" and ok["user_agent"] == "tester/1"
    assert ok["request_id"] == "rid-1" and ok["listener"] == "edge"
    assert ok["flags"] == [] and ok["retries"] == 0 and ok["reason"] is None
    assert ok["response_bytes"] == 5 and ok["request_bytes"] == 0
    assert ok["peer"].startswith("127.0.0.1")
    assert ok["duration_ms"] >= ok["upstream_ms"] >= 0
    ts = ok["timestamp"]
    assert len(ts) == 24 and ts.endswith("Z") and ts[19] == "."  # 2026-01-01T00:00:00.000Z
    assert abs(time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
               - t0) < 5
    nr = recs["/nothing"]
    assert nr["status"] == 404 and nr["route"] is None and nr["upstream"] is None
    assert nr["flags"] == ["local_reply"] and nr["reason"]
    assert nr["upstream_ms"] is None
    dd = recs["/dead"]
    assert dd["status"] == 503 and dd["cluster"] == "dead" and "local_reply" in dd["flags"]
    assert dd["upstream"] == f"127.0.0.1:{dead}"
    rt = recs["/retry"]
    assert rt["status"] == 200 and rt["retries"] == 1 and rt["flags"] == ["retried"]
    sl = recs["/slow"]
    assert sl["status"] == 504 and "upstream_timeout" in sl["flags"]
    assert "local_reply" in sl["flags"] and 150 <= sl["duration_ms"] < 2000
    assert stats["logged"] == stats["written"] == 5 and stats["dropped_rate_limit"] == 0


async def test_sampling_keeps_about_the_configured_share(tmp_path: Path):
    log_path = tmp_path / "sampled.log"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {"path": str(log_path),
                                                              "sample": 0.25}})
        async with omnirelay.Relay(cfg) as relay:
            from harness import Client
            async with await Client.open(relay.address()) as c:
                for _ in range(400):
                    assert (await c.request(get("/s"))).status == 200
            lg = logger(relay)
            await eventually(lambda: lg.written == lg.logged, 5, "records written")
            n = len(lines(log_path))
            assert lg.logged + lg.sampled_out == 400
    # binomial(400, 0.25): mean 100, sd ~8.7; +-5 sd
    assert 55 <= n <= 145, n


async def test_rate_limit_caps_records_and_counts_drops(tmp_path: Path):
    log_path = tmp_path / "limited.log"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {"path": str(log_path),
                                                              "max_per_second": 20}})
        async with omnirelay.Relay(cfg) as relay:
            from harness import Client
            t0 = time.monotonic()
            async with await Client.open(relay.address()) as c:
                for _ in range(200):
                    assert (await c.request(get("/l"))).status == 200
            elapsed = time.monotonic() - t0
            lg = logger(relay)
            await eventually(lambda: lg.written == lg.logged, 5, "records written")
            n = len(lines(log_path))
            assert lg.dropped_rate_limit == 200 - n
    # burst of 20 plus 20/s refill
    assert 20 <= n <= 20 + 20 * elapsed + 1, (n, elapsed)
    assert n < 200


async def test_text_template(tmp_path: Path):
    log_path = tmp_path / "text.log"
    tpl = "%METHOD% %path% %STATUS% %route% %FLAGS% %UPSTREAM_MS% 100%%"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {
            "path": str(log_path), "format": "text", "template": tpl}})
        async with omnirelay.Relay(cfg) as relay:
            assert (await one_shot(relay.address(), get("/t"))).status == 200
            (line,) = await wait_lines(log_path, 1)
    method, path, status, route, flags, up, pct = line.split(" ")
    assert (method, path, status, route, flags, pct) == ("GET", "/t", "200", "r", "-", "100%")
    assert float(up) >= 0


async def test_json_fields_subset(tmp_path: Path):
    log_path = tmp_path / "subset.log"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {
            "path": str(log_path), "fields": ["status", "path"]}})
        async with omnirelay.Relay(cfg) as relay:
            await one_shot(relay.address(), get("/f"))
            await wait_lines(log_path, 1)
    assert records(log_path) == [{"status": 200, "path": "/f"}]


async def test_file_moved_away_is_reopened(tmp_path: Path):
    log_path = tmp_path / "rot.log"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {"path": str(log_path)}})
        async with omnirelay.Relay(cfg) as relay:
            await one_shot(relay.address(), get("/before"))
            await wait_lines(log_path, 1)
            os.rename(log_path, tmp_path / "rot.log.1")
            lg = logger(relay)
            await eventually(lambda: lg.reopens >= 1, 5, "access log reopened")
            await one_shot(relay.address(), get("/after"))
            await wait_lines(log_path, 1)
    assert [r["path"] for r in records(tmp_path / "rot.log.1")] == ["/before"]
    assert [r["path"] for r in records(log_path)] == ["/after"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_http2_request_logged_with_protocol_http2(tmp_path: Path):
    log_path = tmp_path / "h2.log"
    async with RawServer(ok_handler()) as srv:
        cfg = make_config(srv.port, listener={"access_log": {"path": str(log_path)}})
        async with omnirelay.Relay(cfg) as relay:
            host, port = relay.address()
            proc = await asyncio.create_subprocess_exec(
                "curl", "--silent", "--http2-prior-knowledge", "-A", "curl-h2",
                f"http://{host}:{port}/h2", stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0 and out == b"hello"
            await wait_lines(log_path, 1)
    (rec,) = records(log_path)
    assert rec["protocol"] == "HTTP/2" and rec["status"] == 200 and rec["path"] == "/h2"
    assert rec["user_agent"] == "curl-h2" and rec["authority"] == f"{host}:{port}"


async def test_no_access_log_means_no_logger():
    async with RawServer(ok_handler()) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        assert relay._builder.access_logs == {}
        assert (await one_shot(relay.address(), get("/"))).status == 200


CAPTURED: list[tuple] = []


class _Capture(omnirelay.HttpFilter):
    def on_log(self, stream):
        CAPTURED.append(stream.access_record())


@omnirelay.register("tests.capture_access_record")
class _CaptureFactory(omnirelay.FilterFactory):
    filter_class = _Capture


async def test_core_formatted_lines_match_the_python_formatter(tmp_path: Path):
    """The default JSON log is formatted by the core (no Python call per request); its lines
    carry what the generated Python formatter prints for the same request's record,
    escapes and non-ASCII bytes included (timings aside: they are read a moment apart)."""
    from omnirelay.telemetry.accesslog import record_fields

    log_path = tmp_path / "access.log"
    CAPTURED.clear()
    async with RawServer(ok_handler()) as good:
        cfg = make_config(good.port, listener={"access_log": {"path": str(log_path)}},
                          route={"filters": [{"name": "tests.capture_access_record"}]})
        async with omnirelay.Relay(cfg) as relay:
            assert logger(relay).sink is not None
            addr = relay.address()
            await one_shot(addr, get('/p?q="x"&b=\\', headers="User-Agent: a\"b\\c \xe9\t!\r\n"
                                     "X-Request-Id: r\"id\r\n"))
            await one_shot(addr, b"GET /nothing-here HTTP/1.0\r\n\r\n")
            await wait_lines(log_path, 2)
    got = records(log_path)
    assert len(got) == len(CAPTURED) == 2
    for line, rec in zip(got, CAPTURED, strict=True):
        want = record_fields(time.time(), rec)
        for key in ("timestamp", "duration_ms", "upstream_ms"):
            assert (line.pop(key) is None) == (want.pop(key) is None)
        assert line == want
    # Header bytes are read as latin-1 (the client sent é as UTF-8: two bytes).
    assert got[0]["user_agent"] == 'a"b\\c \xc3\xa9\t!' and got[0]["request_id"] == 'r"id'
