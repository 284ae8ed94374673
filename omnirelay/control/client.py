"""OmniRelay's config client: one ConfigWatch stream to MeshKit, on a thread of its own.

Per snapshot: verify (SHA-256, then the Ed25519 signature by key id against the trust bundle)
-> epoch check (never backwards) -> decode and validate (omnirelay.config) -> capability check
(what the document needs, omnirelay.config.requirements, against what this node announces in
its Hello: MeshKit gates publishes the same way, but a forced publish or another control plane
may still send it) -> build check (the filters, as a worker builds them) -> activate (a
callable: the supervisor's reload path) -> persist the LKG -> ACK. Any failure is a NACK with
an ErrorDetail code and the active config keeps serving. A Delta (announced with the Hello
feature `config_delta/1`) is first turned into that snapshot: its base must be the document
running, and the patched document re-encoded as canonical JSON must have the target's SHA-256
(omnirelay.config.delta); a failure there is a NACK with a `delta_*` code, to which MeshKit
answers with the full snapshot. The stream fails over across the listed endpoints (plus those
a server's RetryHint names) and reconnects with exponential backoff and full jitter, never
sooner than a server's retry_after.

Status and reconciliation: a second thread sends NodeStatus reports (what runs, its source,
the discovery generation, health) every report interval (MeshKit's StatusReply says how often)
and right after every apply. The client is in sync when it handled a stream message or a
report's reply showed no config drift; when it has not been in sync for `stale_after` seconds
(the stream is silently dead, MeshKit is hung, or it keeps telling of drift) it reconciles:
the watch stream is reopened at once, and its Hello brings the desired snapshot again.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the supervisor forks workers

import grpc

from omnirelay.config import Config, ConfigError, load_config
from omnirelay.config.delta import BASE_MISMATCH, PATCH_FAILED, DeltaError, apply_patch
from omnirelay.config.delta import FEATURE as DELTA_FEATURE
from omnirelay.config.delta import FORMAT as DELTA_FORMAT
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc
from omnirelay.config.requirements import describe, flatten, missing
from omnirelay.config.signing import Keyring, SignedDocument, VerificationError

from .lkg import Lkg, save_lkg

log = logging.getLogger("omnirelay.control")

# NACK codes besides the signing module's VerificationError reasons.
STALE_EPOCH = "stale_epoch"
INVALID_CONFIG = "invalid_config"
MISSING_CAPABILITY = "missing_capability"
APPLY_FAILED = "apply_failed"

REPORT_INTERVAL = 10.0  # seconds between status reports until MeshKit's reply says otherwise
STALE_AFTER = 60.0  # reconcile when not in sync with the control plane for this long
REPORT_TIMEOUT = 5.0

# (config) -> None when active on every worker, else why not. Blocks; called on the client thread.
Activate = Callable[[Config], "str | None"]
# (config) -> the config, built as a worker would; raises ConfigError or another exception.
BuildCheck = Callable[[Config], Config]


@dataclass
class Backoff:
    """Exponential backoff with full jitter, bounded below by a server's retry_after."""

    base: float = 0.5
    maximum: float = 30.0
    attempt: int = 0
    rng: random.Random | None = None

    def next(self, hint: mesh_pb2.RetryHint | None = None) -> float:
        base, maximum, floor = self.base, self.maximum, 0.0
        if hint is not None:
            base = hint.backoff_base_ms / 1000 if hint.backoff_base_ms else base
            maximum = hint.backoff_max_ms / 1000 if hint.backoff_max_ms else maximum
            floor = hint.retry_after_ms / 1000
        cap = min(maximum, base * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return max(floor, (self.rng or random).uniform(0, cap))

    def reset(self) -> None:
        self.attempt = 0


class ControlClient:
    def __init__(self, endpoints: list[str], node: mesh_pb2.Node, keyring: Keyring, *,
                 activate: Activate, build_check: BuildCheck, lkg_dir: str | None = None,
                 current: Lkg | None = None, backoff: Backoff | None = None,
                 report_interval: float | None = None, stale_after: float = STALE_AFTER,
                 discovery_generation: Callable[[], int] = lambda: 0,
                 channel: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                 deltas: bool = True) -> None:
        if not endpoints:
            raise ValueError("at least one control-plane endpoint is required")
        self.endpoints = list(endpoints)
        self.channel_factory = channel  # mTLS with the node's SVID (identity.py), or plaintext
        if deltas and DELTA_FEATURE not in node.capabilities.features:
            node = mesh_pb2.Node.FromString(node.SerializeToString())  # the caller's stays as is
            node.capabilities.features.append(DELTA_FEATURE)
        self.node = node
        # What this node can run, as documents' requirements name it: exactly its Hello's set.
        self.capabilities = frozenset(flatten(node.capabilities))
        self.keyring = keyring
        self.activate = activate
        self.build_check = build_check
        self.lkg_dir = lkg_dir
        self.backoff = backoff or Backoff()
        self.version = current.version if current else ""
        self.epoch = current.epoch if current else 0
        self.sha256 = current.signed.sha256 if current else ""
        self.document = current.signed.document if current else b""  # what runs: a delta base
        self.deltas = 0  # deltas applied
        self.failures = 0  # stream attempts in a row that got no response
        self.unreachable = threading.Event()  # every endpoint failed once in a row
        self.last_nack: mesh_pb2.Nack | None = None
        self.acks = 0
        # Status reports and reconciliation (see the module docstring).
        self.report_interval = report_interval  # None: as MeshKit's StatusReply says
        self.stale_after = stale_after
        self.discovery_generation = discovery_generation
        self.source = mesh_pb2.CONFIG_SOURCE_LKG if current else \
            mesh_pb2.CONFIG_SOURCE_UNSPECIFIED
        self.last_error = ""  # the last NACK's reason, until the next ACK
        self.last_in_sync = time.monotonic()
        self.reports = 0  # replies received
        self.reconciles = 0
        self._endpoint = self.endpoints[0]  # the one the stream uses (reports go there too)
        self._report_now = threading.Event()
        self._report_channel: grpc.Channel | None = None
        self._wake = threading.Event()  # cuts a reconnect delay short: stop() or reconcile()
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="omnirelay-control", daemon=True)
        self._reporter = threading.Thread(target=self._report_loop,
                                          name="omnirelay-control-status", daemon=True)

    # ---- lifecycle ----
    def start(self) -> ControlClient:
        self._thread.start()
        self._reporter.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._report_now.set()
        with self._lock:
            call, reporting = self._call, self._report_channel
        if call is not None:
            call.cancel()
        if reporting is not None:
            reporting.close()
        for thread in (self._thread, self._reporter):
            if thread.is_alive():
                thread.join(timeout)

    def reconcile(self, reason: str) -> None:
        """Reopen the watch stream now (its Hello brings the desired snapshot again)."""
        log.warning("control plane: reconciling: %s; reopening the watch stream", reason)
        self.reconciles += 1
        self.last_in_sync = time.monotonic()  # at most one reconcile per stale period
        self._wake.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _open_channel(self, endpoint: str) -> grpc.Channel:
        return self.channel_factory(endpoint)

    # ---- the stream ----
    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            endpoint = self.endpoints[index % len(self.endpoints)]
            self._endpoint = endpoint
            hint: mesh_pb2.RetryHint | None = None
            responded = False
            try:
                responded, hint = self._stream(endpoint)
            except Exception:
                log.exception("control plane %s: watch stream failed", endpoint)
            if self._stop.is_set():
                return
            if responded:
                self.failures = 0
                self.backoff.reset()
            else:
                self.failures += 1
                if self.failures >= len(self.endpoints):
                    self.unreachable.set()
            if hint is not None:
                for extra in hint.endpoints:
                    if extra and extra not in self.endpoints:
                        self.endpoints.append(extra)
            index += 1  # fail over: the next endpoint in the list
            if self._wake.is_set():  # reconcile: reconnect at once
                self._wake.clear()
                continue
            delay = self.backoff.next(hint)
            log.info("control plane: reconnecting to %s in %.2fs",
                     self.endpoints[index % len(self.endpoints)], delay)
            self._wake.wait(delay)
            self._wake.clear()

    def _hello(self) -> mesh_pb2.WatchRequest:
        return mesh_pb2.WatchRequest(hello=mesh_pb2.Hello(
            node=self.node, current_version=self.version, current_epoch=self.epoch,
            current_sha256=self.sha256))

    def _stream(self, endpoint: str) -> tuple[bool, mesh_pb2.RetryHint | None]:
        requests: queue.Queue[mesh_pb2.WatchRequest | None] = queue.Queue()
        requests.put(self._hello())
        responded = False
        hint: mesh_pb2.RetryHint | None = None
        channel = self._open_channel(endpoint)
        try:
            call = mesh_pb2_grpc.ConfigWatchStub(channel).Watch(_drain(requests))
            with self._lock:
                self._call = call
            if self._stop.is_set():
                call.cancel()
            log.info("control plane %s: opening the watch stream as node %s", endpoint,
                     self.node.id)
            try:
                for response in call:
                    responded = True
                    self.last_in_sync = time.monotonic()
                    kind = response.WhichOneof("kind")
                    if kind == "snapshot":
                        requests.put(self.handle(response.snapshot))
                    elif kind == "delta":
                        requests.put(self.handle_delta(response.delta))
                    elif kind == "error":
                        err = response.error
                        log.warning("control plane %s ended the stream: %s: %s", endpoint,
                                    err.code, err.message)
                        if err.HasField("retry"):
                            hint = err.retry
            except grpc.RpcError as exc:
                if not self._stop.is_set():
                    log.warning("control plane %s: %s: %s", endpoint, exc.code().name,
                                exc.details())
                    hint = hint or _trailer_hint(exc)
            return responded, hint
        finally:
            requests.put(None)
            with self._lock:
                self._call = None
            channel.close()

    # ---- one snapshot ----
    def handle_delta(self, delta: mesh_pb2.Delta) -> mesh_pb2.WatchRequest:
        """Rebuild the signed snapshot `delta` stands for from the running document, then
        handle it as one; a NACK with a `delta_*` code when that fails."""
        if delta.patch_format != DELTA_FORMAT:
            return self._nack(delta, PATCH_FAILED, f"unknown patch format "
                              f"{delta.patch_format!r} (this node applies {DELTA_FORMAT!r})")
        if not self.document or delta.base_sha256 != self.sha256:
            return self._nack(delta, BASE_MISMATCH, f"the delta applies to "
                              f"{delta.base_sha256[:16]} ({delta.base_version!r}), but this "
                              f"node runs {self.sha256[:16] or 'nothing'} ({self.version!r})")
        try:
            patched = apply_patch(self.document, delta.patch, delta.sha256)
        except DeltaError as exc:
            return self._nack(delta, exc.code, str(exc))
        snap = mesh_pb2.Snapshot(
            version=delta.version, nonce=delta.nonce, epoch=delta.epoch, scope=delta.scope,
            revision=delta.revision, document=patched.document, sha256=delta.sha256,
            key_id=delta.key_id, signature=delta.signature,
            signature_algorithm=delta.signature_algorithm)
        reply = self.handle(snap, parsed=patched.value)
        if reply.WhichOneof("kind") == "ack":
            self.deltas += 1
            log.info("config %s applied from a delta of %d bytes (base %s)", delta.version,
                     len(delta.patch), delta.base_sha256[:16])
        return reply

    def handle(self, snap: mesh_pb2.Snapshot,
               parsed: dict | None = None) -> mesh_pb2.WatchRequest:
        """Verify, check and activate `snap`; the ACK or NACK to send back. `parsed`: the
        document already parsed (a delta's patched value), so it is not parsed again."""
        try:
            self.keyring.verify(snap.document, snap.signature, snap.key_id, sha256=snap.sha256,
                                algorithm=snap.signature_algorithm or "ed25519")
        except VerificationError as exc:
            return self._nack(snap, exc.reason, str(exc))
        if snap.epoch < self.epoch or (snap.epoch == self.epoch and self.sha256
                                       and snap.sha256 != self.sha256):
            return self._nack(snap, STALE_EPOCH, f"epoch {snap.epoch} is not newer than the "
                              f"active config's epoch {self.epoch} (version {self.version!r})")
        if snap.sha256 == self.sha256:  # already active (a reconnect, or re-signed)
            self.document = bytes(snap.document)
            self._persist(snap)
            self.source = mesh_pb2.CONFIG_SOURCE_CONTROL_PLANE
            return self._ack(snap)
        try:
            config = load_config(bytes(snap.document) if parsed is None else parsed)
        except ConfigError as exc:
            return self._nack(snap, INVALID_CONFIG, "the document is invalid",
                              [str(issue) for issue in exc.issues])
        if gaps := missing(config, self.capabilities):
            lines = list(describe(gaps))
            return self._nack(snap, MISSING_CAPABILITY, "this node lacks what the document "
                              f"needs: {'; '.join(lines)}", lines)
        try:
            self.build_check(config)
        except Exception as exc:  # noqa: BLE001 - any failure to build is a refusal
            return self._nack(snap, INVALID_CONFIG, f"build check failed: {exc}")
        try:
            problem = self.activate(config)
        except Exception as exc:
            log.exception("activating version %r failed", snap.version)
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            return self._nack(snap, APPLY_FAILED, problem)
        self.version, self.epoch, self.sha256 = snap.version, snap.epoch, snap.sha256
        self.document = bytes(snap.document)
        self.source = mesh_pb2.CONFIG_SOURCE_CONTROL_PLANE
        self._persist(snap)
        log.info("config %s (epoch %d, %s) active; ACK", snap.version, snap.epoch,
                 snap.sha256[:16])
        return self._ack(snap)

    def _persist(self, snap: mesh_pb2.Snapshot) -> None:
        if self.lkg_dir is None:
            return
        signed = SignedDocument(bytes(snap.document), snap.sha256, snap.key_id,
                                bytes(snap.signature), snap.signature_algorithm or "ed25519")
        try:
            save_lkg(self.lkg_dir, Lkg(signed, snap.version, snap.epoch, snap.scope, time.time()))
        except OSError as exc:
            log.error("cannot write the LKG in %s: %s", self.lkg_dir, exc)

    def _ack(self, snap: mesh_pb2.Snapshot) -> mesh_pb2.WatchRequest:
        self.acks += 1
        self.last_error = ""
        self._report_now.set()  # tell MeshKit what runs now
        return mesh_pb2.WatchRequest(ack=mesh_pb2.Ack(
            version=snap.version, nonce=snap.nonce, epoch=snap.epoch, sha256=snap.sha256))

    def _nack(self, snap: mesh_pb2.Snapshot | mesh_pb2.Delta, code: str, message: str,
              details: list[str] | None = None) -> mesh_pb2.WatchRequest:
        log.error("NACK version %r epoch %d: %s: %s (still serving %r)", snap.version,
                  snap.epoch, code, message, self.version)
        nack = mesh_pb2.Nack(version=snap.version, nonce=snap.nonce, epoch=snap.epoch,
                             error=mesh_pb2.ErrorDetail(code=code, message=message,
                                                        details=details or []))
        self.last_nack = nack
        self.last_error = f"{code}: {message}"
        self._report_now.set()
        return mesh_pb2.WatchRequest(nack=nack)

    # ---- status reports and reconciliation ----
    def status_report(self) -> mesh_pb2.StatusReport:
        if not self.sha256:
            health = mesh_pb2.NODE_HEALTH_STARTING
        elif self.last_error or self.source != mesh_pb2.CONFIG_SOURCE_CONTROL_PLANE:
            health = mesh_pb2.NODE_HEALTH_DEGRADED
        else:
            health = mesh_pb2.NODE_HEALTH_SERVING
        return mesh_pb2.StatusReport(
            node=self.node, config_version=self.version, config_epoch=self.epoch,
            config_sha256=self.sha256, config_source=self.source,
            discovery_generation=self.discovery_generation(), health=health,
            ready=bool(self.sha256), last_error=self.last_error,
            reported_at_unix_ms=int(time.time() * 1000))

    def _report_loop(self) -> None:
        interval = self.report_interval or REPORT_INTERVAL
        channel, channel_endpoint = None, ""
        try:
            while not self._stop.is_set():
                self._report_now.wait(interval)
                self._report_now.clear()
                if self._stop.is_set():
                    return
                endpoint = self._endpoint
                if channel is None or channel_endpoint != endpoint:
                    if channel is not None:
                        channel.close()
                    channel, channel_endpoint = self._open_channel(endpoint), endpoint
                with self._lock:
                    self._report_channel = channel  # stop() closes it: no wait for a reply
                try:
                    reply = mesh_pb2_grpc.NodeStatusStub(channel).Report(
                        self.status_report(), timeout=min(REPORT_TIMEOUT, self.stale_after))
                except grpc.RpcError as exc:
                    log.debug("control plane %s: status report failed: %s", endpoint,
                              exc.code().name)
                except Exception:  # a bad report must not end the reporting
                    log.exception("control plane: cannot send a status report")
                else:
                    self.reports += 1
                    if self.report_interval is None and reply.report_interval_ms:
                        interval = reply.report_interval_ms / 1000
                    if not reply.config_drift or reply.desired_sha256 == self.sha256:
                        self.last_in_sync = time.monotonic()
                silent = time.monotonic() - self.last_in_sync
                if silent > self.stale_after and not self._stop.is_set():
                    self.reconcile(f"not in sync with the control plane for {silent:.1f}s "
                                   f"(threshold {self.stale_after:g}s)")
        except Exception:
            log.exception("control plane: the status reporter failed")
        finally:
            if channel is not None:
                channel.close()


def _drain(requests: queue.Queue) -> Iterator[mesh_pb2.WatchRequest]:
    while True:
        item = requests.get()
        if item is None:
            return
        yield item


def _trailer_hint(exc: grpc.RpcError) -> mesh_pb2.RetryHint | None:
    try:
        metadata = dict(exc.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - no trailers on a connection failure
        return None
    value = metadata.get("omnirelay-retry-after-ms")
    if value is None or not str(value).isdigit():
        return None
    return mesh_pb2.RetryHint(retry_after_ms=int(value))
