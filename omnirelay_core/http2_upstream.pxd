from libc.stdint cimport int32_t, uint8_t, uint32_t
from omnirelay_core.includes.nghttp2 cimport nghttp2_session
from omnirelay_core.connection cimport Connection
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint


cdef class H2UpstreamStream(UpstreamConnection):
    """One request on a multiplexed HTTP/2 upstream connection. It stands where an
    HTTP/1.1 UpstreamConnection would for the HttpStream: same callbacks, same
    response accessors."""
    cdef H2ClientConnection conn
    cdef int32_t sid
    cdef int status
    cdef HeaderMap headers
    cdef HeaderMap trailers
    cdef long long content_length
    cdef bint headers_seen          # final response HEADERS delivered
    cdef bint headers_end           # ... with END_STREAM: no body, no trailers
    cdef list out
    cdef Py_ssize_t out_off
    cdef Py_ssize_t out_bytes
    cdef bint out_end
    cdef HeaderMap out_trailers
    cdef bint deferred
    cdef bint write_paused_sent
    cdef bint recv_paused
    cdef Py_ssize_t unconsumed
    cdef bint counted               # holds one unit of endpoint.active
    cdef bint stream_closed

    cdef int send_head(self, bytes method, bytes target, HeaderMap headers,
                       bint end_stream) except -1
    cdef int send_data(self, object data) except -1
    cdef int end_request(self, HeaderMap trailers) except -1
    cdef int _release(self) except -1
    cdef int _resume(self) except -1
    cdef ssize_t read_body(self, uint8_t* buf, size_t length, uint32_t* flags) except? -1
    cdef int on_header(self, const uint8_t* name, size_t nl, const uint8_t* value,
                       size_t vl) except -1
    cdef int on_headers_frame(self, bint end_stream) except -1
    cdef int on_data(self, const uint8_t* data, size_t n) except -1
    cdef int complete(self) except -1
    cdef int on_close(self, uint32_t code) except -1


cdef class H2ClientConnection(Connection):
    cdef nghttp2_session* session
    cdef Endpoint endpoint
    cdef dict streams               # stream id -> H2UpstreamStream
    cdef list waiting               # handles waiting for the connection to be ready
    cdef bint ready
    cdef bint going_away            # GOAWAY received or sent: no new streams
    cdef bint in_recv
    cdef bint in_send
    cdef bint send_again
    cdef double idle_since
    cdef object error

    cdef int begin(self) except -1
    cdef int capacity(self)
    cdef bint flush_scheduled
    cdef int flush(self) except -1
    cdef int schedule_flush(self) except -1
    cdef int _recv(self, const char* p, Py_ssize_t n) except -1


cdef UpstreamConnection h2_acquire(Endpoint ep)
cdef UpstreamConnection h2_connect(Endpoint ep, UpstreamCallbacks cb)
