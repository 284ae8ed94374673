"""Talking to the admin API of an `omnirelay run` process from the runtime tests."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families
from runtime_harness import RelayProcess, poll

ADMIN_LINE = r"^omnirelay: admin on (http://\S+)$"
TOKEN = "runtime-admin-token-0123"


def admin_url(proc: RelayProcess) -> str:
    return proc.wait_for(ADMIN_LINE, "stdout", timeout=15)[1]


def call(url: str, path: str, method: str = "GET", token: str | None = None,
         body: bytes = b"") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stats(url: str) -> dict:
    status, body = call(url, "/stats")
    assert status == 200
    return json.loads(body)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    status, body = call(url, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_ready(url: str, timeout: float = 15.0) -> None:
    def ready():
        try:
            return call(url, "/ready")[0] == 200
        except OSError:
            return False
    poll(ready, timeout, what=f"{url}/ready")


def wait_requests(url: str, n: int, timeout: float = 10.0) -> dict:
    """/metrics once the workers reported `n` answered requests in total."""
    def reported():
        m = scrape(url)
        return m if sum(v for (name, _), v in m.items()
                        if name == "omnirelay_downstream_requests_total") >= n else None
    return poll(reported, timeout, what=f"{n} requests in the admin's metrics")
