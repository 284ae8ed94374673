"""Test plugins for the Wasm host: WebAssembly text (used as is: wasmtime compiles .wat),
C compiled here with clang --target=wasm32-wasi against Debian's wasi-libc (make
setup installs clang, lld, wasi-libc and libclang-rt-14-dev-wasm32), and an AssemblyScript
filter built against the public Proxy-Wasm SDK @solo-io/proxy-runtime (needs node and npm)."""
from __future__ import annotations

import fcntl
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
SDK = Path(__file__).resolve().parent / "sdk"
# npm installs the SDK here, outside the tracked tree (build/ is ignored), one directory per
# lock file so runs reuse it and a changed lock file starts afresh.
SDK_CACHE = Path(__file__).resolve().parents[2] / "build" / "sdk-node"


def _unavailable(msg: str) -> None:
    """A missing toolchain fails on CI (the Makefile installs it) and skips elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


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
            _unavailable(f"cannot build C test plugins: {problem} (apt-get install {PACKAGES})")
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


def _head(text: str, lines: int = 12) -> str:
    """npm and asc put the cause first and stack traces after it."""
    return "\n".join(text.strip().splitlines()[:lines])


@pytest.fixture(scope="session")
def sdk_filter() -> str:
    """Path of tests/extensions/sdk/assembly/filter.ts compiled by the SDK's AssemblyScript
    compiler; ``npm ci`` and the compile run once per lock file / source and are cached."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            _unavailable(f"cannot build the SDK test filter: {tool} is not installed "
                         "(apt-get install nodejs npm)")
    manifest = (SDK / "package.json").read_bytes() + (SDK / "package-lock.json").read_bytes()
    cache = SDK_CACHE / hashlib.sha256(manifest).hexdigest()[:16]
    source = SDK / "assembly" / "filter.ts"
    target = cache / f"filter-{hashlib.sha256(manifest + source.read_bytes()).hexdigest()[:12]}.wasm"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing into the cache
        if target.exists():
            return str(target)
        if not (cache / ".installed").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(SDK / name, cache / name)
            try:
                # One quick retry: an unreachable registry should not stall the run for minutes.
                proc = subprocess.run(
                    ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                     "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                     "--fetch-retry-maxtimeout=5000"], cwd=cache,
                    capture_output=True, text=True, timeout=300, check=False)
            except subprocess.TimeoutExpired:
                _unavailable("npm ci for the SDK test filter timed out after 300 s "
                             "(is the npm registry reachable?)")
            if proc.returncode != 0:
                _unavailable(f"npm ci for the SDK test filter failed (is the npm registry "
                             f"reachable?):\n{_head(proc.stderr)}")
            (cache / ".installed").touch()
        asc = cache / "node_modules" / "assemblyscript" / "bin" / "asc"
        partial = target.with_suffix(".part")
        cmd = ["node", str(asc), str(source), "--path", str(cache / "node_modules"),
               "--binaryFile", str(partial), "--use", "abort=abort_proc_exit", "--optimize"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail("asc did not finish the SDK test filter within 180 s")
        if proc.returncode != 0 or not partial.exists():
            pytest.fail(f"asc failed for the SDK test filter:\n{_head(proc.stderr + proc.stdout)}")
        partial.replace(target)
    return str(target)


@pytest.fixture
def write_wat(tmp_path) -> Callable[[str, str], str]:
    """Write a WAT module for one test; returns its path."""
    def write(name: str, text: str) -> str:
        p = tmp_path / f"{name}.wat"
        p.write_text(text)
        return str(p)

    return write
