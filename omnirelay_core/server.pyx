# Downstream side: listeners and the HTTP/1.1 server connection, which parses
# requests into HttpStreams and encodes their responses (the H1 codec).
import asyncio
import socket

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcmp
from omnirelay_core.includes.llhttp cimport *
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.http1 cimport Http1Parser, method_bytes
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.buffers cimport ByteBuilder
from omnirelay_core.stats cimport Stats
from omnirelay_core.stream cimport (HttpStream, DownstreamCodec, ListenerState,
                                    _new_stream)
from omnirelay_core.errors cimport reason_phrase
from omnirelay_core.tls cimport TlsServer

from omnirelay_core.errors import ProxyError, BadRequest, RequestTimeout, InternalError

import logging
_log = logging.getLogger("omnirelay.core")

cdef ByteBuilder _out = ByteBuilder(8192)
cdef list _STATUS_LINES = [None] * 600


def _init_tables():
    for code in range(100, 600):
        _STATUS_LINES[code] = f"HTTP/1.1 {code} {reason_phrase(code)}\r\n".encode()


_init_tables()


cdef class Http1Codec(DownstreamCodec):
    cdef Http1ServerConnection conn
    cdef bint chunked

    cdef int encode_headers(self, HttpStream s, bint end_stream) except -1:
        cdef ByteBuilder out = _out
        cdef Http1ServerConnection conn = self.conn
        cdef int status = s.status
        cdef object line = _STATUS_LINES[status] if 100 <= status < 600 else None
        if line is None:
            line = f"HTTP/1.1 {status} Unknown\r\n".encode()
        out.append_obj(line)
        s.response_headers.serialize_into(out)
        self.chunked = False
        if status == 101:
            out.append(b"connection: upgrade\r\n", 21)
        elif s.is_connect and status == 200:
            pass
        elif s.resp_no_body:
            if s.resp_content_length >= 0 and status != 204 and status != 304:
                out.append(b"content-length: ", 16)
                out.append_int(s.resp_content_length)
                out.append(b"\r\n", 2)
        elif s.resp_content_length >= 0 and not s.resp_has_body_filters:
            out.append(b"content-length: ", 16)
            out.append_int(s.resp_content_length)
            out.append(b"\r\n", 2)
        elif s.http_minor >= 1:
            out.append(b"transfer-encoding: chunked\r\n", 28)
            self.chunked = True
        else:
            conn.close_after = True     # HTTP/1.0: the close delimits the body
        if status != 101 and not (s.is_connect and status == 200):
            if conn.close_after or not s.keep_alive or conn.draining:
                conn.close_after = True
                out.append(b"connection: close\r\n", 19)
            elif s.http_minor == 0:
                out.append(b"connection: keep-alive\r\n", 24)
        out.append(b"\r\n", 2)
        conn.write(out.take())
        return 0

    cdef int encode_data(self, HttpStream s, const char* p, Py_ssize_t n, bint end_stream) except -1:
        cdef ByteBuilder out
        if self.chunked:
            out = _out
            if n:
                out.append_hex(n)
                out.append(b"\r\n", 2)
                out.append(p, n)
                out.append(b"\r\n", 2)
            if end_stream:
                out.append(b"0\r\n\r\n", 5)
            if out.length:
                self.conn.write(out.take())
        elif n:
            self.conn.write(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef int encode_trailers(self, HttpStream s, HeaderMap trailers) except -1:
        cdef ByteBuilder out = _out
        if not self.chunked:
            return 0    # trailers need chunked framing; dropped otherwise
        out.append(b"0\r\n", 3)
        trailers.serialize_into(out)
        out.append(b"\r\n", 2)
        self.conn.write(out.take())
        return 0

    cdef int encode_continue(self, HttpStream s) except -1:
        self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return 0

    cdef int read_disable(self, HttpStream s, bint disable) except -1:
        if disable:
            self.conn.pause_reading()
        elif not self.conn.parse_paused or self.conn.tunnel:
            self.conn.resume_reading()
        return 0

    cdef int reset(self, HttpStream s) except -1:
        self.conn.abort()
        return 0

    cdef int stream_complete(self, HttpStream s) except -1:
        return self.conn.on_stream_complete(s)

    cdef void cork(self) noexcept:
        self.conn.cork()

    cdef int uncork(self) except -1:
        return self.conn.uncork()

    cdef int start_tunnel(self, HttpStream s) except -1:
        self.conn.tunnel = True
        self.conn.resume_reading()
        return 0

    cdef int tunnel_write(self, HttpStream s, const char* p, Py_ssize_t n) except -1:
        self.conn.write(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef int tunnel_eof(self, HttpStream s) except -1:
        try:
            self.conn.flush_held()
            self.conn.transport.write_eof()
        except Exception:
            self.conn.close()
        return 0


cdef bytes _H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


cdef bint _h2c_upgrade(HeaderMap h):
    cdef Py_ssize_t i = h.find(b"upgrade", 7, 0)
    return i >= 0 and h.value_has_token(i, b"h2c", 3)


cdef str peer_identity_of(object transport):
    # A verified client certificate's first URI SAN (its SPIFFE ID, by convention).
    tls = transport.get_extra_info("ssl_object")
    if tls is None:
        return None
    cert = tls.getpeercert()
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI":
            return value
    return None


cdef class ServerConnection(Connection):

    cdef int register(self, object transport) except -1:
        Connection.connection_made(self, transport)
        self.peer_identity = peer_identity_of(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unknown"
        self.peer_bytes = self.peer.encode()
        transport.set_write_buffer_limits(self.listener.state.buffer_limit)
        self.listener.connections.add(self)
        self.listener.stats.downstream_cx_total += 1
        self.listener.stats.downstream_cx_active += 1
        self.draining = self.listener.draining
        return 0

    cdef int sweep(self, double now) except -1:
        return 0

    cdef int start_drain(self) except -1:
        return 0


cdef class Http1ServerConnection(ServerConnection):
    cdef Http1Parser parser
    cdef Http1Codec codec
    cdef HttpStream stream
    cdef bint parse_paused
    cdef bint in_parse
    cdef bint tunnel
    cdef bint close_after
    cdef bint sniffed            # first bytes checked for the HTTP/2 preface
    cdef double request_started

    def connection_made(self, transport):
        self.register(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._to_http2(b"")

    def _to_http2(self, bytes initial):
        # HTTP/2 by ALPN or by prior knowledge (the client preface): an
        # HTTP/2 connection takes over the transport and these first bytes.
        from omnirelay_core.http2 import take_over
        self.sniffed = True
        self.consumed_all()
        self.listener.connections.discard(self)
        take_over(self.listener, self.transport, self.peer, initial)
        self.transport = None
        self.closed = True

    cdef int data_ready(self) except -1:
        cdef size_t consumed
        cdef int err
        cdef Py_ssize_t n
        if not self.sniffed:
            n = min(self.end - self.start, 24)
            if memcmp((<char*>self.slab) + self.start, <const char*>_H2_PREFACE, n) != 0:
                self.sniffed = True
            elif n < 24:
                return 0     # a prefix of the preface: wait for the rest
            else:
                self._to_http2(bytes(self.slab[self.start:self.end]))
                return 0
        if self.tunnel:
            if self.stream is not None and self.end > self.start:
                self.stream.on_request_tunnel_data((<char*>self.slab) + self.start, self.end - self.start)
            self.consumed_all()
            return 0
        self.last_activity = monotonic()
        if self.in_parse:
            return 0
        self.in_parse = True
        try:
            while self.start < self.end and not self.parse_paused and not self.closed:
                try:
                    err = self.parser.execute((<char*>self.slab) + self.start,
                                              self.end - self.start, &consumed)
                except ProxyError as e:
                    self._protocol_error(e)
                    break
                except Exception as e:
                    # Our bug, not the client's: log it, answer 500 and close.
                    _log.exception("internal error while handling a request")
                    self._protocol_error(InternalError(f"internal error: {type(e).__name__}"))
                    break
                self.start += consumed
                if err == HPE_PAUSED:
                    self.parser.resume()
                    if self.stream is not None and not self.stream.done:
                        self.parse_paused = True
                    elif self.close_after:
                        self.parse_paused = True
                elif err == HPE_PAUSED_UPGRADE:
                    self.parser.resume_after_upgrade()
                    self.tunnel = True
                    if self.start < self.end and self.stream is not None:
                        self.stream.on_request_tunnel_data(
                            (<char*>self.slab) + self.start, self.end - self.start)
                    self.start = self.end
        finally:
            self.in_parse = False
        if self.start >= self.end:
            self.consumed_all()
        elif self.parse_paused:
            # A pipelined request waits in the slab until this response is done.
            self.pause_reading()
        return 0

    cdef int _protocol_error(self, object exc) except -1:
        cdef HttpStream s = self.stream
        self.listener.stats.downstream_rq_protocol_error += 1
        self.close_after = True
        self.parse_paused = True
        if s is None or s.done:
            s = _new_stream(self.codec, self.listener.state, self.peer, self.peer_bytes)
            self.stream = s
        s.keep_alive = False
        s.req_end = True
        if s.resp_started:
            self.abort()
            return 0
        s.http_minor = 1
        s.send_local_reply(exc.status, (str(exc) + "\n").encode(), exc.reason, None)
        return 0

    # ---- parser events ----
    cdef int on_message_begin(self) except -1:
        cdef ListenerState st = self.listener.state
        self.parser.max_header_bytes = st.max_header_bytes
        self.stream = _new_stream(self.codec, st, self.peer, self.peer_bytes)
        self.stream.peer_identity = self.peer_identity
        self.request_started = self.last_activity
        return 0

    cdef int on_headers_complete(self) except -1:
        cdef HttpStream s = self.stream
        cdef Http1Parser parser = self.parser
        cdef HeaderMap tmp
        cdef Py_ssize_t i
        cdef bint end_stream
        self.request_started = 0
        if parser.p.http_major != 1:
            raise BadRequest("unsupported HTTP version")
        s.method = method_bytes(parser.p.method)
        s.target = PyBytes_FromStringAndSize(parser.url.data, parser.url.length)
        s.http_minor = parser.p.http_minor
        tmp = s.request_headers
        s.request_headers = parser.headers
        parser.headers = tmp
        tmp.clear()
        s.keep_alive = parser.should_keep_alive() and not self.draining
        s.is_head = parser.p.method == HTTP_HEAD
        s.is_connect = parser.p.method == HTTP_CONNECT
        if parser.p.upgrade and not s.is_connect and _h2c_upgrade(s.request_headers):
            # "Upgrade: h2c" is not honoured (as Envoy): serve HTTP/1.1, drop the offer.
            parser.p.upgrade = 0
            s.request_headers.remove_raw(b"upgrade", 7)
            s.request_headers.remove_raw(b"http2-settings", 14)
        s.is_upgrade = parser.p.upgrade and not s.is_connect
        if parser.p.flags & F_CHUNKED:
            s.req_chunked = True
            end_stream = False
        elif parser.p.flags & F_CONTENT_LENGTH:
            s.req_content_length = parser.p.content_length
            end_stream = parser.p.content_length == 0
        else:
            end_stream = True
        if s.is_upgrade or s.is_connect:
            end_stream = False
        if s.http_minor >= 1 and not end_stream:
            i = s.request_headers.find(b"expect", 6, 0)
            if i >= 0:
                if (s.request_headers.entries[i].value_len == 12 and
                        s.request_headers.value_has_token(i, b"100-continue", 12)):
                    s.expect_continue = True
        s.on_request_headers(end_stream)
        if s.done and not s.req_end:
            # Answered before the body arrived: stop parsing, close after the reply.
            self.close_after = True
            return HPE_PAUSED
        return 0

    cdef int on_body(self, const char* at, size_t n) except -1:
        cdef HttpStream s = self.stream
        if s is not None and not s.done:
            s.on_request_body(at, n, False)
        return 0

    cdef int on_message_complete(self) except -1:
        cdef HttpStream s = self.stream
        cdef HeaderMap t
        if s is None:
            return 0
        if self.parser.trailers.live:
            t = self.parser.trailers
            self.parser.trailers = HeaderMap()
            s.request_trailers = t
        if s.is_upgrade or s.is_connect:
            return 0     # llhttp pauses for the upgrade itself
        if not s.done:
            s.on_request_end()
        if s.done:
            return HPE_PAUSED if self.close_after else 0
        return HPE_PAUSED

    cdef int on_stream_complete(self, HttpStream s) except -1:
        if s is not self.stream:
            return 0
        if self.tunnel:
            self.close()
            return 0
        if self.close_after or not s.keep_alive or not s.req_end or self.draining:
            self.close_after = True
            self.parse_paused = True
            self.close()
            return 0
        self.stream = None
        if self.parse_paused:
            self.parse_paused = False
            self.resume_reading()
            if self.start < self.end and not self.in_parse:
                self.data_ready()
        return 0

    # ---- transport events ----
    cdef int on_eof(self) except -1:
        cdef HttpStream s = self.stream
        if self.tunnel and s is not None:
            s.on_request_tunnel_eof()
            return 1
        # A client FIN while a request is in flight abandons it, as Envoy and
        # nginx (499) do: the upstream request is aborted, not completed for
        # nobody. Tunnels above propagate half-close instead.
        self.close()
        return 0

    cdef int on_connection_lost(self, object exc) except -1:
        cdef HttpStream s = self.stream
        self.listener.connections.discard(self)
        self.listener.stats.downstream_cx_active -= 1
        if s is not None and not s.done:
            s.on_downstream_reset()
        elif s is not None and self.tunnel:
            s.on_downstream_reset()
        self.stream = None
        return 0

    cdef int on_pause_writing(self) except -1:
        if self.stream is not None:
            self.stream.on_downstream_write_paused(True)
        return 0

    cdef int on_resume_writing(self) except -1:
        if self.stream is not None:
            self.stream.on_downstream_write_paused(False)
        return 0

    # ---- housekeeping, called by the listener ----
    cdef int sweep(self, double now) except -1:
        cdef ListenerState st = self.listener.state
        if self.closed or self.tunnel:
            return 0
        if self.stream is None or self.stream.done:
            if now - self.last_activity > st.idle_timeout:
                self.close()
        elif self.request_started and now - self.request_started > st.request_timeout:
            self._protocol_error(RequestTimeout("request headers not received in time"))
        return 0

    cdef int start_drain(self) except -1:
        self.draining = True
        if self.stream is None or self.stream.done:
            self.close()
        return 0


class _Http1Protocol(Http1ServerConnection, asyncio.BufferedProtocol):
    """asyncio's BufferedProtocol mixed in so the stdlib loop also feeds slabs."""
    __slots__ = ()


cdef Http1ServerConnection _new_connection(ListenerRuntime lr):
    cdef Http1ServerConnection c = _Http1Protocol()
    c.listener = lr
    c.codec = Http1Codec()
    c.codec.conn = c
    c.parser = Http1Parser(c, True, lr.state.max_header_bytes)
    return c


cdef class ListenerRuntime:
    """One listening socket of a worker and the connections it accepted. The
    ListenerState reference is swapped on reload; connections read it per request.
    TLS listeners take `tls`, a TlsServer (TLS in the core), or `ssl`, an SSLContext
    for the event loop's TLS; ALPN "h2" selects HTTP/2 either way."""

    def __init__(self, ListenerState state, ssl=None, TlsServer tls=None):
        self.state = state
        self.stats = state.stats
        self.connections = set()
        self.ssl = ssl
        self.tls = tls

    def protocol_factory(self):
        if self.tls is not None:
            return (<TlsServer>self.tls).protocol(_new_connection(self))
        return _new_connection(self)

    async def start(self, str host, int port, *, bint reuse_port=False, sock=None, int backlog=1024):
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(self.protocol_factory, sock=sock,
                                                   backlog=backlog, ssl=self.ssl)
        else:
            self.server = await loop.create_server(
                self.protocol_factory, host, port, reuse_port=reuse_port or None,
                reuse_address=True, backlog=backlog, ssl=self.ssl)
        return self.server.sockets[0].getsockname()[:2]

    def swap(self, ListenerState state):
        state.stats = self.stats
        self.state = state

    def sweep(self, double now):
        for c in list(self.connections):
            (<ServerConnection>c).sweep(now)

    def stop_accepting(self):
        if self.server is not None:
            self.server.close()

    def start_drain(self):
        """Stop accepting; idle connections close now, busy ones after their response."""
        self.draining = True
        self.stop_accepting()
        for c in list(self.connections):
            (<ServerConnection>c).start_drain()

    def abort_all(self):
        for c in list(self.connections):
            (<ServerConnection>c).abort()

    @property
    def active_connections(self):
        return len(self.connections)
