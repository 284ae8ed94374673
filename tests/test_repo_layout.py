"""The repository's top-level layout, and the promise that CI runs the README's test command."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYOUT = [
    ("setup.py", "file"),
    ("pyproject.toml", "file"),
    ("Makefile", "file"),
    ("README.md", "file"),
    (".ci/run", "file"),
    ("omnirelay_core", "dir"),
    ("omnirelay", "dir"),
    ("meshkit", "dir"),
    ("protos", "dir"),
    ("tests", "dir"),
    ("bench", "dir"),
    ("wheels", "dir"),
    ("examples", "dir"),
    ("docs", "dir"),
]
# Shell words that may precede a command on a line without changing what runs.
PREFIXES = {"exec", "time", "command"}


@pytest.mark.parametrize(("name", "kind"), LAYOUT, ids=[name for name, _ in LAYOUT])
def test_top_level_entry_exists(name: str, kind: str) -> None:
    path = ROOT / name
    present = path.is_dir() if kind == "dir" else path.is_file()
    assert present, f"{name} ({kind}) is missing from the repository root"


def shell_commands(text: str) -> list[list[str]]:
    """Each non-blank line as shell words, with comments and a leading `$ ` prompt dropped."""
    commands = []
    for line in text.splitlines():
        words = shlex.split(line.strip().removeprefix("$ "), comments=True)
        if words:
            commands.append(words)
    return commands


def readme_commands() -> list[list[str]]:
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing: it must open with `make run-demo` and `make test`"
    text = readme.read_text(encoding="utf-8")
    fence = re.search(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1", text, re.MULTILINE | re.DOTALL)
    if fence:
        return shell_commands(fence.group(2))
    # No fenced block: take the inline `code` spans of the opening lines.
    head = "\n".join(text.splitlines()[:20])
    return [shlex.split(span) for span in re.findall(r"`([^`\n]+)`", head)]


def readme_test_command() -> list[str]:
    tests = [words for words in readme_commands() if "test" in words]
    assert tests, f"README's opening commands name no test command: {readme_commands()}"
    return tests[0]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set()
    for m in re.finditer(r"^([A-Za-z0-9_.%/ -]+?)\s*::?(?!=)", text, re.MULTILINE):
        targets.update(m.group(1).split())
    return targets


def test_readme_opens_with_demo_and_test_commands() -> None:
    commands = readme_commands()
    assert ["make", "run-demo"] in commands, f"README's first commands: {commands}"
    assert ["make", "test"] in commands, f"README's first commands: {commands}"


def test_readme_make_commands_are_makefile_targets() -> None:
    targets = makefile_targets()
    for words in readme_commands():
        if words[0] == "make":
            missing = [w for w in words[1:] if "=" not in w and not w.startswith("-")
                       and w not in targets]
            assert not missing, f"`{' '.join(words)}`: no Makefile target {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    wanted = readme_test_command()
    script = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert script.startswith("#!") and "bash" in script.splitlines()[0]
    assert re.search(r"^set -euo pipefail$", script, re.MULTILINE), ".ci/run must fail fast"
    for words in shell_commands(script):
        while words and words[0] in PREFIXES:
            words = words[1:]
        if words == wanted:
            return
    pytest.fail(f".ci/run never runs the README's test command `{shlex.join(wanted)}`")
