"""AccessLogger without a proxy: formatting, sampling and rate limit before formatting,
batching off the hot path, and dropping (not stalling) when the writer falls behind."""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

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
        assert out == (f.line(1e9 + 0.5, rec) + "\n") * 2
        assert json.loads(out.splitlines()[0]) == record_fields(1e9 + 0.5, rec)
    assert not Formatter(fields=["status"]).compiled and not Formatter("text").compiled
