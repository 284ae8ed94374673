"""The ClientHello SNI parser (C level) and the server-name route table, without sockets
to the proxy: real ClientHellos captured from Python's ssl module and `openssl s_client`,
synthetic ones built field by field, and truncated, re-fragmented and corrupted inputs."""
from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnirelay._core import Cluster, SniTable, parse_client_hello

STATUSES = {"need_more", "sni", "no_sni", "not_tls", "malformed"}


# --------------------------------------------------------------------------- captures


def python_hello(server_name: str | None, *, alpn: list[str] | None = None,
                 maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a Python ssl client (one ClientHello record)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def openssl_hello(*args: str) -> bytes:
    """The first TLS record `openssl s_client` sends, read by its own length field."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)
        port = srv.getsockname()[1]
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                head = _recv_exactly(conn, 5)
                (length,) = struct.unpack("!H", head[3:5])
                return head + _recv_exactly(conn, length)
        finally:
            proc.kill()
            proc.wait()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


# --------------------------------------------------------------------------- synthetic hellos


def _vec(data: bytes, width: int) -> bytes:
    return len(data).to_bytes(width, "big") + data


def server_name_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + _vec(n, 2) for n in names)
    return struct.pack("!H", 0) + _vec(_vec(entries, 2), 2)


def extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + _vec(body, 2)


def hello_body(extensions: list[bytes] | None, *, session_id: bytes = b"\x11" * 32,
               ciphers: bytes = b"\x13\x01\x13\x02\xc0\x2f", compression: bytes = b"\x00") -> bytes:
    body = b"\x03\x03" + b"\x5a" * 32 + _vec(session_id, 1) + _vec(ciphers, 2)
    body += _vec(compression, 1)
    if extensions is not None:
        body += _vec(b"".join(extensions), 2)
    return body


def records(handshake: bytes, sizes: list[int] | None = None, *, version: bytes = b"\x03\x01") -> bytes:
    """`handshake` framed in TLS handshake records of the given payload sizes (the last
    record takes the rest)."""
    out, pos = b"", 0
    for size in sizes or []:
        if pos >= len(handshake):
            break
        out += b"\x16" + version + _vec(handshake[pos:pos + size], 2)
        pos += size
    if pos < len(handshake):
        out += b"\x16" + version + _vec(handshake[pos:], 2)
    return out


def client_hello(extensions: list[bytes] | None, **kw) -> bytes:
    body = hello_body(extensions, **kw)
    return records(b"\x01" + _vec(body, 3))


# --------------------------------------------------------------------------- real captures


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
def test_python_ssl_client_hello_sni_is_found_and_lowercased(maximum):
    data = python_hello("Api.Example.COM", alpn=["h2", "http/1.1"], maximum=maximum)
    assert parse_client_hello(data) == ("sni", "api.example.com")


def test_python_ssl_client_hello_without_sni():
    assert parse_client_hello(python_hello(None)) == ("no_sni", None)


def test_python_ssl_client_hello_with_a_long_name():
    name = ".".join(["a" * 63] * 3) + ".test"
    assert parse_client_hello(python_hello(name)) == ("sni", name)


@needs_openssl
@pytest.mark.parametrize("extra", [[], ["-tls1_2"], ["-tls1_3"], ["-alpn", "h2,http/1.1"]],
                         ids=["default", "tls1.2", "tls1.3", "alpn"])
def test_openssl_s_client_hello(extra):
    data = openssl_hello("-servername", "Backend.B.Test", *extra)
    assert parse_client_hello(data) == ("sni", "backend.b.test")


@needs_openssl
def test_openssl_s_client_hello_without_sni():
    # An IP address in -connect is never sent as SNI; -noservername makes it explicit.
    assert parse_client_hello(openssl_hello("-noservername")) == ("no_sni", None)


def test_every_proper_prefix_needs_more():
    data = python_hello("a.test")
    for k in range(len(data)):
        assert parse_client_hello(data[:k]) == ("need_more", None), k
    assert parse_client_hello(data) == ("sni", "a.test")


def test_bytes_after_the_hello_are_ignored():
    data = python_hello("a.test")
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x05hello") == ("sni", "a.test")


def test_hello_fragmented_over_several_records_is_reassembled():
    data = python_hello("frag.test")
    handshake = data[5:]
    for sizes in ([1], [3], [4], [100, 100], [1] * 50, [len(handshake) - 1]):
        split = records(handshake, sizes)
        assert parse_client_hello(split) == ("sni", "frag.test"), sizes
        for k in range(len(split)):
            assert parse_client_hello(split[:k])[0] == "need_more"


# --------------------------------------------------------------------------- synthetic


def test_synthetic_hello_variants():
    sni = server_name_ext(b"x.test")
    assert parse_client_hello(client_hello([sni])) == ("sni", "x.test")
    assert parse_client_hello(client_hello(None)) == ("no_sni", None)  # no extensions block
    assert parse_client_hello(client_hello([])) == ("no_sni", None)
    # Other extensions before and after; the empty server_name servers echo.
    exts = [extension(10, b"\x00\x02\x00\x1d"), sni, extension(16, _vec(_vec(b"h2", 1), 2))]
    assert parse_client_hello(client_hello(exts)) == ("sni", "x.test")
    assert parse_client_hello(client_hello([extension(0, b"")])) == ("no_sni", None)
    # A non-host_name entry first, then the host name.
    entries = b"\x01" + _vec(b"zz", 2) + b"\x00" + _vec(b"y.test", 2)
    ext = extension(0, _vec(entries, 2))
    assert parse_client_hello(client_hello([ext])) == ("sni", "y.test")
    # One trailing dot is dropped.
    assert parse_client_hello(client_hello([server_name_ext(b"x.test.")])) == ("sni", "x.test")
    # SSL 3.0 / TLS 1.3 record versions are fine.
    body = hello_body([sni])
    for version in (b"\x03\x00", b"\x03\x03", b"\x03\x04"):
        data = records(b"\x01" + _vec(body, 3), version=version)
        assert parse_client_hello(data) == ("sni", "x.test")


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x17\x03\x03\x00\x10" + b"\x00" * 16,       # application data first
    b"\x15\x03\x03\x00\x02\x02\x28",               # an alert
    b"\x16\x02\x00\x00\x10",                       # SSL 2-ish version
    b"\x16\x03\x05",                               # unknown minor version
    b"\x80\x2e\x01\x03\x01",                       # SSLv2 compatible ClientHello
    b"SSH-2.0-OpenSSH_9.2\r\n",
])
def test_not_tls(data):
    assert parse_client_hello(data) == ("not_tls", None)


def _body_with(**kw) -> bytes:
    return b"\x01" + _vec(hello_body([server_name_ext(b"x.test")], **kw), 3)


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x00\x00",                                         # empty record
    b"\x16\x03\x01\x40\x01" + b"\x00" * 10,                           # record > 16 KiB
    records(b"\x02" + _vec(hello_body([]), 3)),                      # ServerHello first
    records(_body_with(session_id=b"\x00" * 33)),                    # session id > 32
    records(_body_with(ciphers=b"\x13")),                            # odd cipher list
    records(_body_with(ciphers=b"")),                                # no ciphers
    records(_body_with(compression=b"")),                            # no compression
    records(b"\x01" + _vec(hello_body([server_name_ext(b"a\x00b")]), 3)),  # NUL in name
    records(b"\x01" + _vec(hello_body([server_name_ext(b"a b")]), 3)),     # space in name
    records(b"\x01" + _vec(hello_body([server_name_ext(b"")]), 3)),        # empty name
    records(b"\x01" + _vec(hello_body([server_name_ext(b".")]), 3)),       # only a dot
    records(b"\x01" + _vec(hello_body([server_name_ext(b"a" * 256)]), 3)),  # name > 255
    records(b"\x01" + _vec(hello_body([server_name_ext(b"a.test"),
                                       server_name_ext(b"b.test")]), 3)),  # two SNI exts
    records(b"\x01" + _vec(hello_body([]) + b"\x00", 3)),            # junk after extensions
    records(b"\x01" + b"\x00\x40\x01" + b"\x00" * 16),               # message > 16 KiB
    # handshake records interleaved with another content type
    records(_body_with()[:10]) + b"\x17\x03\x03\x00\x01\x00",
])
def test_malformed(data):
    assert parse_client_hello(data) == ("malformed", None)


def test_extension_length_overruns_are_malformed():
    body = bytearray(hello_body([server_name_ext(b"x.test")]))
    ext_start = len(hello_body([])) - 2      # the extensions length field
    body[ext_start:ext_start + 2] = struct.pack("!H", len(body) - ext_start)  # one too long
    assert parse_client_hello(records(b"\x01" + _vec(bytes(body), 3))) == ("malformed", None)


# --------------------------------------------------------------------------- properties

_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_CAPTURES = [python_hello("a.test"), python_hello(None),
             python_hello("Mixed.Case.Example", alpn=["h2"])]
_label = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
host_names = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(lambda n: len(n) <= 255)


@_settings
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data):
    status, name = parse_client_hello(data)
    assert status in STATUSES
    assert (name is not None) == (status == "sni")


@_settings
@given(st.binary(max_size=300))
def test_arbitrary_handshake_records_never_crash(payload):
    status, name = parse_client_hello(records(payload, [7, 50]))
    assert status in STATUSES
    if name is not None:
        assert name == name.lower() and all(0x21 <= ord(c) < 0x7F for c in name)


@_settings
@given(st.sampled_from(_CAPTURES), st.data())
def test_truncated_captures_need_more(hello, data):
    k = data.draw(st.integers(0, len(hello) - 1))
    assert parse_client_hello(hello[:k]) == ("need_more", None)


@_settings
@given(st.sampled_from(_CAPTURES), st.data())
def test_corrupted_captures_never_crash(hello, data):
    corrupted = bytearray(hello)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(hello) - 1))
        corrupted[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(corrupted)))
    status, name = parse_client_hello(bytes(corrupted[:cut]))
    assert status in STATUSES
    assert (name is not None) == (status == "sni")


@_settings
@given(
    host_names,
    st.lists(st.tuples(st.integers(1, 65535), st.binary(max_size=40)), max_size=4),
    st.lists(st.tuples(st.integers(1, 65535), st.binary(max_size=40)), max_size=4),
    st.binary(max_size=32),
    st.lists(st.integers(1, 200), max_size=4),
)
def test_synthetic_hellos_yield_their_name(name, before, after, session_id, sizes):
    exts = [extension(t, b) for t, b in before]
    exts += [server_name_ext(name.encode())]
    exts += [extension(t, b) for t, b in after]
    body = hello_body(exts, session_id=session_id)
    data = records(b"\x01" + _vec(body, 3), sizes)
    assert parse_client_hello(data) == ("sni", name.lower())
    assert parse_client_hello(data[: len(data) - 1]) == ("need_more", None)


# --------------------------------------------------------------------------- SNI routes

A, B, C, D = (Cluster(n) for n in "abcd")


def test_sni_table_exact_suffix_and_catch_all():
    t = SniTable([(("api.example.com",), A), (("*.example.com",), B), (("*",), C)])
    assert t.match("api.example.com") is A
    assert t.match("API.Example.Com") is A
    assert t.match("www.example.com") is B
    assert t.match("a.b.example.com") is B          # any depth below the suffix
    assert t.match("example.com") is C              # the apex is not under '*.'
    assert t.match("badexample.com") is C           # suffix matches on a label boundary
    assert t.match(None) is C                       # no SNI: only '*' matches
    assert len(t) == 3 and t.entries[0] == (("api.example.com",), A)


def test_sni_table_first_match_wins_in_order():
    t = SniTable([(("*.example.com",), A), (("api.example.com",), B)])
    assert t.match("api.example.com") is A
    t = SniTable([(("x.test", "*.y.test"), A), (("*",), B)])
    assert t.match("q.y.test") is A and t.match("x.test") is A and t.match("y.test") is B


def test_sni_table_without_catch_all():
    t = SniTable([(("a.test",), A), (("*.b.test",), D)])
    assert t.match(None) is None
    assert t.match("c.test") is None
    assert t.match("a.test.") is A                  # a trailing dot is ignored
    assert SniTable([]).match("a.test") is None
