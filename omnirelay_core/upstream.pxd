from omnirelay_core.connection cimport Connection
from omnirelay_core.http1 cimport Http1Parser


cdef class UpstreamCallbacks:
    """What a stream implements to hear from the upstream connection it holds."""
    cdef int on_upstream_ready(self, UpstreamConnection c) except -1
    cdef int on_upstream_connect_failed(self, object exc) except -1
    cdef int on_upstream_headers(self, UpstreamConnection c) except -1
    cdef int on_upstream_body(self, const char* p, size_t n) except -1
    cdef int on_upstream_complete(self, UpstreamConnection c) except -1
    cdef int on_upstream_reset(self, object exc) except -1
    cdef int on_upstream_tunnel_data(self, const char* p, size_t n) except -1
    cdef int on_upstream_tunnel_eof(self) except -1
    cdef int on_upstream_write_paused(self, bint paused) except -1


cdef class Endpoint:
    cdef readonly str host
    cdef readonly int port
    cdef readonly int weight
    cdef readonly Cluster cluster
    cdef list idle
    cdef readonly long long connects
    cdef readonly long long connect_failures
    cdef readonly long long reuses
    cdef readonly int active

    cdef UpstreamConnection acquire(self)
    cdef void release(self, UpstreamConnection c)
    cdef void forget(self, UpstreamConnection c)
    cdef void connect(self, UpstreamCallbacks cb)
    cdef int sweep_idle(self, double now) except -1


cdef class Cluster:
    cdef readonly str name
    cdef readonly list endpoints
    cdef Py_ssize_t rr
    cdef list _ring
    cdef public double connect_timeout
    cdef public double idle_timeout
    cdef public int max_idle
    cdef public Py_ssize_t buffer_limit

    cdef Endpoint pick(self)


cdef class UpstreamConnection(Connection):
    cdef Http1Parser parser
    cdef readonly Endpoint endpoint
    cdef UpstreamCallbacks cb
    cdef bint request_done
    cdef bint response_done
    cdef bint head_request
    cdef bint tunnel
    cdef bint got_bytes
    cdef bint attached_once
    cdef public bint reused
    cdef double idle_since

    cdef void attach(self, UpstreamCallbacks cb, bint head_request)
    cdef void request_finished(self)
    cdef void detach_and_close(self)
    cdef void maybe_release(self)
    cdef int flush_early(self) except -1
