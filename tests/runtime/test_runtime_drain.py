"""SIGTERM drains: in-flight requests finish, new connections are refused, exit 0."""
from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from runtime_harness import config_doc, poll, request, write_config

DRAIN_TIMEOUT = 5.0


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_a_slow_request_finish(upstreams, relay, tmp_path):
    up = upstreams("slow but sure\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": up.port}))
    proc = relay("run", "--config", cfg, "--workers", "2", "--drain-timeout", f"{DRAIN_TIMEOUT}s")
    url = proc.listeners()["edge"]
    parts = urlsplit(url)

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(request, url, "/slow?ms=1000")
        assert up.arrivals.get(timeout=5) == "/slow?ms=1000"  # in flight at the upstream now
        stopped_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        poll(lambda: _refused(parts.hostname, parts.port), timeout=3,
             what="the listener to refuse connections")
        assert slow.result(timeout=5) == (200, "slow but sure\n")

    assert proc.wait(DRAIN_TIMEOUT + 5) == 0
    assert time.monotonic() - stopped_at < DRAIN_TIMEOUT
    assert _refused(parts.hostname, parts.port)
