from omnirelay_core.connection cimport Connection
from omnirelay_core.sni cimport SniTable
from omnirelay_core.upstream cimport Cluster, Endpoint


cdef enum:
    L4_TCP = 0                  # forward every connection to one cluster
    L4_TLS_PASSTHROUGH = 1      # read the ClientHello, route on its SNI, forward it all

    # phases of a downstream connection
    PHASE_HELLO = 0             # tls_passthrough: buffering the ClientHello
    PHASE_CONNECTING = 1        # upstream connect in flight; client reads paused
    PHASE_PROXYING = 2          # bytes flow both ways
    PHASE_DONE = 3


# Per-listener counters of an L4 listener: declared here only; as_dict() reads the
# names from the declarations (every name starting downstream_ / upstream_).
cdef class L4Stats:
    cdef public long long downstream_cx_total
    cdef public long long downstream_cx_active
    cdef public long long downstream_cx_rx_bytes_total    # client -> upstream
    cdef public long long downstream_cx_tx_bytes_total    # upstream -> client
    cdef public long long downstream_cx_idle_timeout
    cdef public long long downstream_cx_no_route          # no SNI route matched
    cdef public long long downstream_cx_tls_invalid       # not TLS, or a broken ClientHello
    cdef public long long downstream_cx_hello_timeout     # no whole ClientHello in time
    cdef public long long upstream_cx_total               # connects started
    cdef public long long upstream_cx_connect_fail        # refused, unreachable or timed out
    cdef public long long upstream_cx_connect_timeout     # (also counted in connect_fail)
    cdef public long long upstream_cx_overflow            # max_connections / max_pending
    cdef public long long upstream_cx_none_healthy        # the cluster had no endpoint


cdef class L4ListenerState:
    """Settings of one L4 listener for one config generation. A reload swaps the
    runtime's reference; a connection keeps the state it was accepted with."""
    cdef readonly str name
    cdef readonly int mode
    cdef readonly SniTable routes       # tcp: one '*' entry to its cluster
    cdef readonly double idle_timeout   # <= 0: none
    cdef readonly double hello_timeout
    cdef readonly Py_ssize_t buffer_limit
    cdef public L4Stats stats


cdef class L4ServerConnection(Connection):
    cdef L4ListenerRuntime listener
    cdef L4ListenerState state
    cdef L4UpstreamConnection upstream
    cdef Cluster cluster
    cdef Endpoint endpoint
    cdef bytes peer_bytes
    cdef int phase
    cdef bint pending_counted       # counted in cluster.rq_pending while connecting
    cdef bint eof_from_client
    cdef bint eof_from_upstream
    cdef bint eof_pending           # client FIN seen before the upstream was ready
    cdef bytes early                # bytes read before the upstream was ready
    cdef object timer

    cdef int route(self, const unsigned char* name, Py_ssize_t n) except -1
    cdef int connect(self, Cluster cluster) except -1
    cdef int upstream_ready(self, L4UpstreamConnection up) except -1
    cdef int upstream_failed(self, L4UpstreamConnection up, bint timed_out) except -1
    cdef int upstream_data(self, const char* p, Py_ssize_t n) except -1
    cdef int upstream_eof(self) except -1
    cdef int upstream_lost(self, object exc) except -1
    cdef int finish(self, bint abort) except -1
    cdef int arm_timer(self, double delay) except -1
    cdef void cancel_timer(self)
    cdef int _uncount_pending(self) except -1


cdef class L4UpstreamConnection(Connection):
    cdef L4ServerConnection down
    cdef Endpoint endpoint
    cdef bint active_counted        # in endpoint.active from connect start until closed
    cdef bint opened                # in endpoint.open_connections while connected


cdef class L4ListenerRuntime:
    cdef public L4ListenerState state
    cdef readonly set connections
    cdef readonly L4Stats stats
    cdef public object server
    cdef public bint draining
