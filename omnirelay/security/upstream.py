"""Calls a filter makes to an upstream cluster of the proxy's own config: JWKS fetches and Wasm
plugins' HTTP callouts.

The filter API has no way for a filter to send a request through the core's connection
pools, so a side fetch goes out on its own connection, with a small asyncio HTTP/1.1 client,
to an endpoint of the named cluster: the cluster's definition (endpoints, their health and
outlier-ejection state, its TLS context) is the proxy's, only the connection is not pooled.

Finding the cluster: a filter factory is built from its own config only, so the runtime
publishes its live core clusters here with ``publish_clusters(owner, clusters)`` each time
it builds a config (``owner`` is the object that owns them, e.g. the TableBuilder; entries
go away with it). ``find_cluster(name)`` looks through the live owners, the most recently
published first: with several Relays alive in one process, a cluster name resolves to the
cluster of the most recently built config that has one of that name.
"""
from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "omnirelay"
MAX_HEAD_BYTES = 16384

# owner -> (sequence number, {cluster name: core Cluster})
_PUBLISHED: weakref.WeakKeyDictionary[Any, tuple[int, Mapping[str, Any]]] = (
    weakref.WeakKeyDictionary())
_seq = 0


def publish_clusters(owner: Any, clusters: Mapping[str, Any]) -> None:
    """Make ``clusters`` (name -> core Cluster) findable by name while ``owner`` lives."""
    global _seq
    _seq += 1
    _PUBLISHED[owner] = (_seq, dict(clusters))


def find_cluster(name: str) -> Any | None:
    best = None
    best_seq = -1
    for seq, clusters in list(_PUBLISHED.values()):
        c = clusters.get(name)
        if c is not None and seq > best_seq:
            best, best_seq = c, seq
    return best


def candidate_endpoints(cluster: Any) -> list[Any]:
    """The endpoints to try, in order: healthy and not ejected ones by priority, then the
    others (a last resort, like the core's panic mode)."""
    eps = sorted(getattr(cluster, "endpoints", ()), key=lambda e: getattr(e, "priority", 0))
    good = [e for e in eps if getattr(e, "healthy", True) and not getattr(e, "ejected", False)]
    return good + [e for e in eps if e not in good]


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class HttpUri:
    scheme: str
    host: str          # Host header
    target: str        # path + query

    @classmethod
    def parse(cls, uri: str, where: str) -> HttpUri:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{where} must be an absolute http:// or https:// URI, got {uri!r}")
        if parts.username or parts.password or parts.fragment:
            raise ValueError(f"{where} must not have user info or a fragment, got {uri!r}")
        if any(c in uri for c in "\r\n\0 "):
            raise ValueError(f"{where} contains invalid characters")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.netloc, target)

    @property
    def hostname(self) -> str:
        return urlsplit(f"//{self.host}").hostname or self.host


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise FetchError("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        if len(out) + size > limit:
            raise FetchError(f"response body larger than {limit} bytes")
        out += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise FetchError("chunk not followed by CRLF")


async def http_get(address: str, port: int, uri: HttpUri, *, timeout: float,
                   ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                   limit: int = 1 << 20) -> tuple[int, bytes]:
    """GET ``uri.target`` from address:port over a fresh HTTP/1.1 connection (closed after):
    (status, body). Raises FetchError / OSError / TimeoutError."""
    status, _, body = await http_request(
        address, port, "GET", uri.target, [("host", uri.host), ("accept", "application/json")],
        timeout=timeout, ssl_context=ssl_context,
        server_hostname=server_hostname or uri.hostname, limit=limit)
    return status, body


async def http_request(address: str, port: int, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes = b"", *, timeout: float,
                       ssl_context: ssl.SSLContext | None = None,
                       server_hostname: str | None = None,
                       limit: int = 1 << 20) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request over a fresh HTTP/1.1 connection (closed after): (status, response headers
    with lowercase names, body). `headers` must include Host; a body gets Content-Length.
    Raises FetchError / OSError / TimeoutError / ssl.SSLError."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
            raise FetchError(f"invalid request header {name!r}")
        if name.lower() not in ("connection", "content-length", "transfer-encoding"):
            lines.append(f"{name}: {value}")
    if not any(n.lower() == "user-agent" for n, _ in headers):
        lines.append(f"User-Agent: {USER_AGENT}")
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            address, port, ssl=ssl_context,
            server_hostname=server_hostname if ssl_context else None, limit=MAX_HEAD_BYTES)
        try:
            writer.write(request)
            return await _read_response(reader, limit, head_only=method == "HEAD")
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader, limit: int,
                         head_only: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise FetchError("response head too large") from None
    except asyncio.IncompleteReadError:
        raise FetchError("connection closed before a response") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise FetchError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise FetchError("malformed header line")
        headers.append((name.strip().lower(), value.strip()))
    fields = dict(headers)
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    try:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader, limit)
        elif "content-length" in fields:
            n = int(fields["content-length"])
            if n < 0 or n > limit:
                raise FetchError(f"response body of {n} bytes (limit {limit})")
            body = await reader.readexactly(n)
        else:
            body = await reader.read(limit + 1)
            while len(body) <= limit:
                more = await reader.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > limit:
                raise FetchError(f"response body larger than {limit} bytes")
    except asyncio.IncompleteReadError:
        raise FetchError("response body cut short") from None
    except ValueError:
        raise FetchError("bad content-length") from None
    return status, headers, body


def _default_client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _reachable(cluster_name: str) -> tuple[Any, list[Any]]:
    """The live cluster of that name and its endpoints to try; FetchError if none."""
    cluster = find_cluster(cluster_name)
    if cluster is None:
        raise FetchError(f"cluster {cluster_name!r} is not known to the running proxy")
    endpoints = candidate_endpoints(cluster)
    if not endpoints:
        raise FetchError(f"cluster {cluster_name!r} has no endpoints")
    return cluster, endpoints


async def fetch_from_cluster(cluster_name: str, uri: HttpUri, *, timeout: float,
                             limit: int = 1 << 20) -> bytes:
    """The body of a 200 response to GET ``uri`` from the first endpoint of the cluster that
    answers (healthy ones first). TLS: the cluster's own client context when it originates
    TLS (its SNI if set, else the URI's host), else a default verifying context for https
    URIs, else cleartext. Raises FetchError with the last reason."""
    cluster, endpoints = _reachable(cluster_name)
    ctx = getattr(cluster, "ssl_context", None)
    sni = getattr(cluster, "tls_sni", None)
    if ctx is None and uri.scheme == "https":
        ctx = _default_client_context()
    last = "no endpoint tried"
    for ep in endpoints[:3]:
        try:
            status, body = await http_get(ep.host, ep.port, uri, timeout=timeout,
                                          ssl_context=ctx, server_hostname=sni, limit=limit)
        except (OSError, TimeoutError, FetchError, ssl.SSLError) as e:
            last = f"{ep.host}:{ep.port}: {type(e).__name__}: {e}"
            continue
        if status != 200:
            last = f"{ep.host}:{ep.port}: HTTP {status}"
            continue
        return body
    raise FetchError(last)


async def call_cluster(cluster_name: str, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes = b"", *, timeout: float,
                       limit: int = 1 << 20) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send one request to the cluster (a filter's side call, e.g. a Wasm plugin's HTTP
    callout): (status, headers, body) from the first endpoint that accepts the connection
    (healthy ones first; a request is never sent twice). TLS as for fetch_from_cluster.
    Raises FetchError naming the last reason."""
    cluster, endpoints = _reachable(cluster_name)
    ctx = getattr(cluster, "ssl_context", None)
    host = next((v for n, v in headers if n.lower() == "host"), None)
    sni = getattr(cluster, "tls_sni", None) or (
        urlsplit(f"//{host}").hostname if host else None)
    deadline = asyncio.get_running_loop().time() + timeout
    last = "no endpoint tried"
    for ep in endpoints[:3]:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            return await http_request(ep.host, ep.port, method, target, headers, body,
                                      timeout=left, ssl_context=ctx,
                                      server_hostname=sni or ep.host, limit=limit)
        except (ConnectionRefusedError, ssl.SSLError) as e:
            last = f"{ep.host}:{ep.port}: {type(e).__name__}: {e}"
            continue  # nothing reached the endpoint's application: the next may take it
        except (OSError, TimeoutError, FetchError) as e:
            raise FetchError(f"{ep.host}:{ep.port}: {type(e).__name__}: {e}") from None
    raise FetchError(last)
