"""The `omnirelay` command: validate, run with a bad config, version, --demo, and the
embedding example."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_harness import ROOT, cmdline, config_doc, poll, run_cli, write_config

from omnirelay import __version__


def test_validate_a_good_file(tmp_path):
    doc = config_doc({"a": 9001, "b": 9002}, version="7",
                     routes=[{"name": "b", "match": {"path": {"prefix": "/b"}}, "cluster": "b"},
                             {"name": "all", "match": {}, "cluster": "a"}])
    res = run_cli("validate", write_config(tmp_path / "good.yaml", doc))
    assert (res.returncode, res.stdout) == (0, "OK: 1 listener, 2 routes, 2 clusters (version 7)\n")


def test_validate_reports_every_problem(tmp_path):
    doc = config_doc({"a": 9001}, routes=[{"name": "all", "match": {}, "cluster": "nowhere",
                                           "timout": "1s"}])
    res = run_cli("validate", write_config(tmp_path / "bad.yaml", doc))
    assert res.returncode == 1
    assert "spec.routes[0].cluster: unknown cluster 'nowhere'" in res.stdout
    assert "spec.routes[0].timout: unknown field (did you mean 'timeout'?)" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_validate_builds_filters(tmp_path):
    doc = config_doc({"a": 9001}, routes=[{"name": "all", "match": {}, "cluster": "a",
                                           "filters": [{"name": "no.such.filter"}]}])
    res = run_cli("validate", write_config(tmp_path / "filters.yaml", doc))
    assert res.returncode == 1
    assert "spec.routes[0].filters[0].name: unknown filter 'no.such.filter'" in res.stdout


def test_validate_unreadable_and_unparsable_files(tmp_path):
    res = run_cli("validate", tmp_path / "missing.yaml")
    assert res.returncode == 1 and "cannot read config" in res.stdout
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    res = run_cli("validate", tmp_path / "broken.yaml")
    assert res.returncode == 1 and "invalid YAML" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_run_with_a_bad_config_exits_2(tmp_path):
    doc = config_doc({"a": 9001}, routes=[{"name": "all", "match": {}, "cluster": "nowhere"}])
    res = run_cli("run", "--config", write_config(tmp_path / "bad.yaml", doc))
    assert res.returncode == 2
    assert "invalid config" in res.stderr and "unknown cluster 'nowhere'" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_run_usage_errors_exit_2(tmp_path):
    assert run_cli("run").returncode == 2
    res = run_cli("run", "--demo", "--drain-timeout", "soon")
    assert res.returncode == 2 and "invalid duration 'soon'" in res.stderr


def test_version():
    assert run_cli("--version").stdout == f"omnirelay {__version__}\n"
    assert run_cli("version").stdout.startswith(f"omnirelay {__version__} (Python ")
    script = Path(sys.executable).with_name("omnirelay")  # the installed console script
    if script.exists():
        res = subprocess.run([script, "--version"], check=False, capture_output=True, text=True,
                             timeout=20)
        assert res.stdout == f"omnirelay {__version__}\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_demo(relay):
    proc = relay("run", "--demo", "--port", "0")
    m = proc.wait_for(r"^omnirelay demo: curl (http://127\.0\.0\.1:\d+/)  "
                      r"\(upstream on 127\.0\.0\.1:(\d+); Ctrl-C to stop\)$", "stdout", 15)
    res = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", m[1]],
                         check=False, capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("HTTP/1.1 200")
    assert re.search(r"^x-omnirelay-demo: 1\r?$", res.stdout, re.MULTILINE)
    assert res.stdout.endswith("Hello from the OmniRelay demo upstream!\n")

    upstream = [pid for pid in proc.workers() if "omnirelay.demo" in cmdline(pid)]
    assert len(upstream) == 1
    assert proc.stop() == 0
    poll(lambda: not Path(f"/proc/{upstream[0]}").exists(), timeout=5,
         what="the demo upstream to exit")


def test_embedding_example_runs():
    res = subprocess.run([sys.executable, "examples/embed_relay.py"], cwd=ROOT,
                         check=False, capture_output=True, text=True, timeout=5)
    assert res.returncode == 0, res.stderr
    assert "-> 200" in res.stdout and "x-stamped-by: example" in res.stdout


def test_the_shipped_example_config_validates():
    res = run_cli("validate", "examples/edge.yaml")
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith("OK: ")


def test_banner_names_each_listener_with_its_scheme(capsys):
    from omnirelay.cli.run import announce
    from omnirelay.config import load_config

    cluster = {"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9}]}
    config = load_config({"spec": {
        "listeners": [
            {"name": "web", "address": "127.0.0.1", "port": 0},
            {"name": "secure", "address": "::1", "port": 0,
             "tls": {"cert_file": "c.pem", "key_file": "k.pem"}},
            {"name": "db", "address": "127.0.0.1", "port": 0, "protocol": "tcp",
             "tcp": {"cluster": "c"}},
            {"name": "sni", "address": "127.0.0.1", "port": 0, "protocol": "tls_passthrough",
             "sni_routes": [{"server_names": ["*"], "cluster": "c"}]}],
        "routes": [{"name": "r", "match": {"path": {"prefix": "/"}}, "cluster": "c"}],
        "clusters": [cluster]}})
    announce({"web": ("127.0.0.1", 80), "secure": ("::1", 443), "db": ("127.0.0.1", 5432),
              "sni": ("127.0.0.1", 8443)}, 2, config)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "omnirelay: listener web on http://127.0.0.1:80 (2 workers)",
        "omnirelay: listener secure on https://[::1]:443 (2 workers)",
        "omnirelay: listener db on tcp://127.0.0.1:5432 (2 workers)",
        "omnirelay: listener sni on tls://127.0.0.1:8443 (2 workers)",
    ]
