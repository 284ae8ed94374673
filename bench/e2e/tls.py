#!/usr/bin/env python3
"""TLS-terminating benchmark: OmniRelay against nginx, both terminating TLS with the same
certificate (ECDSA P-256, TLS 1.2/1.3, ALPN http/1.1) in front of the same nginx upstream,
measured in alternating rounds of one run (the process, upstream and helpers of run.py).

Two cases per peer and round, both with wrk over https:
- keep-alive: requests/s on -c connections kept open (the issue 7 target: >= 0.6x nginx);
- handshakes: `Connection: close` on every request, so each request is a new TCP connection
  and a full TLS handshake (neither server resumes sessions: nginx has its session cache and
  tickets off, and wrk offers no session); requests/s here is handshakes/s.

Prints one JSON object to stdout; progress goes to stderr. Exit status: 0 when both peers
ran, 1 when one failed, 2 with --check-targets when the keep-alive target was missed.

    .venv/bin/python bench/e2e/tls.py                      # 3 rounds of 5 s per case
    .venv/bin/python bench/e2e/tls.py --duration 3 --rounds 2
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

try:
    from bench.e2e import run as e2e
except ImportError:  # run as a script: this directory is sys.path[0]
    import run as e2e

HOST = e2e.HOST
TARGET = 0.6  # OmniRelay keep-alive requests/s over nginx's, both terminating TLS
# omnirelay-tls terminates TLS in the core; omnirelay-tls-loop is the same proxy with
# OMNIRELAY_CORE_TLS=0, i.e. uvloop's SSLProtocol (the fallback), for an A/B in the same run.
PEERS = ("nginx-tls", "omnirelay-tls", "omnirelay-tls-loop")
# --scenario originate: plaintext in, TLS toward the upstream (verified, kept alive).
ORIGINATE_PEERS = ("nginx-to-tls", "omnirelay-to-tls", "omnirelay-to-tls-loop")


def write_certificate(tmp: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1/localhost: (cert_file, key_file)."""
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "bench.crt", tmp / "bench.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def omnirelay_tls_config(port: int, upstream_port: int, cert: tuple[str, str]) -> str:
    """run.py's OmniRelay config with `tls` on its listener."""
    plain = e2e.omnirelay_config(port, upstream_port)
    listener = f"    - {{name: bench, address: {HOST}, port: {port}}}\n"
    assert listener in plain, plain
    return plain.replace(listener, (
        f"    - name: bench\n      address: {HOST}\n      port: {port}\n"
        f"      tls: {{cert_file: {cert[0]}, key_file: {cert[1]}, alpn: [http/1.1]}}\n"))


def tls_upstream_conf(tmp: Path, port: int, cert: tuple[str, str]) -> str:
    """The origin again, but serving the small body over TLS (keep-alive)."""
    body = e2e.SMALL_BODY.decode().replace("\n", "\\n")
    return e2e.nginx_conf("upstream-tls", tmp, f"""\
        listen {HOST}:{port} ssl backlog=4096;
        ssl_certificate {cert[0]};
        ssl_certificate_key {cert[1]};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "{body}"; }}""")


def nginx_to_tls_conf(tmp: Path, port: int, upstream_port: int, cert: tuple[str, str]) -> str:
    """run.py's nginx proxy, speaking verified TLS to the upstream (sessions reused)."""
    plain = e2e.nginx_proxy_conf(tmp, port, upstream_port)
    assert "proxy_pass http://backend;" in plain, plain
    return plain.replace("proxy_pass http://backend;", (
        "proxy_pass https://backend;\n"
        "            proxy_ssl_verify on;\n"
        f"            proxy_ssl_trusted_certificate {cert[0]};\n"
        "            proxy_ssl_server_name on;\n"
        "            proxy_ssl_name localhost;\n"
        "            proxy_ssl_session_reuse on;"))


def omnirelay_to_tls_config(port: int, upstream_port: int, cert: tuple[str, str]) -> str:
    """run.py's OmniRelay config with `tls` on its cluster (verified, SNI localhost)."""
    plain = e2e.omnirelay_config(port, upstream_port)
    endpoints = f"endpoints: [{{address: {HOST}, port: {upstream_port}}}]}}"
    assert endpoints in plain, plain
    return plain.replace(endpoints, endpoints[:-1] + (
        f", tls: {{ca_file: {cert[0]}, sni: localhost}}}}"))


def nginx_tls_conf(tmp: Path, port: int, upstream_port: int, cert: tuple[str, str]) -> str:
    """run.py's nginx proxy with `ssl` on its listener and the same certificate."""
    plain = e2e.nginx_proxy_conf(tmp, port, upstream_port)
    listen = f"listen {HOST}:{port} backlog=4096;"
    assert listen in plain, plain
    return plain.replace(listen, (
        f"listen {HOST}:{port} ssl backlog=4096;\n"
        f"        ssl_certificate {cert[0]};\n"
        f"        ssl_certificate_key {cert[1]};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache off;\n"
        "        ssl_session_tickets off;"))


def https_ready(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Poll until GET / over TLS answers 200 with the upstream's small body."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise e2e.PeerError(f"exited with status {proc.returncode} before it was ready")
        try:
            with socket.create_connection((HOST, port), timeout=2.0) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200") and data.endswith(e2e.SMALL_BODY):
                return
            last = repr(data[:80])
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise e2e.PeerError(f"not ready after {timeout:.0f}s ({last})")


def run_wrk_https(wrk: str, port: int, connections: int, duration: int,
                  close: bool) -> dict:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
            "--timeout", e2e.WRK_TIMEOUT, *(["-H", "Connection: close"] if close else []),
            f"https://{HOST}:{port}{e2e.SMALL_PATH}"]
    try:
        res = subprocess.run(e2e.die_with_us(argv), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise e2e.PeerError(f"wrk did not finish within {duration + 30}s") from exc
    if res.returncode != 0:
        raise e2e.PeerError(f"wrk exited {res.returncode}: "
                            f"{res.stderr.strip() or res.stdout.strip()}")
    return e2e.parse_wrk(res.stdout)


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid`: a
    peer's whole process tree (each peer starts in its own session)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summary(runs: list[dict]) -> dict:
    return {
        "rps": e2e._median(runs, "rps", 1),
        "cpu_us_per_request": e2e._median(runs, "cpu_us_per_request", 1),
        "p50_ms": e2e._median(runs, "p50_ms", 3),
        "p99_ms": e2e._median(runs, "p99_ms", 3),
        "rps_per_round": [round(r["rps"], 1) for r in runs],
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
    }


def _omnirelay(b, name: str, config: str, *, loop_tls: bool = False) -> list[str]:
    return [*(["env", "OMNIRELAY_CORE_TLS=0"] if loop_tls else []), b.omnirelay, "run",
            "--workers", "1", "--config", b.write(f"{name}.yaml", config)]


def run(args, procs: e2e.Processes, tmp: Path) -> dict:
    bench = e2e.start_upstream(args, procs, tmp)
    cert = write_certificate(tmp)
    if args.scenario == "originate":
        up = e2e.free_port()
        try:
            https_ready(up, procs.start("upstream-tls", bench.nginx_argv(
                "upstream-tls", tls_upstream_conf(tmp, up, cert))), args.ready_timeout)
        except (e2e.PeerError, OSError) as exc:
            raise SystemExit(f"TLS upstream failed: {exc}\n{procs.tail('upstream-tls')}") from None
        builds = {
            "nginx-to-tls": lambda b, port: b.nginx_argv(
                "nginx-to-tls", nginx_to_tls_conf(b.tmp, port, up, cert)),
            "omnirelay-to-tls": lambda b, port: _omnirelay(
                b, "omnirelay-to-tls", omnirelay_to_tls_config(port, up, cert)),
            "omnirelay-to-tls-loop": lambda b, port: _omnirelay(
                b, "omnirelay-to-tls-loop", omnirelay_to_tls_config(port, up, cert),
                loop_tls=True),
        }
        ready, peers = e2e.wait_ready, args.peers or ",".join(ORIGINATE_PEERS)
    else:
        builds = {
            "nginx-tls": lambda b, port: b.nginx_argv(
                "nginx-tls", nginx_tls_conf(b.tmp, port, b.upstream_port, cert)),
            "omnirelay-tls": lambda b, port: _omnirelay(
                b, "omnirelay-tls", omnirelay_tls_config(port, b.upstream_port, cert)),
            "omnirelay-tls-loop": lambda b, port: _omnirelay(
                b, "omnirelay-tls-loop", omnirelay_tls_config(port, b.upstream_port, cert),
                loop_tls=True),
        }
        ready, peers = https_ready, args.peers or ",".join(PEERS)
    failed: dict[str, str] = {}
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    for name in peers.split(","):
        port = e2e.free_port()
        argv = builds[name](bench, port)
        try:
            proc = procs.start(name, argv)
            ready(port, proc, args.ready_timeout)
        except (e2e.PeerError, OSError) as exc:
            failed[name] = f"{exc}\n{procs.tail(name)}".strip()
            e2e.log(f"{name}: FAILED to start: {failed[name]}")
            continue
        ports[name] = port
        pids[name] = proc.pid
        e2e.log(f"{name}: pid {proc.pid} on {HOST}:{port}: {' '.join(argv)}")

    if args.scenario == "originate":
        return _originate(args, ports, pids, failed)
    cases = {"keepalive": (args.connections, False),
             "handshakes": (args.handshake_connections, True)}
    results: dict[str, dict[str, list[dict]]] = {c: {n: [] for n in ports} for c in cases}
    for rnd in range(args.rounds):
        for case, (conns, close) in cases.items():
            for name in e2e.rotated(list(ports), rnd):
                if name in failed:
                    continue
                try:
                    if args.warmup:
                        run_wrk_https(args.wrk, ports[name], conns, args.warmup, close)
                    cpu = session_cpu(pids[name])
                    res = run_wrk_https(args.wrk, ports[name], conns, args.duration, close)
                    cpu = session_cpu(pids[name]) - cpu
                    res["cpu_us_per_request"] = cpu * 1e6 / max(1, res["requests"])
                except e2e.PeerError as exc:
                    failed[name] = str(exc)
                    e2e.log(f"{name}: FAILED: {exc}")
                    continue
                results[case][name].append(res)
                errs = res["non_2xx"] + res["socket_errors"]
                e2e.log(f"round {rnd + 1}/{args.rounds} {case:10} {name:18} "
                        f"{res['rps']:.0f} req/s p99 {res['p99_ms']:.3f} ms "
                        f"{res['cpu_us_per_request']:.1f} us CPU/req"
                        + (f"  ({errs} errors)" if errs else ""))

    out = {case: {n: summary(runs) for n, runs in by_peer.items()
                  if runs and n not in failed}
           for case, by_peer in results.items()}

    def rps(case: str, name: str) -> float | None:
        return out[case].get(name, {}).get("rps")

    ratios = {f"omnirelay_over_nginx_{case}_rps": e2e._ratio(rps(case, "omnirelay-tls"),
                                                             rps(case, "nginx-tls"))
              for case in cases}
    ratios.update({f"core_over_loop_tls_{case}_rps": e2e._ratio(
        rps(case, "omnirelay-tls"), rps(case, "omnirelay-tls-loop")) for case in cases})

    def cpu(case: str, name: str) -> float | None:
        return out[case].get(name, {}).get("cpu_us_per_request")

    # CPU per request is steadier than requests/s on a shared machine.
    ratios.update({f"{peer}_over_nginx_{case}_cpu_per_request": e2e._ratio(
        cpu(case, peer), cpu(case, "nginx-tls")) for case in cases
        for peer in ("omnirelay-tls", "omnirelay-tls-loop")})
    value = ratios["omnirelay_over_nginx_keepalive_rps"]
    return {
        "benchmark": "omnirelay-e2e-tls",
        "settings": {**e2e.common_settings(args),
                     "wrk": f"-t1 --latency --timeout {e2e.WRK_TIMEOUT} https://",
                     "keepalive_connections": args.connections,
                     "handshake_connections": args.handshake_connections,
                     "certificate": "ECDSA P-256, self-signed",
                     "openssl": ssl.OPENSSL_VERSION},
        "units": {"rps": "requests/s (median of rounds); in `handshakes` each request is a "
                         "new connection with a full handshake", "p50_ms": "ms", "p99_ms": "ms"},
        **out,
        "ratios": ratios,
        "target": {"name": "omnirelay_over_nginx_keepalive_rps", "value": value,
                   "target": f">= {TARGET}", "met": None if value is None else value >= TARGET},
        "failed_peers": failed,
    }


def _originate(args, ports: dict[str, int], pids: dict[str, int], failed: dict[str, str]) -> dict:
    """Keep-alive requests/s and CPU per request, plaintext wrk in, TLS to the upstream."""
    runs: dict[str, list[dict]] = {n: [] for n in ports}
    for rnd in range(args.rounds):
        for name in e2e.rotated(list(ports), rnd):
            if name in failed:
                continue
            try:
                if args.warmup:
                    e2e.run_wrk(args.wrk, ports[name], e2e.SMALL_PATH, args.connections,
                                args.warmup)
                cpu = session_cpu(pids[name])
                res = e2e.run_wrk(args.wrk, ports[name], e2e.SMALL_PATH, args.connections,
                                  args.duration)
                res["cpu_us_per_request"] = (session_cpu(pids[name]) - cpu) * 1e6 / max(
                    1, res["requests"])
            except e2e.PeerError as exc:
                failed[name] = str(exc)
                e2e.log(f"{name}: FAILED: {exc}")
                continue
            runs[name].append(res)
            e2e.log(f"round {rnd + 1}/{args.rounds} {name:21} {res['rps']:.0f} req/s "
                    f"p99 {res['p99_ms']:.3f} ms {res['cpu_us_per_request']:.1f} us CPU/req")
    out = {n: summary(r) for n, r in runs.items() if r and n not in failed}

    def ratio(a: str, b: str, key: str) -> float | None:
        return e2e._ratio(out.get(a, {}).get(key), out.get(b, {}).get(key))

    return {
        "benchmark": "omnirelay-e2e-tls-originate",
        "settings": {**e2e.common_settings(args), "connections": args.connections,
                     "upstream": "nginx over TLS (ECDSA P-256, verified, SNI localhost)",
                     "openssl": ssl.OPENSSL_VERSION},
        "keepalive": out,
        "ratios": {
            "omnirelay_over_nginx_rps": ratio("omnirelay-to-tls", "nginx-to-tls", "rps"),
            "core_over_loop_tls_rps": ratio("omnirelay-to-tls", "omnirelay-to-tls-loop", "rps"),
            "omnirelay_over_nginx_cpu_per_request": ratio(
                "omnirelay-to-tls", "nginx-to-tls", "cpu_us_per_request"),
            "loop_over_nginx_cpu_per_request": ratio(
                "omnirelay-to-tls-loop", "nginx-to-tls", "cpu_us_per_request"),
        },
        "target": None,
        "failed_peers": failed,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    venv_bin = Path(sys.executable).parent
    p = argparse.ArgumentParser(description="OmniRelay vs nginx, both terminating TLS.")
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; median is kept")
    p.add_argument("--connections", type=int, default=50, help="wrk -c for keep-alive")
    p.add_argument("--handshake-connections", type=int, default=16,
                   help="wrk -c for the new-connection-per-request case")
    p.add_argument("--scenario", choices=("terminate", "originate"), default="terminate",
                   help="terminate: TLS from wrk to the proxy (the default); originate: "
                        "plaintext in, verified TLS from the proxy to a TLS upstream")
    p.add_argument("--peers", default="",
                   help=f"comma-separated subset of {', '.join(PEERS)} (terminate) or "
                        f"{', '.join(ORIGINATE_PEERS)} (originate); default: all")
    p.add_argument("--ready-timeout", type=float, default=e2e.READY_TIMEOUT)
    p.add_argument("--omnirelay", default=str(venv_bin / "omnirelay"), help="omnirelay executable")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs after the run")
    p.add_argument("--check-targets", action="store_true",
                   help="exit 2 when the keep-alive target is missed (or cannot be computed)")
    args = p.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--duration and --rounds must be >= 1, --warmup >= 0")
    for tool in ("nginx", "wrk"):
        if not os.access(getattr(args, tool), os.X_OK):
            p.error(f"{tool} not found (looked for {getattr(args, tool)}); run `make setup`")
    args.loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="omnirelay-e2e-tls-"))
    procs = e2e.Processes(tmp)
    atexit.register(procs.stop_all)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        result = run(args, procs, tmp)
    finally:
        procs.stop_all()
        if args.keep_tmp:
            e2e.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if result["failed_peers"]:
        return 1
    if args.check_targets and result["target"] and not result["target"]["met"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
