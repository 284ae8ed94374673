"""A real Prometheus server (Debian's `prometheus` package) scrapes the admin /metrics of
`omnirelay run --workers 2`; its query API must show what we sent through both workers."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from admin_client import admin_url, stats, wait_ready, wait_requests
from runtime_harness import config_doc, poll, request, write_config

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK),
    reason="the prometheus server is not installed (make setup installs Debian's package)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp_path, target: str):
        self.port = free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: omnirelay\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.log_path = tmp_path / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.tail()}"
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        """The single value of an instant query, None while there is none."""
        url = f"{self.base}/api/v1/query?query={urllib.parse.quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-2000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_scrapes_two_workers(upstreams, relay, tmp_path):
    up = upstreams("scraped\n")
    doc = config_doc({"a": up.port}, version="7")
    doc["admin"] = {"port": 0}
    proc = relay("run", "--config", write_config(tmp_path / "relay.yaml", doc), "--workers", "2")
    url = admin_url(proc)
    edge = proc.listeners()["edge"]
    wait_ready(url)
    prom = Prometheus(tmp_path, url.removeprefix("http://"))
    try:
        poll(prom.ready, 30, interval=0.1, what="prometheus /-/ready")
        n = 40
        with ThreadPoolExecutor(8) as pool:
            results = set(pool.map(lambda i: request(edge, f"/?i={i}"), range(n)))
        assert results == {(200, "scraped\n")}
        wait_requests(url, n)
        assert min(w["requests_total"] for w in stats(url)["workers"]) > 0  # both served

        def scraped(expr: str, want: float):
            return lambda: prom.query(expr) == want

        expr = 'sum(omnirelay_downstream_requests_total{listener="edge",code_class="2xx"})'
        poll(scraped(expr, n), 30, interval=0.2, what=f"{expr} == {n} in prometheus")
        assert prom.query('up{job="omnirelay"}') == 1
        assert prom.query("omnirelay_workers") == 2
        assert prom.query('omnirelay_config_info{version="7",epoch="0"}') == 1
        assert prom.query('omnirelay_upstream_requests_total{cluster="a",route="all"}') == n
        assert prom.query('omnirelay_upstream_request_duration_seconds_bucket'
                          '{cluster="a",route="all",le="+Inf"}') == n
        assert prom.query('omnirelay_upstream_request_duration_seconds_count'
                          '{cluster="a",route="all"}') == n
        assert prom.query('sum(omnirelay_downstream_connections_total{listener="edge"})') == n
    finally:
        prom.stop()
