"""The embedding API: run OmniRelay's listeners inside an existing asyncio app.

    async with Relay("edge.yaml") as relay:
        print(relay.url())          # http://127.0.0.1:PORT
        ...

The same class is what each worker process of `omnirelay run` runs (there without its own
admin listener: the supervisor serves the admin API). Listeners with
`protocol: tcp` or `tls_passthrough` run the core's L4 proxy; `protocol: http` with `tls`
terminates TLS (the core reads the negotiated ALPN protocol to pick its codec).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

from omnirelay._core import (
    L4ListenerRuntime,
    L4ListenerState,
    ListenerRuntime,
    TlsServer,
    pool_stats,
)
from omnirelay.admin import AdminApp, AsyncAdminServer, RelaySource
from omnirelay.clusters import HealthCheckers
from omnirelay.config import Admin, Config, Endpoint, Listener, load_config
from omnirelay.config.endpoints import decode_endpoints
from omnirelay.config.schema import decode_admin
from omnirelay.discovery import Feeds
from omnirelay.extensions.packages import last_good_fallback
from omnirelay.extensions.status import extension_series, extension_status
from omnirelay.extensions.wasm.shared import metric_series as wasm_metric_series
from omnirelay.extensions.watch import PackageWatcher
from omnirelay.runtime.build import BuiltConfig, TableBuilder
from omnirelay.runtime.tls import ServerTls, core_tls_reason
from omnirelay.telemetry import snapshot
from omnirelay.telemetry.accesslog import access_log_series
from omnirelay.telemetry.tap import TapHub

log = logging.getLogger("omnirelay")

SWEEP_INTERVAL = 1.0


def _as_config(source: Config | str | Path | dict | bytes) -> Config:
    return source if isinstance(source, Config) else load_config(source)


def _kind(lst: Listener) -> str:
    """What the listening socket is: a change of kind needs a new socket (and server)."""
    if lst.protocol != "http":
        return "l4"
    if lst.tls is None:
        return "http"
    if lst.tls.client_ca_file is None:
        return "https"
    # The client-certificate demand is fixed when a connection's TLS object is made from
    # the listener's first context, so changing it needs a new socket; so is the CRL check
    # (its verify flag; the CRLs themselves come from the current context's store).
    kind = "https+mtls" if lst.tls.require_client_certificate else "https+optional-mtls"
    return kind + "+crl" if lst.tls.client_crl_file is not None else kind


HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to a finished TLS handshake (core TLS)


class _TlsSwitch:
    """A TLS listener keeps the SSLContext it started with (the front); the server-name
    step of every handshake (run for every ClientHello, with or without SNI) hands the
    connection the context of the current config for the requested server name. A reload
    thus changes certificates and ALPN for new connections without re-binding, and open
    connections keep what they negotiated. Once a certificate or bundle the listener relies
    on has expired, handshakes are refused (fail closed) until a reload brings valid
    material. With TLS in the core the core asks `choose`; otherwise the front context's
    sni_callback does."""

    def __init__(self, listener: str, tls: ServerTls, *, core: bool) -> None:
        self.listener = listener
        self.front = tls.default
        self.current = tls
        self.refused = 0  # handshakes refused for expired material
        self._logged: ServerTls | None = None
        self.server = TlsServer(self.front, self.choose, HANDSHAKE_TIMEOUT) if core else None
        if not core:
            tls.default.sni_callback = self._select

    def choose(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for this server name, or None to refuse the handshake."""
        current = self.current
        if time.time() >= current.not_after:
            self._refuse(current)
            return None
        return current.select(server_name)

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> int | None:
        chosen = self.choose(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if chosen is not context:
            sslobj.context = chosen
        return None

    def _refuse(self, current: ServerTls) -> None:
        self.refused += 1
        if self._logged is not current:
            self._logged = current
            expired = current.expired_file(time.time())
            filename, end = expired if expired else ("?", current.not_after)
            log.error("listener %s: %s expired at %s; refusing TLS handshakes until new "
                      "material is loaded (reload)", self.listener, filename,
                      time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end)))


def _admin_settings(admin: Admin | Mapping[str, Any] | bool | None,
                    config: Config) -> Admin | None:
    if admin is None:
        return config.admin
    if admin is False:
        return None
    if admin is True:
        return config.admin or Admin()
    if isinstance(admin, Admin):
        return admin
    if isinstance(admin, Mapping):
        return decode_admin(admin)  # checked like the config's `admin` block
    raise TypeError(f"admin must be an Admin, a mapping, a bool or None, not "
                    f"{type(admin).__name__}")


class Relay:
    """Listeners, clusters and route tables of one process, on the running loop.

    `admin`: None serves the config's `admin` block if it has one; False never serves an
    admin listener; True serves one (the config's settings, else 127.0.0.1:9901); an
    `omnirelay.config.Admin` or a mapping shaped like the config block overrides it."""

    def __init__(self, config: Config | str | Path | dict | bytes, *,
                 reuse_port: bool = False, ports: dict[str, int] | None = None,
                 admin: Admin | Mapping[str, Any] | bool | None = None):
        self._builder = TableBuilder()
        # A process that starts while a package file holds a refused version runs the last
        # good one (a restarted worker runs what its siblings run); reloads refuse.
        with last_good_fallback():
            self._built = self._builder.build(_as_config(config))
        self._admin_settings = _admin_settings(admin, self._built.config)
        self._admin: AsyncAdminServer | None = None
        self._admin_source: RelaySource | None = None
        self.ready = False  # a config is active and listeners accept (the admin's /ready)
        self.reloads = {"applied": 0, "rejected": 0}
        self.config_since = time.time()
        self._health = HealthCheckers()
        self._feeds = Feeds(on_update=self._endpoints_changed)
        # A package file that changes rebuilds the active config (extension hot reload).
        self._packages = PackageWatcher(lambda: self.reload(self.config))
        self._reuse_port = reuse_port
        reason = core_tls_reason()
        self._core_tls = reason is None
        if reason is not None and self._built.tls:
            log.info("TLS listeners and clusters use the event loop's TLS: %s", reason)
        self._ports = dict(ports or {})
        self._listeners: dict[str, ListenerRuntime | L4ListenerRuntime] = {}
        self._bound: dict[str, tuple[str, int]] = {}
        self._binding: dict[str, tuple[str, int, str]] = {}
        self._tls: dict[str, _TlsSwitch] = {}
        self._sweeper: asyncio.Task | None = None
        self._started = False
        self.config_version = self._built.config.metadata.version

    @property
    def config(self) -> Config:
        return self._built.config

    # ---- lifecycle ----
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("Relay already started")
        self._started = True
        try:
            if self._admin_settings is not None:
                await self._start_admin(self._admin_settings)
            self._feeds.sync(self.config, self._builder)
            self._health.sync(self.config, self._builder.clusters)
            for lst in self.config.spec.listeners:
                await self._start_listener(lst, self._built)
        except BaseException:
            await self.stop(drain_timeout=0)
            raise
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
        self._packages.sync(self.config)
        self.ready = True

    async def _start_admin(self, settings: Admin) -> None:
        self._admin_source = RelaySource(self, settings)
        self._admin = AsyncAdminServer(AdminApp(self._admin_source, taps=self.taps))
        host, port = await self._admin.start(settings.address, settings.port)
        log.info("admin on %s", _http_url(host, port))

    async def _start_listener(self, lst: Listener, built: BuiltConfig) -> None:
        state = built.listeners[lst.name]
        switch = None
        if isinstance(state, L4ListenerState):
            runtime: ListenerRuntime | L4ListenerRuntime = L4ListenerRuntime(state)
        elif lst.name in built.tls:
            switch = _TlsSwitch(lst.name, built.tls[lst.name], core=self._core_tls)
            if switch.server is not None:
                runtime = ListenerRuntime(state, tls=switch.server)
            else:
                runtime = ListenerRuntime(state, ssl=switch.front)
        else:
            runtime = ListenerRuntime(state)
        port = self._ports.get(lst.name, lst.port)
        host, bound_port = await runtime.start(lst.address, port, reuse_port=self._reuse_port)
        self._listeners[lst.name] = runtime
        self._bound[lst.name] = (host, bound_port)
        self._binding[lst.name] = (lst.address, lst.port, _kind(lst))
        if switch is not None:
            self._tls[lst.name] = switch
        log.info("listener %s (%s) on %s:%d", lst.name, lst.protocol, host, bound_port)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish up to the deadline, then close.

        HTTP connections close once their response is done; L4 (tcp, tls_passthrough)
        connections have no message boundary and run until either side closes them or
        the deadline aborts them. The admin listener (if any) answers until the end, with
        /ready at 503."""
        self.ready = False
        await self._packages.close()
        await self._feeds.close()
        await self._health.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._drain(list(self._listeners.values()), drain_timeout)
        self._listeners.clear()
        self._tls.clear()
        for c in self._builder.clusters.values():
            c.close_idle()
        self._builder.close_access_logs()   # every finished request's record is written
        # Queued spans are exported (bounded by the tracing export_timeout), off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._builder.close_tracing)
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        self._started = False

    async def _drain(self, runtimes: list[ListenerRuntime | L4ListenerRuntime],
                     timeout: float) -> None:
        for r in runtimes:
            r.start_drain()
        deadline = time.monotonic() + timeout
        while any(r.active_connections for r in runtimes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for r in runtimes:
            r.abort_all()
            if r.server is not None:
                await r.server.wait_closed() if hasattr(r.server, "wait_closed") else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- reload ----
    async def reload(self, config: Config | str | Path | dict | bytes) -> None:
        """Swap to a new config. Raises ConfigError/FilterConfigError and keeps
        serving the current config if the new one is invalid (TLS certificate and key
        files included: they are loaded before anything changes).

        A listener keeps its socket when its address, port and kind (plain HTTP, TLS
        HTTP, L4) stay: new connections get the new routes, clusters, SNI routes and
        certificates; open ones finish with what they had."""
        try:
            cfg = _as_config(config)
            built = self._builder.build(cfg)
        except Exception:
            self.reloads["rejected"] += 1
            raise
        if self._started:
            # Before any await: a feed the new config drops or changes must not write to the
            # rebuilt clusters in between.
            self._feeds.sync(cfg, self._builder)
        new_names = {lst.name for lst in cfg.spec.listeners}
        gone = []
        for name in list(self._listeners):
            lst = next((x for x in cfg.spec.listeners if x.name == name), None)
            if lst is None or (lst.address, lst.port, _kind(lst)) != self._binding[name]:
                runtime = self._listeners.pop(name)
                # Free the socket now: a listener that changes kind binds it again below.
                runtime.stop_accepting()
                gone.append(runtime)
                self._bound.pop(name, None)
                self._tls.pop(name, None)
        for lst in cfg.spec.listeners:
            if lst.name in self._listeners:
                self._listeners[lst.name].swap(built.listeners[lst.name])
                if lst.name in self._tls:
                    self._tls[lst.name].current = built.tls[lst.name]
            elif self._started:
                await self._start_listener(lst, built)
        self._built = built
        if self._started:
            self._health.sync(cfg, self._builder.clusters)
            self._packages.sync(cfg)
        self.config_version = cfg.metadata.version
        self.config_since = time.time()
        self.reloads["applied"] += 1
        if gone:
            asyncio.get_running_loop().create_task(self._drain(gone, 30.0))
        log.info("config %s active (%d listeners)", self.config_version, len(new_names))

    # ---- endpoint discovery ----
    def set_endpoints(self, cluster: str,
                      endpoints: Iterable[Endpoint | Mapping[str, Any]]) -> None:
        """Replace the endpoints of `cluster`, which must have `discovery: {type: api}`.

        `endpoints` are `Endpoint`s or mappings in the config's endpoint shape, checked like
        `spec.clusters[i].endpoints` (an empty list is allowed). Raises KeyError for an
        unknown cluster, ValueError for a cluster without API discovery, ConfigError (every
        issue, at `endpoints[i].field`) for invalid endpoints; nothing changes then.
        Endpoints that stay keep their pooled connections and health. Call it on the loop's
        thread; the list survives reloads while the cluster keeps API discovery.
        """
        spec = self.config.cluster(cluster).discovery
        if spec is None or spec.type != "api":
            how = "static endpoints" if spec is None else f"{spec.type} discovery"
            raise ValueError(
                f"cluster {cluster!r} has {how}; set_endpoints needs discovery type 'api'")
        checked = decode_endpoints(_endpoint_documents(endpoints), "endpoints")
        self._feeds.push(self._builder, cluster, spec, checked)

    def _endpoints_changed(self, cluster: str) -> None:
        # Health checking follows the cluster's new endpoints (the core objects of those
        # that stay are kept, with their health).
        if cluster in self._health:
            checker = self._health[cluster]
            checker.update(self._builder.clusters[cluster], checker.config)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for r in self._listeners.values():
                r.sweep(now)
            self._builder.sweep(now)
            if self._admin_source is not None:
                self._admin_source.refresh()  # samples for the admin's request rates

    # ---- introspection ----
    def address(self, listener: str | None = None) -> tuple[str, int]:
        name = listener or next(iter(self._bound))
        return self._bound[name]

    def url(self, listener: str | None = None) -> str:
        """http://, https:// (TLS-terminating) or tcp:// (L4 listeners) host:port."""
        name = listener or next(iter(self._bound))
        host, port = self._bound[name]
        host = f"[{host}]" if ":" in host else host
        kind = self._binding[name][2]
        scheme = "tcp" if kind == "l4" else kind.partition("+")[0]
        return f"{scheme}://{host}:{port}"

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return dict(self._bound)

    @property
    def taps(self) -> TapHub:
        """The admin taps watching this Relay's requests (a worker of `omnirelay run`
        starts those of its supervisor here)."""
        return self._builder.taps

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin listener accepts, once started; None without one."""
        return self._admin.address if self._admin is not None else None

    def admin_url(self) -> str | None:
        addr = self.admin_address
        return None if addr is None else _http_url(*addr)

    async def flush_traces(self, timeout: float = 5.0) -> bool:
        """Export the spans of the requests finished so far; False if that took longer than
        `timeout` seconds (the collector is slow or unreachable)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self._builder.flush_traces, timeout)

    def telemetry_snapshot(self) -> dict[str, Any]:
        """This process's counters as metric series, and its clusters' state
        (telemetry.samples.snapshot) and its extensions' state: what a worker reports to
        the supervisor."""
        snap = snapshot(self._listeners, self._builder.clusters, self._builder.upstream_stats,
                        self._tls_series() + extension_series() + wasm_metric_series()
                        + access_log_series(self._builder.access_logs))
        snap["extensions"] = extension_status()
        return snap

    def _tls_series(self) -> list[tuple[str, tuple[str, ...], Any]]:
        out: list[tuple[str, tuple[str, ...], Any]] = []
        for name, switch in self._tls.items():
            out += [("omnirelay_tls_certificate_expiry_timestamp_seconds", (name, filename), end)
                    for filename, end in switch.current.expiry]
            if switch.refused:
                out.append(("omnirelay_tls_handshakes_refused_total", (name, "expired"),
                            switch.refused))
            server = switch.server
            if server is not None:
                out += [("omnirelay_tls_handshakes_total", (name,), server.handshakes),
                        ("omnirelay_tls_handshake_errors_total", (name, "failed"),
                         server.handshake_failures),
                        ("omnirelay_tls_handshake_errors_total", (name, "timeout"),
                         server.handshake_timeouts)]
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "config_version": self.config_version,
            "listeners": {n: r.stats.as_dict() | {"connections": r.active_connections}
                          for n, r in self._listeners.items()},
            "clusters": {n: c.stats() for n, c in self._builder.clusters.items()},
            "buffers": pool_stats(),
            "health": self._health.status(),
            "discovery": self._feeds.status(),
        }


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _endpoint_documents(endpoints: object) -> object:
    """`endpoints` as the decoder sees a document: Endpoint objects become mappings (unset
    optional fields left out); anything that is not a list of entries is passed on for the
    decoder to reject with its usual message."""
    if isinstance(endpoints, (str, bytes, bytearray, Mapping)) or not isinstance(
            endpoints, Iterable):
        return endpoints
    return [{k: v for k, v in asdict(e).items() if v is not None}
            if isinstance(e, Endpoint) else e for e in endpoints]
