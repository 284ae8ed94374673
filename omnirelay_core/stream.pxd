from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.buffers cimport ByteBuilder
from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint
from omnirelay_core.router cimport RouteEntry, RouteTable
from omnirelay_core.filterchain cimport FilterState
from omnirelay_core.stats cimport Stats, UpstreamStats
from omnirelay_core.upstream cimport Cluster




cdef class HttpStream


cdef class AccessSink:
    """The default JSON access log, formatted at C level when a request finishes."""
    cdef ByteBuilder buf
    cdef public Py_ssize_t records      # lines formatted
    cdef public Py_ssize_t dropped      # lines dropped: the buffer was over its limit
    cdef Py_ssize_t limit
    cdef object on_data                 # called when the buffer stops being empty
    cdef list clk                       # [second, its ISO text]: see _json_timestamp
    cdef int add(self, HttpStream s) except -1


cdef class ListenerState:
    """Per-listener settings of one config generation; a reload swaps the
    reference held by the listener, so new requests see the new state."""
    cdef readonly str name
    cdef readonly RouteTable routes
    cdef readonly bytes via
    cdef bytes via11
    cdef bytes via10
    cdef readonly int xff_trusted_hops
    cdef readonly Py_ssize_t max_header_bytes
    cdef readonly double idle_timeout
    cdef readonly double request_timeout
    cdef readonly Py_ssize_t buffer_limit
    cdef readonly bytes scheme
    cdef public Stats stats
    cdef readonly unsigned int h2_max_concurrent_streams
    cdef readonly unsigned int h2_initial_stream_window
    cdef readonly unsigned int h2_initial_connection_window
    # Access log hook: None (no per-request Python call) or a callable taking
    # the finished HttpStream (omnirelay.telemetry.accesslog.AccessLogger).
    cdef public object access_log
    # Request hook for tracing and taps: None (no per-request Python call) or an object
    # with begin(stream) -> the per-request hook (HttpStream.trace), and finish(stream)
    # (omnirelay.telemetry.tracing.ListenerHook).
    cdef public object trace
    # Clusters by name and the (route, cluster) counters of this generation, for
    # filters that pick the cluster themselves (HttpStream.set_cluster).
    cdef public dict clusters
    cdef public dict upstream_stats
    # With the default JSON access log and no sampling or rate limit: lines are formatted
    # here, in C, and the logger only drains them (no Python call per request).
    cdef public AccessSink access_sink


cdef class DownstreamCodec:
    """How a stream writes its response to the client, whatever the codec."""
    cdef public bint write_paused
    cdef int encode_headers(self, HttpStream s, bint end_stream) except -1
    cdef int encode_data(self, HttpStream s, const char* p, Py_ssize_t n, bint end_stream) except -1
    cdef int encode_trailers(self, HttpStream s, HeaderMap trailers) except -1
    cdef int encode_continue(self, HttpStream s) except -1
    cdef int read_disable(self, HttpStream s, bint disable) except -1
    cdef int reset(self, HttpStream s) except -1
    cdef int stream_complete(self, HttpStream s) except -1
    cdef int start_tunnel(self, HttpStream s) except -1
    cdef int tunnel_write(self, HttpStream s, const char* p, Py_ssize_t n) except -1
    cdef int tunnel_eof(self, HttpStream s) except -1
    cdef void cork(self) noexcept
    cdef int uncork(self) except -1


cdef HttpStream _new_stream(DownstreamCodec codec, ListenerState listener, str peer, bytes peer_bytes)

cdef class HttpStream(UpstreamCallbacks):
    cdef DownstreamCodec codec
    cdef readonly ListenerState listener
    cdef readonly HeaderMap request_headers
    cdef readonly HeaderMap response_headers
    cdef public HeaderMap request_trailers
    cdef public HeaderMap response_trailers
    cdef public int stream_id        # HTTP/2 stream id; 0 on HTTP/1.1
    cdef readonly bint is_grpc
    cdef double grpc_timeout         # from grpc-timeout; 0 = none
    cdef public bytes method
    cdef public bytes target
    cdef public int http_minor
    cdef readonly int status
    cdef readonly str peer
    cdef public str peer_identity    # client certificate SPIFFE ID on mTLS listeners
    cdef bytes peer_bytes
    cdef public bytes request_id
    cdef readonly RouteEntry route
    cdef readonly Cluster cluster   # the route's, or the one weighted splitting chose
    cdef UpstreamStats ustats       # the route's counters for that cluster, once started
    cdef double try_start           # monotonic start of the current upstream attempt
    cdef list shadows
    cdef UpstreamConnection upstream
    cdef FilterState fstate
    cdef list pending
    cdef Py_ssize_t pending_bytes
    cdef object timer
    cdef object try_timer
    cdef object retry_timer
    cdef readonly int attempts
    cdef Endpoint endpoint        # of the current attempt
    cdef UpstreamConnection connecting   # the connect the current attempt waits for
    cdef bint rq_counted          # circuit breaker accounting on the cluster
    cdef bint pending_counted
    cdef bint retry_counted
    cdef list replay              # request body sent so far, for a retry
    cdef Py_ssize_t replay_bytes
    cdef bint replay_lost
    cdef public object metadata
    cdef readonly double start_time
    cdef readonly str local_reason
    cdef int log_flags            # LOG_* bits for the access log
    cdef double upstream_start    # monotonic start of the first upstream attempt; 0 = none
    # What listener.trace.begin returned (None: not begun, no attempt calls), called per
    # upstream attempt: attempt(host, port, t), attempt_status(status), attempt_error(exc),
    # attempt_end(t).
    cdef public object trace
    # request framing
    cdef public long long req_content_length
    cdef public bint req_chunked
    cdef long long req_body_bytes
    cdef public bint keep_alive
    cdef public bint is_head
    cdef public bint is_connect
    cdef public bint is_upgrade
    cdef public bint expect_continue
    # response framing, as the upstream framed it
    cdef public long long resp_content_length
    cdef public bint resp_no_body
    cdef public bint resp_has_body_filters
    cdef readonly long long resp_body_bytes
    # lifecycle
    cdef public bint req_end
    cdef public bint resp_started
    cdef public bint resp_end
    cdef readonly bint done
    cdef bint upstream_sent_head
    cdef bint upstream_end_sent
    cdef bint paused_upstream_reads
    cdef list resp_pending
    cdef bint resp_complete_pending
    cdef bint tunnel

    cdef int on_request_headers(self, bint end_stream) except -1
    cdef int on_request_body(self, const char* p, Py_ssize_t n, bint end_stream) except -1
    cdef int on_request_end(self) except -1
    cdef int on_request_tunnel_data(self, const char* p, Py_ssize_t n) except -1
    cdef int on_request_tunnel_eof(self) except -1
    cdef int on_downstream_write_paused(self, bint paused) except -1
    cdef int on_downstream_reset(self) except -1
    cdef int send_local_reply(self, int status, object body, str reason, list headers) except -1
    cdef int fail(self, object exc) except -1

    cdef int _decode_continue(self) except -1
    cdef int _start_upstream(self) except -1
    cdef int _send_upstream_head(self) except -1
    cdef int _send_upstream_data(self, object data) except -1
    cdef int _send_upstream_end(self) except -1
    cdef int _prepare_request_headers(self) except -1
    cdef int _encode_response_headers(self) except -1
    cdef int _forward_response_body(self, const char* p, size_t n, bint end) except -1
    cdef int _finish(self) except -1
    cdef int _cancel_timer(self) except -1
    cdef int _complete_response(self) except -1
    cdef int _start_timer(self) except -1
    cdef int _overflow(self, str what) except -1
    cdef int _record(self, object data) except -1
    cdef int _queue(self, object data) except -1
    cdef int _flush_pending(self) except -1
    cdef bint _should_retry(self, int cond, int status)
    cdef int _retry(self) except -1
    cdef int _attempt_failed(self, object exc, int cond) except -1
    cdef int _attach_upstream(self, UpstreamConnection c) except -1
    cdef int _abandon_connect(self) except -1
    cdef int _filter_local_reply(self) except -1
    cdef int _add_response_via(self) except -1
    cdef int _route_reply(self) except -1
    cdef int _reply(self, int status, object body, str reason, list headers, bint route_reply) except -1
    cdef int _start_shadows(self) except -1
