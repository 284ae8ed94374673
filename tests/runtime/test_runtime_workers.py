"""`omnirelay run --workers 2`: both workers accept on one port, a killed worker is replaced."""
from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from runtime_harness import (
    config_doc,
    listening_inodes,
    poll,
    request,
    run_cli,
    socket_inodes,
    write_config,
)


def test_two_workers_share_the_listener(upstreams, relay, tmp_path):
    up = upstreams("hello from a\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": up.port}))
    proc = relay("run", "--config", cfg, "--workers", "2")
    url = proc.listeners()["edge"]
    assert proc.wait_for(r"\(2 workers\)$", "stdout")

    workers = proc.workers()
    assert len(workers) == 2
    listening = listening_inodes(urlsplit(url).port)
    for pid in workers:  # each worker holds its own listening socket on the port
        assert socket_inodes(pid) & listening, f"worker {pid} does not listen on {url}"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: request(url, f"/?i={i}"), range(64)))
    assert results == [(200, "hello from a\n")] * 64


def test_killed_worker_is_replaced(upstreams, relay, tmp_path):
    up = upstreams("still here\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": up.port}))
    proc = relay("run", "--config", cfg, "--workers", "2", "--log-format", "json")
    url = proc.listeners()["edge"]
    victim, survivor = proc.workers()

    mark = proc.mark()
    os.kill(victim, signal.SIGKILL)
    proc.wait_for(rf"worker pid {victim} exited with signal SIGKILL, restarting", start=mark)
    new = int(proc.wait_for(r"worker \d+: pid (\d+) ready", start=mark)[1])
    assert new not in (victim, survivor)
    assert proc.workers() == sorted([survivor, new])
    for i in range(20):
        assert request(url, f"/?i={i}") == (200, "still here\n")

    proc.stop()
    records = [json.loads(line) for line in proc.lines["stderr"] if line]
    assert all({"ts", "level", "logger", "msg", "pid"} <= r.keys() for r in records)
    assert {r["pid"] for r in records} >= {proc.pid, survivor, new}


def test_a_taken_port_is_reported(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    first = relay("run", "--config", write_config(tmp_path / "a.yaml", config_doc({"a": up.port})))
    port = urlsplit(first.listeners()["edge"]).port
    # Workers bind with SO_REUSEPORT; without the supervisor's check they would share the port.
    second = write_config(tmp_path / "b.yaml", config_doc({"a": up.port}, port=port))
    res = run_cli("run", "--config", second)
    assert res.returncode == 1
    assert f"listener 'edge': cannot listen on 127.0.0.1:{port}: Address already in use" \
        in res.stderr


def test_workers_exit_when_the_supervisor_dies(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": up.port}))
    proc = relay("run", "--config", cfg, "--workers", "2")
    proc.listeners()
    workers = proc.workers()
    proc.proc.kill()
    proc.proc.wait()
    poll(lambda: not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in workers),
         what="orphaned workers to exit")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
