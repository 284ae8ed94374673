"""What this build can run: extension kinds, their ABI versions and host features.

One answer shared by the package verifier (a package whose kind, ABI or required features
this build lacks is refused), the admin's /capabilities and the control-plane hello. A host
whose module is absent from the build (or fails to import) is simply not offered.

ABI strings are ``<name>/<version>``: ``proxy_wasm/0.2.1``, ``omnirelay_native/1.0``,
``dsl/1``. A package built for ``name/X`` runs on a host offering ``name/Y`` when the names
match, the major versions match (for 0.x also the minor: 0.x releases may break), and
X <= Y (the host is at least as new as what the package was built for).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import Any

KINDS = ("wasm", "native", "dsl")

# kind -> (ABI name, module holding the version constant, constant name)
_HOSTS = {
    "wasm": ("proxy_wasm", "omnirelay.extensions.wasm.abi", "ABI_VERSION"),
    "native": ("omnirelay_native", "omnirelay.extensions.native", "ABI_VERSION"),
    "dsl": ("dsl", "omnirelay.extensions.dsl", "LANGUAGE_VERSION"),
}

# Optional host features a package may require (manifest `capabilities`), per kind: a host
# module may declare its own as HOST_FEATURES (next to its version constant); else these.
# The Wasm host implements these Proxy-Wasm function groups.
_FEATURES = {
    "wasm": ("wasm.headers", "wasm.body", "wasm.local_reply", "wasm.shared_data",
             "wasm.shared_queue", "wasm.metrics", "wasm.timers", "wasm.properties",
             "wasm.http_call"),
    "native": ("native.headers", "native.body", "native.local_reply", "native.metadata"),
    "dsl": (),
}

_ABI = re.compile(r"([a-z][a-z0-9_]*)/(\d+(?:\.\d+)*)")


def _constant(module: str, name: str) -> Any:
    """A constant of an optional module (None when the module is absent or broken)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - a host that cannot import is a host this build lacks
        return None


def _version_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return ".".join(str(v) for v in value)
    return str(value)


def parse_abi(text: str) -> tuple[str, tuple[int, ...]]:
    """``"proxy_wasm/0.2.1"`` -> ("proxy_wasm", (0, 2, 1)); ValueError if malformed."""
    m = _ABI.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"ABI must look like name/1.2.3, got {text!r}")
    return m.group(1), tuple(int(p) for p in m.group(2).split("."))


def abi_compatible(required: str, offered: str) -> bool:
    """Whether a package built for ABI `required` runs on a host offering `offered`."""
    try:
        rname, rver = parse_abi(required)
        oname, over = parse_abi(offered)
    except ValueError:
        return False
    if rname != oname or rver[0] != over[0]:
        return False
    if rver[0] == 0 and rver[1:2] != over[1:2]:
        return False
    width = max(len(rver), len(over))
    return rver + (0,) * (width - len(rver)) <= over + (0,) * (width - len(over))


@dataclass(frozen=True)
class Support:
    """The extension side of the capability set."""

    abis: dict[str, str | None]  # kind -> ABI offered ("proxy_wasm/0.2.1"), None if absent
    features: tuple[str, ...]  # host features a package may require

    def offers(self, kind: str) -> bool:
        return self.abis.get(kind) is not None


def _wasm_engine() -> bool:
    return importlib.util.find_spec("wasmtime") is not None


@functools.cache
def support() -> Support:
    """This build's extension hosts (computed once per process: the build does not change,
    and a host that fails to import would be retried on every call)."""
    abis: dict[str, str | None] = {}
    features: list[str] = []
    for kind, (abi_name, module, constant) in _HOSTS.items():
        version = _version_text(_constant(module, constant))
        if version is not None and kind == "wasm" and not _wasm_engine():
            version = None
        abis[kind] = f"{abi_name}/{version}" if version is not None else None
        if version is not None:
            features.append(kind)
            declared = _constant(module, "HOST_FEATURES")
            features += declared if isinstance(declared, (tuple, list)) else _FEATURES[kind]
    features.append("packages")
    return Support(abis, tuple(features))
