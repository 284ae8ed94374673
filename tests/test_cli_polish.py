"""The `omnirelay` command's polish, run as real processes: shell completion (click's,
under `_OMNIRELAY_COMPLETE`, and `omnirelay completion SHELL`), and user errors reported in
one line without a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "omnirelay.cli.main"]


def omnirelay(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, cwd=cwd)


def test_the_completion_variable_prints_a_bash_script():
    r = omnirelay(env={"_OMNIRELAY_COMPLETE": "bash_source"})
    assert r.returncode == 0, r.stderr
    assert "_omnirelay_completion()" in r.stdout
    assert "_OMNIRELAY_COMPLETE=bash_complete" in r.stdout


def test_completion_command_matches_and_completes_subcommands():
    r = omnirelay("completion", "bash")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == omnirelay(env={"_OMNIRELAY_COMPLETE": "bash_source"}).stdout.strip()
    for shell, marker in (("zsh", "#compdef omnirelay"), ("fish", "complete --no-files")):
        out = omnirelay("completion", shell)
        assert out.returncode == 0 and marker in out.stdout, (shell, out.stderr)
    words = omnirelay(env={"_OMNIRELAY_COMPLETE": "bash_complete", "COMP_WORDS": "omnirelay st",
                           "COMP_CWORD": "1"})
    assert words.returncode == 0
    assert "plain,status" in words.stdout.splitlines()
    opts = omnirelay(env={"_OMNIRELAY_COMPLETE": "bash_complete",
                          "COMP_WORDS": "omnirelay run --log-f", "COMP_CWORD": "2"})
    assert "plain,--log-format" in opts.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_accepts_the_script():
    script = omnirelay("completion", "bash").stdout
    r = subprocess.run(["bash", "-c", f"{script}\ncomplete -p omnirelay"], check=False,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "_omnirelay_completion" in r.stdout


def test_an_unknown_shell_is_a_usage_error():
    r = omnirelay("completion", "tcsh")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "'tcsh' is not one of" in r.stderr


@pytest.mark.parametrize("args, code, message", [
    (("validate", "{missing}"), 1, "cannot read config: No such file or directory"),
    (("run", "-c", "{missing}"), 2, "cannot read config: No such file or directory"),
    (("status", "-c", "{missing}"), 2, "cannot read config: No such file or directory"),
    (("validate", "{bad}"), 1, "invalid YAML"),
    (("run", "-c", "{dir}"), 2, "is a directory"),
    (("status", "--admin", "http://127.0.0.1:9"), 1, "cannot reach the admin API"),
    (("run", "--log-format", "xml", "--demo"), 2, "'xml' is not one of"),
])
def test_user_errors_are_one_message_without_a_traceback(tmp_path, args, code, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [\n")
    paths = {"missing": str(tmp_path / "nope.yaml"), "bad": str(bad), "dir": str(tmp_path)}
    r = omnirelay(*(a.format(**paths) for a in args))
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert message in r.stdout + r.stderr
