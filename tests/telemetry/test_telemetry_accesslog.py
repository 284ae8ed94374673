"""AccessLogger without a proxy: formatting, sampling and rate limit before formatting,
batching off the hot path, and dropping (not stalling) when the writer falls behind."""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnirelay.config.model import ACCESS_LOG_FIELDS, AccessLog
from omnirelay.telemetry import accesslog
from omnirelay.telemetry.accesslog import AccessLogger, Formatter, record_fields

REC = ("rid", "edge", "10.0.0.9:5555", "POST", "api.test", "/x?y=1", "HTTP/2", "r", "c",
       "10.0.0.1:8080", 503, 3, 1 | 2 | 4 | 8, "upstream_timeout", 12, 34, 500.0, 250.0,
       "ua/1")


class FakeStream:
    def __init__(self) -> None:
        self.reads = 0

    def access_record(self) -> tuple:
        self.reads += 1
        return REC


def test_record_fields_cover_every_field() -> None:
    f = record_fields(1_700_000_000.75, REC)
    assert tuple(f) == ACCESS_LOG_FIELDS
    assert f["timestamp"] == "2023-11-14T22:13:20.250Z"  # start = end - duration
    assert f["upstream"] == "10.0.0.1:8080" and f["retries"] == 2
    assert f["flags"] == ["upstream_timeout", "per_try_timeout", "retried", "local_reply",
                          "upstream_reset", "shadowed"]
    assert f["duration_ms"] == 500.0 and f["upstream_ms"] == 250.0
    assert (f["method"], f["authority"], f["path"], f["user_agent"]) == (
        "POST", "api.test", "/x?y=1", "ua/1")


def test_formatter_json_text_and_subset() -> None:
    assert json.loads(Formatter().line(0.5, REC))["status"] == 503
    assert json.loads(Formatter(fields=["status", "route"]).line(0.5, REC)) == {
        "status": 503, "route": "r"}
    line = Formatter("text", "%status%|%Route%|%reason%|%%|%upstream_ms%").line(0.5, REC)
    assert line == "503|r|upstream_timeout|%|250.0"
    none_rec = REC[:9] + (None,) + REC[10:12] + (0, None) + REC[14:17] + (None, None)
    assert Formatter("text", "%upstream% %flags% %user_agent%").line(1, none_rec) == (
        "- retried -")
    assert "503" in Formatter("text").line(0.5, REC)  # default template


async def test_batches_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    lg = AccessLogger(AccessLog(path=str(path)))
    s = FakeStream()
    for _ in range(10):
        lg(s)
    assert s.reads == 10 and not path.exists()  # nothing written synchronously
    await asyncio.sleep(accesslog.FLUSH_INTERVAL + 0.3)
    lg.close()
    assert len(path.read_text().splitlines()) == 10 and lg.written == 10


async def test_sampling_and_rate_limit_run_before_reading_the_stream(tmp_path: Path) -> None:
    s = FakeStream()
    lg = AccessLogger(AccessLog(path=str(tmp_path / "s.log"), sample=0.0))
    for _ in range(100):
        lg(s)
    assert s.reads == 0 and lg.sampled_out == 100
    lg.close()
    lg = AccessLogger(AccessLog(path=str(tmp_path / "r.log"), max_per_second=5))
    for _ in range(100):
        lg(s)
    assert s.reads == 5 and lg.dropped_rate_limit == 95
    lg.close()


async def test_slow_writer_drops_instead_of_stalling(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_write = accesslog._Writer._write

    def slow_write(self, data, count):  # a disk that blocks until released
        gate.wait(5)
        real_write(self, data, count)

    monkeypatch.setattr(accesslog._Writer, "_write", slow_write)
    monkeypatch.setattr(accesslog, "MAX_BACKLOG", 2000)
    lg = AccessLogger(AccessLog(path=str(tmp_path / "slow.log")))
    s = FakeStream()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(20):
        for _ in range(10):
            lg(s)
        lg.flush()  # each chunk is ~4 KB: past the backlog after the first
    assert loop.time() - t0 < 0.5  # never waited for the disk
    assert lg.dropped_backlog > 0
    gate.set()
    lg.close()
    assert lg.written + lg.dropped_backlog == 200 and lg.written >= 10


def test_compiled_json_batch_matches_the_python_formatter() -> None:
    f = Formatter()
    assert f.compiled
    plain = REC[:12] + (0, None) + REC[14:]
    nul = (None, "edge", "p", "GET", None, "/", "HTTP/1.1", None, None, None, 404, 0, 0,
           "no_route", 0, 9, 1.25, None, 'ua "q"\n')
    for rec in (REC, plain, nul):
        out = f.batch([(1e9 + 0.5, rec), (1e9 + 0.5, rec)])
        assert out == ((f.line(1e9 + 0.5, rec) + "\n") * 2).encode()
        assert json.loads(out.splitlines()[0]) == record_fields(1e9 + 0.5, rec)
    assert not Formatter(fields=["status"]).compiled and not Formatter("text").compiled


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False),
       st.one_of(st.none(), st.floats(min_value=0, max_value=1e5, allow_nan=False)),
       st.text(max_size=20), st.one_of(st.none(), st.text(max_size=20)))
def test_compiled_json_batch_matches_for_any_values(duration, upstream, path, ua) -> None:
    """The compiled formatter escapes strings and rounds durations exactly as the generated
    Python one (json.encoder.encode_basestring, repr(round(x, 3)))."""
    f = Formatter()
    rec = REC[:5] + (path,) + REC[6:16] + (duration, upstream, ua)
    assert f.batch([(2e9 + 0.25, rec)]) == (f.line(2e9 + 0.25, rec) + "\n").encode()


class TenantStream(FakeStream):
    """A finished request from `tenant` (None: no tenant header), headers in the core's
    own HeaderMap."""

    def __init__(self, tenant: str | None) -> None:
        super().__init__()
        from omnirelay._core import HeaderMap
        self.request_headers = HeaderMap()
        if tenant is not None:
            self.request_headers.add("X-Tenant", tenant)


async def test_per_tenant_limit_keeps_one_tenant_from_using_the_listener_budget(
        tmp_path: Path) -> None:
    lg = AccessLogger(AccessLog(path=str(tmp_path / "t.log"), max_per_second=50,
                                tenant_header="x-tenant", tenant_max_per_second=5))
    noisy, quiet, anon = TenantStream("noisy"), TenantStream("quiet"), TenantStream(None)
    for _ in range(100):
        lg(noisy)
    for _ in range(3):
        lg(quiet)
    for _ in range(10):
        lg(anon)
    # burst of one second's worth each; the tests run well within a second of refill
    assert noisy.reads in (5, 6) and quiet.reads == 3 and anon.reads in (5, 6)
    assert lg.dropped_tenant_rate_limit == 113 - noisy.reads - quiet.reads - anon.reads
    assert lg.dropped_rate_limit == 0  # the flood never reached the listener-wide bucket
    assert lg.stats()["dropped_tenant_rate_limit"] == lg.dropped_tenant_rate_limit
    lg.close()


async def test_tenant_buckets_are_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accesslog, "MAX_TENANTS", 8)
    lg = AccessLogger(AccessLog(path=str(tmp_path / "b.log"), tenant_header="x-tenant",
                                tenant_max_per_second=1))
    streams = [TenantStream(f"t{i}") for i in range(50)]
    for s in streams:
        lg(s)
    assert len(lg.tenants) <= 8 + 1  # the buckets plus the shared overflow one
    assert accesslog.OVERFLOW_TENANT in lg.tenants
    # the first 8 tenants got their own token, the other 42 shared one overflow token
    assert sum(s.reads for s in streams) == 8 + 1
    lg(TenantStream("x" * 10_000))  # a huge value is cut to MAX_TENANT_KEY characters
    assert all(len(k) <= accesslog.MAX_TENANT_KEY for k in lg.tenants)
    lg.close()


def test_access_log_series_name_every_outcome(tmp_path: Path) -> None:
    from omnirelay.telemetry.metrics import BY_NAME
    lg = AccessLogger(AccessLog(path=str(tmp_path / "m.log"), sample=0.0))
    lg(FakeStream())
    series = accesslog.access_log_series({"edge": lg})
    got = {labels[1]: value for name, labels, value in series
           if name == "omnirelay_access_log_records_total" and labels[0] == "edge"}
    assert got == {"written": 0, "sampled_out": 1, "rate_limited": 0,
                   "tenant_rate_limited": 0, "dropped": 0, "write_error": 0}
    assert all(name in BY_NAME for name, _, _ in series)
    lg.close()
