"""Open native plugin libraries with cffi and build bindings from them.

A library is opened (``dlopen``) and initialized once per process and path, and never
closed: its code may still run for in-flight requests of an old config, and a C library
cannot be unloaded safely in general. Each filter entry gets its own context from the
plugin's ``create``, released by its ``destroy`` when the entry's binding goes away.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omnirelay._core import (
    NATIVE_ABI_MAJOR,
    NATIVE_ABI_MINOR,
    NativeBinding,
    native_host_api_address,
    native_include_dir,
)
from omnirelay.extensions.native.config import NativeConfig

INIT_SYMBOL = "omnirelay_plugin_init"
HOOKS = ("on_request_headers", "on_request_body", "on_request_trailers",
         "on_response_headers", "on_response_body", "on_response_trailers", "on_log")
_ERR_CAP = 512


class NativeLoadError(ValueError):
    """A plugin library that cannot be loaded, or refused its config (with the reason)."""


_ffi = None
_ffi_lock = threading.Lock()


def _cdef_section(header: str) -> str:
    begin, end = "/* cffi-begin */", "/* cffi-end */"
    start, stop = header.index(begin) + len(begin), header.index(end)
    return header[start:stop]


def ffi():
    """The cffi FFI holding the ABI's declarations, read from the shipped header."""
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            import cffi

            with open(os.path.join(native_include_dir(), "omnirelay_plugin.h")) as f:
                header = f.read()
            f = cffi.FFI()
            f.cdef(_cdef_section(header))
            f.cdef(f"const omnirelay_plugin *{INIT_SYMBOL}(const omnirelay_host_api *host);")
            _ffi = f
        return _ffi


@dataclass(eq=False)
class NativePlugin:
    """An opened and initialized plugin library."""

    path: str
    name: str
    abi: str
    sha256: str
    identity: tuple[int, int, int]  # (st_dev, st_ino, st_mtime_ns) when opened
    lib: Any
    table: Any

    def bind(self, config: NativeConfig, name: str,
             on_disable: Callable[[str, str], None] | None = None) -> NativeBinding:
        """A new binding: the plugin's context for ``config.config`` and its hooks."""
        f = ffi()
        t = self.table
        ctx = f.new("void **")
        if t.create != f.NULL:
            err = f.new("char[]", _ERR_CAP)
            rc = t.create(config.config, len(config.config), ctx, err, _ERR_CAP)
            if rc != 0:
                reason = f.string(err).decode("utf-8", "replace") or f"create returned {rc}"
                raise NativeLoadError(f"plugin {self.name} rejected its config: {reason}")
        hooks = [int(f.cast("uintptr_t", getattr(t, h))) for h in HOOKS]
        return NativeBinding(name, hooks, int(f.cast("uintptr_t", ctx[0])),
                             int(f.cast("uintptr_t", t.destroy)), config.max_call_us,
                             config.max_trips, config.fallback == "fail_open", on_disable)


_PLUGINS: dict[str, NativePlugin] = {}
_plugins_lock = threading.Lock()


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def load_plugin(path: str, sha256: str | None = None) -> NativePlugin:
    """The plugin at ``path``, opened and initialized once per process; raises
    NativeLoadError with the reason."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        with open(real, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as e:
        raise NativeLoadError(f"cannot read {path}: {e.strerror or e}") from None
    if sha256 is not None and digest != sha256:
        raise NativeLoadError(f"{path}: sha256 is {digest}, expected {sha256}")
    with _plugins_lock:
        plugin = _PLUGINS.get(real)
        if plugin is not None:
            if plugin.identity != _identity(st):
                # dlopen would hand back the library already mapped at this path.
                raise NativeLoadError(
                    f"{path} changed on disk since this process loaded it; a native library "
                    f"cannot be reloaded in-process: restart, or install it under a new path")
            return plugin
        plugin = _open(path, real, digest, _identity(st))
        _PLUGINS[real] = plugin
        return plugin


def _open(path: str, real: str, digest: str, identity: tuple[int, int, int]) -> NativePlugin:
    f = ffi()
    try:
        lib = f.dlopen(real)  # RTLD_NOW: unresolved symbols fail here, not mid-request
    except OSError as e:
        # cffi's message: "cannot load library '<p>': <dlerror>.  Additionally, ..."
        detail = str(e).split(".  Additionally,")[0].removeprefix(f"cannot load library '{real}': ")
        raise NativeLoadError(f"cannot load {path}: {detail}") from None
    try:
        init = getattr(lib, INIT_SYMBOL)
    except (AttributeError, NotImplementedError):
        raise NativeLoadError(
            f"{path} does not export {INIT_SYMBOL} (is it an OmniRelay native plugin? "
            f"see omnirelay_plugin.h)") from None
    table = init(f.cast("const omnirelay_host_api *", native_host_api_address()))
    if table == f.NULL:
        raise NativeLoadError(f"{path}: {INIT_SYMBOL} returned NULL (the plugin refused to load)")
    major, minor = int(table.abi_major), int(table.abi_minor)
    if major != NATIVE_ABI_MAJOR or minor > NATIVE_ABI_MINOR:
        raise NativeLoadError(
            f"{path}: plugin ABI {major}.{minor} is not compatible with this host's ABI "
            f"{NATIVE_ABI_MAJOR}.{NATIVE_ABI_MINOR} (the major version must match and the "
            f"minor be at most {NATIVE_ABI_MINOR}); rebuild it against this omnirelay_plugin.h")
    name = ""
    if table.name != f.NULL:
        name = f.string(table.name, 256).decode("utf-8", "replace")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return NativePlugin(path=path, name=name, abi=f"{major}.{minor}", sha256=digest,
                        identity=identity, lib=lib, table=table)
