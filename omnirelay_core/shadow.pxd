from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint, Cluster
from omnirelay_core.stats cimport Stats


cdef class ShadowRequest(UpstreamCallbacks):
    """A fire-and-forget copy of a request to a mirror cluster. It buffers at most
    `limit` bytes, never applies backpressure to the primary stream and gives up
    (counted in upstream_rq_shadow_failed) rather than wait."""
    cdef Cluster cluster
    cdef Stats stats
    cdef Endpoint endpoint
    cdef UpstreamConnection upstream
    cdef UpstreamConnection connecting
    cdef bytes head
    cdef bint head_request
    cdef bint chunked
    cdef list pending
    cdef Py_ssize_t pending_bytes
    cdef Py_ssize_t limit
    cdef bint ended
    cdef bint end_sent
    cdef bint done
    cdef bint counted
    cdef object timer

    cdef int start(self, double timeout, unsigned long long key) except -1
    cdef int feed(self, object data) except -1
    cdef int end(self) except -1
    cdef int abort(self) except -1
    cdef int _attach(self, UpstreamConnection c) except -1
    cdef int _finish(self, bint failed) except -1


cdef ShadowRequest new_shadow(Cluster cluster, Stats stats, bytes head, bint head_request,
                              bint chunked, Py_ssize_t limit)
