"""SIGHUP: a valid config is applied by every worker without dropping connections; an
invalid one, or one that moves listeners, is rejected and the old config keeps serving."""
from __future__ import annotations

import http.client
import signal
from urllib.parse import urlsplit

from runtime_harness import config_doc, request, write_config

TO_B = {"name": "to-b", "match": {"headers": [{"name": "x-upstream", "exact": "b"}]},
        "cluster": "b"}
ALL_TO_A = {"name": "all", "match": {}, "cluster": "a"}


def test_sighup_applies_a_new_route_on_open_connections(upstreams, relay, tmp_path):
    a, b = upstreams("from a\n"), upstreams("from b\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": a.port, "b": b.port}))
    proc = relay("run", "--config", cfg, "--workers", "2")
    url = proc.listeners()["edge"]
    parts = urlsplit(url)
    keepalive = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    assert request(url, "/", {"x-upstream": "b"}, conn=keepalive) == (200, "from a\n")
    local = keepalive.sock.getsockname()

    write_config(cfg, config_doc({"a": a.port, "b": b.port}, version="2",
                                 routes=[TO_B, ALL_TO_A]))
    mark = proc.mark()
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for(r"config 2 active on all workers", start=mark)

    # The connection opened before the reload is still up, and routes by the new table.
    assert request(url, "/", {"x-upstream": "b"}, conn=keepalive) == (200, "from b\n")
    assert keepalive.sock.getsockname() == local
    keepalive.close()
    for _ in range(10):
        assert request(url, "/", {"x-upstream": "b"}) == (200, "from b\n")
        assert request(url, "/") == (200, "from a\n")
    assert proc.proc.poll() is None


def test_sighup_with_a_bad_config_keeps_serving(upstreams, relay, tmp_path):
    a = upstreams("from a\n")
    cfg = write_config(tmp_path / "relay.yaml", config_doc({"a": a.port}))
    proc = relay("run", "--config", cfg, "--workers", "2")
    url = proc.listeners()["edge"]
    workers = proc.workers()

    bad = config_doc({"a": a.port}, version="2",
                     routes=[{"name": "all", "match": {}, "cluster": "nowhere"}])
    write_config(cfg, bad)
    mark = proc.mark()
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for(r"reload rejected, still serving config 1", start=mark)
    proc.wait_for(r"spec\.routes\[0\]\.cluster: unknown cluster 'nowhere'", start=mark)
    assert request(url, "/") == (200, "from a\n")

    # Moving a listener needs new sockets in every worker: rejected too, with the reason.
    write_config(cfg, config_doc({"a": a.port}, version="3", port=1))
    mark = proc.mark()
    proc.proc.send_signal(signal.SIGHUP)
    proc.wait_for(r"listener changes need a restart", start=mark)
    proc.wait_for(r"listener 'edge' moves from 127\.0\.0\.1:0 to 127\.0\.0\.1:1", start=mark)
    assert request(url, "/") == (200, "from a\n")
    assert proc.workers() == workers
    assert proc.stop() == 0
