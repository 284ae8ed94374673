"""TLS contexts built from config: server contexts for terminating listeners and client
contexts for clusters that originate TLS. Files are read here, at build time, so a bad
certificate rejects the config (with the file and the reason) and the running one keeps
serving."""
from __future__ import annotations

import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from omnirelay.config import ConfigError, ConfigIssue
from omnirelay.config.model import Cluster, Listener, TlsContext, UpstreamTls


def build_tls_contexts(listeners: Sequence[Listener]) -> dict[str, ssl.SSLContext]:
    """The server SSLContext of every TLS-terminating listener, by name. Raises ConfigError
    with one issue per unreadable or unusable certificate or key file."""
    contexts = {}
    issues: list[ConfigIssue] = []
    for i, lst in enumerate(listeners):
        if lst.protocol == "http" and lst.tls is not None:
            try:
                contexts[lst.name] = server_ssl_context(lst.tls, f"spec.listeners[{i}].tls")
            except ConfigError as e:
                issues += e.issues
    if issues:
        raise ConfigError(issues)
    return contexts


def server_ssl_context(tls: TlsContext, path: str = "tls") -> ssl.SSLContext:
    """TLS 1.2+ with the certificate chain and key of `tls`, offering its ALPN protocols in
    the configured order (the server's preference decides). Raises ConfigError naming the
    file and what is wrong with it; `path` locates the `tls` section in the document."""
    issues: list[ConfigIssue] = []
    _check_pair(tls.cert_file, tls.key_file, path, issues)
    if tls.client_ca_file is not None:
        _read(tls.client_ca_file, f"{path}.client_ca_file", "client CA bundle", issues)
    if issues:
        raise ConfigError(issues)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, tls.cert_file, tls.key_file, path)
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as e:
            raise ConfigError([ConfigIssue(
                f"{path}.client_ca_file",
                f"{tls.client_ca_file}: not a PEM CA bundle ({e.reason or e})")]) from None
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.require_client_certificate
                           else ssl.CERT_OPTIONAL)
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
    if tls.ca_file is not None:
        _read(tls.ca_file, f"{path}.ca_file", "trust bundle", issues)
    if tls.cert_file is not None and tls.key_file is not None:
        _check_pair(tls.cert_file, tls.key_file, path, issues)
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
    if tls.cert_file is not None:
        _load_chain(ctx, tls.cert_file, tls.key_file, path)
    alpn = list(tls.alpn) or (["h2"] if protocol == "http2" else ["http/1.1"])
    ctx.set_alpn_protocols(alpn)
    return ctx


def _check_pair(cert_file: str, key_file: str, path: str, issues: list[ConfigIssue]) -> None:
    """Record why a certificate chain / private key pair is unusable, if it is."""
    cert_path, key_path = f"{path}.cert_file", f"{path}.key_file"
    cert = _read(cert_file, cert_path, "certificate", issues)
    key = _read(key_file, key_path, "private key", issues)
    if cert is not None:
        try:
            if not x509.load_pem_x509_certificates(cert):
                raise ValueError("no certificate found")
        except ValueError as e:
            issues.append(ConfigIssue(cert_path, f"{cert_file}: not a PEM certificate chain ({e})"))
    if key is not None:
        try:
            load_pem_private_key(key, password=None)
        except TypeError:
            issues.append(ConfigIssue(
                key_path, f"{key_file}: the private key is encrypted; give an "
                "unencrypted PEM key (readable only by the proxy's user)"))
        except (ValueError, UnsupportedAlgorithm) as e:
            issues.append(ConfigIssue(key_path, f"{key_file}: not a PEM private key ({e})"))


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
