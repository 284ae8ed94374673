"""The immutable settings of one native plugin binding, parsed from a filter's config."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from omnirelay.extensions.binding import (
    check_keys,
    failure_policy,
    pinned_digest,
    source,
    string,
)

KEYS = ("config", "failure_policy", "max_call_us", "max_trips", "name", "package", "path",
        "reload_fallback", "sha256")

DEFAULT_MAX_CALL_US = 10_000.0
DEFAULT_MAX_TRIPS = 3
MAX_CALL_US_LIMIT = 60_000_000.0


@dataclass(frozen=True)
class NativeConfig:
    path: str                      # the library, or the package file with `package:`
    name: str = ""                 # "" = the name the plugin reports
    config: bytes = b""
    failure_policy: str = "fail_closed"
    reload_fallback: str = "fail_closed"
    max_call_us: float = DEFAULT_MAX_CALL_US
    max_trips: int = DEFAULT_MAX_TRIPS
    sha256: str | None = None
    # A signed extension package (omnirelay.extensions.packages) holding the library.
    package: str | None = None

    @property
    def fallback(self) -> str:
        """What requests get once the binding is disabled: fail_open or fail_closed.
        A native plugin cannot be restarted in-process, so ``reload`` means its
        ``reload_fallback``."""
        return self.reload_fallback if self.failure_policy == "reload" else self.failure_policy


def _payload(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    raise TypeError(f"config must be a string, bytes, a mapping or a list, "
                    f"got {type(value).__name__}")


def parse_native_config(config: Mapping | None) -> NativeConfig:
    """Validate an ``omnirelay.filters.http.native`` filter config; raises TypeError /
    ValueError naming the key."""
    config = dict(config or {})
    check_keys(config, KEYS)
    path, packaged = source(config, "path is required (the plugin's shared library, .so), or "
                                    "package (a signed extension package)")
    policy, fallback = failure_policy(config)
    max_call_us = config.get("max_call_us", DEFAULT_MAX_CALL_US)
    if (isinstance(max_call_us, bool) or not isinstance(max_call_us, (int, float))
            or not 0 <= max_call_us <= MAX_CALL_US_LIMIT):
        raise ValueError(f"max_call_us must be a number of microseconds from 0 (no monitor) "
                         f"to {MAX_CALL_US_LIMIT:g}, got {max_call_us!r}")
    max_trips = config.get("max_trips", DEFAULT_MAX_TRIPS)
    if isinstance(max_trips, bool) or not isinstance(max_trips, int) or max_trips < 1:
        raise ValueError(f"max_trips must be an integer of at least 1, got {max_trips!r}")
    return NativeConfig(
        path=path,
        name=string(config, "name"),
        config=_payload(config.get("config", "")),
        failure_policy=policy,
        reload_fallback=fallback,
        max_call_us=float(max_call_us),
        max_trips=max_trips,
        sha256=pinned_digest(config),
        package=path if packaged else None,
    )
