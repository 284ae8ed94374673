"""Helpers for the extension package tests: a Wasm plugin that stamps its version on
responses, and taking packages apart to tamper with them."""
from __future__ import annotations

import io
import zipfile

import wasmtime


def stamp_plugin(version: str) -> bytes:
    """A Proxy-Wasm module adding `x-ext-version: <version>` to every response."""
    return wasmtime.wat2wasm(f"""
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-ext-version")
  (data (i32.const 48) "{version}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 13) (i32.const 48)
                     (i32.const {len(version)})))
    i32.const 0))""")


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rezip(parts: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tampered(data: bytes) -> bytes:
    """The package with the last byte of its payload changed after signing."""
    parts = members(data)
    parts["payload"] = parts["payload"][:-1] + bytes([parts["payload"][-1] ^ 1])
    return rezip(parts)
