"""Test plugins for the Wasm host: WebAssembly text (used as is: wasmtime compiles .wat)
and C compiled here with clang --target=wasm32-wasi against Debian's wasi-libc (make
setup installs clang, lld, wasi-libc and libclang-rt-14-dev-wasm32)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent / "wasm"
PACKAGES = "clang lld wasi-libc libclang-rt-14-dev-wasm32"


def _toolchain_problem() -> str | None:
    if shutil.which("clang") is None:
        return "clang is not installed"
    if shutil.which("wasm-ld") is None:
        return "wasm-ld (lld) is not installed"
    if not os.path.exists("/usr/lib/wasm32-wasi/libc.a"):
        return "wasi-libc is not installed"
    if not glob.glob("/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a"):
        return "compiler-rt builtins for wasm32 are not installed"
    return None


@pytest.fixture(scope="session")
def wasm_module(tmp_path_factory) -> Callable[[str], str]:
    """``wasm_module("headers.c")`` -> path of the compiled .wasm; ``"loop.wat"`` -> the
    source path itself."""
    out = tmp_path_factory.mktemp("wasm-plugins")
    built: dict[str, str] = {}

    def build(name: str) -> str:
        src = SRC / name
        if src.suffix == ".wat":
            return str(src)
        if name in built:
            return built[name]
        problem = _toolchain_problem()
        if problem is not None:
            msg = f"cannot build C test plugins: {problem} (apt-get install {PACKAGES})"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        digest = hashlib.sha256(src.read_bytes() + (SRC / "proxy_wasm.h").read_bytes())
        target = out / f"{src.stem}-{digest.hexdigest()[:12]}.wasm"
        cmd = ["clang", "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-Wall", "-Werror",
               "-Wno-unused-parameter", "-mexec-model=reactor", "-Wl,--strip-all",
               "-o", str(target), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            pytest.fail(f"clang failed for {name}:\n{proc.stderr}")
        built[name] = str(target)
        return built[name]

    return build


@pytest.fixture
def write_wat(tmp_path) -> Callable[[str, str], str]:
    """Write a WAT module for one test; returns its path."""
    def write(name: str, text: str) -> str:
        p = tmp_path / f"{name}.wat"
        p.write_text(text)
        return str(p)

    return write
