"""Smoke test of an installed OmniRelay wheel, run by the interpreter it is installed into.

    <venv>/bin/python wheels/smoke.py

Stdlib and the wheel only, one process, no subprocesses (under qemu-user without binfmt_misc a
child aarch64 process could not be started): it checks what the wheel carries (compiled core
for this machine, generated protos, the C plugin header, py.typed, entry points), starts a
stdlib HTTP upstream on 127.0.0.1:0 and an embedded Relay in front of it with one Proxy-Wasm
filter (WAT below, compiled with wasmtime) that adds a response header, sends one request (and
one more over TLS terminated by the compiled core, with a throwaway certificate), and runs the
`omnirelay` and `omnirctl` entry points with --version. Prints one line per check and
`smoke: ok`; exits 1 with the reason on the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib.metadata
import importlib.resources
import io
import platform
import ssl
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

DEADLINE_S = 120.0  # qemu-user runs the aarch64 wheel 5-20x slower than native
BODY = b"hello from the smoke upstream\n"

# A Proxy-Wasm plugin adding `x-smoke-wasm: ok` to every response (map type 2: response
# headers). A bump allocator for the host's copies; no other callbacks are needed.
WAT = """
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 32) "x-smoke-wasm")
  (data (i32.const 48) "ok")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 4096))
    (drop (call $add (i32.const 2) (i32.const 32) (i32.const 12) (i32.const 48) (i32.const 2)))
    i32.const 0))
"""


class SmokeFailure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def check_contents() -> str:
    """What the wheel installed, importing from site-packages (never a checkout)."""
    import omnirelay
    import omnirelay_core
    from omnirelay.config.protos import admin_pb2, mesh_pb2

    version = importlib.metadata.version("omnirelay")
    check(omnirelay.__version__ == version,
          f"omnirelay.__version__ {omnirelay.__version__} != distribution version {version}")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    core_dir = Path(omnirelay_core.__file__).resolve().parent
    check(core_dir.parent == site, f"omnirelay_core imported from {core_dir}, not from {site}")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = sorted(p.name for p in core_dir.glob(f"*{suffix}"))
    sources = sorted(p.name for p in core_dir.glob("*.pyx"))
    check(len(compiled) == len(sources) > 0,
          f"compiled core: {len(compiled)} *{suffix} for {len(sources)} .pyx in {core_dir}")
    for pyx in sources:
        __import__(f"omnirelay_core.{pyx[:-4]}")
    check(bool(mesh_pb2.DESCRIPTOR.services_by_name) and bool(admin_pb2.DESCRIPTOR),
          "generated protos carry no services")
    header = importlib.resources.files("omnirelay_core") / "include" / "omnirelay_plugin.h"
    check(header.is_file(), f"C plugin header missing: {header}")
    for pkg in ("omnirelay", "omnirelay_core"):
        check((importlib.resources.files(pkg) / "py.typed").is_file(), f"{pkg}/py.typed missing")
    print(f"smoke: contents ok: {len(compiled)} core modules *{suffix}, protos, header, py.typed")
    return version


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("X-Upstream-Path", self.path)
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the throwaway certificate below
    with urllib.request.urlopen(url, timeout=DEADLINE_S, context=context) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def write_certificate(directory: str) -> tuple[str, str]:
    """A self-signed P-256 certificate for 127.0.0.1: (cert_file, key_file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smoke")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = Path(directory, "smoke.crt"), Path(directory, "smoke.key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def proxy_one_request(upstream_port: int, wasm_path: str,
                            certificate: tuple[str, str]) -> None:
    import omnirelay
    from omnirelay_core import tls

    check(tls.unavailable() is None, f"TLS in the core is unavailable: {tls.unavailable()}")
    cfg = {"spec": {
        "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0},
                      {"name": "edge-tls", "address": "127.0.0.1", "port": 0,
                       "tls": {"cert_file": certificate[0], "key_file": certificate[1]}}],
        "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "cluster": "up",
                    "filters": [{"name": "omnirelay.filters.http.wasm",
                                 "config": {"path": wasm_path, "name": "smoke"}}]}],
        "clusters": [{"name": "up", "endpoints": [{"address": "127.0.0.1",
                                                   "port": upstream_port}]}],
    }}
    started = time.monotonic()
    async with omnirelay.Relay(cfg) as relay:
        for scheme, listener in (("http", "edge"), ("https", "edge-tls")):
            host, port = relay.address(listener)
            status, headers, body = await asyncio.to_thread(
                fetch, f"{scheme}://{host}:{port}/smoke")
            check(status == 200, f"{scheme}: status {status}, expected 200")
            check(body == BODY, f"{scheme}: body {body!r}, expected {BODY!r}")
            check(headers.get("x-upstream-path") == "/smoke",
                  f"{scheme}: upstream not reached: {headers}")
            check(headers.get("x-smoke-wasm") == "ok",
                  f"{scheme}: Wasm filter header missing: {headers}")
    print(f"smoke: proxy ok: 200 through the Wasm filter, plain and over TLS in the core, "
          f"in {time.monotonic() - started:.1f}s")


def run_entry_point(name: str, args: list[str]) -> str:
    """Call a console_scripts entry point as its script would; returns what it printed."""
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name=name)
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [name, *args]
    try:
        with contextlib.redirect_stdout(out):
            ep.load()()
    except SystemExit as exc:
        check(exc.code in (0, None), f"{name} {' '.join(args)} exited with {exc.code}")
    finally:
        sys.argv = argv
    return out.getvalue().strip()


def main() -> int:
    print(f"smoke: Python {platform.python_version()} on {platform.machine()}")
    try:
        version = check_contents()
        import wasmtime

        with tempfile.TemporaryDirectory(prefix="omnirelay-smoke-") as tmp:
            wasm = Path(tmp, "smoke.wasm")
            wasm.write_bytes(wasmtime.wat2wasm(WAT))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                asyncio.run(asyncio.wait_for(proxy_one_request(
                    server.server_address[1], str(wasm), write_certificate(tmp)), DEADLINE_S))
            finally:
                server.shutdown()
                server.server_close()
        for name in ("omnirelay", "omnirctl"):
            said = run_entry_point(name, ["--version"])
            check(said == f"{name} {version}", f"{name} --version said {said!r}")
            print(f"smoke: {said}")
        check(run_entry_point("meshkit", ["--help"]).startswith("Usage:"), "meshkit --help")
    except (SmokeFailure, ImportError, OSError, TimeoutError) as exc:
        print(f"smoke: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
