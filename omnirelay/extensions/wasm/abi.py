"""Proxy-Wasm ABI 0.2.1: the numbers of the spec and its serialization formats.

Pure Python, no wasmtime: the host (``vm.py``) and the tests share it.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable

ABI_VERSION = "0.2.1"
# A module advertises the ABI it was built for by exporting one of these markers.
ABI_MARKERS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0")

# proxy_status_t
OK = 0
NOT_FOUND = 1
BAD_ARGUMENT = 2
SERIALIZATION_FAILURE = 3
PARSE_FAILURE = 4
INVALID_MEMORY_ACCESS = 6
EMPTY = 7
CAS_MISMATCH = 8
INTERNAL_FAILURE = 10
UNIMPLEMENTED = 12

# proxy_action_t
ACTION_CONTINUE = 0
ACTION_PAUSE = 1

# proxy_log_level_t
TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL = range(6)

# proxy_buffer_type_t
HTTP_REQUEST_BODY = 0
HTTP_RESPONSE_BODY = 1
DOWNSTREAM_DATA = 2
UPSTREAM_DATA = 3
HTTP_CALL_RESPONSE_BODY = 4
GRPC_CALL_MESSAGE = 5
VM_CONFIGURATION = 6
PLUGIN_CONFIGURATION = 7
FOREIGN_FUNCTION_ARGUMENTS = 8

# proxy_map_type_t
HTTP_REQUEST_HEADERS = 0
HTTP_REQUEST_TRAILERS = 1
HTTP_RESPONSE_HEADERS = 2
HTTP_RESPONSE_TRAILERS = 3
GRPC_CALL_INITIAL_METADATA = 4
GRPC_CALL_TRAILING_METADATA = 5
HTTP_CALL_RESPONSE_HEADERS = 6
HTTP_CALL_RESPONSE_TRAILERS = 7

# proxy_stream_type_t
STREAM_HTTP_REQUEST = 0
STREAM_HTTP_RESPONSE = 1
STREAM_DOWNSTREAM = 2
STREAM_UPSTREAM = 3

# proxy_metric_type_t
METRIC_COUNTER = 0
METRIC_GAUGE = 1
METRIC_HISTOGRAM = 2
METRIC_TYPES = {METRIC_COUNTER: "counter", METRIC_GAUGE: "gauge", METRIC_HISTOGRAM: "histogram"}

# wasi_errno_t (the subset the spec and our WASI shims use)
WASI_SUCCESS = 0
WASI_BADF = 8
WASI_FAULT = 21
WASI_INVAL = 28
WASI_NOSYS = 52
WASI_NOTSUP = 58
WASI_SPIPE = 70

# wasi_clock_id_t
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1

_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")


class SerializationError(ValueError):
    """A serialized map from the guest is malformed."""


def serialize_map(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The spec's map format: u32 count, (u32 key length, u32 value length) per pair,
    then each key and value followed by a NUL byte. Integers are little-endian."""
    pairs = list(pairs)
    if not pairs:
        return b""
    sizes = bytearray(_U32.pack(len(pairs)))
    data = bytearray()
    for k, v in pairs:
        sizes += _U32x2.pack(len(k), len(v))
        data += k
        data += b"\0"
        data += v
        data += b"\0"
    return bytes(sizes + data)


def deserialize_map(buf: bytes) -> list[tuple[bytes, bytes]]:
    """The inverse of ``serialize_map``; an empty map may be empty bytes or one NUL byte."""
    n = len(buf)
    if n == 0 or buf == b"\0":
        return []
    if n < 4:
        raise SerializationError("map shorter than its 4-byte count")
    (count,) = _U32.unpack_from(buf, 0)
    if count == 0:
        return []
    head = 4 + 8 * count
    if head > n:
        raise SerializationError(f"map of {count} pairs does not fit in {n} bytes")
    out = []
    pos = head
    for i in range(count):
        kl, vl = _U32x2.unpack_from(buf, 4 + 8 * i)
        end = pos + kl + 1 + vl + 1
        if end > n:
            raise SerializationError(f"pair {i} runs past the end of the map")
        out.append((bytes(buf[pos:pos + kl]), bytes(buf[pos + kl + 1:pos + kl + 1 + vl])))
        pos = end
    return out


def property_path(raw: bytes) -> tuple[str, ...]:
    """A property path from the guest: tokens separated by NUL (the SDKs' form, e.g.
    ``b"request\\0path"``), or a dotted string (``b"request.path"``)."""
    raw = raw.rstrip(b"\0")
    sep = b"\0" if b"\0" in raw else b"."
    return tuple(p.decode("utf-8", "replace") for p in raw.split(sep))


def encode_int(value: int) -> bytes:
    """Integers in properties are 8-byte little-endian, as in Envoy."""
    return struct.pack("<q", value)
