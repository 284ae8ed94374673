# Downstream HTTP/2 (RFC 9113) on libnghttp2: the session does the framing, HPACK,
# flow-control accounting and protocol checks; this module maps its events onto
# HttpStreams (the same stream abstraction as HTTP/1.1) and their responses back.
#
# Flow control follows the buffer watermarks: request DATA is acknowledged
# (WINDOW_UPDATE) only while the stream accepts more, and a stream whose queued
# response passes the listener's buffer limit pauses its upstream.
import asyncio
import logging

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.ref cimport PyObject
from libc.string cimport memcpy
from libc.stdint cimport int32_t, uint8_t, uint32_t
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free

from omnirelay_core.includes.nghttp2 cimport *
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.stream cimport HttpStream, DownstreamCodec, ListenerState, _new_stream
from omnirelay_core.server cimport ServerConnection, ListenerRuntime, peer_identity_of

_log = logging.getLogger("omnirelay.core")

# Flood limits (the shapes of CVE-2019-9512..9518 and CVE-2023-44487): past them
# the connection gets GOAWAY(ENHANCE_YOUR_CALM) instead of more work.
DEF MAX_OUTBOUND_ACK = 1000          # queued SETTINGS/PING acks while the peer doesn't read
DEF MAX_SETTINGS_ENTRIES = 32
DEF RESET_BURST = 200                # RST_STREAMs from the client, token bucket
DEF RESET_RATE = 50
DEF MAX_EMPTY_FRAMES = 64            # consecutive DATA frames with no payload and no END_STREAM
DEF MAX_CONTINUATIONS = 8

cdef nghttp2_session_callbacks* _server_callbacks = NULL
cdef bytes _STATUS = b":status"


cdef class H2StreamState:
    """Per-stream codec state beside its HttpStream."""
    cdef HttpStream s
    cdef int32_t id
    cdef bint headers_done          # request HEADERS seen; later HEADERS are trailers
    cdef Py_ssize_t header_bytes
    cdef bint header_overflow
    cdef bytes authority
    cdef list cookies
    cdef list out                   # response body chunks waiting for the window
    cdef Py_ssize_t out_off         # consumed bytes of out[0]
    cdef Py_ssize_t out_bytes
    cdef bint out_end
    cdef list trailers              # [(name, value)] sent after the body
    cdef bint deferred              # the data provider waits for encode_data
    cdef bint write_paused          # told the stream to stop its upstream
    cdef bint read_disabled
    cdef Py_ssize_t unconsumed      # request bytes not yet acknowledged to the client
    cdef bint closed


cdef class H2Codec(DownstreamCodec):
    cdef H2ServerConnection conn

    cdef int encode_headers(self, HttpStream s, bint end_stream) except -1:
        return self.conn.submit_response(s, end_stream)

    cdef int encode_data(self, HttpStream s, const char* p, Py_ssize_t n, bint end_stream) except -1:
        return self.conn.queue_data(s, p, n, end_stream)

    cdef int encode_trailers(self, HttpStream s, HeaderMap trailers) except -1:
        return self.conn.queue_trailers(s, trailers)

    cdef int encode_continue(self, HttpStream s) except -1:
        return self.conn.submit_continue(s)

    cdef int read_disable(self, HttpStream s, bint disable) except -1:
        return self.conn.read_disable(s, disable)

    cdef int reset(self, HttpStream s) except -1:
        return self.conn.reset_stream(s.stream_id, NGHTTP2_INTERNAL_ERROR)

    cdef int stream_complete(self, HttpStream s) except -1:
        return self.conn.stream_complete(s)


cdef class H2ServerConnection(ServerConnection):
    cdef nghttp2_session* session
    cdef H2Codec codec
    cdef dict streams               # stream id -> H2StreamState
    cdef bint in_recv
    cdef bint in_send
    cdef bint send_again
    cdef int empty_frames
    cdef bint flooded               # a flood limit of ours tripped inside a callback
    cdef bint lingering             # GOAWAY sent and write side shut: discard input
    cdef bint flush_scheduled
    cdef object error               # an exception raised inside a callback

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cdef int begin(self, bytes initial) except -1:
        cdef ListenerState st = self.listener.state
        cdef nghttp2_option* opt
        cdef nghttp2_settings_entry iv[4]
        cdef int rv
        nghttp2_option_new(&opt)
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_outbound_ack(opt, MAX_OUTBOUND_ACK)
        nghttp2_option_set_max_settings(opt, MAX_SETTINGS_ENTRIES)
        nghttp2_option_set_stream_reset_rate_limit(opt, RESET_BURST, RESET_RATE)
        nghttp2_option_set_max_continuations(opt, MAX_CONTINUATIONS)
        rv = nghttp2_session_server_new2(&self.session, _callbacks(), <void*>self, opt)
        nghttp2_option_del(opt)
        if rv != 0:
            raise MemoryError(nghttp2_strerror(rv).decode())
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = st.h2_max_concurrent_streams
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = st.h2_initial_stream_window
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = st.max_header_bytes
        iv[3].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[3].value = 0
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 4)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                              st.h2_initial_connection_window)
        self.listener.stats.downstream_cx_http2_total += 1
        if initial:
            self._recv(PyBytes_AS_STRING(initial), len(initial))
        self.flush()
        return 0

    # ---- bytes in ----
    cdef int data_ready(self) except -1:
        self.last_activity = monotonic()
        if self.lingering:
            self.consumed_all()
            return 0
        if self.end > self.start:
            self._recv((<char*>self.slab) + self.start, self.end - self.start)
        self.consumed_all()
        if self.writing_paused:
            # The client does not read what we send: stop reading what it sends.
            self.pause_reading()
        self.flush()
        return 0

    cdef int _recv(self, const char* p, Py_ssize_t n) except -1:
        cdef ssize_t rv
        if self.session == NULL or self.closed:
            return 0
        self.in_recv = True
        try:
            rv = nghttp2_session_mem_recv(self.session, <const uint8_t*>p, n)
        finally:
            self.in_recv = False
        if self.error is not None:
            exc, self.error = self.error, None
            _log.error("internal error in the HTTP/2 codec", exc_info=exc)
            self.fatal(NGHTTP2_INTERNAL_ERROR)
        elif self.flooded or rv == NGHTTP2_ERR_FLOODED:
            self.listener.stats.downstream_cx_http2_flood += 1
            self.fatal(NGHTTP2_ENHANCE_YOUR_CALM)
        elif rv < 0:
            # nghttp2 queued a GOAWAY naming the protocol error; send it and close.
            self.listener.stats.downstream_rq_protocol_error += 1
            self.fatal(NGHTTP2_PROTOCOL_ERROR)
        return 0

    cdef int fatal(self, uint32_t code) except -1:
        # GOAWAY, written even to a peer that stopped reading, then close; a
        # peer that never reads it is cut off after a short grace period.
        cdef list chunks = []
        if self.closed or self.session == NULL or self.lingering:
            return 0
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(self.session), code, NULL, 0)
        send_all(self.session, chunks)   # what it produced before any error still goes out
        if chunks:
            self.write(b"".join(chunks))
        # Lingering close: closing with unread input would make the kernel send
        # RST and the peer could lose the GOAWAY. Shut our side, drain theirs.
        self.lingering = True
        try:
            self.transport.write_eof()
        except Exception:
            self.close()
            return 0
        self.resume_reading()
        asyncio.get_running_loop().call_later(2.0, self._abort)
        return 0

    def _abort(self):
        self.abort()

    # ---- bytes out ----
    cdef int flush(self) except -1:
        cdef ssize_t n
        cdef list chunks
        if self.session == NULL or self.closed or self.in_recv or self.lingering:
            return 0
        if self.in_send:
            self.send_again = True
            return 0
        if self.writing_paused:
            return 0
        self.in_send = True
        chunks = []
        try:
            while True:
                self.send_again = False
                n = send_all(self.session, chunks)
                if n < 0:
                    self.listener.stats.downstream_cx_http2_flood += n == NGHTTP2_ERR_FLOODED
                    self.abort()
                    return 0
                if not self.send_again:
                    break
        finally:
            self.in_send = False
        if chunks:
            self.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if (not nghttp2_session_want_read(self.session)
                and not nghttp2_session_want_write(self.session)):
            self.close()
        elif self.draining and not self.streams:
            self.close()
        return 0

    cdef int schedule_flush(self) except -1:
        # Stream events (upstream bytes arriving for many streams) coalesce into
        # one write per loop iteration; input processing flushes at its end anyway.
        if self.in_recv or self.flush_scheduled:
            return 0
        self.flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._scheduled_flush)
        return 0

    def _scheduled_flush(self):
        self.flush_scheduled = False
        self.flush()

    cdef int goaway(self, uint32_t code) except -1:
        return self.fatal(code)

    # ---- session events (called from the C callbacks below) ----
    cdef int on_begin_request(self, int32_t sid) except -1:
        cdef H2StreamState st = H2StreamState.__new__(H2StreamState)
        cdef HttpStream s = _new_stream(self.codec, self.listener.state, self.peer, self.peer_bytes)
        s.stream_id = sid
        s.peer_identity = self.peer_identity
        s.http_minor = 1
        s.keep_alive = True
        st.s = s
        st.id = sid
        self.streams[sid] = st
        return 0

    cdef int on_header(self, H2StreamState st, const uint8_t* name, size_t nl,
                       const uint8_t* value, size_t vl) except -1:
        cdef HttpStream s = st.s
        st.header_bytes += nl + vl + 32
        if st.header_bytes > self.listener.state.max_header_bytes:
            st.header_overflow = True
            return 0
        if st.headers_done:
            if nl and name[0] != 58:
                if s.request_trailers is None:
                    s.request_trailers = HeaderMap()
                s.request_trailers.add_raw(<const char*>name, nl, <const char*>value, vl)
            return 0
        if nl and name[0] == 58:      # ':' pseudo-header (nghttp2 validated the set)
            if nl == 7 and name[1] == 109:        # :method
                s.method = PyBytes_FromStringAndSize(<const char*>value, vl)
            elif nl == 5 and name[1] == 112:      # :path
                s.target = PyBytes_FromStringAndSize(<const char*>value, vl)
            elif nl == 10 and name[1] == 97:      # :authority
                st.authority = PyBytes_FromStringAndSize(<const char*>value, vl)
            return 0
        if nl == 6 and (<const char*>name)[:6] == b"cookie":
            # RFC 9113 8.2.3: split cookies are joined again for HTTP/1.1.
            if st.cookies is None:
                st.cookies = []
            st.cookies.append(PyBytes_FromStringAndSize(<const char*>value, vl))
            return 0
        s.request_headers.add_raw(<const char*>name, nl, <const char*>value, vl)
        return 0

    cdef int on_request_headers(self, H2StreamState st, bint end_stream) except -1:
        cdef HttpStream s = st.s
        cdef HeaderMap h = s.request_headers
        cdef Py_ssize_t i
        cdef bytes v
        if st.headers_done:
            # Trailers: they end the request.
            if end_stream and not s.done:
                s.on_request_end()
            return 0
        st.headers_done = True
        if st.header_overflow:
            s.req_end = end_stream
            return s.send_local_reply(431, b"request header list too large\n",
                                      "request_headers_too_large", None)
        if st.authority is not None:
            h.remove_raw(b"host", 4)
            h.add_raw(b"host", 4, st.authority, len(st.authority))
        if st.cookies:
            v = b"; ".join(st.cookies)
            h.add_raw(b"cookie", 6, v, len(v))
        if s.target is None:
            s.target = b"/"
        s.is_head = s.method == b"HEAD"
        if s.method == b"CONNECT":
            s.req_end = end_stream
            return s.send_local_reply(501, b"CONNECT over HTTP/2 is not supported\n",
                                      "unsupported_method", None)
        i = h.find(b"content-length", 14, 0)
        if i >= 0:
            s.req_content_length = int(PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len))
        elif not end_stream:
            s.req_chunked = True     # unknown length: chunked toward an HTTP/1.1 upstream
        s.on_request_headers(end_stream)
        if end_stream and not s.done:
            s.on_request_end()
        return 0

    cdef int on_data(self, H2StreamState st, const uint8_t* data, size_t n) except -1:
        cdef HttpStream s = st.s
        if s.done or not st.read_disabled:
            nghttp2_session_consume(self.session, st.id, n)
        else:
            st.unconsumed += n
        if not s.done:
            s.on_request_body(<const char*>data, n, False)
        return 0

    cdef int on_stream_close(self, int32_t sid, uint32_t code) except -1:
        cdef H2StreamState st = self.streams.pop(sid, None)
        if st is None:
            return 0
        st.closed = True
        if not st.s.done:
            if code == NGHTTP2_NO_ERROR and st.s.resp_end:
                return 0
            st.s.on_downstream_reset()
        return 0

    # ---- the codec's side ----
    cdef int submit_response(self, HttpStream s, bint end_stream) except -1:
        cdef H2StreamState st = self.streams.get(s.stream_id)
        cdef nghttp2_data_provider prd
        cdef NvArray nv
        cdef int rv
        if st is None or st.closed:
            return 0
        nv = NvArray(s.response_headers.count + 2)
        nv.add(_STATUS, str(s.status).encode())
        nv.add_map(s.response_headers, False)
        if (s.resp_content_length >= 0 and not s.resp_has_body_filters
                and s.status != 204 and s.status != 304):
            nv.add(b"content-length", str(s.resp_content_length).encode())
        if end_stream:
            rv = nghttp2_submit_response(self.session, st.id, nv.nva, nv.n, NULL)
            st.out_end = True
        else:
            prd.source.ptr = NULL
            prd.read_callback = _read_body
            rv = nghttp2_submit_response(self.session, st.id, nv.nva, nv.n, &prd)
        if rv != 0:
            _log.debug("submit_response on stream %d: %s", st.id, nghttp2_strerror(rv).decode())
        return self.schedule_flush()

    cdef int submit_continue(self, HttpStream s) except -1:
        cdef NvArray nv = NvArray(1)
        nv.add(_STATUS, b"100")
        nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, s.stream_id, NULL, nv.nva, 1, NULL)
        return self.schedule_flush()

    cdef int queue_data(self, HttpStream s, const char* p, Py_ssize_t n, bint end_stream) except -1:
        cdef H2StreamState st = self.streams.get(s.stream_id)
        if st is None or st.closed:
            return 0
        if n:
            if st.out is None:
                st.out = []
            st.out.append(PyBytes_FromStringAndSize(p, n))
            st.out_bytes += n
        if end_stream:
            st.out_end = True
        if st.out_bytes > self.listener.state.buffer_limit and not st.write_paused:
            st.write_paused = True
            s.on_downstream_write_paused(True)
        return self._resume(st)

    cdef int queue_trailers(self, HttpStream s, HeaderMap trailers) except -1:
        cdef H2StreamState st = self.streams.get(s.stream_id)
        if st is None or st.closed:
            return 0
        st.trailers = [(n.lower(), v) for n, v in trailers.raw_items()]
        st.out_end = True
        return self._resume(st)

    cdef int _resume(self, H2StreamState st) except -1:
        if st.deferred:
            st.deferred = False
            nghttp2_session_resume_data(self.session, st.id)
        return self.schedule_flush()

    cdef ssize_t read_body(self, H2StreamState st, uint8_t* buf, size_t length,
                           uint32_t* flags) except? -1:
        # The data provider: copy queued response bytes into nghttp2's frame buffer.
        cdef size_t copied = copy_chunks(st.out, &st.out_off, buf, length) if st.out else 0
        st.out_bytes -= copied
        if st.write_paused and st.out_bytes <= self.listener.state.buffer_limit // 2:
            st.write_paused = False
            st.s.on_downstream_write_paused(False)
        if not st.out and st.out_end:
            flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if st.trailers:
                flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                self._submit_trailers(st)
            return copied
        if copied == 0:
            st.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return copied

    cdef int _submit_trailers(self, H2StreamState st) except -1:
        cdef NvArray nv = NvArray(len(st.trailers))
        for name, value in st.trailers:
            nv.add(name, value)
        nghttp2_submit_trailer(self.session, st.id, nv.nva, nv.n)
        return 0

    cdef int read_disable(self, HttpStream s, bint disable) except -1:
        cdef H2StreamState st = self.streams.get(s.stream_id)
        if st is None:
            return 0
        st.read_disabled = disable
        if not disable and st.unconsumed:
            nghttp2_session_consume(self.session, st.id, st.unconsumed)
            st.unconsumed = 0
            self.schedule_flush()
        return 0

    cdef int reset_stream(self, int32_t sid, uint32_t code) except -1:
        if self.session != NULL and not self.closed:
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, sid, code)
            self.schedule_flush()
        return 0

    cdef int stream_complete(self, HttpStream s) except -1:
        cdef H2StreamState st = self.streams.get(s.stream_id)
        if st is None or st.closed:
            return 0
        if not s.req_end and st.unconsumed:
            # Answered before the request ended: the rest of the request is read
            # and dropped (on_data consumes for done streams). No RST_STREAM here:
            # nghttp2 would send it ahead of the queued response.
            nghttp2_session_consume(self.session, st.id, st.unconsumed)
            st.unconsumed = 0
        return self.schedule_flush()

    # ---- transport events ----
    cdef int on_eof(self) except -1:
        self.close()
        return 0

    cdef int on_connection_lost(self, object exc) except -1:
        cdef H2StreamState st
        self.listener.connections.discard(self)
        self.listener.stats.downstream_cx_active -= 1
        streams, self.streams = self.streams, {}
        for st in streams.values():
            st.closed = True
            if not st.s.done:
                st.s.on_downstream_reset()
        return 0

    cdef int on_pause_writing(self) except -1:
        cdef H2StreamState st
        for st in list(self.streams.values()):
            if not st.s.done:
                st.s.on_downstream_write_paused(True)
        return 0

    cdef int on_resume_writing(self) except -1:
        cdef H2StreamState st
        self.resume_reading()
        for st in list(self.streams.values()):
            if not st.s.done and not st.write_paused:
                st.s.on_downstream_write_paused(False)
        return self.flush()

    cdef int sweep(self, double now) except -1:
        if self.closed:
            return 0
        if not self.streams and now - self.last_activity > self.listener.state.idle_timeout:
            self.goaway(NGHTTP2_NO_ERROR)
        return 0

    cdef int start_drain(self) except -1:
        self.draining = True
        if self.session != NULL and not self.closed:
            nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(self.session),
                                  NGHTTP2_NO_ERROR, NULL, 0)
            self.flush()
        return 0


cdef inline void _nv(nghttp2_nv* nv, const char* name, size_t nl, const char* value,
                     size_t vl) noexcept:
    nv.name = <uint8_t*>name
    nv.namelen = nl
    nv.value = <uint8_t*>value
    nv.valuelen = vl
    nv.flags = NGHTTP2_NV_FLAG_NONE


cdef ssize_t send_all(nghttp2_session* session, list chunks) except? -1:
    # Everything the session has to send, appended to `chunks`; 0, or nghttp2's error.
    cdef const uint8_t* data
    cdef ssize_t n
    while True:
        n = nghttp2_session_mem_send(session, &data)
        if n <= 0:
            return n
        chunks.append(PyBytes_FromStringAndSize(<const char*>data, n))


cdef size_t copy_chunks(list out, Py_ssize_t* off, uint8_t* buf, size_t length) except? 0:
    # A data provider's read: queued chunks into nghttp2's frame buffer; `off` is how
    # much of out[0] was taken before.
    cdef size_t copied = 0, take
    cdef bytes chunk
    while out and copied < length:
        chunk = <bytes>out[0]
        take = min(<size_t>(len(chunk) - off[0]), length - copied)
        memcpy(buf + copied, PyBytes_AS_STRING(chunk) + off[0], take)
        copied += take
        off[0] += take
        if off[0] == len(chunk):
            out.pop(0)
            off[0] = 0
    return copied


cdef class NvArray:

    def __cinit__(self, Py_ssize_t cap):
        self.cap = max(cap, 4)
        self.nva = <nghttp2_nv*>PyMem_Malloc(self.cap * sizeof(nghttp2_nv))
        if self.nva == NULL:
            raise MemoryError()
        self.keep = []

    def __dealloc__(self):
        PyMem_Free(self.nva)

    cdef int add(self, bytes name, bytes value) except -1:
        cdef nghttp2_nv* p
        if self.n == self.cap:
            p = <nghttp2_nv*>PyMem_Realloc(self.nva, 2 * self.cap * sizeof(nghttp2_nv))
            if p == NULL:
                raise MemoryError()
            self.nva = p
            self.cap *= 2
        self.keep.append(name)
        self.keep.append(value)
        _nv(&self.nva[self.n], PyBytes_AS_STRING(name), len(name), PyBytes_AS_STRING(value),
            len(value))
        self.n += 1
        return 0

    cdef int add_map(self, HeaderMap h, bint skip_host) except -1:
        # HTTP/2 field names are lowercase (RFC 9113 8.2.1); HTTP/1.1 peers may not be.
        cdef Py_ssize_t i
        cdef bytes name
        for i in range(h.count):
            if h.entries[i].name_len < 0:
                continue
            name = PyBytes_FromStringAndSize(h.name_at(i), h.entries[i].name_len).lower()
            if skip_host and name == b"host":
                continue
            self.add(name, PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len))
        return 0


# ---- C callbacks: store the exception, return an nghttp2 error code ----

cdef int _on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame,
                           void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    try:
        c.on_begin_request(frame.hd.stream_id)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                    size_t nl, const uint8_t* value, size_t vl, uint8_t flags,
                    void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    cdef object st
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    st = c.streams.get(frame.hd.stream_id)
    if st is None:
        return 0
    try:
        c.on_header(<H2StreamState>st, name, nl, value, vl)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                        void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    cdef object st
    cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    try:
        if frame.hd.type == NGHTTP2_DATA:
            if frame.hd.length == 0 and not end:
                c.empty_frames += 1
                if c.empty_frames > MAX_EMPTY_FRAMES:
                    c.flooded = True
                    return NGHTTP2_ERR_CALLBACK_FAILURE
            else:
                c.empty_frames = 0
            if end:
                st = c.streams.get(frame.hd.stream_id)
                if st is not None and not (<H2StreamState>st).s.done:
                    (<H2StreamState>st).s.on_request_end()
        elif frame.hd.type == NGHTTP2_HEADERS:
            c.empty_frames = 0
            st = c.streams.get(frame.hd.stream_id)
            if st is not None:
                c.on_request_headers(<H2StreamState>st, end)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t sid,
                        const uint8_t* data, size_t n, void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    cdef object st = c.streams.get(sid)
    if st is None:
        nghttp2_session_consume(session, sid, n)
        return 0
    try:
        c.on_data(<H2StreamState>st, data, n)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session* session, int32_t sid, uint32_t code,
                          void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    try:
        c.on_stream_close(sid, code)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_body(nghttp2_session* session, int32_t sid, uint8_t* buf, size_t length,
                        uint32_t* flags, nghttp2_data_source* source,
                        void* user_data) noexcept with gil:
    cdef H2ServerConnection c = <H2ServerConnection>user_data
    cdef object st = c.streams.get(sid)
    if st is None:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    try:
        return c.read_body(<H2StreamState>st, buf, length, flags)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef nghttp2_session_callbacks* _callbacks():
    global _server_callbacks
    if _server_callbacks == NULL:
        nghttp2_session_callbacks_new(&_server_callbacks)
        nghttp2_session_callbacks_set_on_begin_headers_callback(_server_callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(_server_callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(_server_callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_server_callbacks, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(_server_callbacks, _on_stream_close)
    return _server_callbacks


class _H2Protocol(H2ServerConnection, asyncio.BufferedProtocol):
    __slots__ = ()


def take_over(ListenerRuntime listener, transport, str peer, bytes initial):
    """An HTTP/1.1 server connection hands its transport to HTTP/2 (ALPN or preface)."""
    cdef H2ServerConnection c = _H2Protocol()
    c.listener = listener
    c.codec = H2Codec()
    c.codec.conn = c
    c.streams = {}
    Connection.connection_made(c, transport)
    c.peer = peer
    c.peer_bytes = peer.encode()
    c.peer_identity = peer_identity_of(transport)
    c.draining = listener.draining
    listener.connections.add(c)
    transport.set_protocol(c)
    c.begin(initial)
    return c
