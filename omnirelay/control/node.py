"""`omnirelay run --control-plane`: pick the first config (control plane, else LKG), start the
supervisor with it, and keep the watch stream feeding it."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from omnirelay.config import Config, load_config
from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import Keyring

from .bridge import SupervisorBridge
from .client import STALE_AFTER, ControlClient
from .discovery import DiscoveryBridge, DiscoveryClient
from .lkg import LkgError, lkg_path, load_lkg

log = logging.getLogger("omnirelay.control")

POLL = 0.05  # how often the first-config wait re-checks its conditions
DISCOVERY_WAIT = 5.0  # at start, how long api clusters wait for the discovery feed


@dataclass
class ControlOptions:
    endpoints: list[str]
    node_id: str
    trust_keys: list[str]
    lkg_dir: str | None = None
    region: str = ""
    zone: str = ""
    tenant: str = ""
    bootstrap_timeout: float = 30.0
    report_interval: float | None = None  # status reports; None: as MeshKit's replies say
    stale_after: float = STALE_AFTER  # reconcile when not in sync for this long
    # omnirelay.admin.capabilities(): announced in the Hello, and what snapshots may need
    capabilities: dict = field(default_factory=dict)
    build_version: str = ""
    # Opens a channel to an endpoint: mTLS with the node's SVID (identity.py); None: plaintext.
    channel: Callable | None = None


def load_keyring(paths: list[str]) -> Keyring:
    """Every key of the given trust bundles. Raises ValueError."""
    keyring = Keyring()
    for path in paths:
        for key in Keyring.load(path):
            keyring = keyring.with_key(key)
    return keyring


def node_message(opts: ControlOptions) -> mesh_pb2.Node:
    caps = opts.capabilities
    runtimes = caps.get("runtimes", {})
    features = list(caps.get("protocols", []))
    features += [name for name, rt in sorted(runtimes.items()) if rt.get("available")]
    # Extension ABIs and host features: what signed packages this node can load.
    features += [f"abi:{abi}" for abi in caps.get("extension_abis", [])]
    features += [f for f in caps.get("features", []) if f not in features]
    wasm = runtimes.get("wasm", {})
    return mesh_pb2.Node(
        id=opts.node_id, tenant=opts.tenant, build_version=opts.build_version,
        locality=mesh_pb2.Locality(region=opts.region, zone=opts.zone),
        capabilities=mesh_pb2.Capabilities(
            api_versions=["omnirelay.mesh.v1", "omnirelay.config.v1"], features=features,
            wasm_runtimes=[wasm.get("engine", "wasmtime")] if wasm.get("available") else []))


def run_node(opts: ControlOptions, *, build_check: Callable[[Config], Config],
             make_supervisor: Callable[[Config, Callable], object],
             supervise: Callable[[object], int]) -> int:
    """The exit code. `make_supervisor(config, started)` builds the Supervisor, calling
    `started()` once its workers are ready; `supervise` runs it (admin included)."""
    try:
        keyring = load_keyring(opts.trust_keys)
    except ValueError as exc:
        log.error("cannot load the trust bundle: %s", exc)
        return 2
    if not len(keyring):
        log.error("the trust bundle has no keys: every snapshot would be refused")
        return 2

    lkg, lkg_config, lkg_refused = None, None, None
    if opts.lkg_dir is not None:
        try:
            lkg = load_lkg(opts.lkg_dir, keyring)
            if lkg is not None:
                # No capability check: this node passed it when it accepted the LKG; a binary
                # changed since then and lacking a runtime fails this build check instead.
                lkg_config = build_check(load_config(lkg.signed.document))
                log.info("LKG %s: version %r epoch %d (%s)", lkg_path(opts.lkg_dir),
                         lkg.version, lkg.epoch, lkg.signed.sha256[:16])
        except LkgError as exc:
            lkg_refused = str(exc)
        except Exception as exc:  # noqa: BLE001 - an LKG that does not load or build is refused
            lkg_refused = f"{lkg_path(opts.lkg_dir)}: invalid config: {exc}"
        if lkg_refused:
            log.error("LKG refused, not using it: %s", lkg_refused)
            lkg, lkg_config = None, None

    bridge = SupervisorBridge()
    client = ControlClient(opts.endpoints, node_message(opts), keyring,
                           activate=bridge.activate, build_check=build_check,
                           lkg_dir=opts.lkg_dir, current=lkg,
                           report_interval=opts.report_interval, stale_after=opts.stale_after,
                           **_channel(opts))
    supervisors: list = []  # the discovery feed hands its lists to the supervisor, once made
    feed = DiscoveryBridge(lambda c, e: supervisors[0].push_endpoints(c, e))
    discovery = DiscoveryClient(opts.endpoints, node_message(opts), feed.deliver, **_channel(opts))
    client.discovery_generation = lambda: discovery.generation  # in its status reports
    client.start()
    discovery.start()
    try:
        config, source = _first_config(opts, client, bridge, lkg_config, lkg_refused)
        if config is None:
            return 1
        log.info("starting with config %r from %s", config.metadata.version, source)
        api = any(c.discovery is not None and c.discovery.type == "api"
                  for c in config.spec.clusters)
        # Workers start with the endpoint lists known by then (bounded wait).
        if api and not discovery.synced.wait(DISCOVERY_WAIT):
            log.warning("no endpoint discovery snapshot within %gs; api clusters start "
                            "with their static endpoints", DISCOVERY_WAIT)

        supervisor = make_supervisor(config, lambda: bridge.started(supervisor))
        supervisor.external_config = True
        supervisor.config_source = "lkg" if source == "the LKG" else "control_plane"
        supervisor.config_slots = lambda: _config_slots(opts, keyring, bridge, discovery)
        supervisor.services.append(bridge)
        supervisors.append(supervisor)
        feed.flush()
        supervisor.services.append(feed)
        return supervise(supervisor)
    finally:
        bridge.stop()
        discovery.stop()
        client.stop()
        feed.release()


def _channel(opts: ControlOptions) -> dict:
    return {} if opts.channel is None else {"channel": opts.channel}


def _first_config(opts, client: ControlClient, bridge: SupervisorBridge,
                  lkg_config: Config | None, lkg_refused: str | None):
    deadline = time.monotonic() + opts.bootstrap_timeout
    log.info("waiting for a first config from %s", ", ".join(opts.endpoints))
    while True:
        if bridge.first_ready.wait(POLL):
            return bridge.take_first(), "the control plane"
        timed_out = time.monotonic() >= deadline
        if client.unreachable.is_set() or timed_out:
            why = "unreachable" if client.unreachable.is_set() else \
                f"sent no config within {opts.bootstrap_timeout:g}s"
            if lkg_config is not None:
                log.warning("control plane %s: starting from the LKG", why)
                config = bridge.take_first(lkg_config)
                return config, ("the LKG" if config is lkg_config else "the control plane")
            if lkg_refused is not None or timed_out:
                log.error("control plane %s and no usable config%s: exiting", why,
                          f" (LKG refused: {lkg_refused})" if lkg_refused else "")
                return None, None


def _config_slots(opts: ControlOptions, keyring: Keyring, bridge: SupervisorBridge,
                  discovery: DiscoveryClient) -> dict:
    """/config_dump's staged and last-known-good slots (read on request: the LKG file is
    re-verified, so what is shown is what a restart would use)."""
    staged = bridge.staged()
    out: dict = {"staged": None if staged is None else {
        "version": staged.metadata.version, "epoch": staged.metadata.epoch},
        "last_known_good": None, "discovery": discovery.status()}
    if opts.lkg_dir is not None:
        try:
            lkg = load_lkg(opts.lkg_dir, keyring)
        except LkgError as exc:
            out["last_known_good"] = {"path": str(lkg_path(opts.lkg_dir)), "error": str(exc)}
        else:
            if lkg is not None:
                out["last_known_good"] = {
                    "path": str(lkg_path(opts.lkg_dir)), "version": lkg.version,
                    "epoch": lkg.epoch, "sha256": lkg.signed.sha256, "scope": lkg.scope,
                    "saved_at": lkg.saved_at}
    return out
