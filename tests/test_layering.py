"""ARCHITECTURE.md's import rules, checked on the source tree."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(package: str):
    for path in (ROOT / package).rglob("*"):
        if path.suffix not in (".py", ".pyx", ".pxd"):
            continue
        text = path.read_text()
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        yield path, a.name
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    yield path, node.module
        else:
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("import", "from", "cimport"):
                    yield path, words[1]


def _top(module: str) -> str:
    return module.split(".")[0]


def test_core_imports_neither_omnirelay_nor_meshkit():
    bad = [(str(p), m) for p, m in _imports("omnirelay_core") if _top(m) in ("omnirelay", "meshkit")]
    assert bad == []


def test_only_one_module_imports_the_core():
    users = {str(p.relative_to(ROOT)) for p, m in _imports("omnirelay") if _top(m) == "omnirelay_core"}
    assert users == {"omnirelay/_core.py"}


def test_config_is_the_bottom_layer():
    bad = [(str(p), m) for p, m in _imports("omnirelay/config")
           if _top(m) in ("omnirelay", "omnirelay_core", "meshkit") and not m.startswith("omnirelay.config")]
    assert bad == []


def test_meshkit_uses_only_the_shared_schema():
    bad = [(str(p), m) for p, m in _imports("meshkit")
           if _top(m) == "omnirelay_core" or (_top(m) == "omnirelay" and not m.startswith("omnirelay.config"))]
    assert bad == []
