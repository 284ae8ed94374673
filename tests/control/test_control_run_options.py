"""`omnirelay run --control-plane --report-interval D --stale-after D` with a real MeshKit and
a real proxy process: reports arrive at the given interval, and a hung MeshKit makes the proxy
reconcile after the given staleness threshold. Bad values are usage errors (exit 2)."""
from __future__ import annotations

import signal
import time

import mkharness
import pytest
from runtime_harness import RelayProcess, free_port, poll, run_cli

from omnirelay.config.signing import Keyring


def test_report_interval_and_stale_after_reach_the_client(tmp_path, meshkit):
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    meshkit.publish(mkharness.document("o1", port=free_port()))
    proxy = RelayProcess("run", "--control-plane", meshkit.address, "--node-id", "opts-1",
                         "--trust-key", str(trust), "--bootstrap-timeout", "20s",
                         "--drain-timeout", "1s", "--report-interval", "150ms",
                         "--stale-after", "1s")
    try:
        proxy.listeners(timeout=30)
        poll(lambda: meshkit.nodes()["opts-1"].reported_version == "o1", what="a report")
        # MeshKit's replies say 10 s; the option wins: several reports within ~1 s.
        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:
            seen.add(meshkit.nodes()["opts-1"].reported_at_unix_ms)
            time.sleep(0.05)
        assert len(seen) >= 5, seen
        span_ms = max(seen) - min(seen)
        assert span_ms < 4 * 1000, span_ms

        mark = proxy.mark()
        meshkit.signal(signal.SIGSTOP)  # connections stay open; nothing answers
        try:
            proxy.wait_for(r"reconciling: not in sync with the control plane for [\d.]+s "
                           r"\(threshold 1s\)", start=mark, timeout=15)
        finally:
            meshkit.signal(signal.SIGCONT)
    finally:
        assert proxy.stop() == 0, proxy.output()


@pytest.mark.parametrize(("args", "message"), [
    (["--report-interval", "10ms"], "--report-interval: 0.01s is out of range"),
    (["--report-interval", "2h"], "--report-interval: 7200s is out of range"),
    (["--report-interval", "soon"], "invalid duration 'soon'"),
    (["--stale-after", "5s"],
     "--stale-after: 5s must be longer than the status report interval (10s, the default)"),
    (["--report-interval", "2s", "--stale-after", "2s"],
     "2s must be longer than the status report interval (2s, --report-interval)"),
])
def test_bad_values_are_usage_errors(tmp_path, args, message):
    trust = tmp_path / "trust.json"
    trust.write_text('{"keys": []}')
    result = run_cli("run", "--control-plane", "127.0.0.1:1", "--node-id", "x", "--trust-key",
                     str(trust), *args)
    assert result.returncode == 2, result
    assert message in " ".join(result.stderr.split()), result.stderr


def test_options_need_the_control_plane():
    result = run_cli("run", "--demo", "--stale-after", "2m")
    assert result.returncode == 2
    assert "--stale-after apply to --control-plane only" in result.stderr
