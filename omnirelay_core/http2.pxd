from libc.stdint cimport uint8_t
from omnirelay_core.includes.nghttp2 cimport nghttp2_nv, nghttp2_session
from omnirelay_core.headers cimport HeaderMap


cdef class NvArray:
    """An nghttp2 header block under construction; keeps its bytes alive."""
    cdef nghttp2_nv* nva
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef list keep
    cdef int add(self, bytes name, bytes value) except -1
    cdef int add_map(self, HeaderMap h, bint skip_host) except -1


# Shared by the downstream and upstream sessions.
cdef ssize_t send_all(nghttp2_session* session, list chunks) except? -1
cdef size_t copy_chunks(list out, Py_ssize_t* off, uint8_t* buf, size_t length) except? 0
