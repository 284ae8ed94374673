"""`omnirelay status`: a summary of a running proxy, read from its admin API."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from omnirelay.cli.common import Duration, plural
from omnirelay.config import ConfigError, load_config

DEFAULT_ADMIN = "http://127.0.0.1:9901"
EXIT_UNREACHABLE = 1
EXIT_NOT_READY = 3


class StatusError(Exception):
    pass


@click.command()
@click.option("--admin", "admin", metavar="URL", envvar="OMNIRELAY_ADMIN",
              help=f"Admin address: URL or HOST:PORT (env OMNIRELAY_ADMIN).  "
                   f"[default: the config's admin block with -c, else {DEFAULT_ADMIN}]")
@click.option("-c", "--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Find the admin address in this config file's `admin` block.")
@click.option("--window", type=Duration(), default="10s", show_default=True,
              help="Request rates over about this much recent time (at most 120s).")
@click.option("--json", "as_json", is_flag=True, help="Print the admin's /stats JSON as is.")
@click.option("--watch", is_flag=True, help="Redraw every --interval until Ctrl-C.")
@click.option("--interval", type=Duration(), default="2s", show_default=True,
              help="With --watch: time between redraws.")
@click.option("--timeout", type=Duration(), default="5s", show_default=True,
              help="How long to wait for the admin to answer.")
def status(admin, config_path, window, as_json, watch, interval, timeout):
    """Show workers, request rates, errors and the config version of a running proxy.

    Exit status: 0 ready, 3 reachable but not ready (starting or draining), 1 the admin
    API cannot be reached."""
    base = admin_url(admin, config_path)
    while True:
        try:
            stats = fetch_stats(base, window, timeout)
        except StatusError as e:
            click.echo(f"omnirelay status: {e}", err=True)
            raise SystemExit(EXIT_UNREACHABLE) from None
        text = json.dumps(stats, indent=2) if as_json else render(base, stats)
        if watch:
            click.clear()
        click.echo(text)
        if not watch:
            raise SystemExit(0 if stats.get("ready") else EXIT_NOT_READY)
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            raise SystemExit(0) from None


def admin_url(admin: str | None, config_path: str | None) -> str:
    if admin:
        return admin.rstrip("/") if "://" in admin else f"http://{admin}"
    if config_path:
        try:
            config = load_config(Path(config_path))  # a path, never YAML text
        except ConfigError as e:
            raise click.UsageError(f"{config_path}: invalid config:\n{e}") from None
        if config.admin is None:
            raise click.UsageError(f"{config_path} has no admin block; give --admin URL")
        host, port = config.admin.address, config.admin.port
        if port == 0:
            raise click.UsageError(f"{config_path}: the admin port is 0 (any free port); "
                                   "give --admin with the address `omnirelay run` printed")
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return DEFAULT_ADMIN


def fetch_stats(base: str, window: float, timeout: float) -> dict[str, Any]:
    url = f"{base}/stats?window={window:g}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusError(f"cannot reach the admin API at {base}: {reason} "
                          "(is `omnirelay run` running with an `admin` block? "
                          "give --admin URL or -c FILE)") from None
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON; is this an OmniRelay admin "
                          "address?") from None


def _values(stats: dict[str, Any], name: str) -> list[tuple[dict[str, str], float]]:
    return [(e["labels"], e.get("value", 0)) for e in stats.get("metrics", {}).get(name, [])]


def _by(stats: dict[str, Any], name: str, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in _values(stats, name):
        if all(labels.get(k) == v for k, v in match.items()):
            out[labels[label]] = out.get(labels[label], 0) + value
    return out


def _n(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def render(base: str, stats: dict[str, Any]) -> str:
    cfg = stats.get("config", {})
    workers = stats.get("workers", [])
    state = "ready" if stats.get("ready") else "NOT READY"
    lines = [f"OmniRelay at {base}: {state} ({stats.get('reason', '')})"]
    lines.append(f"config     {cfg.get('version')}  epoch {cfg.get('epoch')}  "
                 f"sha256 {str(cfg.get('sha256', ''))[:12]}  since {cfg.get('since')}")
    pids = ", ".join(str(w["pid"]) for w in workers)
    lines.append(f"workers    {len(workers)} of {stats.get('workers_configured')} running"
                 f" (pids {pids}), {plural(stats.get('worker_restarts', 0), 'restart')}")
    rates = stats.get("rates", {})
    rps, err = rates.get("requests_per_s"), rates.get("5xx_per_s")
    if rps is None:
        lines.append("traffic    no rate yet (needs two reports)")
    else:
        share = f" ({100 * err / rps:.1f}%)" if rps else ""
        lines.append(f"traffic    {rps:,.1f} req/s, 5xx {err:,.1f}/s{share} over the last "
                     f"{rates.get('window_s', 0):.3g}s")
    reqs = "omnirelay_downstream_requests_total"
    listeners = sorted(set(_by(stats, "omnirelay_downstream_connections_total", "listener")))
    if listeners:
        lines.append("listeners")
        active = _by(stats, "omnirelay_downstream_connections_active", "listener")
        total = _by(stats, reqs, "listener")
        classes = {c: _by(stats, reqs, "listener", code_class=c) for c in ("2xx", "4xx", "5xx")}
        width = max(len(n) for n in listeners)
        for name in listeners:
            split = ", ".join(f"{c} {_n(v.get(name, 0))}" for c, v in classes.items())
            lines.append(f"  {name:<{width}}  {_n(active.get(name, 0))} connections open, "
                         f"{_n(total.get(name, 0))} requests ({split})")
    clusters = sorted(set(_by(stats, "omnirelay_cluster_overflow_total", "cluster")))
    if clusters:
        lines.append("clusters")
        upstream = _by(stats, "omnirelay_upstream_requests_total", "cluster")
        errors = _by(stats, "omnirelay_upstream_responses_total", "cluster", code_class="5xx")
        active = _by(stats, "omnirelay_upstream_requests_active", "cluster")
        overflow = _by(stats, "omnirelay_cluster_overflow_total", "cluster")
        ejections = _by(stats, "omnirelay_cluster_ejections_total", "cluster")
        width = max(len(n) for n in clusters)
        for name in clusters:
            lines.append(f"  {name:<{width}}  {_n(upstream.get(name, 0))} upstream requests "
                         f"({_n(errors.get(name, 0))} 5xx), {_n(active.get(name, 0))} active, "
                         f"{_n(overflow.get(name, 0))} overflows, "
                         f"{_n(ejections.get(name, 0))} ejections")
    return "\n".join(lines)
