"""Every example config loads, validates and compiles into core tables."""
from __future__ import annotations

import pathlib

import pytest

from omnirelay.config import load_config
from omnirelay.runtime.build import TableBuilder

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_builds(path):
    config = load_config(path)
    built = TableBuilder().build(config)
    assert set(built.listeners) == {lst.name for lst in config.spec.listeners}
    for listener in built.listeners.values():
        assert listener.routes.entries


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"edge.yaml", "resilience.yaml"}
