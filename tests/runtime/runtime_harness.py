"""Real `omnirelay` processes for the runtime tests: start, watch output, inspect via /proc."""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Queue
from urllib.parse import urlsplit

import yaml

from omnirelay.demo import DemoHandler, DemoServer

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "omnirelay.cli.main"]
LISTENER_LINE = re.compile(r"^omnirelay: listener (\S+) on (http://\S+) \((\d+) workers?\)$")


class Upstream(DemoServer):
    """The demo upstream in a thread of the test process, recording each request's path."""

    def __init__(self, greeting: str):
        super().__init__(greeting=greeting)
        self.arrivals: Queue[str] = Queue()
        self.RequestHandlerClass = _Recording
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Recording(DemoHandler):
    def do_GET(self) -> None:
        self.server.arrivals.put(self.path)
        super().do_GET()


class RelayProcess:
    """An `omnirelay` command running in the background, its output collected line by line."""

    def __init__(self, *args: str, cwd: Path = ROOT):
        self.proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._collect, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.proc.stdout),
                                              ("stderr", self.proc.stderr))]
        for t in self._readers:
            t.start()

    def _collect(self, name: str, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines[name].append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines[name].append(None)  # EOF marker
            self._cond.notify_all()

    def wait_for(self, pattern: str, stream: str = "stderr", timeout: float = 10.0,
                 start: int = 0) -> re.Match:
        """The first line (from index `start`) matching `pattern`, waiting for it if need be."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[stream][start:]:
                    if line is not None and (m := rx.search(line)):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or None in self.lines[stream]:
                    raise AssertionError(f"no line matching {pattern!r} in {stream}:\n"
                                         + self.output())
                self._cond.wait(left)

    def mark(self, stream: str = "stderr") -> int:
        with self._cond:
            return len(self.lines[stream])

    def output(self) -> str:
        with self._cond:
            return "\n".join(f"{name}: {line}" for name in ("stdout", "stderr")
                             for line in self.lines[name] if line is not None)

    def listeners(self, timeout: float = 15.0) -> dict[str, str]:
        """Listener name -> URL from the lines printed once every worker is listening."""
        self.wait_for(LISTENER_LINE.pattern, "stdout", timeout)
        with self._cond:
            return {m[1]: m[2] for line in self.lines["stdout"]
                    if line and (m := LISTENER_LINE.match(line))}

    def workers(self) -> list[int]:
        return children(self.pid)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return rc

    def kill(self) -> None:
        workers = self.workers() if self.proc.poll() is None else []
        self.proc.kill()
        self.proc.wait()
        for pid in workers:  # orphans would drain and exit on their own; don't wait for it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def config_doc(upstreams: dict[str, int], *, version: str = "1", port: int = 0,
               routes: list[dict] | None = None) -> dict:
    """One listener `edge` on 127.0.0.1:`port`; cluster per upstream; by default one route
    sending everything to the first cluster."""
    first = next(iter(upstreams))
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": routes or [{"name": "all", "match": {}, "cluster": first}],
            "clusters": [{"name": name, "endpoints": [{"address": "127.0.0.1", "port": p}]}
                         for name, p in upstreams.items()],
        },
    }


def request(url: str, path: str = "/", headers: dict | None = None, timeout: float = 5.0,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, str]:
    """GET through the proxy; on a new connection unless `conn` is given."""
    own = conn is None
    if own:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        if own:
            conn.close()


def free_port() -> int:
    """A port nothing listens on right now (for configs that need a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body_or_status(url: str) -> str | None:
    """The body of a 200 from `url`, "status N" for another status, None when unreachable."""
    try:
        status, body = request(url, timeout=2.0)
    except OSError:
        return None
    return body if status == 200 else f"status {status}"


def poll(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Call `predicate` until it returns something truthy; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---- /proc ----
def children(pid: int) -> list[int]:
    """Live (non-zombie) child pids of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out.append(int(entry.name))
    return sorted(out)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out
