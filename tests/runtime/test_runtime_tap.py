"""Admin `POST /tap` under `omnirelay run`: the supervisor starts the tap in every worker,
streams what they report, holds the count and time bound across them, stops the workers'
taps when it ends or its client leaves, and starts running taps in a restarted worker."""
from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from admin_client import TOKEN, admin_url, call, wait_ready
from runtime_harness import RelayProcess, config_doc, request, write_config

from omnirelay.admin import AdminApp, PolledAdminServer
from omnirelay.telemetry.tap import RelayedTaps


def start(relay, upstreams, tmp_path, workers: int = 2) -> tuple[RelayProcess, str, str]:
    up = upstreams("hi\n")
    doc = config_doc({"a": up.port})
    doc["admin"] = {"port": 0, "token": TOKEN}
    proc = relay("run", "--config", write_config(tmp_path / "relay.yaml", doc),
                 "--workers", str(workers))
    url = admin_url(proc)
    edge = proc.listeners()["edge"]
    wait_ready(url)
    return proc, url, edge


class Tap:
    """A streaming POST /tap, read line by line (every read bounded by the socket timeout)."""

    def __init__(self, url: str, query: str, token: str | None = TOKEN):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.conn.request("POST", f"/tap?{query}", headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def lines(self) -> list[dict]:
        """Every line up to the end of the stream."""
        out = []
        for _ in range(2000):
            line = self.resp.readline()
            if not line:
                return out
            out.append(json.loads(line))
        raise AssertionError("the tap did not end")

    def records(self, n: int) -> list[dict]:
        return [json.loads(self.resp.readline()) for _ in range(n)]

    def close(self) -> None:
        self.resp.close()  # it holds the socket open too
        self.conn.close()


def wait_started(proc: RelayProcess, tap_id: int, pids: list[int], mark: int = 0) -> None:
    """Each worker in `pids` logged that it runs tap `tap_id`."""
    for pid in pids:
        proc.wait_for(rf"omnirelay\.worker\[{pid}\]: tap {tap_id} started$", start=mark)


def send(edge: str, paths: list[str], headers: dict | None = None) -> None:
    with ThreadPoolExecutor(8) as pool:  # a new connection per request: both workers serve
        got = set(pool.map(lambda p: request(edge, p, headers=headers), paths))
    assert got == {(200, "hi\n")}


def test_a_tap_streams_from_every_worker_within_its_count_and_time(upstreams, relay, tmp_path):
    proc, url, edge = start(relay, upstreams, tmp_path)
    workers = proc.workers()
    assert len(workers) == 2

    assert call(url, "/tap?max=1", "POST")[0] == 401
    assert call(url, "/tap?max=1", "POST", token="w" * 20)[0] == 403
    status, body = call(url, "/tap?max=0", "POST", token=TOKEN)
    assert status == 400 and "max must be" in json.loads(body)["error"]
    status, body = call(url, "/tap?path=api", "POST", token=TOKEN)
    assert status == 400 and "path must be a prefix" in json.loads(body)["error"]

    # Count: 40 matching requests (targets starting "/?t=") and 10 others; max=30.
    tap = Tap(url, "path=%2F%3Ft%3D&max=30&seconds=30")
    assert tap.status == 200 and tap.resp.getheader("content-type") == "application/x-ndjson"
    wait_started(proc, 1, workers)
    send(edge, [f"/?t={i}" for i in range(40)] + [f"/?other={i}" for i in range(10)],
         headers={"Authorization": "Bearer s3cret", "X-Debug": "1"})
    lines = tap.lines()
    tap.close()
    *records, done = lines
    assert done == {"tap": "done", "reason": "count", "skipped": 0}
    assert len(records) == 30
    assert all(r["path"].startswith("/?t=") and r["listener"] == "edge" for r in records)
    assert len({r["request_id"] for r in records}) == 30
    assert {r["worker"] for r in records} == set(workers)  # both workers served and tapped
    headers = {k.lower(): v for k, v in records[0]["headers"]}
    assert headers["authorization"] == "[redacted]" and headers["x-debug"] == "1"
    assert "s3cret" not in json.dumps(lines)
    for pid in workers:
        proc.wait_for(rf"omnirelay\.worker\[{pid}\]: tap 1 stopped$")

    # Time: the tap ends after its seconds with what matched so far.
    mark = proc.mark()
    tap = Tap(url, "header=x-tap:b&max=100&seconds=1.5")
    t0 = time.monotonic()
    wait_started(proc, 2, workers, mark)
    send(edge, ["/?b=1", "/?b=2", "/?b=3"], headers={"X-Tap": "b"})
    send(edge, ["/?c=1"], headers={"X-Tap": "c"})
    lines = tap.lines()
    elapsed = time.monotonic() - t0
    tap.close()
    assert sorted(r["path"] for r in lines[:-1]) == ["/?b=1", "/?b=2", "/?b=3"]
    assert lines[-1] == {"tap": "done", "reason": "time", "skipped": 0}
    assert 1.0 <= elapsed < 8.0, elapsed
    for pid in workers:
        proc.wait_for(rf"omnirelay\.worker\[{pid}\]: tap 2 stopped$", start=mark)


def test_four_taps_at_most_a_leaving_client_ends_its_tap_and_new_workers_join(
        upstreams, relay, tmp_path):
    proc, url, edge = start(relay, upstreams, tmp_path)
    workers = proc.workers()
    taps = [Tap(url, f"header=x-tap:{k}&max=100&seconds=30") for k in range(1, 5)]
    assert [t.status for t in taps] == [200] * 4
    status, body = call(url, "/tap?max=1", "POST", token=TOKEN)
    assert status == 429 and "wait for one to end" in json.loads(body)["error"]
    for tap_id in range(1, 5):
        wait_started(proc, tap_id, workers)

    # The client of tap 1 leaves: the workers drop it, so a new tap fits in the supervisor
    # and in every worker (which would refuse a fifth tap of its own).
    taps[0].close()
    for pid in workers:
        proc.wait_for(rf"omnirelay\.worker\[{pid}\]: tap 1 stopped$")
    taps[0] = Tap(url, "header=x-tap:1&max=100&seconds=30")
    assert taps[0].status == 200
    wait_started(proc, 5, workers)

    # A worker restarted while taps run gets them too.
    victim = workers[0]
    mark = proc.mark()
    os.kill(victim, signal.SIGKILL)
    new = proc.wait_for(r"worker \d+: pid (\d+) ready", start=mark)
    pid = int(new[1])
    for tap_id in (2, 3, 4, 5):
        wait_started(proc, tap_id, [pid], mark)
    wait_ready(url)
    send(edge, [f"/?x={i}" for i in range(24)], headers={"X-Tap": "2"})
    send(edge, ["/?y=1", "/?y=2"], headers={"X-Tap": "1"})
    survivors = {workers[1], pid}
    records = taps[1].records(24)
    assert sorted(r["path"] for r in records) == sorted(f"/?x={i}" for i in range(24))
    assert {r["worker"] for r in records} == survivors  # the new worker tapped too
    assert [r["path"] for r in taps[0].records(2)] in (["/?y=1", "/?y=2"], ["/?y=2", "/?y=1"])
    for tap in taps:
        tap.close()  # each worker now stops its taps

    for tap_id in (2, 3, 4, 5):
        for p in survivors:
            proc.wait_for(rf"omnirelay\.worker\[{p}\]: tap {tap_id} stopped$", start=mark)
    # No worker kept a closed tap (it would refuse a fifth): a new one runs everywhere.
    tap2 = Tap(url, "header=x-tap:2&max=24&seconds=10")
    assert tap2.status == 200
    wait_started(proc, 6, sorted(survivors), mark)
    send(edge, [f"/?z={i}" for i in range(24)], headers={"X-Tap": "2"})
    *records, done = tap2.lines()
    tap2.close()
    assert done["reason"] == "count" and len(records) == 24
    assert {r["worker"] for r in records} == survivors


class _TokenOnly:
    """The one thing POST /tap reads from the admin source."""

    def token(self) -> str:
        return TOKEN


def test_the_supervisor_admin_skips_records_for_a_slow_client_and_ends_on_time():
    # The supervisor's half alone: the test plays the poll loop and the workers (it sees the
    # commands they would get and delivers the records they would report).
    commands: list[dict] = []
    taps = RelayedTaps(commands.append)
    server = PolledAdminServer(AdminApp(_TokenOnly(), taps=taps), "127.0.0.1", 0)
    sel = selectors.PollSelector()
    server.attach(sel)
    client = socket.create_connection(server.address)
    received = bytearray()

    def step(timeout: float = 0.0) -> None:
        for key, events in sel.select(timeout):
            key.data(events)
        server.run_timers(time.monotonic())

    try:
        client.sendall(b"POST /tap?max=1000&seconds=1.5 HTTP/1.1\r\nhost: a\r\n"
                       b"authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        deadline = time.monotonic() + 5
        while not taps.taps and time.monotonic() < deadline:
            step(0.05)
        (tap_id,) = taps.taps
        assert commands[0]["tap_start"]["count"] == 1000
        big = "v" * 16000
        for i in range(1000):  # 16 MB: far more than the socket buffers and the backlog take
            taps.deliver(tap_id, {"path": f"/?i={i}", "headers": [["x", big]], "worker": 1})
        client.setblocking(False)
        while b"0\r\n\r\n" not in received[-16:] and time.monotonic() < deadline + 5:
            step(0.01)
            for _ in range(64):
                try:
                    received += client.recv(1 << 20)
                except BlockingIOError:
                    break
    finally:
        client.close()
        server.close()
        sel.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    lines = [json.loads(x) for x in body.split(b"\r\n") if x.startswith(b"{")]
    *records, done = lines
    assert done["tap"] == "done" and done["reason"] == "time"
    assert done["skipped"] > 0 and len(records) + done["skipped"] == 1000
    assert commands[-1] == {"tap_stop": tap_id} and not taps.taps
