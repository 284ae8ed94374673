from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.upstream cimport Cluster
from omnirelay_core.filterchain cimport FilterChain
from omnirelay_core.stats cimport UpstreamStats


cdef struct RequestView:
    # What matching looks at, borrowed from the stream for one call.
    const char* host
    Py_ssize_t hl
    Py_ssize_t hl_noport
    const char* path        # without the query string
    Py_ssize_t pl
    const char* query       # after '?', may be empty
    Py_ssize_t ql
    const char* method
    Py_ssize_t ml


cdef enum:
    RETRY_5XX = 1
    RETRY_GATEWAY_ERROR = 2
    RETRY_CONNECT_FAILURE = 4
    RETRY_RESET = 8
    RETRY_STATUS_CODES = 16
    RETRY_GRPC_CANCELLED = 32
    RETRY_GRPC_DEADLINE_EXCEEDED = 64
    RETRY_GRPC_INTERNAL = 128
    RETRY_GRPC_RESOURCE_EXHAUSTED = 256
    RETRY_GRPC_UNAVAILABLE = 512
    RETRY_GRPC_ANY = 992

cdef enum:
    PATH_PREFIX = 0
    PATH_EXACT = 1
    PATH_REGEX = 2

cdef enum:
    MATCH_EXACT = 0
    MATCH_REGEX = 1
    MATCH_PRESENT = 2

cdef enum:
    ACTION_CLUSTER = 0
    ACTION_WEIGHTED = 1
    ACTION_DIRECT = 2
    ACTION_REDIRECT = 3


cdef class HeaderEdits:
    """Remove, then set, then add: one compiled list per route and direction."""
    cdef tuple remove
    cdef tuple set_names
    cdef tuple set_values
    cdef tuple add_names
    cdef tuple add_values
    cdef int apply(self, HeaderMap h) except -1


cdef class RouteEntry:
    cdef readonly str name
    cdef readonly int action            # ACTION_*
    cdef readonly Cluster cluster       # ACTION_CLUSTER
    cdef readonly tuple clusters        # ACTION_WEIGHTED: clusters ...
    cdef tuple cum_weights              # ... and running weight totals
    cdef unsigned long long total_weight
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
    # match
    cdef bint any_host
    cdef tuple hosts_exact
    cdef tuple hosts_suffix
    cdef int path_kind                  # PATH_*
    cdef bytes path
    cdef object path_re
    cdef tuple methods
    cdef tuple header_names
    cdef tuple header_kinds             # MATCH_*
    cdef tuple header_values            # bytes or compiled bytes regex
    cdef tuple header_inverts
    cdef tuple query                    # ((name, kind, value or regex), ...) on decoded text
    # upstream request rewrites and header edits
    cdef bytes prefix_rewrite
    cdef object regex_rewrite
    cdef bytes regex_substitution
    cdef readonly bytes host_rewrite
    cdef readonly bint auto_host
    cdef readonly HeaderEdits request_edits
    cdef readonly HeaderEdits response_edits
    # shadowing: (cluster, threshold on a 64-bit random draw) pairs
    cdef readonly tuple mirrors
    # direct responses and redirects
    cdef readonly int reply_status
    cdef readonly bytes reply_body
    cdef readonly list reply_headers
    cdef readonly object redirect       # a dict of the redirect's parts
    # upstream counters of this route, per cluster (ACTION_CLUSTER: the first only)
    cdef readonly UpstreamStats cluster_stats
    cdef readonly tuple weighted_stats  # ACTION_WEIGHTED: parallel to `clusters`

    cdef int matches(self, RequestView* rq, HeaderMap headers) except -1
    cdef Cluster pick_cluster(self, unsigned long long r)
    cdef UpstreamStats stats_for(self, Cluster c)
    cdef bytes rewrite_target(self, bytes target)


cdef class RouteTable:
    cdef readonly tuple entries
    cdef tuple generic                  # entries with no exact host, in order
    cdef dict by_host                   # exact host -> its candidates (and generic), in order
    cdef RouteEntry match(self, RequestView* rq, HeaderMap headers)


cdef void fill_view(RequestView* rq, const char* host, Py_ssize_t hl, const char* path,
                    Py_ssize_t pl, const char* query, Py_ssize_t ql, const char* method,
                    Py_ssize_t ml) noexcept
