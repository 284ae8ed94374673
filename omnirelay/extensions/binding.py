"""The config keys every extension binding (Wasm and native plugins) shares: where the code
comes from (a file, or a signed package), what requests get when it fails, and the digest
it is pinned to. Each parser raises TypeError / ValueError naming the key."""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping

POLICIES = ("fail_open", "fail_closed", "reload")
FALLBACKS = ("fail_open", "fail_closed")

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_keys(config: Mapping, keys: Collection[str]) -> None:
    unknown = sorted(str(k) for k in set(config) - set(keys))
    if unknown:
        raise ValueError(f"unknown keys {unknown} (known: {list(keys)})")


def string(config: Mapping, key: str, default: str = "") -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def source(config: Mapping, required: str) -> tuple[str, bool]:
    """(the file, whether it is a signed package) from `path` or `package`; `required`
    says what to give when neither is there."""
    if "path" in config and "package" in config:
        raise ValueError("give path or package, not both")
    if "path" not in config and "package" not in config:
        raise ValueError(required)
    key = "package" if "package" in config else "path"
    path = string(config, key)
    if not path:
        raise ValueError(f"{key} must not be empty")
    return path, key == "package"


def failure_policy(config: Mapping) -> tuple[str, str]:
    """(failure_policy, reload_fallback), both fail_closed by default."""
    policy = string(config, "failure_policy", "fail_closed")
    if policy not in POLICIES:
        raise ValueError(f"failure_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    fallback = string(config, "reload_fallback", "fail_closed")
    if fallback not in FALLBACKS:
        raise ValueError(
            f"reload_fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    return policy, fallback


def pinned_digest(config: Mapping) -> str | None:
    digest = config.get("sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return digest
