#!/usr/bin/env python3
"""End-to-end benchmark: OmniRelay against nginx and aiohttp, measured in the same run.

One nginx upstream on 127.0.0.1 serves a 13-byte body on `/` and a 1 MiB static file on `/1m`.
Each peer is a 1-worker proxy in front of it (or nothing, for `direct`). wrk (1 thread) loads
each peer in turn, round-robin over the peers for --rounds rounds, and the median per peer is
kept, so that noise from other work on a shared machine lands on every peer alike.

`--scenario routes` instead compares OmniRelay with its 1-route config against OmniRelay with
the 1,000-route table of routes.py, on requests that reach a route late in that table.

Prints one JSON object to stdout; progress goes to stderr. Exit status: 0 when every chosen
peer ran, 1 when one failed to start or to serve (its reason is in `failed_peers`), 2 with
--check-targets when a target was missed.

    .venv/bin/python bench/e2e/run.py                       # all peers, 3 rounds of 5 s
    .venv/bin/python bench/e2e/run.py --peers direct,nginx,aiohttp --duration 2 --rounds 1
    .venv/bin/python bench/e2e/run.py --scenario routes --duration 4 --rounds 2
    .venv/bin/python bench/e2e/run.py --peers omnirelay,omnirelay-admin --skip-large  # telemetry cost
    .venv/bin/python bench/e2e/run.py --peers omnirelay,omnirelay-accesslog --skip-large  # access log
    .venv/bin/python bench/e2e/run.py --peers omnirelay,omnirelay-telemetry --skip-large  # both
    .venv/bin/python bench/e2e/run.py --peers omnirelay,omnirelay-wasm --skip-large  # Wasm filter
"""
from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from bench.e2e import routes as route_tables
except ImportError:  # run as a script: this directory is sys.path[0]
    import routes as route_tables

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # every process binds here and all traffic stays on loopback
SMALL_PATH, SMALL_BODY = "/", b"hello, world\n"
LARGE_PATH, LARGE_SIZE = "/1m", 1 << 20
WRK_TIMEOUT = "2s"  # per request; slower responses count as wrk timeouts
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

# ratio name -> (comparison, target)
TARGETS = {
    "omnirelay_over_nginx_rps": (">=", 0.6),
    "omnirelay_over_aiohttp_rps": (">=", 3.0),
    "omnirelay_over_nginx_p99": ("<=", 2.0),
    "omnirelay_over_nginx_1m_throughput": (">=", 0.5),
    # the same proxy with its admin listener scraped every second (metrics on) vs without
    "omnirelay_admin_over_omnirelay_rps": (">=", 0.85),
    # the same proxy with a JSON access log to a file (every request) vs without
    "omnirelay_accesslog_over_omnirelay_rps": (">=", 0.85),
    # metrics scraped every second AND a JSON access log of every request vs neither
    "omnirelay_telemetry_over_omnirelay_rps": (">=", 0.85),
    # the same proxy with one Proxy-Wasm filter adding a request header vs without
    "omnirelay_wasm_over_omnirelay_rps": (">=", 0.5),
}
SCRAPE_INTERVAL = 1.0  # how often a scraped peer's /metrics is read during the run
SCRAPED_PEERS = ("omnirelay-admin", "omnirelay-telemetry")  # admin listener, /metrics read
LARGE_PEERS = ("direct", "nginx", "omnirelay")  # peers measured on the 1 MiB body


def omnirelay_config(port: int, upstream_port: int) -> str:
    """The OmniRelay config under test: one listener, one catch-all route, one cluster."""
    return f"""\
spec:
  listeners:
    - {{name: bench, address: {HOST}, port: {port}}}
  routes:
    - {{name: all, match: {{path: {{prefix: /}}}}, cluster: upstream}}
  clusters:
    - {{name: upstream, endpoints: [{{address: {HOST}, port: {upstream_port}}}]}}
"""


def omnirelay_admin_config(port: int, upstream_port: int, admin_port: int) -> str:
    """The omnirelay peer's config plus an admin listener (workers then report their
    counters to the supervisor every 0.5 s, which serves them on /metrics)."""
    return omnirelay_config(port, upstream_port) + f"admin: {{address: {HOST}, port: {admin_port}}}\n"


def omnirelay_accesslog_config(port: int, upstream_port: int, log_path: str) -> str:
    """The omnirelay peer's config with a JSON access log (every request) to `log_path`."""
    return omnirelay_config(port, upstream_port).replace(
        f"port: {port}}}", f"port: {port}, access_log: {{path: {json.dumps(log_path)}, format: json}}}}", 1)


def omnirelay_wasm_config(port: int, upstream_port: int) -> str:
    """The omnirelay peer's config with one Proxy-Wasm filter that adds a request header."""
    wasm = {"name": "omnirelay.filters.http.wasm",
            "config": {"path": str(HERE / "add_header.wat"), "name": "bench"}}
    return omnirelay_config(port, upstream_port).replace(
        "cluster: upstream}", f"cluster: upstream, filters: [{json.dumps(wasm)}]}}", 1)


def nginx_conf(name: str, tmp: Path, server_body: str, http_extra: str = "") -> str:
    """A single-process nginx (no master, one worker) whose files all live under tmp."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{name}-{kind}-temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp_paths}
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{http_extra}
    server {{
{server_body}
    }}
}}
"""


def upstream_conf(tmp: Path, port: int) -> str:
    """The origin: the small body on `/` and, for the routes scenario, on any other path too."""
    body = SMALL_BODY.decode().replace("\n", "\\n")  # nginx unescapes \n in quoted strings
    return nginx_conf("upstream", tmp, f"""\
        listen {HOST}:{port} backlog=4096;
        location = {SMALL_PATH} {{ return 200 "{body}"; }}
        location = {LARGE_PATH} {{ root {tmp}/www; }}
        location / {{ return 200 "{body}"; }}""")


def nginx_proxy_conf(tmp: Path, port: int, upstream_port: int) -> str:
    upstream_block = f"""\
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    return nginx_conf("nginx", tmp, f"""\
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 256k;
            proxy_max_temp_file_size 0;
        }}""", http_extra=upstream_block)


@dataclass
class Bench:
    tmp: Path
    nginx: str
    omnirelay: str
    upstream_port: int = 0
    admin_port: int = 0  # the admin listener of the peer being started (scraped peers)

    def write(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def nginx_argv(self, name: str, conf: str) -> list[str]:
        return [self.nginx, "-p", str(self.tmp), "-e", str(self.tmp / f"{name}-error.log"),
                "-c", self.write(f"{name}.conf", conf)]


# Peer name -> argv of the proxy listening on `port` in front of the upstream; None means wrk
# loads the upstream itself. Every proxy runs with exactly one worker.
PEERS = {
    "direct": None,
    "nginx": lambda b, port: b.nginx_argv("nginx",
                                          nginx_proxy_conf(b.tmp, port, b.upstream_port)),
    "omnirelay": lambda b, port: [b.omnirelay, "run", "--workers", "1", "--config",
                                  b.write("omnirelay.yaml", omnirelay_config(port, b.upstream_port))],
    "omnirelay-admin": lambda b, port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-admin.yaml",
                omnirelay_admin_config(port, b.upstream_port, b.admin_port))],
    "omnirelay-accesslog": lambda b, port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-accesslog.yaml",
                omnirelay_accesslog_config(port, b.upstream_port, str(b.tmp / "access.log")))],
    "omnirelay-telemetry": lambda b, port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-telemetry.yaml",
                omnirelay_accesslog_config(port, b.upstream_port, str(b.tmp / "telemetry.log"))
                + f"admin: {{address: {HOST}, port: {b.admin_port}}}\n")],
    "omnirelay-wasm": lambda b, port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-wasm.yaml", omnirelay_wasm_config(port, b.upstream_port))],
    "aiohttp": lambda b, port: [sys.executable, str(HERE / "aiohttp_proxy.py"), "--host", HOST,
                                "--port", str(port), "--upstream", f"{HOST}:{b.upstream_port}"],
}


class PeerError(Exception):
    pass


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[e2e {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------

_SETPRIV = shutil.which("setpriv")  # util-linux, essential on Debian


def die_with_us(argv: list[str]) -> list[str]:
    """Have the kernel SIGKILL the child if this script dies, even by SIGKILL (no preexec_fn:
    it is unsafe while the RSS sampler thread runs)."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else argv


class Processes:
    """Every process the benchmark starts, each in its own process group, killed on exit."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.log_path(name), "wb") as out:
            proc = subprocess.Popen(
                die_with_us(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.logdir, start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.out"

    def tail(self, name: str, lines: int = 15) -> str:
        texts = []
        for path in (self.log_path(name), self.logdir / f"{name}-error.log"):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def stop_all(self) -> None:
        while self.procs:
            name, proc = self.procs.pop()
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{name}: no exit {STOP_TIMEOUT:.0f}s after SIGTERM, killing")
            _signal_group(proc, signal.SIGKILL)  # and any workers left behind in the group
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{name}: pid {proc.pid} survived SIGKILL")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0,
             host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll until a TCP connect and a GET / returning 200 both succeed."""
    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"exited with status {proc.returncode} before it was ready")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                pass
            status, _ = http_get(port, SMALL_PATH)
            if status == 200:
                return
            last = f"GET {SMALL_PATH} -> HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise PeerError(f"not ready after {timeout:.0f}s ({last})")


def check_bodies(port: int) -> None:
    """A peer that is fast because it answers wrongly must not win: check both bodies once."""
    status, body = http_get(port, SMALL_PATH)
    if (status, body) != (200, SMALL_BODY):
        raise PeerError(f"GET {SMALL_PATH} -> {status} {body[:60]!r}, want 200 {SMALL_BODY!r}")
    status, body = http_get(port, LARGE_PATH, timeout=10.0)
    if status != 200 or len(body) != LARGE_SIZE:
        raise PeerError(f"GET {LARGE_PATH} -> {status} with {len(body)} bytes, want {LARGE_SIZE}")


# --- memory ---------------------------------------------------------------------------------

def child_pids(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak of the summed VmRSS of a peer's workers (its children, or itself when it has none)."""

    def __init__(self, proc: subprocess.Popen, interval: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.stop_event = threading.Event()
        self.peak_kib = 0

    def run(self) -> None:
        workers: list[int] = []
        while True:
            if not workers or not all(os.path.exists(f"/proc/{p}") for p in workers):
                workers = child_pids(self.proc.pid) or [self.proc.pid]
            self.peak_kib = max(self.peak_kib, sum(rss_kib(p) for p in workers))
            if self.stop_event.wait(self.interval):
                return

    def stop(self) -> float:
        self.stop_event.set()
        self.join()
        return round(self.peak_kib / 1024, 1)


# --- wrk ------------------------------------------------------------------------------------

_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE_B = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk is binary


def parse_wrk(text: str) -> dict:
    """Requests/s, p50/p99 in ms, transfer in MiB/s and error counts from wrk --latency output."""
    def need(pattern: str) -> re.Match:
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise PeerError(f"wrk output has no match for {pattern!r}:\n{text}")
        return m

    rps = float(need(r"^Requests/sec:\s+([\d.]+)").group(1))
    num, unit = need(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)").groups()
    out = {"rps": rps, "mbps": float(num) * _SIZE_B[unit] / _SIZE_B["MB"],
           "requests": int(need(r"^\s*(\d+) requests in").group(1))}
    for pct in (50, 99):
        num, unit = need(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$").groups()
        out[f"p{pct}_ms"] = float(num) * _TIME_MS[unit]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return out


def run_wrk(wrk: str, port: int, path: str, connections: int, duration: int,
            host: str | None = None) -> dict:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
            "--timeout", WRK_TIMEOUT, *(["-H", f"Host: {host}"] if host else []),
            f"http://{HOST}:{port}{path}"]
    try:
        res = subprocess.run(die_with_us(argv), stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"wrk did not finish within {duration + 30}s") from exc
    if res.returncode != 0:
        raise PeerError(f"wrk exited {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
    return parse_wrk(res.stdout)


# --- the run --------------------------------------------------------------------------------

@dataclass
class Peer:
    name: str
    port: int
    proc: subprocess.Popen | None  # None for direct
    path: str = SMALL_PATH  # what the small-body case requests, and with which Host header
    host: str | None = None  # None: wrk's default, 127.0.0.1:port
    small: list[dict] = field(default_factory=list)
    large: list[dict] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)


class Scraper(threading.Thread):
    """Reads /metrics every SCRAPE_INTERVAL, as a Prometheus server would, for the whole run."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.scrapes = 0
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SCRAPE_INTERVAL):
            try:
                status, body = http_get(self.port, "/metrics")
                ok = status == 200 and b"omnirelay_downstream_requests_total" in body
            except (OSError, http.client.HTTPException):
                ok = False
            self.scrapes += ok
            self.failures += not ok

    def stop(self) -> dict:
        self.done.set()
        self.join(5)
        return {"scrapes": self.scrapes, "failures": self.failures,
                "interval_s": SCRAPE_INTERVAL}


def rotated(items: list, k: int) -> list:
    """Round k starts at a different peer, so no peer always runs first (or last)."""
    k %= max(len(items), 1)
    return items[k:] + items[:k]


def measure_rounds(args, peers: list[Peer], failed: dict, *, large: bool) -> None:
    conns = args.large_connections if large else args.connections
    for rnd in range(args.rounds):
        for peer in rotated([p for p in peers if p.name not in failed], rnd):
            path, host = (LARGE_PATH, None) if large else (peer.path, peer.host)
            try:
                if peer.proc is not None and peer.proc.poll() is not None:
                    raise PeerError(f"exited with status {peer.proc.returncode} during the run")
                if args.warmup:
                    run_wrk(args.wrk, peer.port, path, conns, args.warmup, host)
                sampler = RssSampler(peer.proc) if large and peer.proc is not None else None
                if sampler:
                    sampler.start()
                try:
                    res = run_wrk(args.wrk, peer.port, path, conns, args.duration, host)
                finally:
                    if sampler:
                        peer.peak_rss_mb.append(sampler.stop())
            except PeerError as exc:
                failed[peer.name] = str(exc)
                log(f"{peer.name}: FAILED: {exc}")
                continue
            (peer.large if large else peer.small).append(res)
            what = f"{res['mbps']:.0f} MiB/s" if large else (
                f"{res['rps']:.0f} req/s p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms")
            errs = res["non_2xx"] + res["socket_errors"]
            log(f"round {rnd + 1}/{args.rounds} {path:3} {peer.name:9} {what}"
                + (f"  ({errs} errors)" if errs else ""))


def _median(runs: list[dict], key: str, digits: int) -> float:
    return round(statistics.median(r[key] for r in runs), digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def small_summary(p: Peer) -> dict:
    """Medians over the rounds of one peer's small-body runs, with the spread and the errors."""
    return {
        "rps": _median(p.small, "rps", 1),
        "p50_ms": _median(p.small, "p50_ms", 3),
        "p99_ms": _median(p.small, "p99_ms", 3),
        "rps_per_round": [round(r["rps"], 1) for r in p.small],
        "p99_ms_per_round": [round(r["p99_ms"], 3) for r in p.small],
        "non_2xx": sum(r["non_2xx"] for r in p.small),
        "socket_errors": sum(r["socket_errors"] for r in p.small),
    }


def common_settings(args) -> dict:
    return {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "wrk": f"-t1 -c{args.connections} --latency --timeout {WRK_TIMEOUT}",
        "small_body_bytes": len(SMALL_BODY),
        "cpus": os.cpu_count(),
        "loadavg_at_start": args.loadavg_at_start,
        "python": platform.python_version(),
    }


def report(args, peers: list[Peer], failed: dict) -> dict:
    small = {p.name: small_summary(p) for p in peers if p.small and p.name not in failed}
    large_ok = [p for p in peers if p.large and p.name not in failed]
    large = {
        "path": LARGE_PATH,
        "connections": args.large_connections,
        "mbps": {p.name: _median(p.large, "mbps", 1) for p in large_ok},
        "peak_rss_mb": {p.name: max(p.peak_rss_mb) for p in large_ok if p.peak_rss_mb},
        "errors": {p.name: sum(r["non_2xx"] + r["socket_errors"] for r in p.large)
                   for p in large_ok},
    }
    large["omnirelay_peak_rss_mb"] = large["peak_rss_mb"].get("omnirelay")

    def get(peer: str, key: str) -> float | None:
        return small.get(peer, {}).get(key)

    ratios = {
        "omnirelay_admin_over_omnirelay_rps": _ratio(get("omnirelay-admin", "rps"),
                                                     get("omnirelay", "rps")),
        "omnirelay_accesslog_over_omnirelay_rps": _ratio(get("omnirelay-accesslog", "rps"),
                                                         get("omnirelay", "rps")),
        "omnirelay_telemetry_over_omnirelay_rps": _ratio(get("omnirelay-telemetry", "rps"),
                                                         get("omnirelay", "rps")),
        "omnirelay_wasm_over_omnirelay_rps": _ratio(get("omnirelay-wasm", "rps"),
                                                    get("omnirelay", "rps")),
        "omnirelay_over_nginx_rps": _ratio(get("omnirelay", "rps"), get("nginx", "rps")),
        "omnirelay_over_aiohttp_rps": _ratio(get("omnirelay", "rps"), get("aiohttp", "rps")),
        "omnirelay_over_nginx_p99": _ratio(get("omnirelay", "p99_ms"), get("nginx", "p99_ms")),
        "omnirelay_over_nginx_1m_throughput": _ratio(large["mbps"].get("omnirelay"),
                                                     large["mbps"].get("nginx")),
    }
    targets = {}
    for name, (op, want) in TARGETS.items():
        value = ratios[name]
        met = None if value is None else (value >= want if op == ">=" else value <= want)
        targets[name] = {"value": value, "target": f"{op} {want}", "met": met}
    verdicts = [t["met"] for t in targets.values()]
    return {
        "benchmark": "omnirelay-e2e",
        "settings": {"peers": [p.name for p in peers], **common_settings(args)},
        "units": {"rps": "requests/s (median of rounds)", "p50_ms": "ms", "p99_ms": "ms",
                  "mbps": "MiB/s (wrk Transfer/sec)", "peak_rss_mb": "MiB, summed over workers"},
        "peers": small,
        "1m": large,
        "ratios": ratios,
        "targets": targets,
        "targets_met": None if None in verdicts else all(verdicts),
        "failed_peers": failed,
        "admin_scrapes": getattr(args, "admin_scrapes", None),
    }


def start_upstream(args, procs: Processes, tmp: Path) -> Bench:
    """Start the origin nginx and check its bodies; exits the script if it cannot serve."""
    bench = Bench(tmp=tmp, nginx=args.nginx, omnirelay=args.omnirelay)
    www = tmp / "www"
    www.mkdir()
    (www / LARGE_PATH.lstrip("/")).write_bytes(os.urandom(LARGE_SIZE))

    bench.upstream_port = free_port()
    upstream_argv = bench.nginx_argv("upstream", upstream_conf(tmp, bench.upstream_port))
    upstream = procs.start("upstream", upstream_argv)
    try:
        wait_ready(bench.upstream_port, upstream, args.ready_timeout)
        check_bodies(bench.upstream_port)
    except PeerError as exc:
        raise SystemExit(f"upstream nginx failed: {exc}\n{procs.tail('upstream')}") from None
    log(f"upstream nginx pid {upstream.pid} on {HOST}:{bench.upstream_port}")
    return bench


def start_peer(args, procs: Processes, name: str, build, bench: Bench,
               failed: dict[str, str]) -> tuple[int, subprocess.Popen] | None:
    """Start peer `name` from `build(bench, port)` and check it serves; None (and a reason in
    `failed`) when it does not."""
    port = free_port()
    try:
        argv = build(bench, port)
        if not os.access(argv[0], os.X_OK):
            raise PeerError(f"{argv[0]} is not an executable")
        proc = procs.start(name, argv)
        wait_ready(port, proc, args.ready_timeout)
        check_bodies(port)
    except PeerError as exc:
        failed[name] = f"{exc}\n{procs.tail(name)}".strip()
        log(f"{name}: FAILED to start: {failed[name]}")
        return None
    log(f"{name}: pid {proc.pid} on {HOST}:{port}: {' '.join(argv)}")
    return port, proc


def run(args, procs: Processes, tmp: Path) -> dict:
    bench = start_upstream(args, procs, tmp)
    peers: list[Peer] = []
    failed: dict[str, str] = {}
    scrapers: dict[str, Scraper] = {}
    for name in args.peers:
        build = PEERS[name]
        if build is None:
            peers.append(Peer(name, bench.upstream_port, None))
            continue
        if name in SCRAPED_PEERS:
            bench.admin_port = free_port()
        started = start_peer(args, procs, name, build, bench, failed)
        if started:
            peers.append(Peer(name, *started))
            if name in SCRAPED_PEERS:
                scrapers[name] = Scraper(bench.admin_port)
                scrapers[name].start()

    if peers:
        log(f"small body: {args.rounds} rounds x {len(peers)} peers x "
            f"({args.warmup}s warm-up + {args.duration}s), -c{args.connections}")
        measure_rounds(args, peers, failed, large=False)
        large_peers = [p for p in peers if p.name in LARGE_PEERS]
        if large_peers and not args.skip_large:
            log(f"1 MiB body: {len(large_peers)} peers, -c{args.large_connections}")
            measure_rounds(args, large_peers, failed, large=True)
    args.admin_scrapes = {name: sc.stop() for name, sc in scrapers.items()}
    for name, result in args.admin_scrapes.items():
        if result["failures"]:
            log(f"{name}: {result['failures']} /metrics scrapes failed")
    return report(args, peers, failed)


# --- the routes scenario: a 1-route table against a 1,000-route table ------------------------

# process name -> config writer, each an `omnirelay run --workers 1` like the omnirelay peer
ROUTE_PROCS = {
    "omnirelay-1-route": PEERS["omnirelay"],  # the omnirelay peer itself
    "omnirelay-1000-routes": lambda b, port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-routes.json", json.dumps(
            route_tables.large_config(port, b.upstream_port, host=HOST), indent=1))],
}
# case -> (process, request in route_tables.REQUESTS); the small table has one catch-all route,
# so it is measured once, with the same request as the `large` case
ROUTE_CASES = {
    "small": ("omnirelay-1-route", "last_vhost"),
    "large": ("omnirelay-1000-routes", "last_vhost"),
    "large_catch_all": ("omnirelay-1000-routes", "catch_all"),
}


def check_route_targets(config: dict) -> None:
    """Build the table in-process with the same builder the proxy runs and check that each
    measured request reaches its route, so a table that answers from the wrong route fails
    instead of being measured. The proxy's answer alone cannot tell: every cluster points at
    the same origin."""
    from omnirelay.config import load_config  # only this scenario needs omnirelay importable
    from omnirelay.runtime.build import TableBuilder

    table = TableBuilder().build(load_config(config)).listeners[route_tables.LISTENER].routes
    with_headers = any("headers" in r["match"] for r in config["spec"]["routes"])
    wrong = route_tables.mismatches(table, with_headers)
    if wrong:
        raise PeerError("; ".join(wrong))


def run_routes(args, procs: Processes, tmp: Path) -> dict:
    bench = start_upstream(args, procs, tmp)
    failed: dict[str, str] = {}
    ports: dict[str, tuple[int, subprocess.Popen]] = {}
    try:
        check_route_targets(route_tables.large_config(0, bench.upstream_port, host=HOST))
        log("large table: every probe reaches its route")
    except Exception as exc:  # noqa: BLE001 - any failure to build the table is the reason
        failed["omnirelay-1000-routes"] = f"route table check: {type(exc).__name__}: {exc}"
        log(f"FAILED: {failed['omnirelay-1000-routes']}")
    for name, build in ROUTE_PROCS.items():
        if name not in failed:
            started = start_peer(args, procs, name, build, bench, failed)
            if started:
                ports[name] = started

    cases: list[Peer] = []
    for case, (proc_name, req) in ROUTE_CASES.items():
        if proc_name not in ports:
            failed[case] = f"{proc_name} failed (see its entry)"
            continue
        host, path, _ = route_tables.REQUESTS[req]
        port, proc = ports[proc_name]
        try:
            status, body = http_get(port, path, host=host)
            if (status, body) != (200, SMALL_BODY):
                raise PeerError(f"GET {path} Host {host} -> {status} {body[:60]!r}, "
                                f"want 200 {SMALL_BODY!r}")
        except (PeerError, OSError, http.client.HTTPException) as exc:
            failed[case] = f"{type(exc).__name__}: {exc}"
            log(f"{case}: FAILED: {failed[case]}")
            continue
        cases.append(Peer(case, port, proc, path=path, host=host))

    if cases:
        log(f"routes: {args.rounds} rounds x {len(cases)} cases x "
            f"({args.warmup}s warm-up + {args.duration}s), -c{args.connections}")
        measure_rounds(args, cases, failed, large=False)
    return report_routes(args, cases, failed)


def report_routes(args, cases: list[Peer], failed: dict) -> dict:
    results = {}
    for p in cases:
        if p.small and p.name not in failed:
            proc_name, req = ROUTE_CASES[p.name]
            results[p.name] = {"process": proc_name, "host": p.host, "path": p.path,
                               "route": route_tables.REQUESTS[req][2] if p.name != "small"
                               else "all", **small_summary(p)}

    def get(case: str, key: str) -> float | None:
        return results.get(case, {}).get(key)

    ratios = {}
    for case in ("large", "large_catch_all"):
        ratios[f"{case}_over_small_rps"] = _ratio(get(case, "rps"), get("small", "rps"))
        ratios[f"{case}_over_small_p99"] = _ratio(get(case, "p99_ms"), get("small", "p99_ms"))
    n_routes = route_tables.VHOSTS * route_tables.ROUTES_PER_VHOST
    return {
        "benchmark": "omnirelay-e2e-routes",
        "settings": {
            "tables": {
                "small": "1 route (prefix /, any host), 1 cluster, 1 endpoint",
                "large": f"{n_routes} routes on {route_tables.VHOSTS} virtual hosts + 1 "
                         f"catch-all, {route_tables.CLUSTERS} clusters",
            },
            **common_settings(args),
        },
        "units": {"rps": "requests/s (median of rounds)", "p50_ms": "ms", "p99_ms": "ms"},
        "cases": results,
        "ratios": ratios,
        "failed_peers": failed,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    venv_bin = Path(sys.executable).parent  # not resolved: keep the venv's bin directory
    p = argparse.ArgumentParser(description="OmniRelay vs nginx vs aiohttp, one machine, one run.")
    p.add_argument("--scenario", choices=("peers", "routes"), default="peers",
                   help="peers: the proxies against each other (default); routes: OmniRelay "
                        "with 1 route against OmniRelay with 1,000 (ignores --peers, "
                        "--skip-large, --large-connections and --check-targets)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated subset of {','.join(PEERS)} (default: all)")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run (0: none)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds; median is kept")
    p.add_argument("--connections", type=int, default=50, help="wrk -c for the small body")
    p.add_argument("--large-connections", type=int, default=10, help="wrk -c for the 1 MiB body")
    p.add_argument("--skip-large", action="store_true", help="skip the 1 MiB body case")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT)
    p.add_argument("--omnirelay", default=str(venv_bin / "omnirelay"), help="omnirelay executable")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs after the run")
    p.add_argument("--check-targets", action="store_true",
                   help="exit 2 when a target is missed (or cannot be computed)")
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown or not args.peers:
        p.error(f"unknown peers {unknown}; choose from {','.join(PEERS)}")
    if len(set(args.peers)) != len(args.peers):
        p.error("a peer is listed twice")
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--duration and --rounds must be >= 1, --warmup >= 0")
    for tool in ("nginx", "wrk"):
        if not os.access(getattr(args, tool), os.X_OK):
            p.error(f"{tool} not found (looked for {getattr(args, tool)}); run `make setup`")
    args.loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="omnirelay-e2e-"))
    procs = Processes(tmp)
    atexit.register(procs.stop_all)  # also covers exits that bypass the finally below

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        result = (run_routes if args.scenario == "routes" else run)(args, procs, tmp)
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if result["failed_peers"]:
        return 1
    if args.check_targets and args.scenario == "peers" and not result["targets_met"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
