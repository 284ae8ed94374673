"""The `meshkit` command (`python -m meshkit`): run the control plane, make keys and tokens.

    meshkit serve --db meshkit.db --signing-key key.pem [--listen 127.0.0.1:7070]
                  [--tokens-file tokens.json | --no-auth] [--key-id ID] [--log-level info]
    meshkit keygen KEYFILE [--key-id ID] [--bundle trust.json [--overlap 1h]]
    meshkit token add --tokens-file tokens.json --name NAME --permission read|mutate
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import click

from omnirelay.config import parse_duration
from omnirelay.config.signing import Keyring, Signer, format_time

from ..api.auth import PERMISSIONS, TokenAuthority, add_token


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """MeshKit: OmniRelay's control plane."""


@main.command()
@click.option("--db", "db", default="meshkit.db", show_default=True,
              type=click.Path(dir_okay=False), help="SQLite store file (created if missing).")
@click.option("--signing-key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (PEM) snapshots are signed with; SIGHUP re-reads it.")
@click.option("--key-id", default=None, help="Key id to sign as (default: derived from the key).")
@click.option("--listen", default="127.0.0.1:7070", show_default=True,
              help="gRPC address (HOST:PORT; port 0 picks a free one).")
@click.option("--tokens-file", type=click.Path(dir_okay=False),
              help="Bearer tokens of the northbound API (meshkit token add).")
@click.option("--no-auth", is_flag=True, help="Accept every northbound call (development only).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(db: str, signing_key: str, key_id: str | None, listen: str, tokens_file: str | None,
          no_auth: bool, log_level: str) -> None:
    """Run MeshKit in the foreground until SIGTERM or SIGINT.

    Prints `meshkit: listening on HOST:PORT` on stdout once it serves.
    """
    from ..server import MeshKit
    from ..store import SqliteStore, StoreError

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if bool(tokens_file) == no_auth:
        raise click.UsageError("give exactly one of --tokens-file and --no-auth")
    try:
        signer = Signer.load(signing_key, key_id)
        tokens = TokenAuthority.disabled() if no_auth else TokenAuthority.load(tokens_file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        try:
            store = SqliteStore(db)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        mesh = MeshKit(store, signer, tokens, listen=listen)
        try:
            port = await mesh.start()
        except OSError as exc:
            await store.close()
            raise click.ClickException(str(exc)) from None
        host = listen.rpartition(":")[0]
        click.echo(f"meshkit: listening on {host}:{port} (signing key {signer.key_id})")
        sys.stdout.flush()

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload_key() -> None:
            log = logging.getLogger("meshkit")
            try:
                new = Signer.load(signing_key, key_id)
            except ValueError as exc:
                log.error("SIGHUP: keeping the signing key: %s", exc)
                return
            current = mesh.cache.signer
            if new.trusted_key().raw == current.trusted_key().raw:
                log.info("SIGHUP: signing key unchanged (%s)", current.key_id)
                return
            if new.key_id == current.key_id:
                log.error("SIGHUP: keeping the signing key: the new key in %s has the same key "
                          "id %r as the old one (drop --key-id or give a new one, restart)",
                          signing_key, new.key_id)
                return
            loop.create_task(mesh.rotate_signer(new))

        loop.add_signal_handler(signal.SIGHUP, reload_key)
        await stop.wait()
        logging.getLogger("meshkit").info("stopping")
        await mesh.stop()
        await store.close()

    asyncio.run(run())


@main.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
@click.option("--key-id", default=None, help="Key id (default: derived from the public key).")
@click.option("--bundle", type=click.Path(dir_okay=False),
              help="Trust bundle (JSON) to add the public key to; created if missing.")
@click.option("--overlap", default=None,
              help="With --bundle: rotation; keys in the bundle valid now stop being valid "
                   "this long from now (e.g. 1h).")
@click.option("--force", is_flag=True, help="Overwrite KEYFILE.")
def keygen(keyfile: str, key_id: str | None, bundle: str | None, overlap: str | None,
           force: bool) -> None:
    """Create an Ed25519 signing key (PEM, mode 0600) and print its key id."""
    if Path(keyfile).exists() and not force:
        raise click.ClickException(f"{keyfile} exists (use --force to overwrite)")
    if overlap is not None and bundle is None:
        raise click.UsageError("--overlap needs --bundle")
    try:
        signer = Signer.generate(key_id)
        ring = Keyring()
        if bundle and Path(bundle).exists():
            ring = Keyring.load(bundle)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    signer.save(keyfile)
    click.echo(signer.key_id)
    if bundle:
        key = signer.trusted_key()
        if overlap is not None:
            now = time.time()
            ring = ring.rotate(key, _duration(overlap), now=now)
            click.echo(f"older keys valid until {format_time(now + _duration(overlap))}",
                       err=True)
        else:
            ring = ring.with_key(key)
        ring.save(bundle)


@main.group()
def token() -> None:
    """Bearer tokens of the northbound API."""


@token.command("add")
@click.option("--tokens-file", required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Who uses it; the actor in the audit log.")
@click.option("--permission", required=True, type=click.Choice(PERMISSIONS))
def token_add(tokens_file: str, name: str, permission: str) -> None:
    """Create a token, store its digest and print the token (shown only this once)."""
    try:
        click.echo(add_token(tokens_file, name, permission))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
