from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.connection cimport Connection
from omnirelay_core.http1 cimport Http1Parser


cdef class UpstreamCallbacks:
    """What a stream implements to hear from the upstream connection it holds."""
    cdef int on_upstream_ready(self, UpstreamConnection c) except -1
    cdef int on_upstream_connect_failed(self, UpstreamConnection c, object exc) except -1
    cdef int on_upstream_headers(self, UpstreamConnection c) except -1
    cdef int on_upstream_body(self, const char* p, size_t n) except -1
    cdef int on_upstream_complete(self, UpstreamConnection c) except -1
    cdef int on_upstream_reset(self, object exc) except -1
    cdef int on_upstream_tunnel_data(self, const char* p, size_t n) except -1
    cdef int on_upstream_tunnel_eof(self) except -1
    cdef int on_upstream_write_paused(self, bint paused) except -1
    # Around the handling of one read: what the stream writes downstream meanwhile may
    # leave as one send.
    cdef int on_upstream_read(self, bint begin) except -1


cdef class Endpoint:
    cdef readonly str host
    cdef readonly int port
    cdef readonly int weight
    cdef readonly int priority      # 0 (preferred) .. 7
    cdef readonly str locality
    cdef readonly Cluster cluster
    cdef list idle
    cdef readonly long long connects
    cdef readonly long long connect_failures
    cdef readonly long long reuses
    cdef readonly int active
    # Written through set_state (or the Python properties) so that a change
    # of availability marks the cluster's priority loads stale.
    cdef bint _healthy              # active health checking flips it
    cdef bint _ejected              # outlier detection
    cdef public double ejected_until
    cdef public int ejections
    cdef public int consecutive_5xx
    cdef public int consecutive_gateway
    cdef readonly int open_connections
    cdef public list h2_conns       # HTTP/2 clusters: this endpoint's multiplexed connections

    cdef inline bint available(self) noexcept:
        return self._healthy and not self._ejected

    cdef void set_state(self, bint healthy, bint ejected) noexcept
    cdef UpstreamConnection acquire(self)
    cdef void release(self, UpstreamConnection c)
    cdef void forget(self, UpstreamConnection c)
    cdef UpstreamConnection connect(self, UpstreamCallbacks cb)
    cdef int sweep_idle(self, double now) except -1


cdef class PriorityLevel:
    """The endpoints of one priority and the LB state over them."""
    cdef readonly int priority
    cdef readonly list endpoints
    cdef list _ring                     # weighted round robin by repetition
    cdef Py_ssize_t rr
    cdef list _hash_eps                 # ring_hash: endpoints in ring order
    cdef unsigned long long* _hkeys     # ring_hash: sorted positions
    cdef Py_ssize_t _hn
    cdef list _maglev                   # maglev: lookup table of endpoints
    cdef int health                     # percent, overprovisioned and capped at 100
    cdef int load                       # percent of requests sent to this level

    cdef int rebuild_lb(self, int lb) except -1
    cdef int update_health(self, double overprovisioning) except -1
    cdef Endpoint _next_rr(self)
    cdef Endpoint pick(self, Cluster c, unsigned long long key)


cdef class Cluster:
    cdef readonly str name
    cdef readonly list endpoints
    cdef list levels                    # PriorityLevel by ascending priority, none empty
    cdef PriorityLevel _only            # the level when there is just one: no level choice
    cdef bint _dirty                    # availability changed: recompute loads first
    cdef readonly double overprovisioning
    # upstream HTTP/2 (h2c, prior knowledge) and the settings we send
    cdef public bint h2
    # TLS origination (None: cleartext): context, SNI, allowed peer SPIFFE IDs
    cdef readonly object ssl_context
    cdef readonly object tls_client     # a tls.TlsClient: upstream TLS driven by the core
    cdef readonly str tls_sni
    cdef readonly tuple spiffe_allow
    cdef public unsigned int h2_max_concurrent_streams
    cdef public unsigned int h2_initial_stream_window
    cdef public unsigned int h2_initial_connection_window
    cdef public int lb                  # LB_* below
    cdef public bytes hash_header       # hash key: a request header (lowercase) ...
    cdef public bint hash_source_ip     # ... or the client address
    cdef unsigned long long _rng
    # circuit breakers and their live counters
    cdef public int max_connections
    cdef public int max_pending_requests
    cdef public int max_requests
    cdef public int max_retries
    cdef public int rq_active
    cdef public int rq_pending
    cdef public int retries_active
    cdef public long long overflows
    # outlier detection (consecutive_* = 0 disables that detector)
    cdef public int od_consecutive_5xx
    cdef public int od_consecutive_gateway
    cdef public double od_base_ejection
    cdef public double od_max_ejection
    cdef public int od_max_percent
    cdef public double od_interval      # seconds between un-ejection passes
    cdef double _last_uneject
    cdef public double connect_timeout
    cdef public double idle_timeout
    cdef public int max_idle
    cdef public Py_ssize_t buffer_limit

    cdef unsigned long long _rand(self) noexcept
    cdef int _update_loads(self) except -1
    cdef PriorityLevel _choose_level(self, unsigned long long key)
    cdef Endpoint pick(self, unsigned long long key)
    cpdef int report(self, Endpoint ep, int status) except -1


cdef enum:
    LB_ROUND_ROBIN = 0
    LB_LEAST_REQUEST = 1
    LB_RANDOM = 2
    LB_RING_HASH = 3
    LB_MAGLEV = 4


cdef unsigned long long hash_bytes(const char* p, Py_ssize_t n) noexcept


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

    cdef public bint is_h2           # an HTTP/2 stream handle (http2_upstream.H2UpstreamStream)

    # What a stream reads of the response, whatever the upstream protocol.
    cdef int response_status(self)
    cdef HeaderMap response_headers(self)
    cdef HeaderMap swap_response_headers(self, HeaderMap empty)
    cdef long long response_content_length(self)
    cdef HeaderMap take_trailers(self)

    cdef void attach(self, UpstreamCallbacks cb, bint head_request)
    cdef void request_finished(self)
    cdef void detach_and_close(self)
    cdef void maybe_release(self)
    cdef int flush_early(self) except -1
