"""The admin app without sockets: request parsing, routing, the token rules, log levels."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from omnirelay.admin.app import AdminApp, merge_clusters
from omnirelay.admin.http import HttpError, RequestReader
from omnirelay.admin.sources import read_token
from omnirelay.config import Admin

TOKEN = "admin-token-0123456789"


class FakeSource:
    def __init__(self, token: str | None = TOKEN):
        self._token = token
        self.drained = 0
        self.levels: list[tuple[str, str]] = []
        self.ready = False

    def token(self):
        return self._token

    def readiness(self):
        return self.ready, "because"

    def series(self):
        return {("omnirelay_workers", ()): 2}

    def stats(self, window):
        return {"ready": self.ready, "window": window}

    def config_dump(self):
        return {"active": {"version": "1"}, "staged": None, "last_known_good": None}

    def cluster_details(self):
        return {}

    def drain(self):
        self.drained += 1
        return "draining"

    def set_log_level(self, level, logger):
        self.levels.append((level, logger))


def call(app: AdminApp, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader = RequestReader()
    reader.feed(raw)
    request = reader.next()
    assert request is not None
    response = app.handle(request)
    head, _, body = response.encode(request.keep_alive).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


def post(path: str, token: str | None = None, body: bytes = b"") -> bytes:
    auth = f"authorization: Bearer {token}\r\n" if token is not None else ""
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_ready_follows_the_source():
    source = FakeSource()
    app = AdminApp(source)
    status, headers, body = call(app, get("/ready"))
    assert status == 503 and json.loads(body) == {"ready": False, "reason": "because"}
    assert headers["content-type"] == "application/json"
    source.ready = True
    assert call(app, get("/ready"))[0] == 200
    assert call(app, get("/healthz"))[:1] == (200,)


def test_reads():
    app = AdminApp(FakeSource())
    status, headers, body = call(app, get("/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"omnirelay_workers 2.0" in body
    stats = json.loads(call(app, get("/stats?window=30"))[2])
    assert stats["window"] == 30.0 and stats["metrics"]["omnirelay_workers"] == [
        {"labels": {}, "value": 2}]
    assert call(app, get("/stats?window=0"))[0] == 400
    assert call(app, get("/stats?window=x"))[0] == 400
    assert json.loads(call(app, get("/config_dump"))[2])["staged"] is None
    caps = json.loads(call(app, get("/capabilities"))[2])
    assert caps["protocols"] == ["http1", "h2", "h2c", "grpc", "tcp", "tls_passthrough"]
    assert json.loads(call(app, get("/"))[2])["endpoints"]["/drain"] == "POST"


def test_unknown_paths_and_methods():
    app = AdminApp(FakeSource())
    assert call(app, get("/nope"))[0] == 404
    status, headers, _ = call(app, post("/metrics"))
    assert status == 405 and headers["allow"] == "GET"
    status, headers, _ = call(app, get("/drain"))
    assert status == 405 and headers["allow"] == "POST"


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("", 401), ("wrong-token-000000000", 403)])
def test_mutations_need_the_token(token, status):
    source = FakeSource()
    app = AdminApp(source)
    got, headers, body = call(app, post("/drain", token))
    assert got == status
    if status == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    assert source.drained == 0
    got, _, body = call(app, post("/drain", TOKEN))
    assert got == 202 and json.loads(body)["draining"] is True and source.drained == 1


def test_mutations_are_off_without_a_token():
    source = FakeSource(token=None)
    status, _, body = call(AdminApp(source), post("/drain", TOKEN))
    assert status == 403 and "admin.token" in json.loads(body)["error"]
    assert source.drained == 0


def test_log_level_from_query_or_json_body():
    source = FakeSource()
    app = AdminApp(source)
    assert call(app, post("/log_level?level=DEBUG", TOKEN))[0] == 200
    body = json.dumps({"level": "warning", "logger": "omnirelay.core"}).encode()
    assert call(app, post("/log_level", TOKEN, body))[0] == 200
    assert source.levels == [("debug", ""), ("warning", "omnirelay.core")]
    assert call(app, post("/log_level?level=loud", TOKEN))[0] == 400
    assert call(app, post("/log_level", TOKEN, b"{nope"))[0] == 400


def test_a_failing_source_answers_500(caplog):
    source = FakeSource()
    source.config_dump = lambda: 1 / 0
    with caplog.at_level(logging.ERROR, "omnirelay.admin"):
        assert call(AdminApp(source), get("/config_dump"))[0] == 500
    assert "ZeroDivisionError" in caplog.text


def test_reader_waits_for_whole_requests_and_pipelines():
    reader = RequestReader()
    raw = post("/drain", TOKEN, b'{"a": 1}') + get("/ready")
    reader.feed(raw[:10])
    assert reader.next() is None
    reader.feed(raw[10:-3])
    first = reader.next()
    assert first.method == "POST" and first.body == b'{"a": 1}' and first.keep_alive
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert reader.next() is None
    reader.feed(raw[-3:])
    assert reader.next().path == "/ready"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\ncontent-length: 999999999\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nx: " + b"a" * 20000, 431),
])
def test_reader_rejects(raw, status):
    reader = RequestReader()
    reader.feed(raw)
    with pytest.raises(HttpError) as caught:
        reader.next()
    assert caught.value.status == status


def test_connection_close_and_http10():
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert reader.next().keep_alive is False
    assert reader.next().keep_alive is False


def test_read_token(tmp_path):
    assert read_token(None) is None
    assert read_token(Admin()) is None
    assert read_token(Admin(token=TOKEN)) == TOKEN
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert read_token(Admin(token_file=str(f))) == TOKEN
    f.write_text("rotated-token-0123456789")  # read on every mutation
    assert read_token(Admin(token_file=str(f))) == "rotated-token-0123456789"
    assert read_token(Admin(token_file=str(tmp_path / "missing"))) is None


def test_merge_clusters_keeps_each_workers_view():
    ep = {"address": "10.0.0.1:80", "weight": 1, "priority": 0, "locality": None, "idle": 1,
          "active": 2, "open_connections": 3, "connects": 4, "connect_failures": 0,
          "reuses": 5, "ejections": 1}
    details: dict[str, Any] = {
        "0": {"c": {"overflows": 1, "rq_active": 2, "rq_pending": 0, "priority_loads": [100],
                    "endpoints": [{**ep, "healthy": True, "ejected": False}]}},
        "1": {"c": {"overflows": 2, "rq_active": 0, "rq_pending": 1, "priority_loads": [100],
                    "endpoints": [{**ep, "healthy": True, "ejected": True}]}},
    }
    c = merge_clusters(details)["c"]
    assert (c["overflows"], c["rq_active"], c["rq_pending"]) == (3, 2, 1)
    (e,) = c["endpoints"]
    assert e["open_connections"] == 6 and e["ejections"] == 2
    assert (e["healthy_workers"], e["ejected_workers"]) == (2, 1)
    assert e["workers"]["1"]["ejected"] is True and e["workers"]["0"]["ejected"] is False
