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
    # retry policy (num_retries 0 = none)
    cdef readonly int retry_on          # RETRY_* bits
    cdef readonly int num_retries
    cdef readonly tuple retriable_status_codes
    cdef readonly double retry_base_interval
    cdef readonly double retry_max_interval
    cdef readonly double retry_budget_percent
    cdef readonly int retry_min_concurrency
    cdef bint any_host
    cdef tuple hosts_exact
    cdef tuple hosts_suffix
    cdef bytes path
    cdef bint path_exact
    cdef tuple header_names
    cdef tuple header_values

    cdef bint matches(self, const char* host, Py_ssize_t hl, const char* path,
                      Py_ssize_t pl, HeaderMap headers) noexcept


cdef enum:
    RETRY_5XX = 1
    RETRY_GATEWAY_ERROR = 2
    RETRY_CONNECT_FAILURE = 4
    RETRY_RESET = 8
    RETRY_STATUS_CODES = 16


cdef class RouteTable:
    cdef readonly tuple entries
    cdef RouteEntry match(self, const char* host, Py_ssize_t hl, const char* path,
                          Py_ssize_t pl, HeaderMap headers)
