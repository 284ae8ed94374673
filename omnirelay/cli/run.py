"""`omnirelay run`: the proxy as a supervisor with N worker processes."""
from __future__ import annotations

import click

from omnirelay import demo
from omnirelay.admin import AdminApp, AdminBindError, PolledAdminServer, SupervisorSource
from omnirelay.cli.common import Duration, indent, plural
from omnirelay.cli.logs import FORMATS, LEVELS, setup_logging
from omnirelay.config import ConfigError, load_config
from omnirelay.filters import FilterConfigError
from omnirelay.runtime.ports import BindError
from omnirelay.runtime.supervisor import Supervisor, load_checked

EXIT_INVALID_CONFIG = 2
MIN_REPORT_INTERVAL = 0.1  # --report-interval bounds (seconds)
MAX_REPORT_INTERVAL = 3600.0


@click.command()
@click.option("-c", "--config", "config_path", metavar="FILE",
              type=click.Path(dir_okay=False), help="Config file (YAML or JSON).")
@click.option("--demo", "demo_mode", is_flag=True,
              help="Start a demo upstream and proxy to it with a built-in config.")
@click.option("--port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Listener port for --demo (0: any free port).  [default: 8080]")
@click.option("-w", "--workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Worker processes sharing the listeners (SO_REUSEPORT).")
@click.option("--drain-timeout", type=Duration(), default="10s", show_default=True,
              help="On SIGTERM, how long in-flight requests may take to finish.")
@click.option("--control-plane", "control_plane", metavar="HOST:PORT[,HOST:PORT...]",
              help="Take the config from MeshKit (failover list), instead of --config.")
@click.option("--node-id", metavar="ID", help="This node's id (with --control-plane).")
@click.option("--trust-key", "trust_keys", metavar="FILE", multiple=True,
              type=click.Path(dir_okay=False),
              help="Trust bundle (JSON) of the keys that sign snapshots; repeatable.")
@click.option("--lkg-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Where the last-known-good snapshot is kept (with --control-plane).")
@click.option("--region", default="", metavar="REGION", help="Locality region (scope region/R).")
@click.option("--zone", default="", metavar="ZONE", help="Locality zone.")
@click.option("--tenant", default="", metavar="TENANT", help="Tenant (scope tenant/T).")
@click.option("--bootstrap-timeout", type=Duration(), default="30s", show_default=True,
              help="With --control-plane: how long to wait for a first config before "
                   "falling back to the LKG (or exiting).")
@click.option("--report-interval", type=Duration(), metavar="DURATION",
              help="With --control-plane: send a status report to MeshKit this often "
                   f"({MIN_REPORT_INTERVAL * 1000:g}ms to 1h).  [default: as MeshKit's replies "
                   "say, 10s]")
@click.option("--stale-after", type=Duration(), metavar="DURATION",
              help="With --control-plane: reopen the watch stream when not in sync with "
                   "MeshKit for this long; longer than the report interval.  [default: 60s]")
@click.option("--identity", "identity", metavar="SPIFFE_ID",
              help="With --control-plane: obtain this node's X.509-SVID from MeshKit's CA and "
                   "renew it at half life (files in --identity-dir).")
@click.option("--identity-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Where the SVID is kept: key.pem, cert.pem, bundle.pem (tls sections in "
                   "the config point at them).")
@click.option("--bootstrap-token", envvar="OMNIRELAY_BOOTSTRAP_TOKEN", metavar="TOKEN",
              help="Token for the first certificate (omnirctl ca register-node; "
                   "$OMNIRELAY_BOOTSTRAP_TOKEN).")
@click.option("--ca-bundle", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="MeshKit's CA bundle: the control-plane channels use mTLS with the SVID.")
@click.option("--bootstrap-endpoint", metavar="HOST:PORT",
              help="MeshKit's server-only TLS port for a first certificate "
                   "(meshkit serve --bootstrap-listen).")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              help="json: one JSON object per line (ts, level, logger, msg, pid).")
def run(config_path, demo_mode, port, workers, drain_timeout, control_plane, node_id, trust_keys,
        lkg_dir, region, zone, tenant, bootstrap_timeout, report_interval, stale_after, identity,
        identity_dir, bootstrap_token, ca_bundle, bootstrap_endpoint, log_level, log_format):
    """Run the proxy until SIGTERM or Ctrl-C (SIGHUP reloads the config file)."""
    if sum(map(bool, (config_path, demo_mode, control_plane))) != 1:
        raise click.UsageError("give one of --config FILE, --demo or --control-plane HOST:PORT")
    if control_plane:
        if not node_id or not trust_keys:
            raise click.UsageError("--control-plane needs --node-id and --trust-key")
        sync = _sync_options(report_interval, stale_after)
        setup_logging(log_level, log_format)
        ident = _identity_options(control_plane, node_id, identity, identity_dir,
                                  bootstrap_token, ca_bundle, bootstrap_endpoint)
        raise SystemExit(_run_control_plane(control_plane, node_id, trust_keys, lkg_dir, region,
                                            zone, tenant, bootstrap_timeout, workers,
                                            drain_timeout, ident, sync))
    if identity or identity_dir or bootstrap_token or ca_bundle or bootstrap_endpoint:
        raise click.UsageError("--identity and its options apply to --control-plane only")
    if node_id or trust_keys or lkg_dir or region or zone or tenant or \
            report_interval is not None or stale_after is not None:
        raise click.UsageError("--node-id, --trust-key, --lkg-dir, --region, --zone, --tenant, "
                               "--report-interval and --stale-after apply to --control-plane "
                               "only")
    if port is not None and not demo_mode:
        raise click.UsageError("--port applies to --demo only; set ports in the config file")
    setup_logging(log_level, log_format)
    if demo_mode:
        raise SystemExit(_run_demo(8080 if port is None else port, workers, drain_timeout))
    try:
        config = load_checked(config_path)
    except (ConfigError, FilterConfigError) as e:
        click.echo(f"omnirelay: invalid config {config_path}:\n{indent(e)}", err=True)
        raise SystemExit(EXIT_INVALID_CONFIG) from None
    supervisor = Supervisor(config, workers=workers, drain_timeout=drain_timeout,
                            config_path=config_path,
                            on_ready=lambda addresses, n: announce(addresses, n, config))
    raise SystemExit(_supervise(supervisor))


def serve_admin(supervisor: Supervisor) -> None:
    """Bind the config's admin listener into the supervisor's poll loop and say where it is.

    Raises AdminBindError."""
    admin = supervisor.config.admin
    if admin is None:
        return
    server = PolledAdminServer(AdminApp(SupervisorSource(supervisor), taps=supervisor.taps),
                               admin.address, admin.port)
    supervisor.services.append(server)
    supervisor.report_stats = True
    click.echo(f"omnirelay: admin on {url(*server.address)}")


def _supervise(supervisor: Supervisor) -> int:
    try:
        serve_admin(supervisor)
        return supervisor.run()
    except (BindError, AdminBindError) as e:
        click.echo(f"omnirelay: {e}", err=True)
        return 1
    finally:
        if supervisor.phase.value == "starting":  # run() never got to close them
            for service in supervisor.services:
                service.close()


def announce(addresses: dict[str, tuple[str, int]], workers: int, config=None) -> None:
    for name, (host, port) in addresses.items():
        scheme = _scheme(config.listener(name)) if config is not None else "http"
        click.echo(f"omnirelay: listener {name} on {url(host, port, scheme)} "
                   f"({plural(workers, 'worker')})")


def _scheme(listener) -> str:
    if listener.protocol == "tcp":
        return "tcp"
    if listener.protocol == "tls_passthrough":
        return "tls"
    return "https" if listener.tls is not None else "http"


def url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _sync_options(report_interval: float | None, stale_after: float | None) -> dict:
    """ControlOptions' report interval and staleness threshold, checked."""
    from omnirelay.control.client import REPORT_INTERVAL, STALE_AFTER

    if report_interval is not None and not \
            MIN_REPORT_INTERVAL <= report_interval <= MAX_REPORT_INTERVAL:
        raise click.BadParameter(f"{report_interval:g}s is out of range: between "
                                 f"{MIN_REPORT_INTERVAL * 1000:g}ms and 1h",
                                 param_hint="--report-interval")
    stale = STALE_AFTER if stale_after is None else stale_after
    interval = REPORT_INTERVAL if report_interval is None else report_interval
    if stale <= interval:
        given = "--report-interval" if report_interval is not None else "the default"
        raise click.BadParameter(
            f"{stale:g}s must be longer than the status report interval ({interval:g}s, "
            f"{given}): a node in sync would otherwise reconcile between two reports",
            param_hint="--stale-after")
    return {"report_interval": report_interval, "stale_after": stale}


def _identity_options(endpoints, node_id, identity, identity_dir, token, ca_bundle,
                      bootstrap_endpoint):
    if not identity:
        if identity_dir or token or ca_bundle or bootstrap_endpoint:
            raise click.UsageError("--identity-dir, --bootstrap-token, --ca-bundle and "
                                   "--bootstrap-endpoint need --identity")
        return None
    if not identity_dir:
        raise click.UsageError("--identity needs --identity-dir")
    from omnirelay.config.checks import spiffe_id
    from omnirelay.control.identity import IdentityOptions

    try:
        spiffe_id(identity)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--identity") from None
    return IdentityOptions(
        node_id=node_id, spiffe_id=identity, directory=identity_dir,
        endpoints=[e.strip() for e in endpoints.split(",") if e.strip()],
        bootstrap_endpoints=[bootstrap_endpoint] if bootstrap_endpoint else [],
        token=token, ca_bundle=ca_bundle)


def _run_control_plane(endpoints, node_id, trust_keys, lkg_dir, region, zone, tenant,
                       bootstrap_timeout, workers, drain_timeout, ident=None,
                       sync: dict | None = None) -> int:
    from omnirelay._version import __version__
    from omnirelay.admin.capabilities import capabilities
    from omnirelay.control.node import ControlOptions, run_node
    from omnirelay.runtime.supervisor import build_checked

    opts = ControlOptions(
        endpoints=[e.strip() for e in endpoints.split(",") if e.strip()], node_id=node_id,
        trust_keys=list(trust_keys), lkg_dir=lkg_dir, region=region, zone=zone, tenant=tenant,
        bootstrap_timeout=bootstrap_timeout, capabilities=capabilities(),
        build_version=__version__, **(sync or {}))

    identity = reloader = None
    if ident is not None:  # the SVID first: the config's tls sections read its files
        from omnirelay.control.identity import IdentityError, IdentityReload, NodeIdentity

        reloader = IdentityReload(build_checked)
        identity = NodeIdentity(ident, on_renewed=reloader.notify)
        try:
            identity.obtain(bootstrap_timeout)
        except IdentityError as e:
            click.echo(f"omnirelay: {e}", err=True)
            return 1
        identity.start()
        if ident.ca_bundle is not None:
            opts.channel = identity.channel

    def make_supervisor(config, started):
        def ready(addresses, n):
            announce(addresses, n, config)
            started()
        supervisor = Supervisor(config, workers=workers, drain_timeout=drain_timeout,
                                on_ready=ready)
        if reloader is not None:
            reloader.supervisor = supervisor
            supervisor.services.append(reloader)
        return supervisor

    try:
        return run_node(opts, build_check=build_checked, make_supervisor=make_supervisor,
                        supervise=_supervise)
    finally:
        if identity is not None:
            identity.stop()


def _run_demo(port: int, workers: int, drain_timeout: float) -> int:
    upstream, upstream_port = demo.start_upstream()
    try:
        config = load_config(demo.demo_config(upstream_port, port))

        def ready(addresses: dict[str, tuple[str, int]], workers: int) -> None:
            announce(addresses, workers, config)
            host, bound = addresses["demo"]
            click.echo(f"omnirelay demo: curl {url(host, bound)}/  "
                       f"(upstream on 127.0.0.1:{upstream_port}; Ctrl-C to stop)")

        supervisor = Supervisor(config, workers=workers, drain_timeout=drain_timeout,
                                on_ready=ready)
        return _supervise(supervisor)
    finally:
        demo.stop_upstream(upstream)
