"""The node's identity: an X.509-SVID from MeshKit's CA, kept fresh on disk.

The private key is generated here and never leaves the node: MeshKit gets a CSR for the
node's SPIFFE ID. The first certificate is asked for with the bootstrap token (`omnirctl ca
register-node`); renewals prove the node by its current certificate over mTLS, falling back
to the token if that is refused. Renewal starts at half the remaining lifetime and retries
with exponential backoff and jitter until the certificate expires.

Files in the identity directory, each replaced atomically (write, then rename):

    key.pem     the private key (mode 0600)
    cert.pem    the SVID, then the issuing CA certificate
    bundle.pem  the trust bundle (every CA certificate to trust now; two during a rotation)
    crl.pem     the CA's CRLs, one per CA of the bundle (revoked peer certificates)

The CRLs come with the bundle (`GetBundle`) after every renewal and every `crl_interval`
seconds between them (sooner while fetching fails, and always before their nextUpdate is
half gone); a change is written (bundle, then CRLs) and applied like a renewal.

Listener and cluster `tls` sections point at these files (`client_crl_file`, `crl_file` for
crl.pem); after each renewal or CRL change `on_renewed` runs (`omnirelay run` rebuilds the
active config through its reload path, so new TLS connections get the new certificate and
CRLs, and open ones keep theirs). Expired material fails
closed: a reload carrying it is refused, and peers refuse an expired certificate.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the supervisor forks workers

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from omnirelay.config.protos import ca_pb2, ca_pb2_grpc

from .wakeup import PipeService

log = logging.getLogger("omnirelay.identity")

CALL_TIMEOUT = 10.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


class IdentityError(Exception):
    """No certificate could be had (the reason is the message)."""


@dataclass
class IdentityOptions:
    node_id: str
    spiffe_id: str
    directory: str
    endpoints: list[str]  # MeshKit's node port (mTLS when `ca_bundle` is given)
    bootstrap_endpoints: list[str] = field(default_factory=list)  # server-only TLS; default endpoints
    token: str | None = None
    ca_bundle: str | None = None  # the CA bundle to trust MeshKit by; None: plaintext (dev only)
    ttl: float = 0.0  # ask for this lifetime (0: the CA's default)
    crl_interval: float = 60.0  # how often to fetch the CRLs (0: only with renewals)


class NodeIdentity:
    def __init__(self, opts: IdentityOptions, *, on_renewed: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not opts.endpoints:
            raise ValueError("the identity needs at least one MeshKit endpoint")
        self.opts = opts
        self.on_renewed = on_renewed
        self.clock = clock
        self.dir = Path(opts.directory)
        self.key_file = self.dir / "key.pem"
        self.cert_file = self.dir / "cert.pem"
        self.bundle_file = self.dir / "bundle.pem"
        self.crl_file = self.dir / "crl.pem"
        self.crl_at = 0.0  # when to fetch the CRLs next
        self.crl_next_update = 0.0  # the nextUpdate of the CRLs on disk (0: none yet)
        self.crl_updates = 0
        self.certificate: x509.Certificate | None = None
        self.renew_at = 0.0
        self.renewals = 0
        self.failures = 0
        # Set at each renewal and CRL change (tests and callers may clear it).
        self.renewed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- files ----
    def _load_existing(self) -> x509.Certificate | None:
        """A certificate on disk that is still usable: ours, valid, its key beside it."""
        try:
            chain = x509.load_pem_x509_certificates(self.cert_file.read_bytes())
            key = serialization.load_pem_private_key(self.key_file.read_bytes(), None)
            self.bundle_file.stat()
        except (OSError, ValueError, TypeError):
            return None
        cert = chain[0]
        if cert.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
            return None
        if _spiffe_ids(cert) != [self.opts.spiffe_id] or self._left(cert) <= 0:
            return None
        return cert

    def _write(self, key: ec.EllipticCurvePrivateKey, reply: ca_pb2.SignResponse) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        # The bundle first (it trusts both CAs during a rotation), the certificate last.
        _replace(self.bundle_file, reply.bundle_pem, 0o644)
        _replace(self.key_file, key_pem, 0o600)
        _replace(self.cert_file, reply.certificate_pem, 0o644)

    def _left(self, cert: x509.Certificate) -> float:
        return cert.not_valid_after_utc.timestamp() - self.clock()

    def _schedule(self, cert: x509.Certificate) -> None:
        self.certificate = cert
        self.renew_at = self.clock() + max(self._left(cert), 0.0) / 2

    # ---- talking to the CA ----
    def _channel(self, endpoint: str, *, client_certificate: bool) -> grpc.Channel:
        if self.opts.ca_bundle is None:
            return grpc.insecure_channel(endpoint)
        root = self._root()
        if client_certificate:
            credentials = grpc.ssl_channel_credentials(
                root, self.key_file.read_bytes(), self.cert_file.read_bytes())
        else:
            credentials = grpc.ssl_channel_credentials(root)
        return grpc.secure_channel(endpoint, credentials)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """mTLS credentials from the current files (None in plaintext development mode); what
        the config client connects with, read again at every connection."""
        if self.opts.ca_bundle is None:
            return None
        return grpc.ssl_channel_credentials(self._root(), self.key_file.read_bytes(),
                                            self.cert_file.read_bytes())

    def _root(self) -> bytes:
        """What MeshKit's certificate is verified with: the bundle of the last issuance (it
        follows CA rotations), else the one given at start."""
        bundle = self.bundle_file if self.bundle_file.exists() else Path(self.opts.ca_bundle)
        return bundle.read_bytes()

    def channel(self, endpoint: str) -> grpc.Channel:
        """A channel to a control-plane endpoint with the current SVID (ControlOptions.channel)."""
        credentials = self.channel_credentials()
        if credentials is None:
            return grpc.insecure_channel(endpoint)
        return grpc.secure_channel(endpoint, credentials)

    def _attempts(self) -> list[tuple[str, bool, str | None]]:
        """(endpoint, with client certificate, token) in the order to try them."""
        have_cert = self.certificate is not None and self._left(self.certificate) > 0
        tls = self.opts.ca_bundle is not None
        out: list[tuple[str, bool, str | None]] = []
        if have_cert and tls:
            out += [(e, True, None) for e in self.opts.endpoints]
        if self.opts.token:
            bootstrap = (self.opts.bootstrap_endpoints or self.opts.endpoints) if tls \
                else self.opts.endpoints
            out += [(e, False, self.opts.token) for e in bootstrap]
        return out

    def renew_once(self) -> x509.Certificate:
        """Ask the CA for a new certificate (a new key); write it; IdentityError says why not."""
        attempts = self._attempts()
        if not attempts:
            raise IdentityError("no valid certificate to renew with and no bootstrap token")
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(self.opts.spiffe_id)]), critical=True)
               .sign(key, hashes.SHA256()))
        request = ca_pb2.SignRequest(node_id=self.opts.node_id, ttl_seconds=int(self.opts.ttl),
                                     csr_pem=csr.public_bytes(serialization.Encoding.PEM))
        problems = []
        for endpoint, with_cert, token in attempts:
            metadata = [("authorization", f"Bearer {token}")] if token else []
            try:
                channel = self._channel(endpoint, client_certificate=with_cert)
            except OSError as exc:
                problems.append(f"{endpoint}: {exc}")
                continue
            try:
                reply = ca_pb2_grpc.CertificateAuthorityStub(channel).Sign(
                    request, timeout=CALL_TIMEOUT, metadata=metadata)
            except grpc.RpcError as exc:
                how = "certificate" if with_cert else "bootstrap token"
                problems.append(f"{endpoint} ({how}): {exc.code().name}: {exc.details()}")
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    break  # the CA refused this SPIFFE ID: asking elsewhere will not help
                continue
            finally:
                channel.close()
            cert = x509.load_pem_x509_certificates(reply.certificate_pem)[0]
            if _spiffe_ids(cert) != [self.opts.spiffe_id]:
                problems.append(f"{endpoint}: the CA returned a certificate for "
                                f"{_spiffe_ids(cert)}")
                continue
            self._write(key, reply)
            self._schedule(cert)
            self._refresh_crl_soon()
            self.renewals += 1
            self.renewed.set()
            log.info("identity %s: certificate serial %x until %s (renewal at half life, in "
                     "%.1fs)", self.opts.spiffe_id, cert.serial_number,
                     cert.not_valid_after_utc.isoformat(), self.renew_at - self.clock())
            return cert
        raise IdentityError("; ".join(problems))

    # ---- CRLs ----
    def refresh_crl(self) -> bool:
        """Fetch the bundle and the CRLs (GetBundle) and write what changed, the bundle first;
        True if something did. IdentityError says why nothing could be fetched."""
        tls = self.opts.ca_bundle is not None
        attempts: list[tuple[str, bool]] = []
        if not tls:
            attempts = [(e, False) for e in self.opts.endpoints]
        else:
            if self.certificate is not None and self._left(self.certificate) > 0:
                attempts = [(e, True) for e in self.opts.endpoints]
            attempts += [(e, False) for e in self.opts.bootstrap_endpoints]
        problems = []
        for endpoint, with_cert in attempts:
            try:
                channel = self._channel(endpoint, client_certificate=with_cert)
            except OSError as exc:
                problems.append(f"{endpoint}: {exc}")
                continue
            try:
                reply = ca_pb2_grpc.CertificateAuthorityStub(channel).GetBundle(
                    ca_pb2.GetBundleRequest(), timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                problems.append(f"{endpoint}: {exc.code().name}: {exc.details()}")
                continue
            finally:
                channel.close()
            if not reply.crl_pem or not reply.bundle_pem:
                problems.append(f"{endpoint}: MeshKit sent no CRLs (an older version?)")
                continue
            return self._write_crl(reply)
        raise IdentityError("cannot fetch the CRLs: " + ("; ".join(problems)
                                                         or "no MeshKit endpoint for it"))

    def _write_crl(self, reply: ca_pb2.TrustBundle) -> bool:
        changed = False
        for path, data in ((self.bundle_file, reply.bundle_pem), (self.crl_file, reply.crl_pem)):
            try:
                same = path.read_bytes() == data
            except OSError:
                same = False
            if not same:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                _replace(path, data, 0o644)
                changed = True
        self.crl_next_update = float(reply.crl_next_update_unix)
        now = self.clock()
        half = max((self.crl_next_update - now) / 2, 1.0)
        self.crl_at = now + (min(self.opts.crl_interval, half) if self.opts.crl_interval > 0
                             else half)
        if changed:
            self.crl_updates += 1
            log.info("identity %s: new CRLs (next update %s) in %s", self.opts.spiffe_id,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.crl_next_update)),
                     self.crl_file)
        return changed

    def _refresh_crl_soon(self) -> None:
        """After a renewal: fetch the CRLs now, or retry them shortly (the renewal stands)."""
        try:
            self.refresh_crl()
        except IdentityError as exc:
            log.warning("identity %s: %s; retrying", self.opts.spiffe_id, exc)
            self.crl_at = self.clock() + _backoff(0)

    def obtain(self, timeout: float = 30.0) -> x509.Certificate:
        """A usable certificate: the one on disk if still valid (renewed later at half its
        remaining life), else a new one, retrying with backoff until `timeout`."""
        existing = self._load_existing()
        if existing is not None:
            self._schedule(existing)
            log.info("identity %s: using %s (serial %x, until %s)", self.opts.spiffe_id,
                     self.cert_file, existing.serial_number,
                     existing.not_valid_after_utc.isoformat())
            self._refresh_crl_soon()
            return existing
        if not self.opts.token:
            raise IdentityError(f"no usable certificate for {self.opts.spiffe_id} in {self.dir} "
                                "and no bootstrap token to ask for one (omnirctl ca "
                                "register-node prints it)")
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                return self.renew_once()
            except IdentityError as exc:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise IdentityError(f"no certificate for {self.opts.spiffe_id} within "
                                        f"{timeout:g}s: {exc}") from None
                delay = min(left, _backoff(attempt))
                attempt += 1
                log.warning("identity %s: %s; retrying in %.2fs", self.opts.spiffe_id, exc,
                            delay)
                self._stop.wait(delay)

    # ---- renewal thread ----
    def start(self) -> NodeIdentity:
        self._thread = threading.Thread(target=self._run, name="omnirelay-identity",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        attempt = 0
        crl_attempt = 0
        expired_logged = False
        while not self._stop.is_set():
            wait = min(self.renew_at, self.crl_at) - self.clock()
            if wait > 0 and self._stop.wait(wait):
                return
            if self.renew_at > self.clock():  # the CRLs are due, not the certificate
                crl_attempt = self._crl_round(crl_attempt)
                continue
            try:
                self.renew_once()
            except IdentityError as exc:
                self.failures += 1
                cert = self.certificate
                left = self._left(cert) if cert is not None else 0.0
                delay = _backoff(attempt)
                attempt += 1
                if left <= 0 and not expired_logged:
                    expired_logged = True
                    log.error("identity %s: the certificate has EXPIRED and cannot be renewed "
                              "(%s); peers refuse it (fail closed); still retrying",
                              self.opts.spiffe_id, exc)
                else:
                    log.warning("identity %s: renewal failed (%s); %.0fs of validity left; "
                                "retrying in %.2fs", self.opts.spiffe_id, exc, left, delay)
                self.renew_at = self.clock() + (min(delay, left / 2) if left > 1 else delay)
                continue
            attempt = 0
            expired_logged = False
            self._apply()

    def _crl_round(self, attempt: int) -> int:
        """Fetch the CRLs; apply them if they changed. Returns the next failure count."""
        try:
            changed = self.refresh_crl()
        except IdentityError as exc:
            self.failures += 1
            delay = _backoff(attempt)
            left = self.crl_next_update - self.clock()
            if self.crl_next_update and left <= 0:
                log.error("identity %s: the CRLs are past their next update and %s; TLS "
                          "peers are refused (fail closed); still retrying",
                          self.opts.spiffe_id, exc)
            else:
                log.warning("identity %s: %s; retrying in %.2fs", self.opts.spiffe_id, exc,
                            delay)
            self.crl_at = self.clock() + delay
            return attempt + 1
        if changed:
            self._apply()
        return 0

    def _apply(self) -> None:
        self.renewed.set()
        if self.on_renewed is not None:
            try:
                self.on_renewed()
            except Exception:
                log.exception("identity %s: applying the renewed certificate or CRLs failed",
                              self.opts.spiffe_id)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _spiffe_ids(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _backoff(attempt: int) -> float:
    return random.uniform(BACKOFF_BASE / 2, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempt, 10)))


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)



class IdentityReload(PipeService):
    """A supervisor Service: after a renewal (`notify`, from the identity thread), rebuild
    the active config from the poll loop, which re-reads the TLS files, and activate it
    through the reload path. A config that no longer builds (say, an expired certificate)
    is refused and the running one keeps serving."""

    def __init__(self, build_check: Callable) -> None:
        super().__init__()
        self.supervisor = None  # set once the Supervisor exists
        self.build_check = build_check
        self.pending = False
        self.applied = 0

    def notify(self) -> None:
        self.pending = True
        self._pipe.wake()

    def _runnable(self) -> bool:
        sup = self.supervisor
        # Not while workers still answer a reload (a config push): activating now would
        # supersede it and its waiter would report a failure. The next poll comes soon.
        return (self.pending and sup is not None and sup.phase.value == "serving"
                and not sup.reloading)

    def timeout(self, now: float) -> float | None:
        if not self.pending or self.supervisor is None:
            return None
        return 0.0 if self._runnable() else 0.05  # waiting for a reload to finish

    def run_timers(self, now: float) -> None:
        if not self._runnable():
            return
        self.pending = False
        config = self.supervisor.config
        try:
            self.build_check(config)
        except Exception as exc:  # noqa: BLE001 - ConfigError naming the file, or a filter's
            log.error("renewed certificate not applied, still serving config %s: %s",
                      config.metadata.version, exc)
            return
        log.info("renewed certificate: reloading config %s", config.metadata.version)
        if self.supervisor.activate(config) is None:
            self.applied += 1

    def close(self) -> None:
        self.detach()
