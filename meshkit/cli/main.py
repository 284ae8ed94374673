"""The `meshkit` command (`python -m meshkit`): run the control plane, make keys and tokens.

    meshkit serve --db meshkit.db --signing-key key.pem [--listen 127.0.0.1:7070]
                  [--store etcd://HOST:PORT[,HOST:PORT]/PREFIX [--replica-id ID]
                   [--lease-ttl 10s] [--advertise HOST:PORT]
                   [--etcd-ca PEM [--etcd-cert PEM --etcd-key PEM]]
                   [--etcd-user USER --etcd-password-file FILE]]
                  [--tokens-file tokens.json | --no-auth] [--key-id ID] [--log-level info]
                  [--ca-dir DIR --trust-domain TD [--svid-ttl 24h] [--crl-validity 24h]
                   [--ca-retention 168h]
                   [--mtls [--bootstrap-listen HOST:PORT] [--server-name NAME ...]]]
    meshkit leader --store etcd://HOST:PORT/PREFIX
    meshkit keygen KEYFILE [--key-id ID] [--bundle trust.json [--overlap 1h]]
    meshkit token add --tokens-file tokens.json --name NAME --permission read|mutate
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
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


def _etcd_options(command):
    """--etcd-ca/--etcd-cert/--etcd-key: TLS (and client certificates) to etcd;
    --etcd-user/--etcd-password-file: etcd's user/password authentication."""
    file = click.Path(exists=True, dir_okay=False)
    for name, text in reversed([
        ("--etcd-ca", "CA certificate (PEM) of etcd's server certificates (TLS to etcd)."),
        ("--etcd-cert", "Client certificate (PEM) for etcd's --client-cert-auth."),
        ("--etcd-key", "Private key (PEM) of --etcd-cert."),
        ("--etcd-user", "etcd user to authenticate as (etcd's `auth enable`)."),
        ("--etcd-password-file", "File whose first line is --etcd-user's password."),
    ]):
        kind = None if name == "--etcd-user" else file
        command = click.option(name, type=kind, default=None, help=text)(command)
    return command


def _etcd_store(url: str, etcd: tuple[str | None, ...]):
    """The EtcdStore for `--store URL` and the --etcd-* options (CA, cert, key, user, password
    file; usage errors say why not)."""
    from ..store.etcd import EtcdAuth, EtcdStore, EtcdTLS

    tls_files, (user, password_file) = etcd[:3], etcd[3:]
    try:
        tls = EtcdTLS.load(*tls_files) if any(tls_files) else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-ca/--etcd-cert/--etcd-key"
                                 ) from None
    if (user is None) != (password_file is None):
        raise click.UsageError("--etcd-user and --etcd-password-file go together")
    try:
        auth = EtcdAuth.load(user, password_file) if user is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-user/--etcd-password-file"
                                 ) from None
    try:
        return EtcdStore.from_url(url, tls=tls, auth=auth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None


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
@click.option("--ca-dir", type=click.Path(file_okay=False),
              help="Enable the CA: where its keys (mode 0600) and bundle.pem are kept.")
@click.option("--trust-domain", default=None, help="The CA's SPIFFE trust domain (example.org).")
@click.option("--svid-ttl", default="24h", show_default=True,
              help="Lifetime of the certificates the CA issues (and the most a node may ask).")
@click.option("--crl-validity", default="24h", show_default=True,
              help="How long the CA's CRLs are valid (nextUpdate); signed anew at every "
                   "revocation and after half of this.")
@click.option("--ca-retention", default="168h", show_default=True,
              help="Records of certificates expired longer ago than this are pruned.")
@click.option("--mtls", is_flag=True,
              help="Serve --listen over mTLS (node SVIDs of this CA); needs --ca-dir.")
@click.option("--bootstrap-listen", default=None,
              help="With --mtls: server-only TLS address for first certificates (bootstrap "
                   "tokens) and the admin API (bearer tokens).")
@click.option("--server-name", "server_names", multiple=True,
              help="Extra DNS name or IP of MeshKit's server certificate; repeatable.")
@click.option("--store", "store_url", default=None, metavar="etcd://HOST:PORT[,...]/PREFIX",
              help="Keep the state in etcd instead of --db; replicas on one etcd elect the "
                   "one that publishes, all serve watches.")
@click.option("--replica-id", default=None,
              help="With --store: this replica's name (default: HOSTNAME-PID).")
@click.option("--lease-ttl", default="10s", show_default=True,
              help="With --store: leader lease TTL; a dead leader is replaced within it.")
@click.option("--advertise", default=None,
              help="With --store: the address the other replicas name as this leader's "
                   "(default: the --listen host and bound port).")
@_etcd_options
@click.option("--http-listen", default=None,
              help="Also serve the JSON/HTTP northbound API (plaintext; HOST:PORT, port 0 "
                   "picks one); it prints `meshkit: http api on HOST:PORT`.")
@click.option("--drift-retry", default="1s,30s,5", show_default=True,
              help="Re-sends of the desired snapshot to a drifting node: BASE,MAX,ATTEMPTS "
                   "(backoff BASE*2^n capped at MAX; ATTEMPTS 0 disables).")
def serve(db: str, signing_key: str, key_id: str | None, listen: str, tokens_file: str | None,
          no_auth: bool, log_level: str, ca_dir: str | None, trust_domain: str | None,
          svid_ttl: str, mtls: bool, bootstrap_listen: str | None,
          server_names: tuple[str, ...], store_url: str | None, replica_id: str | None,
          lease_ttl: str, advertise: str | None, etcd_ca: str | None, etcd_cert: str | None,
          etcd_key: str | None, etcd_user: str | None = None,
          etcd_password_file: str | None = None, http_listen: str | None = None,
          drift_retry: str = "1s,30s,5", crl_validity: str = "24h",
          ca_retention: str = "168h") -> None:
    """Run MeshKit in the foreground until SIGTERM or SIGINT.

    Prints `meshkit: listening on HOST:PORT` on stdout once it serves.
    """
    from ..server import MeshKit
    from ..store import StoreError

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if bool(tokens_file) == no_auth:
        raise click.UsageError("give exactly one of --tokens-file and --no-auth")
    repush = _repush_policy(drift_retry)
    try:
        signer = Signer.load(signing_key, key_id)
        tokens = TokenAuthority.disabled() if no_auth else TokenAuthority.load(tokens_file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        try:
            store, election = await _open_store(db, store_url, replica_id, lease_ttl, advertise,
                                                (etcd_ca, etcd_cert, etcd_key, etcd_user,
                                                 etcd_password_file))
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        mesh = MeshKit(store, signer, tokens, listen=listen, election=election,
                       http_listen=http_listen, repush=repush,
                       **_ca_options(store, ca_dir, trust_domain, svid_ttl, mtls,
                                     bootstrap_listen, server_names, listen,
                                     crl_validity, ca_retention))
        try:
            port = await mesh.start()
        except OSError as exc:
            await store.close()
            raise click.ClickException(str(exc)) from None
        host = listen.rpartition(":")[0]
        click.echo(f"meshkit: listening on {host}:{port} (signing key {signer.key_id})"
                   + (" mtls" if mesh.tls else "")
                   + (f" bootstrap {bootstrap_listen.rpartition(':')[0]}:{mesh.bootstrap_port}"
                      if mesh.bootstrap_port else ""))
        if mesh.http_port:
            click.echo(f"meshkit: http api on {http_listen.rpartition(':')[0]}:{mesh.http_port}")
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

    import uvloop  # grpc.aio runs on it with about a fifth less CPU per pushed snapshot

    uvloop.install()
    asyncio.run(run())


async def _open_store(db: str, url: str | None, replica_id: str | None, lease_ttl: str,
                      advertise: str | None, etcd: tuple[str | None, ...]):
    """(store, election): SQLite at `db`, or etcd at `url` with a leader election."""
    from ..store import SqliteStore

    if url is None:
        if replica_id or advertise or any(etcd):
            raise click.UsageError("--replica-id, --advertise and --etcd-* apply to --store only")
        return SqliteStore(db), None
    from ..leader import Election

    ttl = _duration(lease_ttl)
    if ttl < 1:
        raise click.BadParameter(f"{lease_ttl!r}: at least 1s", param_hint="--lease-ttl")
    store = _etcd_store(url, etcd)
    try:
        await store.check()
    except BaseException:
        await store.close()
        raise
    replica = replica_id or f"{socket.gethostname()}-{os.getpid()}"
    return store, Election(store, replica, address=advertise or "", ttl=round(ttl))


def _repush_policy(value: str):
    from ..server.nodes import RepushPolicy

    parts = value.split(",")
    if len(parts) != 3 or not parts[2].strip().isdigit():
        raise click.BadParameter("expected BASE,MAX,ATTEMPTS, e.g. 1s,30s,5",
                                 param_hint="--drift-retry")
    return RepushPolicy(_duration(parts[0].strip()), _duration(parts[1].strip()),
                        int(parts[2]))


def _ca_options(store, ca_dir, trust_domain, svid_ttl, mtls, bootstrap_listen, server_names,
                listen, crl_validity="24h", ca_retention="168h") -> dict:
    """MeshKit's CA keyword arguments from `serve`'s options (none without --ca-dir)."""
    if ca_dir is None:
        if mtls or trust_domain or bootstrap_listen:
            raise click.UsageError("--mtls, --trust-domain and --bootstrap-listen need --ca-dir")
        return {}
    if not trust_domain:
        raise click.UsageError("--ca-dir needs --trust-domain")
    if bootstrap_listen and not mtls:
        raise click.UsageError("--bootstrap-listen applies to --mtls only")
    if mtls and not bootstrap_listen:
        click.echo("meshkit: warning: --mtls without --bootstrap-listen: nodes cannot get a "
                   "first certificate and omnirctl cannot connect (it has no client "
                   "certificate)", err=True)
    from ..ca import CertificateAuthority, SoftwareKeyStore
    from ..ca.server_tls import ServerIdentity

    try:
        ca = CertificateAuthority(store, SoftwareKeyStore(ca_dir), trust_domain,
                                  default_ttl=_duration(svid_ttl),
                                  bundle_file=Path(ca_dir) / "bundle.pem",
                                  crl_file=Path(ca_dir) / "crl.pem",
                                  crl_validity=_duration(crl_validity))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-domain") from None
    host = listen.rpartition(":")[0].strip("[]")
    tls = ServerIdentity(ca, [host, *server_names]) if mtls else None
    return {"ca": ca, "tls": tls, "bootstrap_listen": bootstrap_listen,
            "ca_retention": _duration(ca_retention)}


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


@main.command()
@click.option("--store", "store_url", required=True, metavar="etcd://HOST:PORT[,...]/PREFIX",
              help="The etcd store the replicas share.")
@_etcd_options
def leader(store_url: str, etcd_ca: str | None, etcd_cert: str | None,
           etcd_key: str | None, etcd_user: str | None = None,
           etcd_password_file: str | None = None) -> None:
    """Print which replica leads (publishes) as JSON; exit status 1 if none does."""
    from ..leader import current_leader
    from ..store import StoreError

    store = _etcd_store(store_url, (etcd_ca, etcd_cert, etcd_key, etcd_user,
                                    etcd_password_file))

    async def read():
        try:
            return await current_leader(store)
        finally:
            await store.close()

    try:
        found = asyncio.run(read())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if found is None:
        raise click.ClickException(f"no replica leads on {store.where}")
    click.echo(json.dumps({"replica": found.replica, "address": found.address}))
