"""`omnirelay tap`: stream the heads of matching requests from an admin API's POST /tap."""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import click

from omnirelay.admin.sources import read_token
from omnirelay.cli.common import Duration
from omnirelay.cli.status import admin_url
from omnirelay.config import ConfigError, load_config

EXIT_REFUSED = 1


@click.command()
@click.option("--admin", "admin", metavar="URL", envvar="OMNIRELAY_ADMIN",
              help="Admin address: URL or HOST:PORT (env OMNIRELAY_ADMIN).")
@click.option("-c", "--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Find the admin address (and token) in this config file's `admin` block.")
@click.option("--token-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="File holding the admin token (else env OMNIRELAY_ADMIN_TOKEN, else the "
                   "config's token with -c).")
@click.option("--path", "path_prefix", metavar="PREFIX", help="Only targets starting with this.")
@click.option("--header", metavar="NAME[:VALUE]", help="Only requests with this header (value).")
@click.option("--listener", metavar="NAME", help="Only this listener.")
@click.option("--max", "count", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Stop after this many requests.")
@click.option("--seconds", type=Duration(), default="30s", show_default=True,
              help="Stop after this long (at most 300s).")
def tap(admin, config_path, token_file, path_prefix, header, listener, count, seconds):
    """Print matching requests (one JSON line each, credentials redacted) as a running
    proxy receives them (all workers of `omnirelay run`), until --max or --seconds."""
    base = admin_url(admin, config_path)
    token = _token(token_file, config_path)
    query = {"max": count, "seconds": seconds, "path": path_prefix, "header": header,
             "listener": listener}
    target = "/tap?" + urlencode({k: v for k, v in query.items() if v is not None})
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=seconds + 10)
    try:
        conn.request("POST", target, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read().decode(errors="replace")
            try:
                reason = json.loads(body).get("error", body)
            except ValueError:
                reason = body.strip()
            click.echo(f"omnirelay tap: {base}: HTTP {resp.status}: {reason}", err=True)
            raise SystemExit(EXIT_REFUSED)
        for line in resp:
            click.echo(line.decode().rstrip("\n"))
    except OSError as e:
        click.echo(f"omnirelay tap: cannot reach the admin API at {base}: "
                   f"{e.strerror or e}", err=True)
        raise SystemExit(EXIT_REFUSED) from None
    except KeyboardInterrupt:
        raise SystemExit(0) from None
    finally:
        conn.close()


def _token(token_file: str | None, config_path: str | None) -> str:
    if token_file:
        try:
            with open(token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise click.UsageError(f"--token-file {token_file}: {e.strerror}") from None
    if os.environ.get("OMNIRELAY_ADMIN_TOKEN"):
        return os.environ["OMNIRELAY_ADMIN_TOKEN"]
    if config_path:
        try:
            token = read_token(load_config(Path(config_path)).admin)
        except ConfigError as e:
            raise click.UsageError(f"{config_path}: invalid config:\n{e}") from None
        if token:
            return token
    raise click.UsageError("give the admin token: --token-file FILE, OMNIRELAY_ADMIN_TOKEN, "
                           "or -c FILE with admin.token or admin.token_file")
