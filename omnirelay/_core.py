"""The one module that imports omnirelay_core (ARCHITECTURE.md layering)."""
from omnirelay_core.buffers import BufferPool
from omnirelay_core.connection import pool_stats
from omnirelay_core.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    NoRoute,
    ProxyError,
    RequestTimeout,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnavailable,
    reason_for,
)
from omnirelay_core.filterchain import HOOK_METHODS, FilterChain, LocalReply
from omnirelay_core.headers import HeaderMap
from omnirelay_core.l4 import L4ListenerRuntime, L4ListenerState, L4Stats
from omnirelay_core.native import ABI_MAJOR as NATIVE_ABI_MAJOR
from omnirelay_core.native import ABI_MINOR as NATIVE_ABI_MINOR
from omnirelay_core.native import NativeBinding
from omnirelay_core.native import host_api_address as native_host_api_address
from omnirelay_core.native import include_dir as native_include_dir
from omnirelay_core.router import HeaderEdits, RouteEntry, RouteTable
from omnirelay_core.server import ListenerRuntime
from omnirelay_core.sni import SniTable, negotiated_alpn, parse_client_hello
from omnirelay_core.stats import UPSTREAM_TIME_BOUNDS, Stats, UpstreamStats
from omnirelay_core.stream import AccessSink, HttpStream, ListenerState
from omnirelay_core.tls import TlsServer
from omnirelay_core.tls import unavailable as core_tls_unavailable
from omnirelay_core.upstream import Cluster, Endpoint

__all__ = [
    "HOOK_METHODS",
    "NATIVE_ABI_MAJOR",
    "NATIVE_ABI_MINOR",
    "UPSTREAM_TIME_BOUNDS",
    "AccessSink",
    "BadRequest",
    "BodyTooLarge",
    "BufferPool",
    "Cluster",
    "Endpoint",
    "FilterChain",
    "HeaderEdits",
    "HeaderMap",
    "HeadersTooLarge",
    "HttpStream",
    "L4ListenerRuntime",
    "L4ListenerState",
    "L4Stats",
    "ListenerRuntime",
    "ListenerState",
    "LocalReply",
    "NativeBinding",
    "NoRoute",
    "ProxyError",
    "RequestTimeout",
    "RouteEntry",
    "RouteTable",
    "SniTable",
    "Stats",
    "TlsServer",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamStats",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "core_tls_unavailable",
    "native_host_api_address",
    "native_include_dir",
    "negotiated_alpn",
    "parse_client_hello",
    "pool_stats",
    "reason_for",
]
