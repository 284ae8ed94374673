"""`omnirctl`: the operator CLI, a client of MeshKit's northbound gRPC API.

    omnirctl [--server HOST:PORT] [--token TOKEN] [--cacert BUNDLE [--cert C --key K]] COMMAND
    omnirctl config get [--scope S] [--raw]
    omnirctl config set FILE [--scope S] [--dry-run] [--expected-revision N] [--force]
    omnirctl config validate FILE [--scope S] [--local]
    omnirctl nodes [--connected] [--json]
    omnirctl status [--scope S] [--json] [--check]
    omnirctl audit tail [--since 10m|RFC3339] [--scope S] [--limit N] [--json]
    omnirctl endpoints set CLUSTER FILE [--expected-revision N]
    omnirctl endpoints get [CLUSTER ...] [--json]
    omnirctl endpoints delete CLUSTER [--expected-revision N]
    omnirctl ca init|status|rotate|bundle|crl|register-node|issue|revoke|list (meshkit/cli/ca.py)

--server defaults to $OMNIRCTL_SERVER or 127.0.0.1:7070, --token to $OMNIRCTL_TOKEN; with
--cacert ($OMNIRCTL_CACERT) the connection is TLS (MeshKit's --bootstrap-listen port); with
--cert and --key too ($OMNIRCTL_CERT, $OMNIRCTL_KEY: a certificate of MeshKit's CA) it is
mTLS, so the --mtls port serves it as well.
Exit status: 0 done, 1 invalid document, 2 usage, 3 compare-and-swap conflict,
4 authentication or permission refused, 5 MeshKit unreachable (or its store, or not the
leader), 6 not found, 7 other errors,
8 refused by capability gating, 9 (status --check) a connected node drifts.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import click
import grpc

from omnirelay.config import ConfigError, parse_duration
from omnirelay.config.protos import admin_pb2, admin_pb2_grpc

from .ca import ca as ca_commands

EXIT_INVALID = 1
EXIT_CONFLICT = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_NOT_FOUND = 6
EXIT_ERROR = 7
EXIT_GAPS = 8
EXIT_DRIFT = 9

_STATUS_EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.ABORTED: EXIT_CONFLICT,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_GAPS,
}


class Client:
    def __init__(self, server: str, token: str | None, timeout: float,
                 cacert: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        self.server = server
        self.token = token
        self.timeout = timeout
        self.cacert = cacert  # MeshKit's CA bundle: TLS (its bootstrap port) instead of plaintext
        self.cert, self.key = cert, key  # a client certificate: mTLS (its --mtls port too)
        self._channel: grpc.Channel | None = None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if self.cacert:
                root = _read(self.cacert)
                chain = _read(self.cert) if self.cert else None
                key = _read(self.key) if self.key else None
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=root, private_key=key, certificate_chain=chain)
                self._channel = grpc.secure_channel(self.server, credentials)
            else:
                self._channel = grpc.insecure_channel(self.server)
        return self._channel

    @property
    def stub(self) -> admin_pb2_grpc.MeshAdminStub:
        return admin_pb2_grpc.MeshAdminStub(self.channel)

    def call(self, method: str, request, stub=None):
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        try:
            return getattr(stub or self.stub, method)(request, timeout=self.timeout,
                                                      metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details() or code.name
            # MeshKit names the kind of the errors it raises itself (meshkit/api/admin.py): an
            # UNAVAILABLE without one is gRPC's own, MeshKit not reached at all.
            answered = any(key == "meshkit-error" for key, _ in exc.trailing_metadata() or ())
            if code == grpc.StatusCode.UNAVAILABLE and not answered:
                detail = f"cannot reach MeshKit at {self.server}: {detail}"
            click.echo(f"omnirctl: {detail}", err=True)
            sys.exit(_STATUS_EXIT.get(code, EXIT_ERROR))


def _client() -> Client:
    return click.get_current_context().find_object(Client)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(value: str) -> int:
    """Unix ms from a duration ago (`10m`) or an RFC 3339 timestamp."""
    try:
        return int((time.time() - parse_duration(value)) * 1000)
    except (ValueError, TypeError):
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (10m) nor RFC 3339") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _diff_lines(summary: str) -> None:
    for line in summary.splitlines():
        click.echo(f"  {line}")


def _gap_lines(gaps, title: str) -> None:
    if gaps:
        click.echo(f"{title}:")
        for gap in gaps:
            click.echo(f"  node {gap.node}: lacks {', '.join(gap.missing)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The installed distribution's version (set from omnirelay/_version.py at build time): MeshKit
# may not import omnirelay beyond omnirelay.config.
@click.version_option(package_name="omnirelay", prog_name="omnirctl", message="%(prog)s %(version)s")
@click.option("--server", envvar="OMNIRCTL_SERVER", default="127.0.0.1:7070", show_default=True,
              help="MeshKit's gRPC address ($OMNIRCTL_SERVER).")
@click.option("--token", envvar="OMNIRCTL_TOKEN", default=None,
              help="Bearer token ($OMNIRCTL_TOKEN).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per call.")
@click.option("--cacert", envvar="OMNIRCTL_CACERT", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Trust bundle of MeshKit's CA: connect over TLS ($OMNIRCTL_CACERT).")
@click.option("--cert", envvar="OMNIRCTL_CERT", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Client certificate chain (PEM) issued by MeshKit's CA, with --key: mTLS, "
                   "as the --mtls port requires ($OMNIRCTL_CERT).")
@click.option("--key", envvar="OMNIRCTL_KEY", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="The client certificate's private key (PEM) ($OMNIRCTL_KEY).")
@click.pass_context
def main(ctx: click.Context, server: str, token: str | None, timeout: float,
         cacert: str | None, cert: str | None, key: str | None) -> None:
    """Operate MeshKit: config, nodes, audit, CA."""
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together (the client certificate)")
    if cert is not None and cacert is None:
        raise click.UsageError("--cert needs --cacert (the bundle MeshKit's server "
                               "certificate is verified with)")
    ctx.obj = Client(server, token, timeout, cacert, cert, key)


@main.group()
def config() -> None:
    """Read, validate and publish config documents."""


@config.command("get")
@click.option("--scope", default="global", show_default=True)
@click.option("--raw", is_flag=True, help="Print the canonical JSON bytes as stored.")
def config_get(scope: str, raw: bool) -> None:
    """Print a scope's current document (JSON) on stdout, its revision on stderr."""
    record = _client().call("GetConfig", admin_pb2.GetConfigRequest(scope=scope))
    click.echo(
        f"# scope {record.scope} revision {record.revision} version {record.version!r} "
        f"epoch {record.epoch} sha256 {record.sha256} by {record.actor} at "
        f"{_when(record.updated_at_unix_ms)}",
        err=True,
    )
    if raw:
        sys.stdout.buffer.write(record.document)
        sys.stdout.buffer.flush()
    else:
        click.echo(json.dumps(json.loads(record.document), indent=2, ensure_ascii=False))


@config.command("set")
@click.argument("file")
@click.option("--scope", default="global", show_default=True)
@click.option("--dry-run", is_flag=True, help="Validate and show the diff; write nothing.")
@click.option("--expected-revision", type=click.IntRange(min=0), default=None,
              help="Write only if the scope is at this revision (0: only if empty).")
@click.option("--force", is_flag=True,
              help="Publish even if connected nodes of the scope lack a capability it needs.")
def config_set(file: str, scope: str, dry_run: bool, expected_revision: int | None,
               force: bool) -> None:
    """Publish FILE (YAML or JSON; - for stdin) to a scope."""
    request = admin_pb2.SetConfigRequest(scope=scope, document=_read(file), dry_run=dry_run,
                                         force=force)
    if expected_revision is not None:
        request.expected_revision = expected_revision
    r = _client().call("SetConfig", request)
    if r.dry_run:
        verb = "would not change" if r.unchanged else "would publish"
        click.echo(f"dry run: {verb} scope {r.scope} (at revision {r.revision}): "
                   f"version {r.version!r} epoch {r.epoch}")
    elif r.unchanged:
        click.echo(f"unchanged: scope {r.scope} is already at this document "
                   f"(revision {r.revision}, version {r.version!r})")
    else:
        click.echo(f"published scope {r.scope} revision {r.revision}: version {r.version!r} "
                   f"epoch {r.epoch} sha256 {r.sha256[:16]}, signed by {r.key_id}, "
                   f"pushed to {r.watchers} nodes")
    if not r.unchanged:
        _diff_lines(r.summary)
        _gap_lines(r.capability_gaps, "forced past capability gaps" if not r.dry_run else
                   "capability gaps (a publish would be refused without --force)")


@config.command("validate")
@click.argument("file")
@click.option("--scope", default=None, help="Also diff against this scope's current document.")
@click.option("--local", is_flag=True, help="Validate here, without MeshKit.")
def config_validate(file: str, scope: str | None, local: bool) -> None:
    """Check FILE (YAML or JSON; - for stdin) against the config schema."""
    document = _read(file)
    if local:
        if scope:
            raise click.UsageError("--local cannot diff against a scope")
        from ..publish import validate

        try:
            validated = validate(document)
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(f"{file}: {issue}", err=True)
            sys.exit(EXIT_INVALID)
        click.echo(f"valid: version {validated.config.metadata.version!r} "
                   f"sha256 {validated.sha256[:16]}")
        return
    r = _client().call("ValidateConfig",
                       admin_pb2.ValidateConfigRequest(document=document, scope=scope or ""))
    if not r.valid:
        for issue in r.issues:
            click.echo(f"{file}: {issue.path + ': ' if issue.path else ''}{issue.message}",
                       err=True)
        sys.exit(EXIT_INVALID)
    click.echo(f"valid: version {r.version!r} sha256 {r.sha256[:16]}")
    if scope:
        click.echo(f"against scope {scope} (would publish as epoch {r.epoch}):")
        _diff_lines(r.summary)
        _gap_lines(r.capability_gaps,
                   "capability gaps (a publish would be refused without --force)")


@main.command()
@click.option("--connected", is_flag=True, help="Only nodes with an open watch stream.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
def nodes(connected: bool, as_json: bool) -> None:
    """Nodes MeshKit knows: what was sent, ACKed or NACKed, reported, and drift."""
    r = _client().call("ListNodes", admin_pb2.ListNodesRequest(connected_only=connected))
    if as_json:
        from google.protobuf.json_format import MessageToDict

        for node in r.nodes:
            click.echo(json.dumps(MessageToDict(node, preserving_proto_field_name=True,
                                                always_print_fields_with_no_presence=True)))
        return
    header = ("NODE", "TENANT", "LOCALITY", "SCOPE", "STREAM", "SENT", "ACKED", "NACK", "DRIFT")
    rows = [header]
    for n in r.nodes:
        rows.append((
            n.id, n.tenant or "-", n.locality or "-", n.scope or "-",
            "up" if n.connected else "down",
            f"{n.sent_version}@{n.sent_epoch}" if n.sent_version else "-",
            f"{n.acked_version}@{n.acked_epoch}" if n.acked_version else "-",
            f"{n.nack_code}: {n.nack_message}" if n.nack_code else "-",
            "yes" if n.drift else "no",
        ))
    _table(rows)


@main.command()
@click.option("--scope", default="", help="Only this scope and the nodes served from it.")
@click.option("--json", "as_json", is_flag=True, help="The whole status as one JSON object.")
@click.option("--check", is_flag=True, help="Exit 9 if a connected node drifts.")
def status(scope: str, as_json: bool, check: bool) -> None:
    """Per scope and per node: desired vs applied version, last ACK/NACK, drift, last seen."""
    r = _client().call("GetStatus", admin_pb2.GetStatusRequest(scope=scope))
    if as_json:
        from google.protobuf.json_format import MessageToDict

        click.echo(json.dumps(MessageToDict(r, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)))
    else:
        click.echo(f"{_leadership_line(r.leadership)}; discovery generation "
                   f"{r.discovery_generation}")
        for s in r.scopes:
            click.echo(f"scope {s.scope} revision {s.revision} version {s.version!r} epoch "
                       f"{s.epoch}: {s.nodes} nodes, {s.drifting} drifting")
        rows = [("NODE", "SCOPE", "STREAM", "DESIRED", "APPLIED", "LAST ACK/NACK", "DRIFT",
                 "LAST SEEN")]
        now = time.time() * 1000
        for n in r.nodes:
            if n.nack_code:
                last = f"NACK {n.nack_version}: {n.nack_code}: {n.nack_message}"
            elif n.acked_version:
                last = f"ACK {n.acked_version}@{n.acked_epoch}"
            else:
                last = "-"
            seen = f"{max(0.0, now - n.last_seen_unix_ms) / 1000:.0f}s ago" \
                if n.last_seen_unix_ms else "-"
            rows.append((
                n.id, n.scope or "-", "up" if n.connected else "down",
                f"{n.desired_version}@{n.desired_epoch}" if n.desired_version else "-",
                f"{n.applied_version}@{n.applied_epoch}" if n.applied_version else "-",
                last, "yes" if n.drift else "no", seen,
            ))
        _table(rows)
        click.echo(f"{r.connected} connected nodes, {r.drifting} drifting")
    if check and r.drifting:
        sys.exit(EXIT_DRIFT)


def _leadership_line(lead: admin_pb2.Leadership) -> str:
    """`replica mk-a leads (etcd, term 42, lease 9.2s left)`, `replica mk-b follows replica
    mk-a at 10.0.1.1:7070 (etcd, term 42)`, `replica mk-b: no replica leads right now`."""
    facts = [lead.store] if lead.store else []
    if lead.term:
        facts.append(f"term {lead.term}")
    if lead.is_leader and lead.lease_ttl_seconds:
        facts.append(f"lease {lead.lease_remaining_ms / 1000:.1f}s left")
    detail = f" ({', '.join(facts)})" if facts else ""
    if lead.is_leader:
        return f"replica {lead.replica} leads{detail}"
    if lead.leader_replica:
        return (f"replica {lead.replica} follows replica {lead.leader_replica} at "
                f"{lead.leader_address}{detail}")
    return f"replica {lead.replica}: no replica leads right now{detail}"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


@main.group()
def audit() -> None:
    """The audit log: every mutation, refused mutation and read."""


@audit.command("tail")
@click.option("--since", default=None, help="A duration ago (10m) or an RFC 3339 time.")
@click.option("--scope", default="",
              help="Only this scope (or cluster/NAME: that cluster's endpoint list).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def audit_tail(since: str | None, scope: str, limit: int, as_json: bool) -> None:
    """The newest audit entries, oldest first."""
    request = admin_pb2.TailAuditRequest(scope=scope, limit=limit)
    if since:
        request.since_unix_ms = _since(since)
    r = _client().call("TailAudit", request)
    for e in r.entries:
        if as_json:
            click.echo(json.dumps({
                "id": e.id, "timestamp": _when(e.timestamp_unix_ms), "actor": e.actor,
                "action": e.action, "scope": e.scope, "revision": e.revision,
                "detail": e.detail,
            }))
        else:
            detail = e.detail.replace("\n", "; ")
            click.echo(f"{e.id:>6}  {_when(e.timestamp_unix_ms)}  {e.actor:<20} {e.action:<14}"
                       f" {e.scope or '-':<16} r{e.revision:<6} {detail}".rstrip())


@main.group()
def endpoints() -> None:
    """The discovery feed."""


@endpoints.command("set")
@click.argument("cluster")
@click.argument("file")
@click.option("--expected-revision", type=click.IntRange(min=0), default=None,
              help="Write only if the cluster's list is at this revision (0: it has none).")
def endpoints_set(cluster: str, file: str, expected_revision: int | None) -> None:
    """Replace CLUSTER's endpoints with the list in FILE (YAML or JSON; - for stdin)."""
    request = admin_pb2.SetEndpointsRequest(cluster=cluster, endpoints=_read(file))
    if expected_revision is not None:
        request.expected_revision = expected_revision
    r = _client().call("SetEndpoints", request)
    click.echo(f"cluster {cluster}: generation {r.generation}")


@endpoints.command("delete")
@click.argument("cluster")
@click.option("--expected-revision", type=click.IntRange(min=1), default=None,
              help="Delete only if the cluster's list is at this revision.")
def endpoints_delete(cluster: str, expected_revision: int | None) -> None:
    """Remove CLUSTER's endpoint list from the discovery feed (nodes drop it)."""
    request = admin_pb2.DeleteEndpointsRequest(cluster=cluster)
    if expected_revision is not None:
        request.expected_revision = expected_revision
    r = _client().call("DeleteEndpoints", request)
    click.echo(f"cluster {cluster}: endpoints deleted at generation {r.generation}")


@endpoints.command("get")
@click.argument("clusters", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="The whole GetEndpointsResponse.")
def endpoints_get(clusters: tuple[str, ...], as_json: bool) -> None:
    """The endpoint lists the discovery feed serves (of CLUSTERS, if given), with their
    revisions (for endpoints set --expected-revision)."""
    r = _client().call("GetEndpoints", admin_pb2.GetEndpointsRequest(clusters=clusters))
    if as_json:
        from google.protobuf.json_format import MessageToDict

        click.echo(json.dumps(MessageToDict(r, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)))
        return
    click.echo(f"discovery generation {r.generation}")
    rows = [("CLUSTER", "REVISION", "ENDPOINTS")]
    for c in r.clusters:
        listed = ", ".join(f"{e.address}:{e.port}" + (f" w{e.weight}" if e.weight != 1 else "")
                           + (f" p{e.priority}" if e.priority else "") for e in c.endpoints)
        rows.append((c.cluster, str(c.revision), listed or "(none)"))
    _table(rows)


main.add_command(ca_commands)  # `omnirctl ca ...` (meshkit/cli/ca.py)

if __name__ == "__main__":
    main()
