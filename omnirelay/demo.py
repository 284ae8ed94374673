"""The demo behind `omnirelay run --demo`: a small upstream and a config in front of it.

`python -m omnirelay.demo` serves, on 127.0.0.1 and an ephemeral port:
  /            a short greeting
  /echo        the request's method, path, headers (and body length) as JSON
  /slow?ms=N   the greeting after N milliseconds
  /bytes?n=N   N bytes of 'x'
and prints `omnirelay demo upstream on 127.0.0.1:PORT` on stdout once listening.
It exits when its parent process goes away, so it never outlives the proxy.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BYTES = 64 * 1024 * 1024
MAX_DELAY_MS = 60_000
READY_PREFIX = "omnirelay demo upstream on "


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the proxy's upstream pool is exercised
    server_version = "omnirelay-demo"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body_len = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(body_len) if body_len else b""
        if url.path == "/":
            self._send(200, self.server.greeting.encode())
        elif url.path == "/echo":
            echo = {"method": self.command, "path": self.path,
                    "headers": dict(self.headers.items()), "body_bytes": len(body)}
            self._send(200, json.dumps(echo, indent=2).encode() + b"\n", "application/json")
        elif url.path == "/slow":
            ms = _int_arg(query, "ms", 1000, MAX_DELAY_MS)
            time.sleep(ms / 1000)
            self._send(200, self.server.greeting.encode())
        elif url.path == "/bytes":
            self._send(200, b"x" * _int_arg(query, "n", 1024, MAX_BYTES),
                       "application/octet-stream")
        else:
            self._send(404, b"not found\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def do_HEAD(self) -> None:
        self._send(200, b"", head=True)

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # the proxy in front logs; keep the terminal readable


def _int_arg(query: dict[str, list[str]], name: str, default: int, limit: int) -> int:
    try:
        return max(0, min(limit, int(query[name][0])))
    except (KeyError, ValueError):
        return default


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs under a little concurrency

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 greeting: str = "Hello from the OmniRelay demo upstream!\n"):
        super().__init__((host, port), DemoHandler)
        self.greeting = greeting


def demo_config(upstream_port: int, port: int = 8080) -> dict:
    """A config with one listener on 127.0.0.1:`port` routing everything to the demo upstream."""
    return {
        "metadata": {"version": "demo", "author": "omnirelay run --demo"},
        "spec": {
            "listeners": [{"name": "demo", "address": "127.0.0.1", "port": port}],
            "routes": [{
                "name": "all", "match": {"path": {"prefix": "/"}}, "cluster": "demo-upstream",
                "filters": [{"name": "omnirelay.filters.http.headers",
                             "config": {"response_set": {"x-omnirelay-demo": "1"}}}],
            }],
            "clusters": [{"name": "demo-upstream",
                          "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}],
        },
    }


def start_upstream(timeout: float = 10.0) -> tuple[subprocess.Popen, int]:
    """Run `python -m omnirelay.demo` and return the process and its port."""
    proc = subprocess.Popen([sys.executable, "-m", "omnirelay.demo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)  # a line that never comes must not hang us
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
        timer.join()  # no thread may be left when the supervisor forks
        proc.stdout.close()  # the port is all we want; forked workers must not inherit it
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        raise RuntimeError("the demo upstream did not start")
    return proc, int(line.rsplit(":", 1)[1])


def stop_upstream(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the proxy, which stops us
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = DemoServer()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    host, port = server.server_address[:2]
    print(f"{READY_PREFIX}{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
