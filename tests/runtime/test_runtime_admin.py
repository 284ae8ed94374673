"""The admin API of `omnirelay run`: served by the supervisor, counters merged across
workers (and kept when a worker dies), mutations with the token, `omnirelay status`."""
from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from admin_client import (
    TOKEN,
    admin_url,
    call,
    sample,
    scrape,
    stats,
    wait_ready,
    wait_requests,
)
from runtime_harness import config_doc, poll, request, run_cli, write_config


def admin_config(tmp_path, upstream_port: int, version: str = "1", **admin) -> str:
    doc = config_doc({"a": upstream_port}, version=version)
    doc["admin"] = {"port": 0, "token": TOKEN, **admin}
    return write_config(tmp_path / "relay.yaml", doc)


def test_two_workers_merged_and_kept_across_a_crash(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    proc = relay("run", "--config", admin_config(tmp_path, up.port, version="7"),
                 "--workers", "2")
    url = admin_url(proc)
    edge = proc.listeners()["edge"]
    wait_ready(url)
    n = 48
    with ThreadPoolExecutor(8) as pool:  # a new connection per request: both workers serve
        assert set(pool.map(lambda i: request(edge, f"/?i={i}"), range(n))) == {(200, "hi\n")}
    m = wait_requests(url, n)
    assert sample(m, "omnirelay_downstream_requests_total", listener="edge",
                  code_class="2xx") == n
    assert sample(m, "omnirelay_upstream_requests_total", cluster="a", route="all") == n
    assert sample(m, "omnirelay_upstream_request_duration_seconds_count", cluster="a",
                  route="all") == n
    assert sample(m, "omnirelay_workers") == 2
    assert sample(m, "omnirelay_config_info", version="7", epoch="0") == 1

    st = stats(url)
    per_worker = [w["requests_total"] for w in st["workers"]]
    assert sum(per_worker) == n and min(per_worker) > 0, per_worker  # merged, not one worker's
    assert st["ready"] and st["config"]["version"] == "7"
    clusters = json.loads(call(url, "/clusters")[1])["clusters"]
    (ep,) = clusters["a"]["endpoints"]
    assert set(ep["workers"]) == {"0", "1"} and ep["healthy_workers"] == 2

    # A worker killed after reporting: its counts stay in the totals, its replacement adds.
    victim = proc.workers()[0]
    mark = proc.mark()
    os.kill(victim, signal.SIGKILL)
    proc.wait_for(r"worker \d+: pid \d+ ready", start=mark)
    wait_ready(url)
    assert request(edge, "/?after") == (200, "hi\n")
    m = wait_requests(url, n + 1)
    assert sample(m, "omnirelay_downstream_requests_total", listener="edge",
                  code_class="2xx") == n + 1
    assert sample(m, "omnirelay_worker_restarts_total") == 1
    assert sample(m, "omnirelay_workers") == 2

    # `omnirelay status` reads the same numbers.
    res = run_cli("status", "--admin", url)
    assert res.returncode == 0, res.stderr
    assert f"OmniRelay at {url}: ready" in res.stdout
    assert "workers    2 of 2 running" in res.stdout and "1 restart" in res.stdout
    assert f"{n + 1} requests (2xx {n + 1}, 4xx 0, 5xx 0)" in res.stdout
    res = run_cli("status", "--admin", url, "--json")
    assert json.loads(res.stdout)["config"]["version"] == "7"


def test_reload_updates_the_config_info(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    cfg = admin_config(tmp_path, up.port, version="1")
    proc = relay("run", "--config", cfg)
    url = admin_url(proc)
    wait_ready(url)
    admin_config(tmp_path, up.port, version="2", port=1)  # moving the admin needs a restart
    mark = proc.mark()
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for("admin address changes need a restart", start=mark)
    admin_config(tmp_path, up.port, version="2")
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for("config 2 active on all workers", start=mark)
    m = scrape(url)
    assert sample(m, "omnirelay_config_info", version="2", epoch="0") == 1
    assert sample(m, "omnirelay_config_info", version="1", epoch="0") == 0
    assert sample(m, "omnirelay_config_reloads_total", result="applied") == 1
    assert sample(m, "omnirelay_config_reloads_total", result="rejected") == 1
    dump = json.loads(call(url, "/config_dump")[1])
    assert dump["active"]["version"] == "2"
    assert dump["active"]["workers"] == {"total": 1, "on_this_version": 1}


def test_mutations_log_level_and_drain(upstreams, relay, tmp_path):
    up = upstreams("slow but fine\n")
    proc = relay("run", "--config", admin_config(tmp_path, up.port), "--workers", "2")
    url = admin_url(proc)
    edge = proc.listeners()["edge"]
    wait_ready(url)

    assert call(url, "/log_level?level=debug", "POST")[0] == 401
    assert call(url, "/log_level?level=debug", "POST", token="w" * 20)[0] == 403
    mark = proc.mark()
    status, body = call(url, "/log_level?level=debug", "POST", token=TOKEN)
    assert status == 200 and json.loads(body) == {"level": "debug", "logger": "root"}
    for pid in proc.workers():
        proc.wait_for(rf"omnirelay\.worker\[{pid}\]: log level of the root logger set to debug",
                      start=mark)

    # A request in flight holds the drain open: meanwhile /ready says 503.
    slow: list = []
    t = threading.Thread(target=lambda: slow.append(request(edge, "/slow?ms=1500")))
    t.start()
    poll(lambda: sample(scrape(url), "omnirelay_downstream_requests_active", listener="edge"),
         what="the slow request in flight")
    assert call(url, "/drain", "POST")[0] == 401
    status, body = call(url, "/drain", "POST", token=TOKEN)
    assert status == 202 and json.loads(body)["draining"] is True
    status, body = call(url, "/ready")
    assert status == 503 and json.loads(body)["reason"] == "draining"
    t.join(10)
    assert slow == [(200, "slow but fine\n")]
    assert proc.wait(15) == 0


def test_admin_port_taken_and_status_without_admin(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    first = relay("run", "--config", admin_config(tmp_path, up.port))
    url = admin_url(first)
    port = int(url.rsplit(":", 1)[1])
    second = tmp_path / "second"
    second.mkdir()
    res = run_cli("run", "--config", admin_config(second, up.port, port=port))
    assert res.returncode == 1
    assert f"omnirelay: admin: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in res.stderr
    first.stop()
    res = run_cli("status", "--admin", url)
    assert res.returncode == 1
    assert f"cannot reach the admin API at {url}" in res.stderr
    assert "Traceback" not in res.stderr
