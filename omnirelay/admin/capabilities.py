"""/capabilities: what this build of OmniRelay can run and speak.

The same set goes to the control plane in the node hello (omnirelay.control.node), and the
extension part of it (omnirelay.extensions.support) is what signed packages are checked
against before they load.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from typing import Any

from omnirelay._version import __version__
from omnirelay.config.signing import ALGORITHM
from omnirelay.extensions.packages import FORMAT
from omnirelay.extensions.support import support

PROTOCOLS = ("http1", "h2", "h2c", "grpc", "tcp", "tls_passthrough")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version(abi: str | None) -> str | None:
    """`proxy_wasm/0.2.1` -> `0.2.1`."""
    return abi.partition("/")[2] if abi else None


def capabilities() -> dict[str, Any]:
    ext = support()
    wasmtime = _package_version("wasmtime") if importlib.util.find_spec("wasmtime") else None
    return {
        "omnirelay": __version__,
        "python": platform.python_version(),
        "event_loop": ("uvloop " + v) if (v := _package_version("uvloop")) else "asyncio",
        "protocols": list(PROTOCOLS),
        "runtimes": {
            "python_filters": {"available": True},
            "wasm": {"available": ext.offers("wasm"), "engine": "wasmtime",
                     "engine_version": wasmtime, "abi": ext.abis["wasm"]},
            "native": {"available": ext.offers("native"), "abi": ext.abis["native"]},
            "dsl": {"available": ext.offers("dsl"), "abi": ext.abis["dsl"]},
        },
        "abi": {"proxy_wasm": _version(ext.abis["wasm"]),
                "native_plugin": _version(ext.abis["native"]),
                "dsl": _version(ext.abis["dsl"])},
        # What extension packages may require (manifest `abi` and `capabilities`).
        "extension_abis": sorted(a for a in ext.abis.values() if a),
        "features": list(ext.features),
        "packages": {"format": FORMAT, "signature": ALGORITHM,
                     "kinds": [k for k in ext.abis if ext.offers(k)]},
        "admin": {"mutations": ["drain", "log_level", "tap"]},
    }
