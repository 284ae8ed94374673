"""The Wasm host's exceptions (pure Python: importable without wasmtime)."""
from __future__ import annotations


class WasmLoadError(ValueError):
    """A module cannot be loaded: unreadable, invalid, unknown imports, failed start, or a
    configuration the plugin rejected. A ValueError, so a filter config error."""


class GuestFailure(Exception):
    """A guest callback did not complete; the VM is dead afterwards.

    kind: "deadline" (ran past callback_deadline), "memory" (hit memory_limit), "trap"
    (unreachable, out-of-bounds access, ...), "exit" (proc_exit), "host" (a host function
    failed), "dead" (the VM had already failed), "load" (a reload could not start it).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
