# Upstream HTTP/2 (h2c with prior knowledge) on libnghttp2: per endpoint, a few
# multiplexed connections; each request is an H2UpstreamStream handle that the
# HttpStream drives exactly like an HTTP/1.1 upstream connection.
import asyncio
import logging

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int32_t, uint8_t, uint32_t

from omnirelay_core.includes.nghttp2 cimport *
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint, Cluster
from omnirelay_core.http2 cimport NvArray, send_all, copy_chunks

from omnirelay_core.errors import UpstreamUnavailable, UpstreamReset
from omnirelay_core.upstream import open_connection

_log = logging.getLogger("omnirelay.core")

cdef nghttp2_session_callbacks* _client_callbacks = NULL
cdef bytes _HTTP = b"http"


cdef H2UpstreamStream _new_handle(H2ClientConnection conn, Endpoint ep):
    cdef H2UpstreamStream h = H2UpstreamStream.__new__(H2UpstreamStream)
    h.conn = conn
    h.endpoint = ep
    h.is_h2 = True
    h.headers = HeaderMap()
    h.content_length = -1
    h.counted = True
    ep.active += 1
    return h


cdef UpstreamConnection h2_acquire(Endpoint ep):
    """A stream on a ready connection with room, or None."""
    cdef H2ClientConnection c
    for x in ep.h2_conns:
        c = <H2ClientConnection>x
        if c.ready and not c.going_away and not c.closed and c.capacity() > 0:
            ep.reuses += 1
            return _new_handle(c, ep)
    return None


cdef UpstreamConnection h2_connect(Endpoint ep, UpstreamCallbacks cb):
    """A stream that waits for a connection being set up (joining one already
    connecting when it has room); cb hears on_upstream_ready / _connect_failed."""
    cdef H2ClientConnection c = None
    cdef H2UpstreamStream h
    for x in ep.h2_conns:
        if (not (<H2ClientConnection>x).ready and not (<H2ClientConnection>x).closed and
                len((<H2ClientConnection>x).waiting) < ep.cluster.h2_max_concurrent_streams):
            c = <H2ClientConnection>x
            break
    if c is None:
        c = _H2ClientProtocol()
        c.endpoint = ep
        c.streams = {}
        c.waiting = []
        ep.h2_conns.append(c)
        ep.connects += 1
        asyncio.get_running_loop().create_task(_connect(c))
    h = _new_handle(c, ep)
    h.cb = cb
    c.waiting.append(h)
    return h


async def _connect(H2ClientConnection c):
    cdef Endpoint ep = c.endpoint
    cdef H2UpstreamStream h
    try:
        await open_connection(ep, c)
    except UpstreamUnavailable as exc:
        ep.connect_failures += 1
        c.closed = True
        if c in ep.h2_conns:
            ep.h2_conns.remove(c)
        waiting, c.waiting = c.waiting, []
        for x in waiting:
            h = <H2UpstreamStream>x
            cb = h.cb
            h.cb = None
            h._release()
            if cb is not None:
                (<UpstreamCallbacks>cb).on_upstream_connect_failed(h, exc)
        return
    c.begin()


cdef class H2UpstreamStream(UpstreamConnection):

    # ---- response accessors ----
    cdef int response_status(self):
        return self.status

    cdef HeaderMap response_headers(self):
        return self.headers

    cdef HeaderMap swap_response_headers(self, HeaderMap empty):
        cdef HeaderMap h = self.headers
        self.headers = empty
        empty.clear()
        return h

    cdef long long response_content_length(self):
        return self.content_length

    cdef HeaderMap take_trailers(self):
        cdef HeaderMap t = self.trailers
        self.trailers = None
        return t

    # ---- what the HttpStream calls ----
    cdef void attach(self, UpstreamCallbacks cb, bint head_request):
        self.cb = cb
        self.head_request = head_request
        self.attached_once = True

    cdef int send_head(self, bytes method, bytes target, HeaderMap headers,
                       bint end_stream) except -1:
        cdef H2ClientConnection c = self.conn
        cdef nghttp2_data_provider prd
        cdef NvArray nv = NvArray(headers.count + 4)
        cdef Py_ssize_t i = headers.find(b"host", 4, 0)
        cdef bytes authority
        if i >= 0:
            authority = PyBytes_FromStringAndSize(headers.value_at(i), headers.entries[i].value_len)
        else:
            authority = f"{self.endpoint.host}:{self.endpoint.port}".encode()
        nv.add(b":method", method)
        nv.add(b":scheme", _HTTP)
        nv.add(b":authority", authority)
        nv.add(b":path", target)
        nv.add_map(headers, True)
        if end_stream:
            self.out_end = True
            self.request_done = True
            self.sid = nghttp2_submit_request(c.session, NULL, nv.nva, nv.n, NULL, NULL)
        else:
            prd.source.ptr = NULL
            prd.read_callback = _read_request_body
            self.sid = nghttp2_submit_request(c.session, NULL, nv.nva, nv.n, &prd, NULL)
        if self.sid < 0:
            c.going_away = True
            asyncio.get_running_loop().call_soon(self._fail_soon, nghttp2_strerror(self.sid).decode())
            return 0
        c.streams[self.sid] = self
        return c.schedule_flush()

    def _fail_soon(self, str why):
        cb = self.cb
        self.cb = None
        self._release()
        if cb is not None:
            (<UpstreamCallbacks>cb).on_upstream_reset(UpstreamReset(
                f"upstream HTTP/2 stream refused: {why}", reason="upstream_reset_before_response"))

    cdef int send_data(self, object data) except -1:
        cdef Py_ssize_t n = len(data)
        if n == 0 or self.stream_closed:
            return 0
        if self.out is None:
            self.out = []
        self.out.append(data)
        self.out_bytes += n
        if (self.out_bytes > self.endpoint.cluster.buffer_limit and not self.write_paused_sent
                and self.cb is not None):
            self.write_paused_sent = True
            self.cb.on_upstream_write_paused(True)
        return self._resume()

    cdef int end_request(self, HeaderMap trailers) except -1:
        if self.request_done:
            return 0
        self.request_done = True
        self.out_end = True
        if trailers is not None and trailers.live:
            self.out_trailers = trailers
        return self._resume()

    cdef int _resume(self) except -1:
        if self.deferred and not self.stream_closed:
            self.deferred = False
            nghttp2_session_resume_data(self.conn.session, self.sid)
        return self.conn.schedule_flush()

    cdef int write(self, object data) except -1:
        return self.send_data(data)

    cdef void request_finished(self):
        self.end_request(None)

    cdef void maybe_release(self):
        pass

    cdef int flush_early(self) except -1:
        return 0

    cdef void pause_reading(self):
        self.recv_paused = True

    cdef void resume_reading(self):
        self.recv_paused = False
        if self.unconsumed and not self.stream_closed and self.conn.session != NULL:
            nghttp2_session_consume(self.conn.session, self.sid, self.unconsumed)
            self.unconsumed = 0
            self.conn.schedule_flush()

    cdef void detach_and_close(self):
        # The stream gave up on this request: cancel it, keep the connection.
        cdef H2ClientConnection c = self.conn
        self.cb = None
        if self in c.waiting:
            c.waiting.remove(self)
        if (not self.stream_closed and self.sid > 0 and c.session != NULL and not c.closed
                and not (self.response_done and self.request_done)):
            nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, self.sid, NGHTTP2_CANCEL)
            c.flush()
        self._release()

    cdef void close(self):
        self.detach_and_close()

    cdef void abort(self):
        self.detach_and_close()

    cdef int _release(self) except -1:
        if self.counted:
            self.counted = False
            self.endpoint.active -= 1
        return 0

    # ---- session events ----
    cdef ssize_t read_body(self, uint8_t* buf, size_t length, uint32_t* flags) except? -1:
        cdef size_t copied = copy_chunks(self.out, &self.out_off, buf, length) if self.out else 0
        self.out_bytes -= copied
        if (self.write_paused_sent and self.out_bytes <= self.endpoint.cluster.buffer_limit // 2):
            self.write_paused_sent = False
            if self.cb is not None:
                self.cb.on_upstream_write_paused(False)
        if not self.out and self.out_end:
            flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if self.out_trailers is not None:
                flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                nv = NvArray(self.out_trailers.count)
                nv.add_map(self.out_trailers, True)
                nghttp2_submit_trailer(self.conn.session, self.sid, (<NvArray>nv).nva,
                                       (<NvArray>nv).n)
            return copied
        if copied == 0:
            self.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return copied

    cdef int on_header(self, const uint8_t* name, size_t nl, const uint8_t* value,
                       size_t vl) except -1:
        if nl and name[0] == 58:
            if nl == 7 and not self.headers_seen:     # :status
                self.status = int(PyBytes_FromStringAndSize(<const char*>value, vl))
            return 0
        if self.headers_seen:
            if self.trailers is None:
                self.trailers = HeaderMap()
            self.trailers.add_raw(<const char*>name, nl, <const char*>value, vl)
        else:
            self.headers.add_raw(<const char*>name, nl, <const char*>value, vl)
        return 0

    cdef int on_headers_frame(self, bint end_stream) except -1:
        cdef Py_ssize_t i
        cdef UpstreamCallbacks cb
        if not self.headers_seen:
            if 100 <= self.status < 200:
                self.headers.clear()      # interim response: the final one follows
                self.status = 0
                return 0
            self.headers_seen = True
            self.headers_end = end_stream
            self.got_bytes = True
            i = self.headers.find(b"content-length", 14, 0)
            if i >= 0:
                self.content_length = int(PyBytes_FromStringAndSize(
                    self.headers.value_at(i), self.headers.entries[i].value_len))
            if self.cb is not None:
                self.cb.on_upstream_headers(self)
        if end_stream:
            self.complete()
        return 0

    cdef int on_data(self, const uint8_t* data, size_t n) except -1:
        if self.recv_paused and self.cb is not None:
            self.unconsumed += n
        else:
            nghttp2_session_consume(self.conn.session, self.sid, n)
        if self.cb is not None:
            self.cb.on_upstream_body(<const char*>data, n)
        return 0

    cdef int complete(self) except -1:
        cdef UpstreamCallbacks cb = self.cb
        if self.response_done:
            return 0
        self.response_done = True
        if self.request_done:
            self.cb = None
            self._release()
        if cb is not None:
            cb.on_upstream_complete(self)
        return 0

    cdef int on_close(self, uint32_t code) except -1:
        cdef UpstreamCallbacks cb = self.cb
        self.stream_closed = True
        if self.unconsumed:
            self.unconsumed = 0
        if self.response_done:
            return 0
        self.cb = None
        self._release()
        if cb is not None:
            cb.on_upstream_reset(UpstreamReset(
                f"upstream reset the HTTP/2 stream (error code {code})",
                reason="upstream_reset_before_response" if not self.headers_seen
                else "upstream_reset_after_response_started"))
        return 0


cdef class H2ClientConnection(Connection):

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cdef int begin(self) except -1:
        cdef Cluster cl = self.endpoint.cluster
        cdef nghttp2_option* opt
        cdef nghttp2_settings_entry iv[3]
        cdef H2UpstreamStream h
        nghttp2_option_new(&opt)
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_outbound_ack(opt, 1000)
        nghttp2_option_set_max_settings(opt, 32)
        nghttp2_option_set_max_continuations(opt, 8)
        nghttp2_session_client_new2(&self.session, _callbacks(), <void*>self, opt)
        nghttp2_option_del(opt)
        iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[0].value = 0
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = cl.h2_initial_stream_window
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[2].value = 0      # we accept no pushed streams
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 3)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                              cl.h2_initial_connection_window)
        self.transport.set_write_buffer_limits(cl.buffer_limit)
        self.ready = True
        self.idle_since = monotonic()
        if self.end > self.start:
            self.data_ready()
        self.flush()
        waiting, self.waiting = self.waiting, []
        for x in waiting:
            h = <H2UpstreamStream>x
            if h.cb is not None:
                h.cb.on_upstream_ready(h)
        return 0

    cdef int capacity(self):
        cdef uint32_t remote = nghttp2_session_get_remote_settings(
            self.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        cdef uint32_t limit = min(remote, self.endpoint.cluster.h2_max_concurrent_streams)
        return <int>limit - len(self.streams)

    cdef int data_ready(self) except -1:
        if self.session == NULL:
            return 0     # the server's SETTINGS can beat begin(): keep them in the slab
        if self.end > self.start:
            self._recv((<char*>self.slab) + self.start, self.end - self.start)
        self.consumed_all()
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
            _log.error("internal error in the upstream HTTP/2 codec", exc_info=exc)
            self.abort()
        elif rv < 0:
            _log.warning("upstream %s:%d HTTP/2 error: %s", self.endpoint.host,
                         self.endpoint.port, nghttp2_strerror(<int>rv).decode())
            self.flush()
            self.abort()
        return 0

    cdef int flush(self) except -1:
        cdef list chunks
        if self.session == NULL or self.closed or self.in_recv:
            return 0
        if self.in_send:
            self.send_again = True
            return 0
        self.in_send = True
        chunks = []
        try:
            while True:
                self.send_again = False
                if send_all(self.session, chunks) < 0:
                    self.abort()
                    return 0
                if not self.send_again:
                    break
        finally:
            self.in_send = False
        if chunks:
            self.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if not self.streams:
            self.idle_since = monotonic()
            if self.going_away or (not nghttp2_session_want_read(self.session)
                                   and not nghttp2_session_want_write(self.session)):
                self.close()
        return 0

    cdef int schedule_flush(self) except -1:
        # Requests from many streams coalesce into one write per loop iteration.
        if self.in_recv or self.flush_scheduled:
            return 0
        self.flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._scheduled_flush)
        return 0

    def _scheduled_flush(self):
        self.flush_scheduled = False
        self.flush()

    def sweep(self, double now, double limit):
        if self.ready and not self.streams and now - self.idle_since >= limit:
            self.shutdown()

    def shutdown(self):
        """No new streams; close once the open ones are done."""
        self.going_away = True
        if self.session != NULL and not self.closed:
            nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0)
            self.flush()

    # ---- transport events ----
    cdef int on_eof(self) except -1:
        self.close()
        return 0

    cdef int on_connection_lost(self, object exc) except -1:
        cdef H2UpstreamStream h
        cdef Endpoint ep = self.endpoint
        self.going_away = True
        if self.transport is not None:
            ep.open_connections -= 1
        if self in ep.h2_conns:
            ep.h2_conns.remove(self)
        streams, self.streams = self.streams, {}
        for x in streams.values():
            (<H2UpstreamStream>x).on_close(NGHTTP2_INTERNAL_ERROR)
        return 0

    cdef int on_pause_writing(self) except -1:
        for x in list(self.streams.values()):
            if (<H2UpstreamStream>x).cb is not None:
                (<H2UpstreamStream>x).cb.on_upstream_write_paused(True)
        return 0

    cdef int on_resume_writing(self) except -1:
        for x in list(self.streams.values()):
            if (<H2UpstreamStream>x).cb is not None and not (<H2UpstreamStream>x).write_paused_sent:
                (<H2UpstreamStream>x).cb.on_upstream_write_paused(False)
        return self.flush()


# ---- C callbacks: store the exception, return an nghttp2 error code ----

cdef int _on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                    size_t nl, const uint8_t* value, size_t vl, uint8_t flags,
                    void* user_data) noexcept with gil:
    cdef H2ClientConnection c = <H2ClientConnection>user_data
    cdef object h
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    h = c.streams.get(frame.hd.stream_id)
    if h is None:
        return 0
    try:
        (<H2UpstreamStream>h).on_header(name, nl, value, vl)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame,
                        void* user_data) noexcept with gil:
    cdef H2ClientConnection c = <H2ClientConnection>user_data
    cdef object h
    cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    try:
        if frame.hd.type == NGHTTP2_GOAWAY:
            c.going_away = True
            return 0
        if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
            return 0
        h = c.streams.get(frame.hd.stream_id)
        if h is None:
            return 0
        if frame.hd.type == NGHTTP2_HEADERS:
            (<H2UpstreamStream>h).on_headers_frame(end)
        elif end:
            (<H2UpstreamStream>h).complete()
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t sid,
                        const uint8_t* data, size_t n, void* user_data) noexcept with gil:
    cdef H2ClientConnection c = <H2ClientConnection>user_data
    cdef object h = c.streams.get(sid)
    if h is None:
        nghttp2_session_consume(session, sid, n)
        return 0
    try:
        (<H2UpstreamStream>h).on_data(data, n)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session* session, int32_t sid, uint32_t code,
                          void* user_data) noexcept with gil:
    cdef H2ClientConnection c = <H2ClientConnection>user_data
    cdef object h = c.streams.pop(sid, None)
    if h is None:
        return 0
    try:
        (<H2UpstreamStream>h).on_close(code)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_request_body(nghttp2_session* session, int32_t sid, uint8_t* buf,
                                size_t length, uint32_t* flags, nghttp2_data_source* source,
                                void* user_data) noexcept with gil:
    cdef H2ClientConnection c = <H2ClientConnection>user_data
    cdef object h = c.streams.get(sid)
    if h is None:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    try:
        return (<H2UpstreamStream>h).read_body(buf, length, flags)
    except BaseException as e:
        c.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef nghttp2_session_callbacks* _callbacks():
    global _client_callbacks
    if _client_callbacks == NULL:
        nghttp2_session_callbacks_new(&_client_callbacks)
        nghttp2_session_callbacks_set_on_header_callback(_client_callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(_client_callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_client_callbacks, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(_client_callbacks, _on_stream_close)
    return _client_callbacks


class _H2ClientProtocol(H2ClientConnection, asyncio.BufferedProtocol):
    __slots__ = ()
