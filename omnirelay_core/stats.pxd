# Per-listener counters: one declaration list, read by the admin API and tests.
cdef class Stats:
    cdef public long long downstream_cx_total
    cdef public long long downstream_cx_active
    cdef public long long downstream_cx_http2_total
    cdef public long long downstream_cx_http2_flood
    cdef public long long downstream_rq_total
    cdef public long long downstream_rq_active
    cdef public long long downstream_rq_1xx
    cdef public long long downstream_rq_2xx
    cdef public long long downstream_rq_3xx
    cdef public long long downstream_rq_4xx
    cdef public long long downstream_rq_5xx
    cdef public long long downstream_rq_local_reply
    cdef public long long downstream_rq_protocol_error
    cdef public long long upstream_rq_total
    cdef public long long upstream_rq_timeout
    cdef public long long upstream_rq_per_try_timeout
    cdef public long long upstream_rq_retry
    cdef public long long upstream_rq_reset
    cdef public long long upstream_cx_connect_fail
    cdef public long long upstream_cx_reused
    cdef public long long upstream_rq_shadow
    cdef public long long upstream_rq_shadow_failed
