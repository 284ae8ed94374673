"""`omnirelay ext`: make signing keys, pack and verify signed extension packages."""
from __future__ import annotations

from pathlib import Path

import click

from omnirelay.cli.common import indent
from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions.packages import (
    SUFFIX,
    PackageError,
    build_package,
    inspect_package,
    load_trust,
    verify_package,
    write_package,
)
from omnirelay.extensions.support import KINDS


@click.group()
def ext():
    """Signed extension packages (Wasm, native, DSL). See docs/extensions.md."""


@ext.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
@click.option("--key-id", help="Key id (default: ed25519- and 16 hex digits of the key).")
@click.option("--bundle", type=click.Path(dir_okay=False),
              help="Add the public key to this trust bundle (created if absent).")
@click.option("--force", is_flag=True, help="Overwrite an existing KEYFILE.")
def keygen(keyfile, key_id, bundle, force):
    """Create an Ed25519 signing key (PEM, mode 0600) and print its key id."""
    if Path(keyfile).exists() and not force:
        raise click.ClickException(f"{keyfile} exists (use --force to overwrite)")
    try:
        signer = Signer.generate(key_id)
        ring = Keyring.load(bundle) if bundle and Path(bundle).exists() else Keyring()
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    signer.save(keyfile)
    if bundle:
        ring.with_key(signer.trusted_key()).save(bundle)
    click.echo(signer.key_id)


@ext.command()
@click.argument("payload", type=click.Path(exists=True, dir_okay=False))
@click.option("--kind", type=click.Choice(KINDS), required=True)
@click.option("--name", required=True, help="Package name (letters, digits, . _ -).")
@click.option("--version", "version", required=True, help="Package version, e.g. 1.2.0.")
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Ed25519 private key (PEM), e.g. from `omnirelay ext keygen`.")
@click.option("--key-id", help="Key id to sign as (default: derived from the key).")
@click.option("--abi", help="ABI the payload was built for (default: this build's).")
@click.option("--capability", "capabilities", multiple=True,
              help="A host feature the payload needs (repeatable), e.g. wasm.shared_data.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help=f"Package file (default: NAME-VERSION{SUFFIX}).")
def pack(payload, kind, name, version, key, key_id, abi, capabilities, output):
    """Sign PAYLOAD (a .wasm or .wat module, a shared library, a DSL file) into a package.

    WebAssembly text is packed as the Wasm binary it compiles to."""
    data = Path(payload).read_bytes()
    if kind == "wasm" and not data.startswith(b"\0asm"):
        data = _wat_to_wasm(data, payload)
    try:
        signer = Signer.load(key, key_id)
        package = build_package(data, name=name, version=version, kind=kind, signer=signer,
                                abi=abi, capabilities=capabilities)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    output = output or f"{name}-{version}{SUFFIX}"
    write_package(output, package)
    click.echo(f"{output}: {name} {version} ({kind}), signed by {signer.key_id}")


def _wat_to_wasm(data: bytes, origin: str) -> bytes:
    try:
        import wasmtime
    except ImportError:
        raise click.ClickException("packing WebAssembly text needs wasmtime") from None
    try:
        return bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise click.ClickException(f"{origin}: neither a Wasm binary nor valid WebAssembly "
                                   f"text: {first}") from None


@ext.command()
@click.argument("package", type=click.Path(dir_okay=False))
@click.option("--trust", "trust", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Trust bundle (JSON) or PEM public key (repeatable).")
@click.option("--kind", type=click.Choice(KINDS), help="Also require this kind.")
def verify(package, trust, kind):
    """Check PACKAGE as a node would before loading it. Exits 0 if it would load, 1 with
    the reason if not."""
    try:
        keyring = load_trust(trust)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        data = Path(package).read_bytes()
    except OSError as e:
        click.echo(f"{package}: refused: unreadable: {e.strerror or e}")
        raise SystemExit(1) from None
    try:
        pkg = verify_package(data, keyring, origin=package, kind=kind)
    except PackageError as e:
        click.echo(str(e))
        try:
            click.echo(indent(_describe(inspect_package(data, package))))
        except PackageError:
            pass
        raise SystemExit(1) from None
    m = pkg.manifest
    click.echo(f"OK: {package}")
    click.echo(indent(_describe(m.to_dict() | {"signed": True})))


def _describe(manifest: dict) -> str:
    caps = ", ".join(manifest.get("capabilities") or []) or "none"
    return "\n".join([
        (f"name: {manifest.get('name')}  version: {manifest.get('version')}  "
         f"kind: {manifest.get('kind')}  abi: {manifest.get('abi')}"),
        f"capabilities: {caps}",
        f"payload: {manifest.get('size')} bytes, sha256 {manifest.get('sha256')}",
        f"signed: {'by ' + str(manifest.get('key_id')) if manifest.get('signed') else 'no'}",
    ])
