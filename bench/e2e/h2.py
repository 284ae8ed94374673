#!/usr/bin/env python3
"""End-to-end HTTP/2 and gRPC benchmarks, measured in the same run like run.py.

Scenario `h2`: h2load (h2c, prior knowledge) against three peers in front of the same nginx
HTTP/1.1 origin as run.py (13 bytes on `/`):
- `direct`: nginx serving the 13 bytes itself over h2c (no proxy hop: the ceiling);
- `nginx`: nginx as an h2c reverse proxy (`listen ... http2`, proxy_pass over HTTP/1.1
  keep-alive to the origin);
- `omnirelay`: `omnirelay run --workers 1`, an h2c listener, one route, one HTTP/1.1 cluster.

Scenario `grpc`: unary ping-pong with a grpcio client in this process against the test.Echo
server of tests/integration/grpc_peers.py (its own process), reached:
- `direct`: no proxy;
- `omnirelay`: an h2c listener and a `protocol: http2` cluster;
- `nginx`: nginx `grpc_pass` (keep-alive upstream).
Each round makes --calls sequential calls on one channel, then the same number again from
--concurrency threads sharing one channel (one HTTP/2 connection, many streams).

Peers are measured round-robin (each round starts at a different peer), the median over
--rounds is kept, and only ratios between peers of the same run are meant to be compared.

Prints one JSON object to stdout; progress goes to stderr. Exit status 0 when every chosen
peer ran, 1 when one failed (its reason is in `failed_peers`).

    .venv/bin/python bench/e2e/h2.py                                # both scenarios
    .venv/bin/python bench/e2e/h2.py --scenario h2 --duration 3 --rounds 2
    .venv/bin/python bench/e2e/h2.py --scenario grpc --calls 1000 --grpc-peers direct,omnirelay
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from bench.e2e import run as e2e
except ImportError:  # run as a script: this directory is sys.path[0]
    import run as e2e

HOST = e2e.HOST
REPO = Path(__file__).resolve().parents[2]
GRPC_PEERS = REPO / "tests" / "integration" / "grpc_peers.py"
H2LOAD_TIMEOUT_S = 30  # on top of the run's duration
GRPC_CALL_TIMEOUT_S = 5.0
GRPC_MAX_ERRORS = 20  # a peer failing this many calls in one round has failed
PAYLOAD = b"ping" * 4  # 16 bytes each way

log = e2e.log
PeerError = e2e.PeerError


# --- configs ----------------------------------------------------------------------------------

def omnirelay_h2_config(port: int, upstream_port: int, streams: int) -> str:
    """An h2c-capable listener in front of the HTTP/1.1 origin."""
    return f"""\
spec:
  listeners:
    - {{name: bench, address: {HOST}, port: {port}, http2: {{max_concurrent_streams: {streams}}}}}
  routes:
    - {{name: all, match: {{path: {{prefix: /}}}}, cluster: upstream}}
  clusters:
    - {{name: upstream, endpoints: [{{address: {HOST}, port: {upstream_port}}}]}}
"""


def omnirelay_grpc_config(port: int, grpc_port: int) -> str:
    """An h2c listener in front of the gRPC server, spoken to in h2c (`protocol: http2`)."""
    return f"""\
spec:
  listeners:
    - {{name: bench, address: {HOST}, port: {port}, http2: {{max_concurrent_streams: 1000}}}}
  routes:
    - {{name: echo, match: {{path: {{prefix: /test.Echo/}}}}, cluster: grpc}}
  clusters:
    - {{name: grpc, protocol: http2, endpoints: [{{address: {HOST}, port: {grpc_port}}}]}}
"""


def nginx_h2_proxy_conf(tmp: Path, port: int, upstream_port: int, streams: int) -> str:
    """nginx as an h2c proxy: the HTTP/1.1 proxying of run.py's nginx peer, h2c in front."""
    upstream_block = f"""\
    http2_max_concurrent_streams {streams};
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    return e2e.nginx_conf("nginx-h2", tmp, f"""\
        listen {HOST}:{port} http2 backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 256k;
            proxy_max_temp_file_size 0;
        }}""", http_extra=upstream_block)


def nginx_h2_direct_conf(tmp: Path, port: int, streams: int) -> str:
    body = e2e.SMALL_BODY.decode().replace("\n", "\\n")
    return e2e.nginx_conf("direct-h2", tmp, f"""\
        listen {HOST}:{port} http2 backlog=4096;
        location / {{ return 200 "{body}"; }}""",
                          http_extra=f"    http2_max_concurrent_streams {streams};")


def nginx_grpc_conf(tmp: Path, port: int, grpc_port: int) -> str:
    upstream_block = f"""\
    http2_max_concurrent_streams 1000;
    upstream grpcbackend {{
        server {HOST}:{grpc_port};
        keepalive 64;
    }}"""
    return e2e.nginx_conf("nginx-grpc", tmp, f"""\
        listen {HOST}:{port} http2 backlog=4096;
        location / {{
            grpc_pass grpc://grpcbackend;
        }}""", http_extra=upstream_block)


# Peer name -> argv of a process listening on `port` (h2c); every one has a single worker.
H2_PEERS = {
    "direct": lambda b, port, a: b.nginx_argv("direct-h2",
                                              nginx_h2_direct_conf(b.tmp, port, a.streams_limit)),
    "nginx": lambda b, port, a: b.nginx_argv(
        "nginx-h2", nginx_h2_proxy_conf(b.tmp, port, b.upstream_port, a.streams_limit)),
    "omnirelay": lambda b, port, a: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-h2.yaml", omnirelay_h2_config(port, b.upstream_port,
                                                         a.streams_limit))],
}
# Peer name -> argv in front of the gRPC server on `grpc_port`; None: the server itself.
GRPC_PEERS_ARGV = {
    "direct": None,
    "omnirelay": lambda b, port, grpc_port: [
        b.omnirelay, "run", "--workers", "1", "--config",
        b.write("omnirelay-grpc.yaml", omnirelay_grpc_config(port, grpc_port))],
    "nginx": lambda b, port, grpc_port: b.nginx_argv("nginx-grpc",
                                                     nginx_grpc_conf(b.tmp, port, grpc_port)),
}


# --- h2 -----------------------------------------------------------------------------------------

def curl_h2(port: int, path: str = e2e.SMALL_PATH, timeout: float = 2.0) -> tuple[int, str, bytes]:
    """(status, HTTP version, body) of one GET over h2c by prior knowledge."""
    res = subprocess.run(
        e2e.die_with_us(["curl", "-sS", "--http2-prior-knowledge", "--max-time", str(timeout),
                         "-w", "\n%{http_code} %{http_version}", f"http://{HOST}:{port}{path}"]),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5, check=False)
    if res.returncode != 0:
        raise OSError(f"curl exited {res.returncode}: {res.stderr.decode(errors='replace')}")
    body, _, tail = res.stdout.rpartition(b"\n")
    status, version = tail.decode().split()
    return int(status), version, body


def wait_ready_h2(port: int, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll until a GET / over h2c answers 200 with the small body, in HTTP/2."""
    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"exited with status {proc.returncode} before it was ready")
        try:
            status, version, body = curl_h2(port)
            if (status, version, body) == (200, "2", e2e.SMALL_BODY):
                return
            last = f"GET / -> {status} HTTP/{version} {body[:60]!r}"
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise PeerError(f"not ready over h2c after {timeout:.0f}s ({last})")


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = math.ceil(pct / 100 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def parse_h2load(text: str, log_path: Path) -> dict:
    """Requests/s, request outcomes and status classes from h2load's summary; p50/p99 (ms)
    from its per-request log (third column: microseconds until the end of the response)."""
    def need(pattern: str) -> re.Match:
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise PeerError(f"h2load output has no match for {pattern!r}:\n{text}")
        return m

    rps = float(need(r"^finished in [\d.]+\w+, ([\d.]+) req/s").group(1))
    total, ok, failed, errored, timeouts = map(int, need(
        r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout").groups())
    non_2xx = sum(map(int, need(
        r"^status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx").groups()))
    durations = []
    with open(log_path) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] != "-1":
                durations.append(int(cols[2]) / 1000)
    if not durations:
        raise PeerError(f"h2load completed no request:\n{text}")
    durations.sort()
    return {"rps": rps, "p50_ms": percentile(durations, 50), "p99_ms": percentile(durations, 99),
            "requests": total, "succeeded": ok, "non_2xx": non_2xx,
            "failed": failed + errored + timeouts}


def run_h2load(args, port: int, duration: int, log_path: Path) -> dict:
    argv = [args.h2load, "-t1", f"-c{args.clients}", f"-m{args.streams}", f"-D{duration}",
            f"--log-file={log_path}", f"http://{HOST}:{port}{e2e.SMALL_PATH}"]
    try:
        res = subprocess.run(e2e.die_with_us(argv), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True,
                             timeout=duration + H2LOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"h2load did not finish within {duration + H2LOAD_TIMEOUT_S}s") from exc
    if res.returncode != 0:
        raise PeerError(f"h2load exited {res.returncode}: {res.stderr.strip() or res.stdout}")
    return parse_h2load(res.stdout, log_path)


@dataclass
class Peer:
    name: str
    port: int
    proc: subprocess.Popen | None
    runs: list[dict] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)


def start_h2_peer(args, procs: e2e.Processes, name: str, bench: e2e.Bench,
                  failed: dict[str, str]) -> Peer | None:
    port = e2e.free_port()
    try:
        argv = H2_PEERS[name](bench, port, args)
        if not os.access(argv[0], os.X_OK):
            raise PeerError(f"{argv[0]} is not an executable")
        proc = procs.start(f"h2-{name}", argv)
        wait_ready_h2(port, proc, args.ready_timeout)
    except PeerError as exc:
        failed[f"h2/{name}"] = f"{exc}\n{procs.tail(f'h2-{name}')}".strip()
        log(f"h2 {name}: FAILED to start: {failed[f'h2/{name}']}")
        return None
    log(f"h2 {name}: pid {proc.pid} on {HOST}:{port}")
    return Peer(name, port, proc)


def measure_h2(args, peers: list[Peer], failed: dict, tmp: Path) -> None:
    for rnd in range(args.rounds):
        for peer in e2e.rotated([p for p in peers if f"h2/{p.name}" not in failed], rnd):
            log_path = tmp / f"h2load-{peer.name}-{rnd}.log"
            try:
                if peer.proc is not None and peer.proc.poll() is not None:
                    raise PeerError(f"exited with status {peer.proc.returncode} during the run")
                if args.warmup:
                    run_h2load(args, peer.port, args.warmup, log_path)
                sampler = e2e.RssSampler(peer.proc) if peer.proc is not None else None
                if sampler:
                    sampler.start()
                try:
                    res = run_h2load(args, peer.port, args.duration, log_path)
                finally:
                    if sampler:
                        peer.peak_rss_mb.append(sampler.stop())
            except PeerError as exc:
                failed[f"h2/{peer.name}"] = str(exc)
                log(f"h2 {peer.name}: FAILED: {exc}")
                continue
            finally:
                log_path.unlink(missing_ok=True)
            peer.runs.append(res)
            errs = res["non_2xx"] + res["failed"]
            log(f"round {rnd + 1}/{args.rounds} h2 {peer.name:9} {res['rps']:.0f} req/s "
                f"p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms"
                + (f"  ({errs} errors)" if errs else ""))


def h2_summary(p: Peer) -> dict:
    return {
        "rps": e2e._median(p.runs, "rps", 1),
        "p50_ms": e2e._median(p.runs, "p50_ms", 3),
        "p99_ms": e2e._median(p.runs, "p99_ms", 3),
        "rps_per_round": [round(r["rps"], 1) for r in p.runs],
        "p99_ms_per_round": [round(r["p99_ms"], 3) for r in p.runs],
        "requests": sum(r["requests"] for r in p.runs),
        "non_2xx": sum(r["non_2xx"] for r in p.runs),
        "failed": sum(r["failed"] for r in p.runs),
        "peak_rss_mb": max(p.peak_rss_mb) if p.peak_rss_mb else None,
    }


def run_h2(args, procs: e2e.Processes, tmp: Path, failed: dict) -> dict:
    bench = e2e.start_upstream(args, procs, tmp)
    peers = [p for name in args.peers
             if (p := start_h2_peer(args, procs, name, bench, failed)) is not None]
    if peers:
        log(f"h2: {args.rounds} rounds x {len(peers)} peers x ({args.warmup}s warm-up + "
            f"{args.duration}s), h2load -c{args.clients} -m{args.streams}")
        measure_h2(args, peers, failed, tmp)
    results = {p.name: h2_summary(p) for p in peers if p.runs and f"h2/{p.name}" not in failed}

    def get(peer: str, key: str) -> float | None:
        return results.get(peer, {}).get(key)

    return {
        "settings": {"h2load": f"-t1 -c{args.clients} -m{args.streams} -D{args.duration}",
                     "max_concurrent_streams": args.streams_limit,
                     "peers": [p.name for p in peers]},
        "peers": results,
        "ratios": {
            "omnirelay_over_nginx_rps": e2e._ratio(get("omnirelay", "rps"), get("nginx", "rps")),
            "omnirelay_over_nginx_p99": e2e._ratio(get("omnirelay", "p99_ms"),
                                                   get("nginx", "p99_ms")),
            "omnirelay_over_direct_rps": e2e._ratio(get("omnirelay", "rps"),
                                                    get("direct", "rps")),
        },
    }


# --- gRPC ---------------------------------------------------------------------------------------

def grpc_stub(port: int):
    import grpc

    channel = grpc.insecure_channel(f"{HOST}:{port}", options=[
        ("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary("/test.Echo/Unary")  # no (de)serializers: raw bytes
    return channel, call


def wait_ready_grpc(port: int, proc: subprocess.Popen | None, timeout: float) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"exited with status {proc.returncode} before it was ready")
        channel, call = grpc_stub(port)
        try:
            if call(PAYLOAD, timeout=1.0) == PAYLOAD:
                return
            last = "wrong echo"
        except grpc.RpcError as exc:
            last = f"{exc.code()}: {exc.details()}"
        finally:
            channel.close()
        time.sleep(0.1)
    raise PeerError(f"no gRPC echo after {timeout:.0f}s ({last})")


def grpc_pingpong(port: int, calls: int, concurrency: int, warmup: int) -> dict:
    """`calls` sequential unary calls on one channel, then `calls` more from `concurrency`
    threads sharing another; latencies in ms."""
    import grpc

    def timed(call, n: int, out: list[float], errors: list[str]) -> None:
        for _ in range(n):
            if len(errors) >= GRPC_MAX_ERRORS:
                return
            t0 = time.perf_counter()
            try:
                resp = call(PAYLOAD, timeout=GRPC_CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
                continue
            out.append((time.perf_counter() - t0) * 1e3)
            if resp != PAYLOAD:
                errors.append("wrong echo")

    result = {}
    errors: list[str] = []
    channel, call = grpc_stub(port)
    try:
        timed(call, warmup, [], errors)
        seq: list[float] = []
        t0 = time.perf_counter()
        timed(call, calls, seq, errors)
        wall = time.perf_counter() - t0
        seq.sort()
        result["sequential"] = {"calls_per_s": len(seq) / wall, "p50_ms": percentile(seq, 50),
                                "p99_ms": percentile(seq, 99)}
    finally:
        channel.close()
    channel, call = grpc_stub(port)
    try:
        timed(call, warmup, [], errors)
        lat: list[list[float]] = [[] for _ in range(concurrency)]
        threads = [threading.Thread(target=timed, args=(call, calls // concurrency, lat[i], errors))
                   for i in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        conc = sorted(x for part in lat for x in part)
        result["concurrent"] = {"calls_per_s": len(conc) / wall, "p50_ms": percentile(conc, 50),
                                "p99_ms": percentile(conc, 99)}
    finally:
        channel.close()
    if len(errors) >= GRPC_MAX_ERRORS:
        raise PeerError(f"{len(errors)} failed calls, first: {errors[0]}")
    result["errors"] = len(errors)
    result["first_error"] = errors[0] if errors else None
    return result


def start_grpc_server(args, procs: e2e.Processes) -> int:
    port = e2e.free_port()
    proc = procs.start("grpc-server", [sys.executable, str(GRPC_PEERS), "--port", str(port),
                                       "--workers", str(args.server_threads)])
    try:
        wait_ready_grpc(port, proc, args.ready_timeout)
    except PeerError as exc:
        raise SystemExit(f"gRPC server failed: {exc}\n{procs.tail('grpc-server')}") from None
    log(f"grpc server pid {proc.pid} on {HOST}:{port}")
    return port


def run_grpc(args, procs: e2e.Processes, tmp: Path, failed: dict) -> dict:
    grpc_port = start_grpc_server(args, procs)
    bench = e2e.Bench(tmp=tmp, nginx=args.nginx, omnirelay=args.omnirelay)
    peers: list[Peer] = []
    for name in args.grpc_peers:
        build = GRPC_PEERS_ARGV[name]
        if build is None:
            peers.append(Peer(name, grpc_port, None))
            continue
        port = e2e.free_port()
        try:
            argv = build(bench, port, grpc_port)
            if not os.access(argv[0], os.X_OK):
                raise PeerError(f"{argv[0]} is not an executable")
            proc = procs.start(f"grpc-{name}", argv)
            wait_ready_grpc(port, proc, args.ready_timeout)
        except PeerError as exc:
            failed[f"grpc/{name}"] = f"{exc}\n{procs.tail(f'grpc-{name}')}".strip()
            log(f"grpc {name}: FAILED to start: {failed[f'grpc/{name}']}")
            continue
        log(f"grpc {name}: pid {proc.pid} on {HOST}:{port}")
        peers.append(Peer(name, port, proc))

    log(f"grpc: {args.rounds} rounds x {len(peers)} peers x ({args.calls} sequential + "
        f"{args.calls} over {args.concurrency} threads)")
    for rnd in range(args.rounds):
        for peer in e2e.rotated([p for p in peers if f"grpc/{p.name}" not in failed], rnd):
            if peer.proc is not None and peer.proc.poll() is not None:
                failed[f"grpc/{peer.name}"] = f"exited with status {peer.proc.returncode}"
                continue
            try:
                res = grpc_pingpong(peer.port, args.calls, args.concurrency, args.grpc_warmup)
            except PeerError as exc:
                failed[f"grpc/{peer.name}"] = str(exc)
                log(f"grpc {peer.name}: FAILED: {exc}")
                continue
            peer.runs.append(res)
            s, c = res["sequential"], res["concurrent"]
            log(f"round {rnd + 1}/{args.rounds} grpc {peer.name:9} sequential p50 "
                f"{s['p50_ms']:.3f} p99 {s['p99_ms']:.3f} ms; concurrent "
                f"{c['calls_per_s']:.0f} calls/s p99 {c['p99_ms']:.3f} ms"
                + (f"  ({res['errors']} errors: {res['first_error']})" if res["errors"] else ""))

    def med(p: Peer, kind: str, key: str, digits: int) -> float:
        return round(statistics.median(r[kind][key] for r in p.runs), digits)

    results = {}
    for p in peers:
        if not p.runs or f"grpc/{p.name}" in failed:
            continue
        results[p.name] = {
            kind: {"calls_per_s": med(p, kind, "calls_per_s", 1),
                   "p50_ms": med(p, kind, "p50_ms", 3), "p99_ms": med(p, kind, "p99_ms", 3),
                   "p99_ms_per_round": [round(r[kind]["p99_ms"], 3) for r in p.runs]}
            for kind in ("sequential", "concurrent")}
        results[p.name]["errors"] = sum(r["errors"] for r in p.runs)

    def get(peer: str, kind: str, key: str) -> float | None:
        return results.get(peer, {}).get(kind, {}).get(key)

    ratios = {}
    for kind in ("sequential", "concurrent"):
        o, d, n = (get(x, kind, "p99_ms") for x in ("omnirelay", "direct", "nginx"))
        ratios[f"omnirelay_over_direct_p99_{kind}"] = e2e._ratio(o, d)
        ratios[f"omnirelay_added_p99_ms_{kind}"] = (round(o - d, 3) if o is not None
                                                    and d is not None else None)
        ratios[f"omnirelay_over_nginx_p99_{kind}"] = e2e._ratio(o, n)
    ratios["omnirelay_over_direct_calls_per_s_concurrent"] = e2e._ratio(
        get("omnirelay", "concurrent", "calls_per_s"), get("direct", "concurrent", "calls_per_s"))
    return {
        "settings": {"calls": args.calls, "concurrency": args.concurrency,
                     "warmup_calls": args.grpc_warmup, "payload_bytes": len(PAYLOAD),
                     "server_threads": args.server_threads, "peers": [p.name for p in peers]},
        "peers": results,
        "ratios": ratios,
    }


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    venv_bin = Path(sys.executable).parent
    p = argparse.ArgumentParser(description="HTTP/2 and gRPC: OmniRelay vs nginx vs no proxy.")
    p.add_argument("--scenario", default="h2,grpc", help="comma-separated: h2, grpc")
    p.add_argument("--peers", default=",".join(H2_PEERS),
                   help=f"h2 peers, a subset of {','.join(H2_PEERS)}")
    p.add_argument("--grpc-peers", default=",".join(GRPC_PEERS_ARGV),
                   help=f"gRPC peers, a subset of {','.join(GRPC_PEERS_ARGV)}")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds; median is kept")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured h2load run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of h2load before each run")
    p.add_argument("--clients", type=int, default=4, help="h2load -c: connections")
    p.add_argument("--streams", type=int, default=25, help="h2load -m: streams per connection")
    p.add_argument("--streams-limit", type=int, default=128,
                   help="max_concurrent_streams each h2 peer advertises")
    p.add_argument("--calls", type=int, default=2000, help="gRPC calls per variant per round")
    p.add_argument("--concurrency", type=int, default=8, help="threads of the concurrent variant")
    p.add_argument("--grpc-warmup", type=int, default=200, help="gRPC calls before measuring")
    p.add_argument("--server-threads", type=int, default=16, help="gRPC server handler threads")
    p.add_argument("--ready-timeout", type=float, default=e2e.READY_TIMEOUT)
    p.add_argument("--omnirelay", default=str(venv_bin / "omnirelay"), help="omnirelay executable")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--h2load", default=shutil.which("h2load") or "/usr/bin/h2load")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs after the run")
    args = p.parse_args(argv)
    args.scenario = [s.strip() for s in args.scenario.split(",") if s.strip()]
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    args.grpc_peers = [s.strip() for s in args.grpc_peers.split(",") if s.strip()]
    for what, chosen, known in (("scenario", args.scenario, ("h2", "grpc")),
                                ("peers", args.peers, H2_PEERS),
                                ("grpc-peers", args.grpc_peers, GRPC_PEERS_ARGV)):
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            p.error(f"--{what}: {chosen} is not a non-empty list of distinct names from "
                    f"{','.join(known)}")
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0 or args.calls < args.concurrency:
        p.error("--duration and --rounds must be >= 1, --warmup >= 0, --calls >= --concurrency")
    if args.streams > args.streams_limit:
        p.error("--streams must not exceed --streams-limit")
    tools = {"nginx": args.nginx}
    if "h2" in args.scenario:
        tools["h2load"] = args.h2load
    for tool, exe in tools.items():
        if not os.access(exe, os.X_OK):
            p.error(f"{tool} not found (looked for {exe}); run `make setup`")
    if "h2" in args.scenario and shutil.which("curl") is None:
        p.error("curl not found; run `make setup`")
    if "grpc" in args.scenario:
        try:
            import grpc  # noqa: F401
        except ImportError:
            p.error("grpcio is not installed; run with the venv's Python after `make setup`")
    args.loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="omnirelay-h2-"))
    procs = e2e.Processes(tmp)
    atexit.register(procs.stop_all)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    failed: dict[str, str] = {}
    result: dict = {
        "benchmark": "omnirelay-e2e-h2",
        "settings": {"scenarios": args.scenario, "rounds": args.rounds,
                     "duration_s": args.duration, "warmup_s": args.warmup,
                     "cpus": os.cpu_count(), "loadavg_at_start": args.loadavg_at_start,
                     "python": platform.python_version()},
        "units": {"rps": "requests/s (median of rounds)", "calls_per_s": "calls/s (median)",
                  "p50_ms": "ms", "p99_ms": "ms", "peak_rss_mb": "MiB, summed over workers"},
    }
    try:
        if "h2" in args.scenario:
            result["h2"] = run_h2(args, procs, tmp, failed)
        if "grpc" in args.scenario:
            result["grpc"] = run_grpc(args, procs, tmp, failed)
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["failed_peers"] = failed
    print(json.dumps(result, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
