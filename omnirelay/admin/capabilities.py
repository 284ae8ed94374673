"""/capabilities: what this build of OmniRelay can run and speak."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
from typing import Any

from omnirelay._version import __version__

PROTOCOLS = ("http1", "h2", "h2c", "grpc", "tcp", "tls_passthrough")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _constant(module: str, name: str) -> Any:
    """A constant of an optional module (None when the module is absent)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def capabilities() -> dict[str, Any]:
    wasm_abi = _constant("omnirelay.extensions.wasm.abi", "ABI_VERSION")
    wasmtime = _package_version("wasmtime") if importlib.util.find_spec("wasmtime") else None
    return {
        "omnirelay": __version__,
        "python": platform.python_version(),
        "event_loop": ("uvloop " + v) if (v := _package_version("uvloop")) else "asyncio",
        "protocols": list(PROTOCOLS),
        "runtimes": {
            "python_filters": {"available": True},
            "wasm": {"available": bool(wasm_abi and wasmtime), "engine": "wasmtime",
                     "engine_version": wasmtime},
            "native": {"available": False},
            "dsl": {"available": False},
        },
        "abi": {"proxy_wasm": wasm_abi, "native_plugin": None},
        "admin": {"mutations": ["drain", "log_level"]},
    }
