"""The native plugin host: shared libraries written against ``omnirelay_plugin.h``.

Modules:

- ``config``: ``NativeConfig`` and ``parse_native_config`` (pure Python).
- ``loader``: opens a plugin library with cffi (``dlopen``), calls its init symbol with
  the host API table, checks its ABI version and builds a binding's context.
- ``filter``: the HTTP filter ``omnirelay.filters.http.native`` (a factory whose
  ``native_table`` the core calls without the GIL) and ``binding_statuses()``.

``include_dir()`` is the directory holding ``omnirelay_plugin.h``, for plugin builds::

    cc -shared -fPIC -O2 -I"$(python -c 'import omnirelay.extensions.native as n;
    print(n.include_dir())')" -o add_header.so add_header.c
"""
from omnirelay._core import NATIVE_ABI_MAJOR, NATIVE_ABI_MINOR, native_include_dir
from omnirelay.extensions.native.config import NativeConfig, parse_native_config

ABI_VERSION = f"{NATIVE_ABI_MAJOR}.{NATIVE_ABI_MINOR}"
FILTER_NAME = "omnirelay.filters.http.native"


def include_dir() -> str:
    """The directory holding ``omnirelay_plugin.h`` (installed with the package)."""
    return native_include_dir()


def binding_statuses() -> list[dict]:
    """The status and counters of every live native plugin binding of this process."""
    from omnirelay.extensions.native.filter import binding_statuses as statuses

    return statuses()


__all__ = ["ABI_VERSION", "FILTER_NAME", "NativeConfig", "binding_statuses", "include_dir",
           "parse_native_config"]
