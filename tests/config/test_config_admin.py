"""The top-level `admin` block: defaults, normalization and every rule, by "path: message"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from omnirelay.config import Admin, canonical_json, config_to_dict, load_config

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]
TOKEN = "s3cret-token-0123456789"


def test_no_admin_block_means_no_admin(doc: Doc) -> None:
    config = load_config(doc)
    assert config.admin is None
    assert config_to_dict(config)["admin"] is None


def test_defaults(doc: Doc) -> None:
    doc["admin"] = {}
    assert load_config(doc).admin == Admin(address="127.0.0.1", port=9901, token=None,
                                           token_file=None)


def test_every_field(doc: Doc) -> None:
    doc["admin"] = {"address": "::1", "port": 0, "token": TOKEN}
    assert load_config(doc).admin == Admin("::1", 0, TOKEN)
    doc["admin"] = {"address": "localhost", "port": 19000, "token_file": "/run/omnirelay/token"}
    assert load_config(doc).admin == Admin("localhost", 19000, None, "/run/omnirelay/token")


def test_null_is_absent(doc: Doc) -> None:
    doc["admin"] = None
    assert load_config(doc).admin is None


def test_round_trip(doc: Doc) -> None:
    doc["admin"] = {"port": 9100, "token": TOKEN}
    config = load_config(doc)
    normalized = config_to_dict(config)
    assert normalized["admin"] == {"address": "127.0.0.1", "port": 9100, "token": TOKEN,
                                   "token_file": None}
    assert load_config(normalized) == config
    assert canonical_json(load_config(normalized)) == canonical_json(config)


@pytest.mark.parametrize(("admin", "expected"), [
    ("yes", "admin: expected mapping, got string"),
    ({"prot": 1}, "admin.prot: unknown field (did you mean 'port'?)"),
    ({"address": "example.com"},
     "admin.address: invalid address 'example.com': expected an IP address or 'localhost'"),
    ({"port": 70000}, "admin.port: must be between 0 and 65535, got 70000"),
    ({"port": "9901"}, "admin.port: expected integer, got string"),
    ({"token": "short"}, "admin.token: token must be 16 to 1024 characters long, got 5"),
    ({"token": "has a space in it!!"},
     "admin.token: invalid token: use printable ASCII without spaces"),
    ({"token": 1234567890123456789}, "admin.token: expected string, got integer (quote it)"),
    ({"token_file": ""}, "admin.token_file: must not be empty"),
    ({"token": TOKEN, "token_file": "/t"},
     "admin: at most one of 'token' or 'token_file' may be given"),
])
def test_rules(doc: Doc, issues_of: Issues, admin: Any, expected: str) -> None:
    doc["admin"] = admin
    assert issues_of(doc) == [expected]


def test_admin_cannot_take_a_listener_socket(doc: Doc, issues_of: Issues) -> None:
    doc["spec"]["listeners"][0].update(address="127.0.0.1", port=9901)
    doc["admin"] = {}
    assert issues_of(doc) == [
        "admin.port: 127.0.0.1:9901 is already used by listener 'public' (spec.listeners[0])"]
    doc["admin"] = {"port": 0}  # any free port never collides
    assert load_config(doc).admin.port == 0
    doc["admin"] = {"address": "127.0.0.2", "port": 9901}
    assert load_config(doc).admin.address == "127.0.0.2"


def test_admin_issues_come_with_the_spec_issues(doc: Doc, issues_of: Issues) -> None:
    doc["admin"] = {"port": -1}
    doc["spec"]["routes"][0]["timout"] = 1
    assert issues_of(doc) == [
        "spec.routes[0].timout: unknown field (did you mean 'timeout'?)",
        "admin.port: must be between 0 and 65535, got -1",
    ]
