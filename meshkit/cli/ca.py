"""`omnirctl ca`: MeshKit's certificate authority (protos/ca.proto, CaAdmin).

    omnirctl ca init                       create the CA (meshkit serve --ca-dir ... --trust-domain)
    omnirctl ca status                     CA certificates, active and retired, with overlap ends
    omnirctl ca rotate [--prepare 12h] [--overlap 24h]   new CA key, trusted now, signing later
    omnirctl ca bundle [-o FILE]           the trust bundle (PEM)
    omnirctl ca crl [-o FILE]              the CRLs, one per CA of the bundle (PEM)
    omnirctl ca register-node NODE SPIFFE_ID [--rotate-token]   prints the bootstrap token
    omnirctl ca issue --csr FILE --spiffe-id ID [--ttl 1h] [-o FILE]
    omnirctl ca revoke SERIAL [--reason TEXT]
    omnirctl ca list [--expired] [--json]  issued certificates and node registrations
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from omnirelay.config import parse_duration
from omnirelay.config.protos import ca_pb2, ca_pb2_grpc


def _call(method: str, request, *, southbound: bool = False):
    client = click.get_current_context().find_root().obj  # omnirctl's Client
    stub = (ca_pb2_grpc.CertificateAuthorityStub if southbound
            else ca_pb2_grpc.CaAdminStub)(client.channel)
    return client.call(method, request, stub=stub)


def _when(seconds: int) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: str | None, option: str) -> int:
    if value is None:
        return 0
    try:
        return int(parse_duration(value))
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _write(data: bytes, output: str | None) -> None:
    """To stdout, or to `output` atomically (a proxy may read it at any time)."""
    if output is None or output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(output)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise click.ClickException(f"{output}: {exc.strerror or exc}") from None


def _show_status(status: ca_pb2.CaStatus) -> None:
    if not status.initialized:
        click.echo(f"trust domain {status.trust_domain}: no CA yet (omnirctl ca init)")
        return
    click.echo(f"trust domain {status.trust_domain}, certificates live "
               f"{status.default_ttl_seconds}s by default")
    now = time.time()
    for a in status.authorities:
        if a.active:
            state = "active"
        elif a.active_from_unix > now:
            state = f"pending (in the bundle), signs from {_when(a.active_from_unix)}"
        else:
            state = f"retired, trusted until {_when(a.overlap_until_unix)}"
        click.echo(f"  {a.id}  {state}  valid {_when(a.not_before_unix)} .. "
                   f"{_when(a.not_after_unix)}  sha256 {a.fingerprint_sha256[:16]}")


@click.group()
def ca() -> None:
    """The certificate authority: node identities (X.509-SVIDs)."""


@ca.command("init")
@click.option("--trust-domain", default="", help="Must match meshkit serve --trust-domain.")
def ca_init(trust_domain: str) -> None:
    """Create the CA's first key and certificate."""
    _show_status(_call("Init", ca_pb2.CaInitRequest(trust_domain=trust_domain)))


@ca.command("status")
def ca_status() -> None:
    """The CA certificates: the active one and those still in the bundle."""
    _show_status(_call("Status", ca_pb2.CaStatusRequest()))


@ca.command("rotate")
@click.option("--prepare", default=None,
              help="How long the new CA is only trusted before it signs (default: half the "
                   "certificate lifetime, so every node has the new bundle first; 0s: now).")
@click.option("--overlap", default=None,
              help="How long the old CA stays trusted after that (at least the certificate "
                   "lifetime).")
def ca_rotate(prepare: str | None, overlap: str | None) -> None:
    """Make a new CA key: trusted at once, signing after --prepare."""
    request = ca_pb2.CaRotateRequest(overlap_seconds=_seconds(overlap, "--overlap"))
    if prepare is not None:
        request.prepare_seconds = _seconds(prepare, "--prepare")
    _show_status(_call("Rotate", request))


@ca.command("bundle")
@click.option("-o", "--output", default=None, help="Write to this file (default stdout).")
def ca_bundle(output: str | None) -> None:
    """The trust bundle (PEM): every CA certificate to trust now."""
    bundle = _call("GetBundle", ca_pb2.GetBundleRequest(), southbound=True)
    if bundle.revoked_serials:
        click.echo(f"# revoked: {', '.join(bundle.revoked_serials)}", err=True)
    _write(bundle.bundle_pem, output)


@ca.command("crl")
@click.option("-o", "--output", default=None, help="Write to this file (default stdout).")
def ca_crl(output: str | None) -> None:
    """The CRLs (PEM), one per CA of the bundle: listener tls.client_crl_file, cluster
    tls.crl_file."""
    bundle = _call("GetBundle", ca_pb2.GetBundleRequest(), southbound=True)
    click.echo(f"# {len(bundle.revoked_serials)} revoked; next update "
               f"{_when(bundle.crl_next_update_unix)}", err=True)
    _write(bundle.crl_pem, output)


@ca.command("register-node")
@click.argument("node_id")
@click.argument("spiffe_id")
@click.option("--rotate-token", is_flag=True, help="Replace a registered node's token.")
def ca_register_node(node_id: str, spiffe_id: str, rotate_token: bool) -> None:
    """Let NODE_ID obtain certificates for SPIFFE_ID; prints its bootstrap token once."""
    r = _call("RegisterNode", ca_pb2.RegisterNodeRequest(
        node_id=node_id, spiffe_id=spiffe_id, rotate_token=rotate_token))
    click.echo(f"node {r.node_id} may hold {r.spiffe_id}; bootstrap token (shown once):",
               err=True)
    click.echo(r.bootstrap_token)


@ca.command("issue")
@click.option("--csr", "csr_file", required=True, type=click.Path(dir_okay=False),
              help="PKCS#10 request (PEM; - for stdin) with the SPIFFE ID as its URI SAN.")
@click.option("--spiffe-id", required=True)
@click.option("--ttl", default=None, help="Lifetime (default: the CA's).")
@click.option("-o", "--output", default=None, help="Certificate chain file (default stdout).")
def ca_issue(csr_file: str, spiffe_id: str, ttl: str | None, output: str | None) -> None:
    """Issue a certificate for a CSR (a workload that is not a node)."""
    try:
        csr = sys.stdin.buffer.read() if csr_file == "-" else open(csr_file, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"{csr_file}: {exc.strerror or exc}") from None
    r = _call("Issue", ca_pb2.IssueRequest(csr_pem=csr, spiffe_id=spiffe_id,
                                           ttl_seconds=_seconds(ttl, "--ttl")))
    click.echo(f"issued {r.spiffe_id} serial {r.serial} until {_when(r.not_after_unix)}",
               err=True)
    _write(r.certificate_pem, output)


@ca.command("revoke")
@click.argument("serial")
@click.option("--reason", default="", help="Recorded in the audit log.")
def ca_revoke(serial: str, reason: str) -> None:
    """Revoke a certificate by serial (hex): refused for renewal and on the mTLS port."""
    r = _call("Revoke", ca_pb2.RevokeRequest(serial=serial, reason=reason))
    click.echo(f"revoked {r.serial} ({r.spiffe_id})")


@ca.command("list")
@click.option("--expired", is_flag=True, help="Include expired certificates.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def ca_list(expired: bool, as_json: bool) -> None:
    """Issued certificates, then node registrations."""
    r = _call("ListCertificates", ca_pb2.ListCertificatesRequest(include_expired=expired))
    if as_json:
        for c in r.certificates:
            click.echo(json.dumps({
                "serial": c.serial, "spiffe_id": c.spiffe_id, "node_id": c.node_id,
                "authority": c.authority_id, "not_before": _when(c.not_before_unix),
                "not_after": _when(c.not_after_unix), "revoked": c.revoked,
                "revoke_reason": c.revoke_reason, "issued_by": c.issued_by}))
        for n in r.nodes:
            click.echo(json.dumps({"node_id": n.node_id, "spiffe_id": n.spiffe_id}))
        return
    for c in r.certificates:
        state = f"REVOKED ({c.revoke_reason or 'no reason'})" if c.revoked else "valid"
        click.echo(f"{c.serial:<40} {c.spiffe_id:<48} {c.node_id or '-':<16} "
                   f"until {_when(c.not_after_unix)}  {state}")
    for n in r.nodes:
        click.echo(f"node {n.node_id} -> {n.spiffe_id}")
