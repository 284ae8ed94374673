"""Signed extension packages under `omnirelay run` with two workers: each worker hot-reloads
a new package version on its own, a refused version leaves every worker serving the last
good one (a restarted worker too), and the supervisor's /extensions and /metrics merge what
the workers report."""
from __future__ import annotations

import http.client
import json
import os
import signal
from urllib.parse import urlsplit

from admin_client import TOKEN, admin_url, call, sample, scrape, wait_ready
from extension_packages import stamp_plugin, tampered
from runtime_harness import config_doc, poll, write_config

from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions.packages import build_package, write_package


def stamp(version: str, signer: Signer | None) -> bytes:
    return build_package(stamp_plugin(version), name="stamp", version=version[1:],
                         kind="wasm", signer=signer)


def version_header(url: str) -> str | None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("x-ext-version")
    finally:
        conn.close()


def extensions(url: str) -> dict:
    status, body = call(url, "/extensions")
    assert status == 200
    return json.loads(body)


def workers_on(url: str, pkg: str, version: str, failure: str | None = None) -> bool:
    """Both workers report `version` active for `pkg` (and `failure` as its last refusal)."""
    states = [p for p in extensions(url)["packages"] if p["path"] == pkg]
    return len(states) == 2 and all(
        p["active"] and p["active"]["version"] == version
        and (failure is None or (p["last_failure"] or {}).get("reason") == failure)
        for p in states)


def test_two_workers_hot_reload_and_keep_serving_after_a_refusal(upstreams, relay, tmp_path):
    up = upstreams("hi\n")
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    pkg = str(tmp_path / "stamp.orpkg")
    write_package(pkg, stamp("v1", signer))
    doc = config_doc({"a": up.port})
    doc["spec"]["routes"][0]["filters"] = [{"name": "omnirelay.filters.http.wasm",
                                            "config": {"package": pkg}}]
    doc["extensions"] = {"trusted_keys": [str(trust)], "watch_interval": "50ms"}
    doc["admin"] = {"port": 0, "token": TOKEN}
    proc = relay("run", "--config", write_config(tmp_path / "relay.yaml", doc),
                 "--workers", "2")
    url = admin_url(proc)
    edge = proc.listeners()["edge"]
    wait_ready(url)
    assert version_header(edge) == "v1"
    poll(lambda: workers_on(url, pkg, "1"), what="both workers reporting v1")
    bindings = extensions(url)["bindings"]
    assert sorted(b["worker"] for b in bindings) == ["0", "1"]
    assert all(b["package"]["version"] == "1" and b["state"] == "running" for b in bindings)

    write_package(pkg, stamp("v2", signer))
    poll(lambda: workers_on(url, pkg, "2"), what="both workers on v2")
    assert {version_header(edge) for _ in range(10)} == {"v2"}

    write_package(pkg, tampered(stamp("v3", signer)))
    reason = "hash_mismatch"
    poll(lambda: workers_on(url, pkg, "2", failure=reason), what=f"{reason} on both workers")
    assert {version_header(edge) for _ in range(10)} == {"v2"}
    metrics = scrape(url)
    assert sample(metrics, "omnirelay_extension_reloads_total", result="applied") == 2
    assert sample(metrics, "omnirelay_extension_reloads_total", result="failed") == 2
    assert sample(metrics, "omnirelay_extension_failures_total", kind="wasm",
                  extension="stamp", reason=reason) == 2

    # A worker that restarts now finds a refused file: it runs the last good version (v2),
    # like its sibling, instead of failing to start.
    mark = proc.mark()
    os.kill(proc.workers()[0], signal.SIGKILL)
    proc.wait_for(r"worker \d+: pid \d+ ready", start=mark)
    wait_ready(url)
    assert {version_header(edge) for _ in range(10)} == {"v2"}
    proc.wait_for("using the last good version stamp 2", start=mark)
    assert proc.stop() == 0, proc.output()
