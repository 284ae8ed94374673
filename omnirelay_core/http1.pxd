from omnirelay_core.includes.llhttp cimport llhttp_t
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.buffers cimport ByteBuilder


cdef class Http1Events:
    """What a connection implements to receive one parser's events. Each method
    runs inside llhttp_execute; an exception is stored and surfaces from
    Http1Parser.execute once llhttp has unwound."""
    cdef int on_message_begin(self) except -1
    # 0 = proceed, 1 = message has no body (HEAD response), 2 = no body + upgrade
    cdef int on_headers_complete(self) except -1
    cdef int on_body(self, const char* at, size_t n) except -1
    # 0 = continue with the next pipelined message, 21 (HPE_PAUSED) = stop here
    cdef int on_message_complete(self) except -1


cdef class Http1Parser:
    cdef llhttp_t p
    cdef Http1Events owner
    cdef readonly HeaderMap headers
    cdef readonly HeaderMap trailers
    cdef HeaderMap _target
    cdef ByteBuilder url
    cdef object exc
    cdef Py_ssize_t header_bytes
    cdef Py_ssize_t max_header_bytes
    cdef bint in_body
    cdef bint is_request
    cdef public object too_large_exc

    cdef void reset(self) noexcept
    cdef int execute(self, const char* data, size_t n, size_t* consumed) except -1
    cdef int finish(self) except -1
    cdef void resume(self) noexcept
    cdef void resume_after_upgrade(self) noexcept
    cdef int count_header_bytes(self, size_t n) except -1
    cdef bytes error_reason(self)
    cdef bint should_keep_alive(self) noexcept


cdef bytes method_bytes(int method)
