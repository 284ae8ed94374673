"""The immutable settings of one Wasm plugin binding, parsed from a filter's config.

Pure Python (no wasmtime): config validation stays cheap and importable anywhere.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from omnirelay.config import parse_duration, parse_size
from omnirelay.extensions.binding import (
    check_keys,
    failure_policy,
    pinned_digest,
    source,
    string,
)

DEFAULT_MEMORY_LIMIT = 64 << 20
DEFAULT_CALLBACK_DEADLINE = 0.1
DEFAULT_START_DEADLINE = 1.0
MAX_DEADLINE = 60.0
MIN_MEMORY_LIMIT = 64 << 10  # one Wasm page

KEYS = ("callback_deadline", "configuration", "environment", "failure_policy", "memory_limit",
        "name", "package", "path", "reload_fallback", "root_id", "sha256", "start_deadline",
        "vm_configuration", "vm_id")
PACKAGE_SUFFIX = ".orpkg"


@dataclass(frozen=True)
class PluginConfig:
    path: str
    name: str
    root_id: str = ""
    vm_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    failure_policy: str = "fail_closed"
    reload_fallback: str = "fail_closed"
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    callback_deadline: float = DEFAULT_CALLBACK_DEADLINE
    start_deadline: float = DEFAULT_START_DEADLINE
    environment: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    # A signed extension package (omnirelay.extensions.packages) instead of `path`; `path`
    # then holds the same file name.
    package: str | None = None

    @property
    def fallback(self) -> str:
        """What requests get while the plugin cannot run: fail_open or fail_closed."""
        return self.reload_fallback if self.failure_policy == "reload" else self.failure_policy


def _payload(config: Mapping, key: str) -> bytes:
    """A configuration payload: a string (UTF-8), bytes (YAML !!binary), or a mapping or
    list (sent as compact JSON with sorted keys)."""
    value = config.get(key, "")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":")).encode()
    raise TypeError(f"{key} must be a string, bytes, a mapping or a list, "
                    f"got {type(value).__name__}")


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _duration(config: Mapping, key: str, default: float) -> float:
    if key not in config:
        return default
    try:
        seconds = parse_duration(config[key])
    except (TypeError, ValueError) as e:
        raise type(e)(f"{key}: {e}") from None
    if not 0 < seconds <= MAX_DEADLINE:
        raise ValueError(f"{key} must be greater than 0 and at most {MAX_DEADLINE:g}s, "
                         f"got {config[key]!r}")
    return seconds


def parse_plugin_config(config: Mapping | None) -> PluginConfig:
    """Validate a ``omnirelay.filters.http.wasm`` config; raises TypeError / ValueError
    naming the key."""
    config = dict(config or {})
    check_keys(config, KEYS)
    path, packaged = source(config, "path is required (a .wasm or .wat file), or package (a "
                                    "signed extension package)")
    base = os.path.basename(path)
    name = string(config, "name", "") or (
        base.removesuffix(PACKAGE_SUFFIX) if packaged else os.path.splitext(base)[0])
    policy, fallback = failure_policy(config)
    memory_limit = DEFAULT_MEMORY_LIMIT
    if "memory_limit" in config:
        try:
            memory_limit = parse_size(config["memory_limit"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"memory_limit: {e}") from None
        if memory_limit < MIN_MEMORY_LIMIT:
            raise ValueError(f"memory_limit must be at least {MIN_MEMORY_LIMIT} bytes "
                             f"(one Wasm page), got {config['memory_limit']!r}")
    env = config.get("environment", {})
    if not isinstance(env, Mapping):
        raise TypeError("environment must be a mapping of variable name to string")
    environment = []
    for k, v in env.items():
        if not isinstance(v, str) or "=" in str(k) or "\0" in str(k) + v:
            raise ValueError(f"environment.{k}: must be a string (no NUL; no '=' in the name)")
        environment.append((str(k), v))
    return PluginConfig(
        path=path,
        name=name,
        root_id=string(config, "root_id"),
        vm_id=string(config, "vm_id"),
        configuration=_payload(config, "configuration"),
        vm_configuration=_payload(config, "vm_configuration"),
        failure_policy=policy,
        reload_fallback=fallback,
        memory_limit=memory_limit,
        callback_deadline=_duration(config, "callback_deadline", DEFAULT_CALLBACK_DEADLINE),
        start_deadline=_duration(config, "start_deadline", DEFAULT_START_DEADLINE),
        environment=tuple(environment),
        sha256=pinned_digest(config),
        package=path if packaged else None,
    )
