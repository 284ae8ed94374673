"""TLS contexts built from config: server contexts for terminating listeners and client
contexts for clusters that originate TLS. Files are read here, at build time, so a bad
certificate rejects the config (with the file and the reason) and the running one keeps
serving.

Expired or not-yet-valid material fails closed: a listener certificate, a client certificate
or any certificate of a CA bundle outside its validity window is a ConfigError naming the
file and the date, so a reload carrying it is rejected and a first start fails with the
reason. A certificate that expires within EXPIRY_WARNING, or within the last quarter of its
lifetime if that is shorter, is logged as a warning when a context is built from it.

Revocation: a listener's `client_crl_file` and a cluster's `crl_file` hold PEM CRLs (one per
CA, e.g. MeshKit's `omnirctl ca crl`); they are loaded into the context's store with
VERIFY_CRL_CHECK_LEAF, so a revoked peer certificate fails verification. A CRL file is
reread with the other files at every build (a reload; `omnirelay run --identity` reloads
when MeshKit publishes new CRLs). A CRL past its nextUpdate fails closed: a build refuses
it, and a listener whose loaded CRL passes its nextUpdate refuses handshakes until a reload
brings a fresh one (it counts in `expiry` like a certificate); a cluster's connects then fail
verification (`CRL has expired`)."""
from __future__ import annotations

import datetime
import logging
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from omnirelay._core import core_tls_unavailable
from omnirelay.config import ConfigError, ConfigIssue
from omnirelay.config.model import Cluster, Listener, TlsContext, UpstreamTls

log = logging.getLogger("omnirelay.tls")

EXPIRY_WARNING = datetime.timedelta(days=7)


def core_tls_reason() -> str | None:
    """Why TLS (listeners and clusters) uses the event loop's TLS instead of the core's, or
    None. OMNIRELAY_CORE_TLS=0 asks for the event loop's (a fallback, and for A/B runs)."""
    if os.environ.get("OMNIRELAY_CORE_TLS", "1") == "0":
        return "OMNIRELAY_CORE_TLS=0"
    return core_tls_unavailable()


_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server contexts of one TLS listener: the default certificate's and one per
    `certificates` entry, picked by the ClientHello's server name."""

    default: ssl.SSLContext
    exact: Mapping[str, ssl.SSLContext]
    suffixes: tuple[tuple[str, ssl.SSLContext], ...]  # ('.example.com', ctx), longest first
    # (certificate or bundle file, not-after as a Unix time) of everything the listener relies
    # on; past the earliest, handshakes are refused (fail closed) until new material loads.
    expiry: tuple[tuple[str, float], ...]
    not_after: float

    def select(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            name = server_name.lower()
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            for suffix, ctx in self.suffixes:
                if name.endswith(suffix):
                    return ctx
        return self.default

    def expired_file(self, now: float) -> tuple[str, float] | None:
        """The first file whose certificate has expired by `now`, if any."""
        for filename, end in self.expiry:
            if end <= now:
                return filename, end
        return None


def build_tls_contexts(listeners: Sequence[Listener]) -> dict[str, ServerTls]:
    """The server contexts of every TLS-terminating listener, by name. Raises ConfigError
    with one issue per unreadable or unusable certificate or key file."""
    contexts = {}
    issues: list[ConfigIssue] = []
    for i, lst in enumerate(listeners):
        if lst.protocol == "http" and lst.tls is not None:
            try:
                contexts[lst.name] = server_tls(lst.tls, f"spec.listeners[{i}].tls")
            except ConfigError as e:
                issues += e.issues
    if issues:
        raise ConfigError(issues)
    return contexts


def server_tls(tls: TlsContext, path: str = "tls") -> ServerTls:
    """The default context and one per SNI certificate, all with the same protocol
    settings; ConfigError lists every unusable file at once."""
    issues: list[ConfigIssue] = []
    if tls.ciphers is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise ConfigError([ConfigIssue(
                f"{path}.ciphers", f"no usable cipher in {tls.ciphers!r} (an OpenSSL cipher "
                "list, e.g. 'ECDHE+AESGCM:ECDHE+CHACHA20')")]) from None
    expiry: list[tuple[str, float]] = []
    before = len(issues)
    if tls.client_crl_file is not None and tls.client_ca_file is not None:
        _check_crl(tls.client_crl_file, f"{path}.client_crl_file", tls.client_ca_file,
                   issues, expiry)
    crl = len(issues) == before  # else reported once, not again by each context
    default = _server_context(tls, tls.cert_file, tls.key_file, path, issues, expiry, crl)
    exact: dict[str, ssl.SSLContext] = {}
    suffixes: list[tuple[str, ssl.SSLContext]] = []
    for i, entry in enumerate(tls.certificates):
        ctx = _server_context(tls, entry.cert_file, entry.key_file,
                              f"{path}.certificates[{i}]", issues, expiry, crl)
        for name in entry.server_names:
            if name.startswith("*."):
                suffixes.append((name[1:], ctx))
            else:
                exact[name] = ctx
    if issues or default is None:
        raise ConfigError(issues)
    suffixes.sort(key=lambda item: -len(item[0]))
    return ServerTls(default, exact, tuple(suffixes), tuple(expiry),
                     min((end for _, end in expiry), default=float("inf")))


def server_ssl_context(tls: TlsContext, path: str = "tls") -> ssl.SSLContext:
    """The default certificate's context of `tls` (see server_tls)."""
    return server_tls(tls, path).default


def _server_context(tls: TlsContext, cert_file: str, key_file: str, path: str,
                    issues: list[ConfigIssue], expiry: list[tuple[str, float]],
                    crl: bool = True) -> ssl.SSLContext | None:
    """TLS 1.2+ (or as configured) with one certificate chain and key, offering the ALPN
    protocols in the configured order (the server's preference decides). Problems are
    appended to `issues`, naming the file; `path` locates the section in the document."""
    before = len(issues)
    _check_pair(cert_file, key_file, path, issues, expiry)
    if tls.client_ca_file is not None:
        _check_bundle(tls.client_ca_file, f"{path}.client_ca_file", "client CA bundle", issues,
                      expiry)
    if len(issues) > before:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ciphers is not None:
        ctx.set_ciphers(tls.ciphers)  # checked once by server_tls
    try:
        _load_chain(ctx, cert_file, key_file, path)
    except ConfigError as e:
        issues += e.issues
        return None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as e:
            issues.append(ConfigIssue(
                f"{path}.client_ca_file",
                f"{tls.client_ca_file}: not a PEM CA bundle ({e.reason or e})"))
            return None
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_certificate
                           else ssl.CERT_OPTIONAL)
        if tls.client_crl_file is not None and not (crl and _load_crl(
                ctx, tls.client_crl_file, f"{path}.client_crl_file", issues)):
            return None
    ctx.set_alpn_protocols(list(tls.alpn))
    return ctx


def _read(filename: str, path: str, what: str, issues: list[ConfigIssue]) -> bytes | None:
    try:
        with open(filename, "rb") as f:
            return f.read()
    except OSError as e:
        issues.append(ConfigIssue(path, f"cannot read {what} file {filename}: "
                                  f"{e.strerror or e}"))
        return None


def build_client_contexts(clusters: Sequence[Cluster]) -> dict[str, ssl.SSLContext]:
    """The client SSLContext of every cluster with `tls`, by name; ConfigError as above."""
    contexts = {}
    issues: list[ConfigIssue] = []
    for i, c in enumerate(clusters):
        if c.tls is not None:
            try:
                contexts[c.name] = client_ssl_context(c.tls, c.protocol,
                                                      f"spec.clusters[{i}].tls")
            except ConfigError as e:
                issues += e.issues
    if issues:
        raise ConfigError(issues)
    return contexts


def client_ssl_context(tls: UpstreamTls, protocol: str = "http1",
                       path: str = "tls") -> ssl.SSLContext:
    """TLS 1.2+ toward upstreams. With an allowed SPIFFE ID list the peer is checked by its
    URI SAN (after chain verification) instead of by host name, as SPIFFE prescribes."""
    issues: list[ConfigIssue] = []
    if tls.ca_file is not None and tls.verify:
        _check_bundle(tls.ca_file, f"{path}.ca_file", "trust bundle", issues)
    elif tls.ca_file is not None:
        _read(tls.ca_file, f"{path}.ca_file", "trust bundle", issues)
    if tls.cert_file is not None and tls.key_file is not None:
        _check_pair(tls.cert_file, tls.key_file, path, issues)
    if tls.crl_file is not None and tls.verify:
        _check_crl(tls.crl_file, f"{path}.crl_file", tls.ca_file, issues)
    if issues:
        raise ConfigError(issues)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = not tls.allowed_spiffe_ids
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if tls.ca_file is not None:
                ctx.load_verify_locations(cafile=tls.ca_file)
            else:
                ctx.load_default_certs()
        except ssl.SSLError as e:
            raise ConfigError([ConfigIssue(
                f"{path}.ca_file", f"{tls.ca_file}: not a PEM trust bundle ({e.reason or e})")
            ]) from None
        if tls.crl_file is not None and not _load_crl(ctx, tls.crl_file, f"{path}.crl_file",
                                                      issues):
            raise ConfigError(issues)
    if tls.cert_file is not None:
        _load_chain(ctx, tls.cert_file, tls.key_file, path)
    alpn = list(tls.alpn) or (["h2"] if protocol == "http2" else ["http/1.1"])
    ctx.set_alpn_protocols(alpn)
    return ctx


def _check_pair(cert_file: str, key_file: str, path: str, issues: list[ConfigIssue],
                expiry: list[tuple[str, float]] | None = None) -> None:
    """Record why a certificate chain / private key pair is unusable, if it is."""
    cert_path, key_path = f"{path}.cert_file", f"{path}.key_file"
    cert = _read(cert_file, cert_path, "certificate", issues)
    key = _read(key_file, key_path, "private key", issues)
    if cert is not None:
        try:
            chain = x509.load_pem_x509_certificates(cert)
            if not chain:
                raise ValueError("no certificate found")
        except ValueError as e:
            issues.append(ConfigIssue(cert_path, f"{cert_file}: not a PEM certificate chain ({e})"))
        else:
            _check_validity(chain[:1], cert_file, cert_path, "the certificate", issues)
            if expiry is not None:
                expiry.append((cert_file, chain[0].not_valid_after_utc.timestamp()))
    if key is not None:
        try:
            load_pem_private_key(key, password=None)
        except TypeError:
            issues.append(ConfigIssue(
                key_path, f"{key_file}: the private key is encrypted; give an "
                "unencrypted PEM key (readable only by the proxy's user)"))
        except (ValueError, UnsupportedAlgorithm) as e:
            issues.append(ConfigIssue(key_path, f"{key_file}: not a PEM private key ({e})"))


def _check_bundle(filename: str, path: str, what: str, issues: list[ConfigIssue],
                  expiry: list[tuple[str, float]] | None = None) -> None:
    """Read a CA bundle and record any of its certificates outside its validity window. A
    bundle that does not parse here is left to OpenSSL, which reports it when loading."""
    data = _read(filename, path, what, issues)
    if data is None:
        return
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return
    _check_validity(certs, filename, path, f"a certificate of the {what}", issues)
    if expiry is not None and certs:
        expiry.append((filename, min(c.not_valid_after_utc.timestamp() for c in certs)))


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _check_crl(filename: str, path: str, ca_file: str | None, issues: list[ConfigIssue],
               expiry: list[tuple[str, float]] | None = None) -> None:
    """Record why a CRL file is unusable: not PEM CRLs, a CRL past its nextUpdate or before
    its lastUpdate, or one whose signature does not verify with its issuer in `ca_file`. A CA
    of the bundle without a CRL is a warning: OpenSSL refuses every certificate it issued."""
    data = _read(filename, path, "CRL", issues)
    if data is None:
        return
    crls = []
    for block in _PEM_CRL.findall(data):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as e:
            issues.append(ConfigIssue(path, f"{filename}: not a PEM CRL ({e})"))
            return
    if not crls:
        issues.append(ConfigIssue(path, f"{filename}: no PEM CRL (-----BEGIN X509 CRL-----) "
                                  "in the file"))
        return
    cas: list[x509.Certificate] = []
    if ca_file is not None:
        try:
            with open(ca_file, "rb") as f:
                cas = x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError):
            pass  # reported for the bundle's own field
    now = datetime.datetime.now(datetime.UTC)
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        end, start = crl.next_update_utc, crl.last_update_utc
        if end is None:
            issues.append(ConfigIssue(path, f"{filename}: the CRL of {issuer} has no "
                                      "nextUpdate (cannot tell when it is stale)"))
        elif end <= now:
            issues.append(ConfigIssue(path, f"{filename}: the CRL of {issuer} expired "
                                      f"(nextUpdate) on {_date(end)}; fetch a fresh one"))
        elif expiry is not None:
            expiry.append((filename, end.timestamp()))
        if start > now:  # OpenSSL would refuse every certificate of that CA until then
            issues.append(ConfigIssue(path, f"{filename}: the CRL of {issuer} is not valid "
                                      f"before {_date(start)} (lastUpdate; is this clock "
                                      "behind?)"))
        signer = next((ca for ca in cas if ca.subject == crl.issuer), None)
        if signer is not None and not _crl_signed_by(crl, signer):
            issues.append(ConfigIssue(path, f"{filename}: the CRL of {issuer} is not signed by "
                                      f"that CA of {ca_file}"))
    listed = {crl.issuer for crl in crls}
    for ca in cas:
        if ca.subject not in listed:
            log.warning("%s: %s has no CRL of %s (a CA of %s): every certificate it issued "
                        "is refused", path, filename, ca.subject.rfc4514_string(), ca_file)


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _load_crl(ctx: ssl.SSLContext, filename: str, path: str,
              issues: list[ConfigIssue]) -> bool:
    """Add the CRLs to the context's store and check the leaf against them."""
    try:
        ctx.load_verify_locations(cafile=filename)
    except (ssl.SSLError, OSError) as e:
        issues.append(ConfigIssue(path, f"{filename}: cannot load the CRLs "
                                  f"({getattr(e, 'reason', None) or e})"))
        return False
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return True


def _check_validity(certs: Sequence[x509.Certificate], filename: str, path: str, what: str,
                    issues: list[ConfigIssue]) -> None:
    """Fail closed on certificates outside their validity window; warn on those expiring
    within EXPIRY_WARNING."""
    now = datetime.datetime.now(datetime.UTC)
    for cert in certs:
        subject = cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if end < now:
            issues.append(ConfigIssue(path, f"{filename}: {what} ({subject}) expired on "
                                      f"{_date(end)}"))
        elif start > now:
            issues.append(ConfigIssue(path, f"{filename}: {what} ({subject}) is not valid "
                                      f"before {_date(start)}"))
        elif end - now < min(EXPIRY_WARNING, (end - start) / 4):
            # Short-lived certificates (SVIDs of a day) are renewed well before this.
            log.warning("%s: %s: %s (%s) expires on %s, in %s", path, filename, what, subject,
                        _date(end), _left(end - now))


def _date(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _left(delta: datetime.timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h"


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str, path: str) -> None:
    cert_path, key_path = f"{path}.cert_file", f"{path}.key_file"
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise ConfigError([ConfigIssue(
                key_path, f"{key_file}: the private key does not match the certificate "
                f"in {cert_file}")]) from None
        raise ConfigError([ConfigIssue(
            cert_path, f"cannot load {cert_file} with key {key_file}: {e.reason or e}")]) from None
    except OSError as e:  # the files changed under us
        raise ConfigError([ConfigIssue(
            cert_path, f"cannot load {cert_file}: {e.strerror or e}")]) from None
