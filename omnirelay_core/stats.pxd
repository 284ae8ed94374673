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
    # proxied body bytes (before filters; local replies are not counted)
    cdef public long long downstream_rq_body_bytes
    cdef public long long downstream_rs_body_bytes


# Upstream response time: fixed log-scale buckets (upper bounds in UPSTREAM_TIME_BOUNDS,
# seconds; the last slot counts everything above the last bound).
cdef enum:
    UPSTREAM_TIME_BUCKETS = 17


# Per route and cluster: what the stream saw of its upstream attempts. One object per
# (route, cluster) pair, kept across reloads by the table builder; exported as is.
cdef class UpstreamStats:
    cdef public long long rq_total           # attempts started
    cdef public long long rq_1xx             # responses received, by class (retried ones too)
    cdef public long long rq_2xx
    cdef public long long rq_3xx
    cdef public long long rq_4xx
    cdef public long long rq_5xx
    cdef public long long rq_retry
    cdef public long long rq_timeout         # route timeout
    cdef public long long rq_per_try_timeout
    cdef public long long rq_reset
    cdef public long long cx_connect_fail
    cdef long long time_counts[UPSTREAM_TIME_BUCKETS]
    cdef public double time_sum              # seconds

    cdef void record_time(self, double seconds) noexcept
    cdef void count_status(self, int status) noexcept
