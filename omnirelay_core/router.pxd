from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.upstream cimport Cluster
from omnirelay_core.filterchain cimport FilterChain


cdef class RouteEntry:
    cdef readonly str name
    cdef readonly Cluster cluster
    cdef readonly double timeout
    cdef readonly double per_try_timeout
    cdef readonly Py_ssize_t max_request_body
    cdef readonly FilterChain chain
    cdef bint any_host
    cdef tuple hosts_exact
    cdef tuple hosts_suffix
    cdef bytes path
    cdef bint path_exact
    cdef tuple header_names
    cdef tuple header_values

    cdef bint matches(self, const char* host, Py_ssize_t hl, const char* path,
                      Py_ssize_t pl, HeaderMap headers) noexcept


cdef class RouteTable:
    cdef readonly tuple entries
    cdef RouteEntry match(self, const char* host, Py_ssize_t hl, const char* path,
                          Py_ssize_t pl, HeaderMap headers)
