"""Shared fixtures for the config tests: a small valid document and an issue collector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from omnirelay.config import ConfigError, load_config


def _valid_document() -> dict[str, Any]:
    return {
        "spec": {
            "listeners": [{"name": "public", "address": "0.0.0.0", "port": 8080}],
            "routes": [
                {"name": "api", "match": {"path": {"prefix": "/api/"}}, "cluster": "api"},
                {"name": "web", "match": {}, "cluster": "web"},
            ],
            "clusters": [
                {"name": "api", "endpoints": [{"address": "10.0.0.1", "port": 8080}]},
                {"name": "web", "endpoints": [{"address": "10.0.0.2", "port": 8080}]},
            ],
        }
    }


@pytest.fixture
def doc() -> dict[str, Any]:
    """A fresh, valid document that a test may mutate."""
    return _valid_document()


@pytest.fixture
def issues_of() -> Callable[[Any], list[str]]:
    """Load a source that must fail and return its issues as "path: message" lines."""

    def issues(source: Any) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_config(source)
        return [str(issue) for issue in caught.value.issues]

    return issues
