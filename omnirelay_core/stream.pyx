# A codec-agnostic HTTP stream: one request/response exchange between a
# downstream codec (HTTP/1.1 today, HTTP/2 later) and an upstream connection.
# It runs the filter chain, the terminal router (pick cluster, pool, forward)
# and owns timeouts and backpressure between the two sides.
import asyncio
import os

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeLatin1
from cpython.mem cimport PyMem_Free

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object u, Py_ssize_t* size) except NULL
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype)
from libc.string cimport strlen
from libc.time cimport time_t, tm, strftime
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

cdef extern from "<time.h>" nogil:
    tm* gmtime_r(const time_t* timep, tm* result)
from libc.string cimport memcmp

from omnirelay_core.headers cimport HeaderMap, ascii_ieq
from omnirelay_core.connection cimport monotonic
from omnirelay_core.buffers cimport ByteBuilder
from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint, Cluster
from omnirelay_core.router cimport (RouteEntry, RouteTable, RequestView, fill_view, RETRY_5XX,
                                    RETRY_GATEWAY_ERROR, RETRY_CONNECT_FAILURE, RETRY_RESET,
                                    RETRY_STATUS_CODES, RETRY_GRPC_CANCELLED,
                                    RETRY_GRPC_DEADLINE_EXCEEDED, RETRY_GRPC_INTERNAL,
                                    RETRY_GRPC_RESOURCE_EXHAUSTED, RETRY_GRPC_UNAVAILABLE,
                                    RETRY_GRPC_ANY, ACTION_WEIGHTED, ACTION_DIRECT,
                                    ACTION_REDIRECT)
from omnirelay_core.shadow cimport ShadowRequest, new_shadow
from omnirelay_core.http2_upstream cimport H2UpstreamStream, h2_acquire, h2_connect
from omnirelay_core.stats cimport Stats, UpstreamStats
from omnirelay_core.upstream cimport hash_bytes, LB_RING_HASH
from omnirelay_core.filterchain cimport (FilterChain, FilterState, CONTINUE, STOP, LOCAL_REPLY,
                                         REQUEST_HEADERS, REQUEST_BODY, REQUEST_TRAILERS,
                                         RESPONSE_HEADERS, RESPONSE_BODY, RESPONSE_TRAILERS)
from omnirelay_core.includes.llhttp cimport F_CONTENT_LENGTH, F_CHUNKED

from omnirelay_core.errors import (ProxyError, BadRequest, NoRoute, BodyTooLarge, UpstreamTimeout,
                                   UpstreamUnavailable, UpstreamProtocolError)
from omnirelay_core.filterchain import LocalReply

import logging
_log = logging.getLogger("omnirelay.core")

cdef ByteBuilder _out = ByteBuilder(8192)

# Request-id: xorshift128+ seeded from the OS, reseeded in every forked worker.
cdef unsigned long long _s0 = 0, _s1 = 0


def reseed():
    global _s0, _s1
    r = os.urandom(16)
    _s0 = int.from_bytes(r[:8], "little") | 1
    _s1 = int.from_bytes(r[8:], "little") | 2


reseed()
os.register_at_fork(after_in_child=reseed)


cdef inline unsigned long long _rand64() noexcept:
    global _s0, _s1
    cdef unsigned long long x = _s0, y = _s1
    _s0 = y
    x ^= x << 23
    _s1 = x ^ y ^ (x >> 17) ^ (y >> 26)
    return _s1 + y


cdef bytes _new_request_id():
    # UUIDv4 text form, built in C.
    cdef char buf[36]
    cdef const char* hexd = b"0123456789abcdef"
    cdef unsigned long long a = _rand64(), b = _rand64()
    cdef int i, k = 0
    a = (a & 0xffffffffffff0fffULL) | 0x0000000000004000ULL
    b = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            buf[i] = 45
            continue
        if k < 16:
            buf[i] = hexd[(a >> (60 - 4 * k)) & 15]
        else:
            buf[i] = hexd[(b >> (60 - 4 * (k - 16))) & 15]
        k += 1
    return PyBytes_FromStringAndSize(buf, 36)




# ---- gRPC helpers ----
_GRPC_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3,
               ord("u"): 1e-6, ord("n"): 1e-9}
_GRPC_RETRY_BITS = {b"1": RETRY_GRPC_CANCELLED, b"4": RETRY_GRPC_DEADLINE_EXCEEDED,
                    b"13": RETRY_GRPC_INTERNAL, b"8": RETRY_GRPC_RESOURCE_EXHAUSTED,
                    b"14": RETRY_GRPC_UNAVAILABLE}


cdef double _grpc_timeout(bytes v):
    # "TimeoutValue TimeoutUnit": at most 8 digits, then one of H M S m u n.
    cdef Py_ssize_t n = len(v)
    if 2 <= n <= 9 and v[:n - 1].isdigit() and v[n - 1] in _GRPC_UNITS:
        return int(v[:n - 1]) * _GRPC_UNITS[v[n - 1]]
    return 0.0


cdef int _grpc_retry_bit(HeaderMap h):
    cdef Py_ssize_t i = h.find(b"grpc-status", 11, 0)
    if i < 0:
        return 0
    return _GRPC_RETRY_BITS.get(PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len), 0)


cdef int _grpc_code(int status, str reason):
    # HTTP status of a local reply -> gRPC status code (as Envoy maps them, with
    # timeouts as DEADLINE_EXCEEDED).
    if status == 504 or (reason and "timeout" in reason):
        return 4            # DEADLINE_EXCEEDED
    if status == 400:
        return 13           # INTERNAL
    if status == 401:
        return 16           # UNAUTHENTICATED
    if status == 403:
        return 7            # PERMISSION_DENIED
    if status == 404:
        return 12           # UNIMPLEMENTED
    if status == 413 or status == 431:
        return 8            # RESOURCE_EXHAUSTED
    if status == 429 or status == 502 or status == 503:
        return 14           # UNAVAILABLE
    return 2                # UNKNOWN


cdef bytes _grpc_message(str text):
    # grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2, "Responses").
    cdef bytearray out = bytearray()
    for c in text.encode("utf-8"):
        if 0x20 <= c <= 0x7E and c != 0x25:
            out.append(c)
        else:
            out += b"%%%02X" % c
    return bytes(out)


# Access-log flag bits (HttpStream.log_flags / access_record()[12]).
DEF LOG_UPSTREAM_TIMEOUT = 1
DEF LOG_PER_TRY_TIMEOUT = 2
DEF LOG_UPSTREAM_RESET = 4
DEF LOG_SHADOWED = 8
LOG_FLAG_UPSTREAM_TIMEOUT = LOG_UPSTREAM_TIMEOUT
LOG_FLAG_PER_TRY_TIMEOUT = LOG_PER_TRY_TIMEOUT
LOG_FLAG_UPSTREAM_RESET = LOG_UPSTREAM_RESET
LOG_FLAG_SHADOWED = LOG_SHADOWED


cdef class ListenerState:
    def __init__(self, str name, RouteTable routes, *, str via="omnirelay",
                 int xff_trusted_hops=0, Py_ssize_t max_header_bytes=65536,
                 double idle_timeout=300.0, double request_timeout=60.0,
                 Py_ssize_t buffer_limit=1048576, str scheme="http", Stats stats=None,
                 unsigned int h2_max_concurrent_streams=100,
                 unsigned int h2_initial_stream_window=262144,
                 unsigned int h2_initial_connection_window=1048576):
        self.name = name
        self.routes = routes
        self.via = via.encode("latin-1")
        self.via11 = b"1.1 " + self.via
        self.via10 = b"1.0 " + self.via
        self.xff_trusted_hops = xff_trusted_hops
        self.max_header_bytes = max_header_bytes
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.buffer_limit = buffer_limit
        self.scheme = scheme.encode()
        self.stats = stats if stats is not None else Stats()
        self.h2_max_concurrent_streams = h2_max_concurrent_streams
        self.h2_initial_stream_window = h2_initial_stream_window
        self.h2_initial_connection_window = h2_initial_connection_window
        self.access_log = None
        self.trace = None
        self.clusters = {}
        self.upstream_stats = {}


cdef class DownstreamCodec:
    cdef int encode_headers(self, HttpStream s, bint end_stream) except -1:
        raise NotImplementedError
    cdef int encode_data(self, HttpStream s, const char* p, Py_ssize_t n, bint end_stream) except -1:
        raise NotImplementedError
    cdef int encode_trailers(self, HttpStream s, HeaderMap trailers) except -1:
        raise NotImplementedError
    cdef int encode_continue(self, HttpStream s) except -1:
        return 0
    cdef int read_disable(self, HttpStream s, bint disable) except -1:
        return 0
    cdef int reset(self, HttpStream s) except -1:
        return 0
    cdef int stream_complete(self, HttpStream s) except -1:
        return 0
    cdef int start_tunnel(self, HttpStream s) except -1:
        return 0
    cdef int tunnel_write(self, HttpStream s, const char* p, Py_ssize_t n) except -1:
        return 0
    cdef int tunnel_eof(self, HttpStream s) except -1:
        return 0
    cdef void cork(self) noexcept:
        pass
    cdef int uncork(self) except -1:
        return 0


# Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
cdef tuple _HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"te",
                          b"trailer", b"transfer-encoding", b"upgrade", b"content-length")


cdef int _strip_hop_by_hop(HeaderMap h, bint keep_upgrade, bint grpc=False) except -1:
    cdef Py_ssize_t i = h.find(b"connection", 10, 0)
    cdef bytes name
    # Extra tokens named in Connection are hop-by-hop too.
    while i >= 0:
        for tok in PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len).split(b","):
            name = tok.strip().lower()
            if name and name not in (b"close", b"keep-alive", b"upgrade"):
                h.remove_raw(name, len(name))
        i = h.find(b"connection", 10, i + 1)
    # A gRPC request keeps "te: trailers": gRPC servers require it.
    i = h.find(b"te", 2, 0) if grpc else -1
    keep_te = False
    while i >= 0 and not keep_te:
        keep_te = h.value_has_token(i, b"trailers", 8)
        i = h.find(b"te", 2, i + 1)
    for name in _HOP_BY_HOP:
        if keep_upgrade and name == b"upgrade":
            continue
        h.remove_raw(name, len(name))
    if keep_te:
        h.add_raw(b"te", 2, b"trailers", 8)
    return 0


cdef int _append_via(HeaderMap h, bytes ours) except -1:
    # Every earlier hop stays listed, in order, whether it came as one line or several.
    cdef Py_ssize_t i = h.find(b"via", 3, 0)
    cdef list hops
    if i < 0:
        return h.add_raw(b"via", 3, ours, len(ours))
    hops = []
    while i >= 0:
        hops.append(PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len))
        i = h.find(b"via", 3, i + 1)
    hops.append(ours)
    v = b", ".join(hops)
    h.remove_raw(b"via", 3)
    return h.add_raw(b"via", 3, v, len(v))


cdef class HttpStream(UpstreamCallbacks):

    def __cinit__(self):
        self.request_headers = HeaderMap()
        self.response_headers = HeaderMap()
        self.req_content_length = -1
        self.resp_content_length = -1


    # ---- request path ----
    cdef int on_request_headers(self, bint end_stream) except -1:
        cdef const char* host = b""
        cdef Py_ssize_t hl = 0, pl, i, ql
        cdef const char* path
        cdef RequestView rq
        cdef RouteEntry route
        cdef int r
        self.req_end = end_stream
        i = self.request_headers.find(b"x-request-id", 12, 0)
        if i >= 0 and 0 < self.request_headers.entries[i].value_len <= 128:
            self.request_id = PyBytes_FromStringAndSize(
                self.request_headers.value_at(i), self.request_headers.entries[i].value_len)
        else:
            self.request_id = _new_request_id()
        i = self.request_headers.find(b"content-type", 12, 0)
        if (i >= 0 and self.request_headers.entries[i].value_len >= 16 and
                memcmp(self.request_headers.value_at(i), b"application/grpc", 16) == 0):
            self.is_grpc = True
            i = self.request_headers.find(b"grpc-timeout", 12, 0)
            if i >= 0:
                self.grpc_timeout = _grpc_timeout(PyBytes_FromStringAndSize(
                    self.request_headers.value_at(i), self.request_headers.entries[i].value_len))
        i = self.request_headers.find(b"host", 4, 0)
        if i >= 0:
            host = self.request_headers.value_at(i)
            hl = self.request_headers.entries[i].value_len
            if self.request_headers.find(b"host", 4, i + 1) >= 0:
                return self.fail(BadRequest("more than one Host header"))
        elif self.http_minor >= 1:
            return self.fail(BadRequest("HTTP/1.1 request without a Host header"))
        path = PyBytes_AS_STRING(self.target)
        pl = len(self.target)
        if self.is_connect:
            host, hl = path, pl
            path, pl = b"/", 1
        elif pl and path[0] != 47 and path[0] != 42:
            self._absolute_form()
            path = PyBytes_AS_STRING(self.target)
            pl = len(self.target)
            i = self.request_headers.find(b"host", 4, 0)
            host = self.request_headers.value_at(i)
            hl = self.request_headers.entries[i].value_len
        ql = 0
        for i in range(pl):
            if path[i] == 63:   # '?'
                ql = pl - i - 1
                pl = i
                break
        fill_view(&rq, host, hl, path, pl, path + pl + 1 if ql else path + pl, ql,
                  PyBytes_AS_STRING(self.method), len(self.method))
        route = self.listener.routes.match(&rq, self.request_headers)
        if route is None:
            return self.fail(NoRoute("no route matched"))
        self.route = route
        self.cluster = (route.pick_cluster(_rand64()) if route.action == ACTION_WEIGHTED
                        else route.cluster)
        self._start_timer()
        if route.max_request_body >= 0 and self.req_content_length > route.max_request_body:
            return self.fail(BodyTooLarge(f"request body of {self.req_content_length} bytes exceeds the route limit"))
        if route.chain is not None:
            self.fstate = route.chain.new_state()
            if route.chain.has(REQUEST_BODY) and not end_stream and not self.is_upgrade:
                # A body filter may change the length: re-frame as chunked upstream.
                self.req_chunked = True
                self.req_content_length = -1
            if route.chain.has(REQUEST_HEADERS):
                r = self.fstate.run(REQUEST_HEADERS, self, None, end_stream, 0)
                if r == STOP:
                    # Reads stay on so a client that leaves is noticed; body bytes
                    # queue in `pending`, which pauses reads past the buffer limit.
                    return 0
                if r == LOCAL_REPLY:
                    return self._filter_local_reply()
        return self._decode_continue()

    cdef int _filter_local_reply(self) except -1:
        lr = self.fstate.local_reply
        self.fstate.local_reply = None
        return self.send_local_reply(lr.status, lr.body, lr.reason, lr.headers)

    def _absolute_form(self):
        # "GET http://host/path HTTP/1.1": the target's authority replaces Host
        # (RFC 9112 3.2.2); route and forward the origin form.
        t = self.target
        rest = t.split(b"://", 1)[1] if b"://" in t else t
        slash = rest.find(b"/")
        authority = rest[:slash] if slash >= 0 else rest
        authority = authority.rpartition(b"@")[2]
        self.target = rest[slash:] if slash >= 0 else b"/"
        self.request_headers.remove_raw(b"host", 4)
        self.request_headers.add_raw(b"host", 4, authority, len(authority))

    cdef int _decode_continue(self) except -1:
        # Filters are done with the request head: go upstream.
        if self.done:
            return 0
        if self.listener.trace is not None and self.trace is None:
            self.trace = self.listener.trace.begin(self)
        if self.route.action >= ACTION_DIRECT:
            return self._route_reply()
        self._prepare_request_headers()
        if self.route.mirrors and not self.is_upgrade and not self.is_connect:
            self._start_shadows()
        if self.expect_continue:
            self.codec.encode_continue(self)
        return self._start_upstream()

    cdef int _route_reply(self) except -1:
        # A direct response or redirect configured on the route.
        cdef RouteEntry route = self.route
        headers = list(route.reply_headers)
        if route.action == ACTION_REDIRECT:
            i = self.request_headers.find(b"host", 4, 0)
            authority = (PyBytes_FromStringAndSize(self.request_headers.value_at(i),
                                                   self.request_headers.entries[i].value_len)
                         if i >= 0 else b"")
            headers.append((b"location", route.location(self.listener.scheme, authority,
                                                        self.target)))
        return self._reply(route.reply_status, route.reply_body,
                           "redirect" if route.action == ACTION_REDIRECT else "direct_response",
                           headers, True)

    cdef int _start_shadows(self) except -1:
        # Mirrors get the request as it goes upstream, Host suffixed "-shadow".
        cdef ShadowRequest sh
        cdef HeaderMap h = self.request_headers
        cdef ByteBuilder out = _out
        cdef Py_ssize_t i = h.find(b"host", 4, 0)
        cdef bytes host, head
        cdef Py_ssize_t j
        if i >= 0:
            host = PyBytes_FromStringAndSize(h.value_at(i), h.entries[i].value_len)
        else:
            host = self.route.host_rewrite or b"shadow"
        j = host.rfind(b":")
        host = host[:j] + b"-shadow" + host[j:] if j > host.rfind(b"]") else host + b"-shadow"
        out.append_obj(self.method)
        out.append(b" ", 1)
        out.append_obj(self.target)
        out.append(b" HTTP/1.1\r\nhost: ", 17)
        out.append_obj(host)
        out.append(b"\r\n", 2)
        for j in range(h.count):
            if h.entries[j].name_len == 4 and ascii_ieq(h.name_at(j), b"host", 4):
                continue
            if h.entries[j].name_len >= 0:
                out.append(h.name_at(j), h.entries[j].name_len)
                out.append(b": ", 2)
                out.append(h.value_at(j), h.entries[j].value_len)
                out.append(b"\r\n", 2)
        if self.req_chunked:
            out.append(b"transfer-encoding: chunked\r\n", 28)
        elif self.req_content_length >= 0:
            out.append(b"content-length: ", 16)
            out.append_int(self.req_content_length)
            out.append(b"\r\n", 2)
        out.append(b"\r\n", 2)
        head = out.take()
        for c, threshold in self.route.mirrors:
            if _rand64() > <unsigned long long>threshold:
                continue
            sh = new_shadow(<Cluster>c, self.listener.stats, head, self.is_head,
                            self.req_chunked, self.listener.buffer_limit)
            if self.shadows is None:
                self.shadows = []
            self.shadows.append(sh)
            self.log_flags |= LOG_SHADOWED
            sh.start(self.route.timeout, _rand64())
            if self.req_end:
                sh.end()
        return 0

    cdef int _prepare_request_headers(self) except -1:
        cdef HeaderMap h = self.request_headers
        cdef Py_ssize_t i
        cdef bytes v
        cdef RouteEntry route
        if self.expect_continue:
            h.remove_raw(b"expect", 6)
        _strip_hop_by_hop(h, self.is_upgrade, self.is_grpc)
        # X-Forwarded-For: append the peer; X-Forwarded-Proto: ours at the edge.
        i = h.find(b"x-forwarded-for", 15, 0)
        if i >= 0:
            v = b", ".join([x.encode("latin-1") for x in h.getall("x-forwarded-for")])
            h.remove_raw(b"x-forwarded-for", 15)
            v = v + b", " + self.peer_bytes
        else:
            v = self.peer_bytes
        h.add_raw(b"x-forwarded-for", 15, v, len(v))
        if self.listener.xff_trusted_hops == 0 or h.find(b"x-forwarded-proto", 17, 0) < 0:
            h.remove_raw(b"x-forwarded-proto", 17)
            h.add_raw(b"x-forwarded-proto", 17, self.listener.scheme, len(self.listener.scheme))
        if self.listener.via:
            _append_via(h, self.listener.via11 if self.http_minor else self.listener.via10)
        # x-forwarded-client-cert is ours alone: a client's own is dropped (Envoy's SANITIZE),
        # a verified client certificate's identity is passed on (SANITIZE_SET).
        h.remove_raw(b"x-forwarded-client-cert", 23)
        if self.peer_identity is not None:
            v = b"URI=" + self.peer_identity.encode()
            h.add_raw(b"x-forwarded-client-cert", 23, v, len(v))
        i = h.find(b"x-request-id", 12, 0)
        if i < 0 or h.entries[i].value_len != len(self.request_id) or memcmp(
                h.value_at(i), PyBytes_AS_STRING(self.request_id), len(self.request_id)) != 0:
            # Absent or unusable (empty, oversized): replace with ours.
            h.remove_raw(b"x-request-id", 12)
            h.add_raw(b"x-request-id", 12, self.request_id, len(self.request_id))
        route = self.route
        if route.request_edits is not None:
            route.request_edits.apply(h)
        if not self.is_connect:
            self.target = route.rewrite_target(self.target)
        if route.host_rewrite is not None:
            h.remove_raw(b"host", 4)
            h.add_raw(b"host", 4, route.host_rewrite, len(route.host_rewrite))
        elif route.auto_host:
            # _send_upstream_head writes the chosen endpoint's address per attempt.
            h.remove_raw(b"host", 4)
        return 0

    cdef int _start_upstream(self) except -1:
        cdef RouteEntry route = self.route
        cdef Cluster cluster = self.cluster
        cdef Endpoint ep
        cdef UpstreamConnection c
        cdef unsigned long long key = 0
        cdef Py_ssize_t i
        cdef int open_cx = 0
        if self.ustats is None:
            self.ustats = route.stats_for(cluster)
        if not self.rq_counted:
            if cluster.rq_active >= cluster.max_requests:
                return self._overflow("max_requests")
            cluster.rq_active += 1
            self.rq_counted = True
        if cluster.lb >= LB_RING_HASH:
            if cluster.hash_source_ip:
                key = hash_bytes(PyBytes_AS_STRING(self.peer_bytes), len(self.peer_bytes))
            elif cluster.hash_header is not None:
                i = self.request_headers.find(cluster.hash_header, len(cluster.hash_header), 0)
                key = (hash_bytes(self.request_headers.value_at(i), self.request_headers.entries[i].value_len)
                       if i >= 0 else _rand64())
        ep = cluster.pick(key)
        if ep is None:
            return self.fail(UpstreamUnavailable("cluster has no endpoints",
                                                 reason="no_healthy_upstream"))
        self.endpoint = ep
        self.attempts += 1
        self.listener.stats.upstream_rq_total += 1
        self.ustats.rq_total += 1
        self.try_start = monotonic()
        if self.upstream_start == 0:
            self.upstream_start = self.try_start
        if self.trace is not None:    # tracing: a CLIENT span per attempt, its traceparent
            self.trace.attempt(ep.host, ep.port, self.try_start)
        if route.per_try_timeout > 0 and not self.is_upgrade and not self.is_connect:
            self.try_timer = asyncio.get_running_loop().call_later(
                route.per_try_timeout, self._on_try_timeout)
        if cluster.h2 and (self.is_upgrade or self.is_connect):
            return self.fail(UpstreamProtocolError(
                "upgrade and CONNECT need an HTTP/1.1 cluster", reason="upstream_protocol"))
        c = h2_acquire(ep) if cluster.h2 else ep.acquire()
        if c is not None:
            self.listener.stats.upstream_cx_reused += 1
            return self._attach_upstream(c)
        if cluster.rq_pending >= cluster.max_pending_requests:
            return self._overflow("max_pending_requests")
        for e in cluster.endpoints:
            open_cx += (<Endpoint>e).open_connections
        if open_cx >= cluster.max_connections:
            return self._overflow("max_connections")
        cluster.rq_pending += 1
        self.pending_counted = True
        self.connecting = h2_connect(ep, self) if cluster.h2 else ep.connect(self)
        return 0

    cdef int _abandon_connect(self) except -1:
        # The attempt no longer waits for its connect (done, timed out, retrying);
        # a late connection goes to the pool, a late failure is ignored.
        self.connecting = None
        if self.pending_counted:
            self.pending_counted = False
            self.cluster.rq_pending -= 1
        return 0

    cdef int _overflow(self, str what) except -1:
        # Circuit breaker open: 503 now, with the limit that tripped in the reason.
        self.cluster.overflows += 1
        return self.fail(UpstreamUnavailable(
            f"cluster {self.cluster.name} overflow: {what}",
            reason="upstream_overflow_" + what))

    cdef int _record(self, object data) except -1:
        # Keep what was sent upstream so a retry can replay it; past the buffer
        # limit the request can no longer be retried. Mirrors get a copy too.
        if self.shadows is not None:
            for sh in self.shadows:
                (<ShadowRequest>sh).feed(data)
        if self.route is None or self.route.num_retries == 0 or self.replay_lost:
            return 0
        self.replay_bytes += len(data)
        if self.replay_bytes > self.listener.buffer_limit:
            self.replay_lost = True
            self.replay = None
            return 0
        if self.replay is None:
            self.replay = []
        self.replay.append(data)
        return 0

    cdef bint _should_retry(self, int cond, int status):
        cdef RouteEntry route = self.route
        cdef Cluster cluster
        cdef int on
        if (route is None or self.attempts > route.num_retries or self.resp_started
                or self.done or self.tunnel or self.is_upgrade or self.is_connect
                or self.replay_lost):
            return False
        on = route.retry_on
        if cond == RETRY_CONNECT_FAILURE:
            ok = on & (RETRY_CONNECT_FAILURE | RETRY_5XX | RETRY_GATEWAY_ERROR | RETRY_RESET)
        elif cond == RETRY_RESET:
            ok = on & (RETRY_RESET | RETRY_5XX | RETRY_GATEWAY_ERROR)
        elif cond == RETRY_GRPC_ANY:
            ok = on & status     # status carries the RETRY_GRPC_* bit of the grpc-status
        else:
            ok = ((on & RETRY_5XX and status >= 500) or
                  (on & RETRY_GATEWAY_ERROR and (status == 502 or status == 503 or status == 504)) or
                  (on & RETRY_STATUS_CODES and status in route.retriable_status_codes))
        if not ok:
            return False
        # Retry budget: active retries stay under a share of active requests.
        cluster = self.cluster
        if cluster.retries_active >= cluster.max_retries:
            return False
        if cluster.retries_active >= max(route.retry_min_concurrency,
                                         cluster.rq_active * route.retry_budget_percent / 100.0):
            return False
        return True

    cdef int _retry(self) except -1:
        cdef RouteEntry route = self.route
        cdef double backoff
        if self.upstream is not None:
            self.upstream.detach_and_close()
            self.upstream = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.trace is not None:
            self.trace.attempt_end(monotonic())
        self._abandon_connect()
        self.upstream_sent_head = False
        self.upstream_end_sent = False
        self.pending = list(self.replay) if self.replay is not None else None
        self.pending_bytes = self.replay_bytes if self.replay is not None else 0
        self.listener.stats.upstream_rq_retry += 1
        self.ustats.rq_retry += 1
        self.cluster.retries_active += 1
        self.retry_counted = True
        # Exponential backoff with full jitter.
        backoff = min(route.retry_max_interval,
                      route.retry_base_interval * (1 << min(self.attempts - 1, 16)))
        backoff *= (_rand64() >> 11) * (1.0 / 9007199254740992.0)
        self.retry_timer = asyncio.get_running_loop().call_later(backoff, self._do_retry)
        return 0

    def _do_retry(self):
        self.retry_timer = None
        if self.retry_counted:
            self.retry_counted = False
            self.cluster.retries_active -= 1
        if not self.done:
            try:
                self._start_upstream()
            except ProxyError as e:
                self.fail(e)

    cdef int _attempt_failed(self, object exc, int cond) except -1:
        if self.trace is not None:
            self.trace.attempt_error(exc)
        if self.endpoint is not None:
            self.cluster.report(self.endpoint, 0)
        if self._should_retry(cond, 0):
            return self._retry()
        return self.fail(exc)

    def _on_try_timeout(self):
        self.try_timer = None
        if self.done or self.resp_started:
            return
        self.listener.stats.upstream_rq_per_try_timeout += 1
        self.log_flags |= LOG_PER_TRY_TIMEOUT
        self.ustats.rq_per_try_timeout += 1
        self._attempt_failed(UpstreamTimeout("upstream per-try timeout"), RETRY_RESET)

    cdef int _start_timer(self) except -1:
        # Started once the route is known, so a filter that never resumes is bounded too.
        cdef RouteEntry route = self.route
        cdef double t = route.timeout
        if t <= 0 and route.num_retries == 0:
            t = route.per_try_timeout
        if self.grpc_timeout > 0 and (t <= 0 or self.grpc_timeout < t):
            t = self.grpc_timeout     # the client's deadline bounds the whole exchange
        # An upgrade is bounded until its 101 (the timer is cancelled there);
        # CONNECT only waits for the connect, bounded by connect_timeout.
        if t > 0 and not self.is_connect:
            self.timer = asyncio.get_running_loop().call_later(t, self._on_timeout)
        return 0

    def _on_timeout(self):
        self.timer = None
        if self.done or self.resp_end:
            return
        self.listener.stats.upstream_rq_timeout += 1
        self.log_flags |= LOG_UPSTREAM_TIMEOUT
        if self.ustats is not None:     # None: the timeout hit before an upstream attempt
            self.ustats.rq_timeout += 1
        self.fail(UpstreamTimeout("upstream request timeout"))

    cdef int on_upstream_ready(self, UpstreamConnection c) except -1:
        if c is not self.connecting or self.done:
            # A connect this stream gave up on: keep the connection for others.
            if c.is_h2:
                c.detach_and_close()
            else:
                c.attach(None, False)
                c.endpoint.release(c)
            return 0
        self._abandon_connect()
        return self._attach_upstream(c)

    cdef int _attach_upstream(self, UpstreamConnection c) except -1:
        if not c.reused and not c.is_h2:
            c.transport.set_write_buffer_limits(c.endpoint.cluster.buffer_limit)
        self.upstream = c
        c.attach(self, self.is_head)
        if self.is_connect:
            # CONNECT ends here: answer 200 ourselves and tunnel to the endpoint.
            c.tunnel = True
            self.status = 200
            self.response_headers.clear()
            self.resp_no_body = True
            self.resp_started = True
            self.codec.encode_headers(self, False)
            self._cancel_timer()
            self.tunnel = True
            self.codec.start_tunnel(self)
        else:
            self._send_upstream_head()
        if self.pending is not None:
            self._flush_pending()
        if self.req_end and not self.is_connect and not self.is_upgrade:
            self._send_upstream_end()
        return 0

    cdef int on_upstream_connect_failed(self, UpstreamConnection c, object exc) except -1:
        self.listener.stats.upstream_cx_connect_fail += 1
        self.ustats.cx_connect_fail += 1
        if c is not self.connecting:
            return 0
        self._abandon_connect()
        if not self.done:
            if self.try_timer is not None:
                self.try_timer.cancel()
                self.try_timer = None
            self._attempt_failed(exc, RETRY_CONNECT_FAILURE)
        return 0

    cdef int _send_upstream_head(self) except -1:
        cdef ByteBuilder out = _out
        cdef HeaderMap h = self.request_headers
        if self.upstream.is_h2:
            self.upstream_sent_head = True
            if self.req_end and self.pending is None and self.request_trailers is None:
                self.upstream_end_sent = True
                return (<H2UpstreamStream>self.upstream).send_head(self.method, self.target, h, True)
            return (<H2UpstreamStream>self.upstream).send_head(self.method, self.target, h, False)
        out.append_obj(self.method)
        out.append(b" ", 1)
        out.append_obj(self.target)
        out.append(b" HTTP/1.1\r\n", 11)
        if h.find(b"host", 4, 0) < 0:
            out.append(b"host: ", 6)
            out.append_obj(f"{self.upstream.endpoint.host}:{self.upstream.endpoint.port}".encode())
            out.append(b"\r\n", 2)
        h.serialize_into(out)
        if self.is_upgrade:
            out.append(b"connection: upgrade\r\n", 21)
        elif self.req_chunked:
            out.append(b"transfer-encoding: chunked\r\n", 28)
        elif self.req_content_length >= 0:
            out.append(b"content-length: ", 16)
            out.append_int(self.req_content_length)
            out.append(b"\r\n", 2)
        out.append(b"\r\n", 2)
        self.upstream_sent_head = True
        self.upstream.write(out.take())
        return 0

    cdef int _send_upstream_data(self, object data) except -1:
        cdef ByteBuilder out
        cdef Py_ssize_t n = len(data)
        if n == 0:
            return 0
        if self.req_chunked and not self.tunnel and not self.upstream.is_h2:
            out = _out
            out.append_hex(n)
            out.append(b"\r\n", 2)
            out.append_obj(data)
            out.append(b"\r\n", 2)
            data = out.take()
        self.upstream.write(data)
        return 0

    cdef int _send_upstream_end(self) except -1:
        cdef ByteBuilder out
        if self.upstream_end_sent:
            return 0
        self.upstream_end_sent = True
        if self.upstream.is_h2:
            return (<H2UpstreamStream>self.upstream).end_request(self.request_trailers)
        if self.req_chunked:
            out = _out
            out.append(b"0\r\n", 3)
            if self.request_trailers is not None:
                self.request_trailers.serialize_into(out)
            out.append(b"\r\n", 2)
            self.upstream.write(out.take())
        self.upstream.request_finished()
        return 0

    cdef int on_request_body(self, const char* p, Py_ssize_t n, bint end_stream) except -1:
        cdef RouteEntry route = self.route
        cdef object data
        if self.done:
            return 0
        self.req_body_bytes += n
        if route is not None and route.max_request_body >= 0 and self.req_body_bytes > route.max_request_body:
            return self.fail(BodyTooLarge("request body exceeds the route limit"))
        data = PyBytes_FromStringAndSize(p, n)
        if self.fstate is not None and self.fstate.chain.has(REQUEST_BODY):
            data = self.fstate.run_body(REQUEST_BODY, self, data, end_stream)
            if data is None:
                return 0
            if isinstance(data, LocalReply):
                return self.send_local_reply(data.status, data.body, data.reason, data.headers)
        self._record(data)
        if self.upstream is not None and (self.upstream_sent_head or self.tunnel):
            return self._send_upstream_data(data)
        return self._queue(data)

    cdef int _queue(self, object data) except -1:
        # Request bytes waiting for the upstream; past the buffer limit, stop reading.
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.listener.buffer_limit:
            self.codec.read_disable(self, True)
        return 0

    cdef int _flush_pending(self) except -1:
        pending = self.pending
        self.pending = None
        self.pending_bytes = 0
        for item in pending:
            self._send_upstream_data(item)
        return self.codec.read_disable(self, False)

    cdef int on_request_end(self) except -1:
        if self.done:
            return 0
        self.req_end = True
        if self.fstate is not None and self.fstate.buffered is not None:
            data = self.fstate.run_body(REQUEST_BODY, self, b"", True)
            if isinstance(data, LocalReply):
                return self.send_local_reply(data.status, data.body, data.reason, data.headers)
            self._record(data)
            if self.upstream is not None and self.upstream_sent_head:
                self._send_upstream_data(data)
            else:
                self._queue(data)
        if self.upstream is not None and self.upstream_sent_head and not self.is_upgrade:
            self._send_upstream_end()
        if self.shadows is not None:
            for sh in self.shadows:
                (<ShadowRequest>sh).end()
        if self.resp_end:
            self._finish()
        return 0

    cdef int on_request_tunnel_data(self, const char* p, Py_ssize_t n) except -1:
        data = PyBytes_FromStringAndSize(p, n)
        if self.upstream is not None and self.tunnel:
            self.upstream.write(data)
            return 0
        return self._queue(data)

    cdef int on_request_tunnel_eof(self) except -1:
        if self.upstream is not None and self.tunnel:
            try:
                self.upstream.transport.write_eof()
            except Exception:
                self.upstream.close()
        elif not self.tunnel:
            self.fail(UpstreamUnavailable("client closed before the tunnel opened"))
        return 0

    # ---- response path ----
    cdef int on_upstream_headers(self, UpstreamConnection c) except -1:
        cdef long long cl
        cdef int r
        cdef int status
        if self.done:
            return 0
        status = c.response_status()
        if status == 101 and not self.is_upgrade:
            return self.fail(UpstreamProtocolError("upstream switched protocols unasked"))
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.cluster.report(c.endpoint, status)
        self.ustats.count_status(status)
        if self.trace is not None:
            self.trace.attempt_status(status)
        if self._should_retry(0, status):
            # Discard this response (and its connection) and try again.
            return self._retry()
        if (self.is_grpc and self.route.retry_on & RETRY_GRPC_ANY and
                self._should_retry(RETRY_GRPC_ANY, _grpc_retry_bit(c.response_headers()))):
            return self._retry()
        self.status = status
        self.response_headers = c.swap_response_headers(self.response_headers)
        if self.is_head or self.status == 204 or self.status == 304:
            self.resp_no_body = True
        cl = c.response_content_length()
        if c.is_h2 and (<H2UpstreamStream>c).headers_end:
            # HEADERS with END_STREAM (gRPC "Trailers-Only"): forward it as one frame.
            self.resp_no_body = True
            cl = 0 if self.stream_id == 0 else -1   # HTTP/1.1 clients get content-length: 0
        if cl >= 0:
            self.resp_content_length = cl
        elif not self.resp_no_body:
            self.resp_content_length = -1
        if self.status == 101 and self.is_upgrade:
            _strip_hop_by_hop(self.response_headers, True)
            self._cancel_timer()
        else:
            _strip_hop_by_hop(self.response_headers, False)
        self._add_response_via()
        if self.route.response_edits is not None:
            self.route.response_edits.apply(self.response_headers)
        if self.fstate is not None and self.fstate.chain.has(RESPONSE_HEADERS):
            self.resp_has_body_filters = self.fstate.chain.has(RESPONSE_BODY)
            r = self.fstate.run(RESPONSE_HEADERS, self, None, False, 0)
            if r == STOP:
                c.pause_reading()
                self.paused_upstream_reads = True
                return 0
            if r == LOCAL_REPLY:
                return self._filter_local_reply()
        elif self.fstate is not None:
            self.resp_has_body_filters = self.fstate.chain.has(RESPONSE_BODY)
        return self._encode_response_headers()

    cdef int _add_response_via(self) except -1:
        if self.listener.via:
            _append_via(self.response_headers, self.listener.via11)
        return 0

    cdef int _encode_response_headers(self) except -1:
        self.resp_started = True
        self.codec.encode_headers(self, self.resp_no_body and self.status != 101)
        if self.status == 101 and self.is_upgrade:
            self.tunnel = True
            self.codec.start_tunnel(self)
            if self.pending is not None:
                self._flush_pending()
        elif self.resp_no_body:
            self.resp_end = True
        return 0

    cdef int on_upstream_body(self, const char* p, size_t n) except -1:
        if self.done:
            return 0
        self.resp_body_bytes += n
        if self.paused_upstream_reads:
            # A response-headers filter holds the head: keep the bytes for later.
            if self.resp_pending is None:
                self.resp_pending = []
            self.resp_pending.append(PyBytes_FromStringAndSize(p, n))
            return 0
        return self._forward_response_body(p, n, False)

    cdef int _forward_response_body(self, const char* p, size_t n, bint end) except -1:
        cdef object data
        if self.fstate is not None and self.resp_has_body_filters:
            data = self.fstate.run_body(RESPONSE_BODY, self,
                                        PyBytes_FromStringAndSize(p, n), end)
            if data is None:
                return 0
            if isinstance(data, LocalReply):
                if not self.resp_started:
                    return self.send_local_reply(data.status, data.body, data.reason, data.headers)
                return self.codec.reset(self)
            return self.codec.encode_data(self, PyBytes_AS_STRING(data), len(data), end)
        return self.codec.encode_data(self, p, n, end)

    cdef int on_upstream_complete(self, UpstreamConnection c) except -1:
        cdef HeaderMap t
        if self.done:
            return 0
        self.ustats.record_time(monotonic() - self.try_start)
        t = c.take_trailers()
        if t is not None:
            self.response_trailers = t
        self.upstream = None if c.request_done else self.upstream
        if self.paused_upstream_reads:
            self.resp_complete_pending = True
            return 0
        return self._complete_response()

    cdef int _complete_response(self) except -1:
        cdef object data
        if not self.resp_no_body:
            if self.response_trailers is not None:
                if self.fstate is not None and self.resp_has_body_filters:
                    # Body filters see the end of the body; trailers still follow it.
                    data = self.fstate.run_body(RESPONSE_BODY, self, b"", True)
                    if isinstance(data, LocalReply):
                        return self.codec.reset(self)
                    if data:
                        self.codec.encode_data(self, PyBytes_AS_STRING(data), len(data), False)
                self.codec.encode_trailers(self, self.response_trailers)
            else:
                self._forward_response_body(b"", 0, True)
        self.resp_end = True
        # An early response (client still sending) also ends the stream here;
        # the codec then closes the client connection.
        self._finish()
        return 0

    cdef int on_upstream_reset(self, object exc) except -1:
        cdef UpstreamConnection c = self.upstream
        self.upstream = None
        if self.done:
            return 0
        self.listener.stats.upstream_rq_reset += 1
        self.log_flags |= LOG_UPSTREAM_RESET
        if self.ustats is not None:
            self.ustats.rq_reset += 1
        if (c is not None and c.reused and not c.got_bytes and not self.resp_started
                and self.req_body_bytes == 0 and not self.tunnel):
            # A pooled connection the upstream closed as we reused it: one fresh try.
            self.upstream_sent_head = False
            self.upstream_end_sent = False
            self.connecting = c.endpoint.connect(self)
            return 0
        return self._attempt_failed(exc, RETRY_RESET)

    cdef int on_upstream_tunnel_data(self, const char* p, size_t n) except -1:
        return self.codec.tunnel_write(self, p, n)

    cdef int on_upstream_tunnel_eof(self) except -1:
        return self.codec.tunnel_eof(self)

    cdef int on_upstream_read(self, bint begin) except -1:
        if self.codec is not None:
            if begin:
                self.codec.cork()
            else:
                self.codec.uncork()
        return 0

    cdef int on_upstream_write_paused(self, bint paused) except -1:
        return self.codec.read_disable(self, paused)

    cdef int on_downstream_write_paused(self, bint paused) except -1:
        # The client reads slower than the upstream sends: stop reading upstream.
        cdef UpstreamConnection c = self.upstream
        if c is not None and not self.paused_upstream_reads:
            if paused:
                c.pause_reading()
            else:
                c.resume_reading()
        return 0

    cdef int on_downstream_reset(self) except -1:
        # Client went away: abandon the exchange and never reuse its upstream.
        if self.upstream is not None:
            self.upstream.detach_and_close()
            self.upstream = None
        if not self.done:
            self.resp_end = True
            self._finish()
        return 0

    # ---- endings ----
    cdef int fail(self, object exc) except -1:
        cdef int status = getattr(exc, "status", 502)
        if self.done:
            return 0
        if isinstance(exc, BadRequest) and status == 400:
            self.listener.stats.downstream_rq_protocol_error += 1
        if self.upstream is not None:
            self.upstream.detach_and_close()
            self.upstream = None
        if self.resp_started and self.is_grpc and self.stream_id != 0 and not self.resp_end:
            # A gRPC response already under way ends with the error as its status
            # trailers (e.g. DEADLINE_EXCEEDED), which a reset would hide.
            self.local_reason = getattr(exc, "reason", "error")
            t = HeaderMap()
            t.add(b"grpc-status", str(_grpc_code(status, self.local_reason)))
            t.add(b"grpc-message", _grpc_message(str(exc)))
            self.response_trailers = t
            self.codec.encode_trailers(self, t)
            self.resp_end = True
            self._finish()
            return 0
        if self.resp_started:
            # Never let a truncated body look complete: reset the client.
            self.local_reason = getattr(exc, "reason", "error")
            self.codec.reset(self)
            self.resp_end = True
            self._finish()
            return 0
        return self.send_local_reply(status, (str(exc) + "\n").encode(),
                                     getattr(exc, "reason", "error"), None)

    cdef int send_local_reply(self, int status, object body, str reason, list headers) except -1:
        return self._reply(status, body, reason, headers, False)

    cdef int _reply(self, int status, object body, str reason, list headers,
                    bint route_reply) except -1:
        # route_reply: a configured direct response or redirect, which gets the
        # route's response header edits and no diagnostic reason header.
        cdef bytes b = body if isinstance(body, bytes) else bytes(body)
        cdef HeaderMap h = self.response_headers
        if self.done or self.resp_started:
            return 0
        if self.upstream is not None:
            self.upstream.detach_and_close()
            self.upstream = None
        self.listener.stats.downstream_rq_local_reply += 1
        self.local_reason = reason
        if not self.req_end or status == 400 or status == 408 or status == 431:
            # The rest of the request is unread or unreadable: close after replying.
            self.keep_alive = False
        self.status = status
        h.clear()
        if self.is_grpc and not route_reply:
            # A gRPC client reads errors from grpc-status, not the HTTP status:
            # answer "Trailers-Only" (RFC-less but what every gRPC peer expects).
            h.add_raw(b"content-type", 12, b"application/grpc", 16)
            h.add(b"grpc-status", str(_grpc_code(status, reason)))
            h.add(b"grpc-message", _grpc_message(b.decode("utf-8", "replace").strip()))
            self.status = status = 200
            b = b""
        for name, value in headers or ():
            h.add(name, value)
        if b and h.find(b"content-type", 12, 0) < 0:
            h.add_raw(b"content-type", 12, b"text/plain; charset=utf-8", 25)
        if reason and not route_reply:
            h.add(b"x-omnirelay-reason", reason)
        if self.request_id is not None:
            h.add_raw(b"x-request-id", 12, self.request_id, len(self.request_id))
        if route_reply and self.route.response_edits is not None:
            self.route.response_edits.apply(h)
        self.resp_content_length = len(b)
        self.resp_no_body = self.is_head or len(b) == 0
        self.resp_has_body_filters = False
        self.resp_started = True
        self.codec.encode_headers(self, self.resp_no_body)
        if not self.resp_no_body:
            self.codec.encode_data(self, PyBytes_AS_STRING(b), len(b), True)
        self.resp_end = True
        self._cancel_timer()
        self._finish()
        return 0

    cdef int _cancel_timer(self) except -1:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return 0

    cdef int _finish(self) except -1:
        cdef Stats st = self.listener.stats
        cdef int cls
        if self.done:
            return 0
        self.done = True
        self._cancel_timer()
        if self.shadows is not None:
            for sh in self.shadows:
                (<ShadowRequest>sh).abort()
            self.shadows = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.retry_counted:
            self.retry_counted = False
            self.cluster.retries_active -= 1
        if self.connecting is not None or self.pending_counted:
            self._abandon_connect()
        if self.rq_counted:
            self.rq_counted = False
            self.cluster.rq_active -= 1
        st.downstream_rq_active -= 1
        st.downstream_rq_body_bytes += self.req_body_bytes
        st.downstream_rs_body_bytes += self.resp_body_bytes
        cls = self.status // 100
        if cls == 2:
            st.downstream_rq_2xx += 1
        elif cls == 3:
            st.downstream_rq_3xx += 1
        elif cls == 4:
            st.downstream_rq_4xx += 1
        elif cls == 5:
            st.downstream_rq_5xx += 1
        elif cls == 1:
            st.downstream_rq_1xx += 1
        if self.upstream is not None and not self.tunnel and not self.upstream.request_done:
            # Response ended before the request did: the connection can't be reused.
            self.upstream.detach_and_close()
            self.upstream = None
        if self.fstate is not None:
            self.fstate.run_log(self)
        al = self.listener.trace
        if al is not None:
            al.finish(self)   # spans of the request and its attempts; taps
        sink = self.listener.access_sink
        if sink is not None:
            (<AccessSink>sink).add(self)
        else:
            al = self.listener.access_log
            if al is not None:
                al(self)      # the logger samples/limits, then calls access_record()
        self.codec.stream_complete(self)
        return 0

    def access_record(self):
        """The values an access log record needs, read at C level (bytes decoded as
        latin-1, durations in ms): (request_id, listener, peer, method, authority, path,
        protocol, route, cluster, endpoint "host:port", status, attempts, flags,
        local_reason, req_body_bytes, resp_body_bytes, duration_ms, upstream_ms, user_agent)."""
        cdef double now = monotonic()
        cdef HeaderMap h = self.request_headers
        cdef Py_ssize_t i
        cdef object authority = None
        cdef object ua = None
        cdef object ep = None
        if h is not None:
            i = h.find(b"host", 4, 0)
            if i >= 0:
                authority = PyUnicode_DecodeLatin1(h.value_at(i), h.entries[i].value_len, NULL)
            i = h.find(b"user-agent", 10, 0)
            if i >= 0:
                ua = PyUnicode_DecodeLatin1(h.value_at(i), h.entries[i].value_len, NULL)
        if self.endpoint is not None:
            ep = f"{self.endpoint.host}:{self.endpoint.port}"
        return (self.request_id.decode("latin-1") if self.request_id is not None else None,
                self.listener.name, self.peer,
                self.method.decode("latin-1") if self.method is not None else None,
                authority,
                self.target.decode("latin-1") if self.target is not None else None,
                "HTTP/2" if self.stream_id > 0 else ("HTTP/1.1" if self.http_minor else "HTTP/1.0"),
                self.route.name if self.route is not None else None,
                self.cluster.name if self.cluster is not None else None,
                ep, self.status, self.attempts, self.log_flags, self.local_reason,
                self.req_body_bytes, self.resp_body_bytes, (now - self.start_time) * 1000.0,
                (now - self.upstream_start) * 1000.0 if self.upstream_start > 0 else None, ua)

    @staticmethod
    def access_json_lines(list pending, list clk):
        """See the module function (exported through HttpStream, the core's Python face)."""
        return access_json_lines(pending, clk)

    # ---- Python API for filters ----
    def resume(self):
        """Continue a stream that a filter paused with STOP."""
        cdef FilterState st = self.fstate
        cdef int hook, r
        if st is None or st.paused_hook < 0 or self.done:
            return
        hook = st.paused_hook
        st.paused_hook = -1
        try:
            r = st.run(hook, self, None, self.req_end if hook == REQUEST_HEADERS else False,
                       st.paused_at + 1)
            if r == STOP:
                return
            if r == LOCAL_REPLY:
                self._filter_local_reply()
                return
            if hook == REQUEST_HEADERS:
                self.codec.read_disable(self, False)
                self._decode_continue()
            elif hook == RESPONSE_HEADERS:
                self.paused_upstream_reads = False
                self._encode_response_headers()
                pending, self.resp_pending = self.resp_pending, None
                for chunk in pending or ():
                    self._forward_response_body(chunk, len(chunk), False)
                if self.resp_complete_pending:
                    self._complete_response()
                elif self.upstream is not None:
                    self.upstream.resume_reading()
        except ProxyError as e:
            self.fail(e)

    def reply(self, int status, body=b"", headers=None, reason="filter"):
        """Answer the client now (from a filter or after an async check)."""
        if isinstance(body, str):
            body = body.encode()
        self.send_local_reply(status, body, reason, list(headers or ()))

    def set_cluster(self, str name):
        """Send this request to cluster `name` instead of the route's choice.
        Only from a request-headers hook, before any upstream attempt; the
        request counts in the route's stats under that cluster."""
        cdef Cluster c
        if self.route is None or self.cluster is None:
            raise ValueError("the route has no upstream cluster (direct response or redirect)")
        if self.attempts > 0 or self.upstream is not None or self.connecting is not None:
            raise ValueError("the upstream request has already started")
        c = self.listener.clusters.get(name)
        if c is None:
            raise ValueError(f"unknown cluster {name!r}")
        self.cluster = c
        key = (self.route.name, name)
        st = self.listener.upstream_stats.get(key)
        if st is None:
            st = self.listener.upstream_stats[key] = UpstreamStats()
        self.ustats = st

    @property
    def path(self):
        return self.target.decode("latin-1")

    @property
    def method_name(self):
        return self.method.decode("latin-1")

    @property
    def authority(self):
        return self.request_headers.get("host")

    @property
    def route_name(self):
        return self.route.name if self.route is not None else None

    @property
    def cluster_name(self):
        return self.cluster.name if self.cluster is not None else None


cdef HttpStream _new_stream(DownstreamCodec codec, ListenerState listener, str peer,
                           bytes peer_bytes):
    cdef HttpStream s = HttpStream.__new__(HttpStream)
    s.codec = codec
    s.listener = listener
    s.peer = peer
    s.peer_bytes = peer_bytes
    s.start_time = monotonic()
    listener.stats.downstream_rq_total += 1
    listener.stats.downstream_rq_active += 1
    return s


cdef const char* _HEX = "0123456789abcdef"


cdef int _json_str(ByteBuilder b, object v) except -1:
    """`v` as a JSON string (null for None): UTF-8, with '"', '\\' and control characters
    escaped as json.encoder.encode_basestring does; other characters pass through."""
    cdef Py_ssize_t n, i, run
    cdef const char* p
    cdef unsigned char c
    if v is None:
        return b.append("null", 4)
    p = PyUnicode_AsUTF8AndSize(v, &n)
    b.append('"', 1)
    run = 0
    for i in range(n):
        c = <unsigned char>p[i]
        if c >= 0x20 and c != 34 and c != 92:
            continue
        if i > run:
            b.append(p + run, i - run)
        run = i + 1
        _json_escape(b, c)
    if n > run:
        b.append(p + run, n - run)
    return b.append('"', 1)


cdef int _json_ms(ByteBuilder b, double v) except -1:
    """repr(round(v, 3)) for a non-negative duration: 3 decimals, trailing zeros dropped
    down to one ("12.0", "0.5", "1.234")."""
    cdef char* s = PyOS_double_to_string(v, b'f', 3, 0, NULL)
    cdef Py_ssize_t n
    if s == NULL:
        raise MemoryError()
    try:
        n = strlen(s)
        while n > 0 and s[n - 1] == 48 and s[n - 2] != 46:   # '0', not after '.'
            n -= 1
        return b.append(s, n)
    finally:
        PyMem_Free(s)


cdef int _json_latin1(ByteBuilder b, const char* p, Py_ssize_t n) except -1:
    """Raw bytes read as latin-1 (how the access record decodes them), as a JSON string in
    UTF-8: the same bytes _json_str writes for the decoded text."""
    cdef Py_ssize_t i, run = 0
    cdef unsigned char c
    cdef char two[2]
    b.append('"', 1)
    for i in range(n):
        c = <unsigned char>p[i]
        if 0x20 <= c < 0x80 and c != 34 and c != 92:
            continue
        if i > run:
            b.append(p + run, i - run)
        run = i + 1
        if c >= 0x80:
            two[0] = <char>(0xC0 | (c >> 6))
            two[1] = <char>(0x80 | (c & 0x3F))
            b.append(two, 2)
        else:
            _json_escape(b, c)
    if n > run:
        b.append(p + run, n - run)
    return b.append('"', 1)


cdef int _json_escape(ByteBuilder b, unsigned char c) except -1:
    cdef char esc[6]
    if c == 34:
        return b.append('\\"', 2)
    if c == 92:
        return b.append("\\\\", 2)
    if c == 10:
        return b.append("\\n", 2)
    if c == 13:
        return b.append("\\r", 2)
    if c == 9:
        return b.append("\\t", 2)
    if c == 8:
        return b.append("\\b", 2)
    if c == 12:
        return b.append("\\f", 2)
    esc[0] = 92; esc[1] = 117; esc[2] = 48; esc[3] = 48   # \u00
    esc[4] = _HEX[c >> 4]; esc[5] = _HEX[c & 15]
    return b.append(esc, 6)


cdef int _json_header(ByteBuilder b, HeaderMap h, const char* name, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    if h is not None:
        i = h.find(name, n, 0)
        if i >= 0:
            return _json_latin1(b, h.value_at(i), h.entries[i].value_len)
    return b.append("null", 4)


cdef int _json_flag(ByteBuilder b, bint* first, const char* name, Py_ssize_t n) except -1:
    b.append("[\"" if first[0] else ",\"", 2)
    first[0] = False
    b.append(name, n)
    return b.append('"', 1)


cdef int _json_flags(ByteBuilder b, int bits, int attempts, bint local_reply) except -1:
    """The record's "flags" list, in the order omnirelay.telemetry.accesslog lists them."""
    cdef bint first = True
    if bits & LOG_UPSTREAM_TIMEOUT:
        _json_flag(b, &first, "upstream_timeout", 16)
    if bits & LOG_PER_TRY_TIMEOUT:
        _json_flag(b, &first, "per_try_timeout", 15)
    if attempts > 1:
        _json_flag(b, &first, "retried", 7)
    if local_reply:
        _json_flag(b, &first, "local_reply", 11)
    if bits & LOG_UPSTREAM_RESET:
        _json_flag(b, &first, "upstream_reset", 14)
    if bits & LOG_SHADOWED:
        _json_flag(b, &first, "shadowed", 8)
    return b.append("[]" if first else "]", 2 if first else 1)


cdef int _json_timestamp(ByteBuilder b, double start, list clk) except -1:
    """"YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC) for the Unix time `start`; `clk` caches the
    text of the last second formatted: [second, bytes]."""
    cdef long sec = <long>start
    cdef int ms
    cdef time_t t
    cdef tm parts
    cdef char iso[32]
    cdef char tail[6]
    if sec != <long>clk[0]:
        t = <time_t>sec
        gmtime_r(&t, &parts)
        clk[1] = iso[:strftime(iso, sizeof(iso), "%Y-%m-%dT%H:%M:%S", &parts)]
        clk[0] = sec
    ms = <int>((start - sec) * 1000)
    b.append('"', 1)
    b.append_obj(clk[1])
    tail[0] = 46; tail[1] = 48 + ms // 100; tail[2] = 48 + ms // 10 % 10
    tail[3] = 48 + ms % 10; tail[4] = 90; tail[5] = 34     # .mmmZ"
    return b.append(tail, 6)


cdef class AccessSink:
    """Lines of the default JSON access log (every field, as the generated formatter of
    omnirelay.telemetry.accesslog writes them), formatted here when a request finishes and
    drained by the logger's timer with `take()`. Past `limit` buffered bytes new lines are
    dropped and counted."""

    def __init__(self, Py_ssize_t limit, on_data):
        self.buf = ByteBuilder()
        self.limit = limit
        self.on_data = on_data
        self.clk = [-1, b""]

    def take(self):
        """The buffered lines (bytes), leaving the buffer empty."""
        return self.buf.take()

    cdef int add(self, HttpStream s) except -1:
        cdef ByteBuilder b = self.buf
        cdef timespec ts
        cdef double now = monotonic()
        cdef double dur = (now - s.start_time) * 1000.0
        cdef Py_ssize_t mark = b.length
        if b.length > self.limit:
            self.dropped += 1
            return 0
        clock_gettime(CLOCK_REALTIME, &ts)
        b.append('{"timestamp":', 13)
        _json_timestamp(b, <double>ts.tv_sec + ts.tv_nsec * 1e-9 - dur * 0.001, self.clk)
        b.append(',"request_id":', 14)
        if s.request_id is None:
            b.append("null", 4)
        else:
            _json_latin1(b, PyBytes_AS_STRING(s.request_id), len(s.request_id))
        b.append(',"listener":', 12)
        _json_str(b, s.listener.name)
        b.append(',"peer":', 8)
        _json_str(b, s.peer)
        b.append(',"method":', 10)
        if s.method is None:
            b.append("null", 4)
        else:
            _json_latin1(b, PyBytes_AS_STRING(s.method), len(s.method))
        b.append(',"authority":', 13)
        _json_header(b, s.request_headers, b"host", 4)
        b.append(',"path":', 8)
        if s.target is None:
            b.append("null", 4)
        else:
            _json_latin1(b, PyBytes_AS_STRING(s.target), len(s.target))
        if s.stream_id > 0:
            b.append(',"protocol":"HTTP/2"', 20)
        elif s.http_minor:
            b.append(',"protocol":"HTTP/1.1"', 22)
        else:
            b.append(',"protocol":"HTTP/1.0"', 22)
        b.append(',"route":', 9)
        _json_str(b, s.route.name if s.route is not None else None)
        b.append(',"cluster":', 11)
        _json_str(b, s.cluster.name if s.cluster is not None else None)
        b.append(',"upstream":', 12)
        if s.endpoint is None:
            b.append("null", 4)
        else:
            _json_str(b, s.endpoint.host)
            b.length -= 1                       # reopen the string: "host:port"
            b.append(":", 1)
            b.append_int(s.endpoint.port)
            b.append('"', 1)
        b.append(',"status":', 10)
        b.append_int(s.status)
        b.append(',"flags":', 9)
        _json_flags(b, s.log_flags, s.attempts, s.local_reason is not None)
        b.append(',"retries":', 11)
        b.append_int(s.attempts - 1 if s.attempts > 1 else 0)
        b.append(',"reason":', 10)
        _json_str(b, s.local_reason)
        b.append(',"request_bytes":', 17)
        b.append_int(s.req_body_bytes)
        b.append(',"response_bytes":', 18)
        b.append_int(s.resp_body_bytes)
        b.append(',"duration_ms":', 15)
        _json_ms(b, dur)
        b.append(',"upstream_ms":', 15)
        if s.upstream_start > 0:
            _json_ms(b, (now - s.upstream_start) * 1000.0)
        else:
            b.append("null", 4)
        b.append(',"user_agent":', 14)
        _json_header(b, s.request_headers, b"user-agent", 10)
        b.append("}\n", 2)
        self.records += 1
        if mark == 0:
            self.on_data()
        return 0


def access_json_lines(list pending, list clk):
    """The default JSON access-log lines (every field) for a batch of (wall_end, record)
    pairs, each ending in a newline, as UTF-8 bytes: the compiled twin of
    omnirelay.telemetry.accesslog's generated formatter, run on the logger's flush timer
    (never per request)."""
    cdef ByteBuilder b = ByteBuilder()
    cdef tuple r
    cdef int attempts
    for item in pending:
        r = <tuple>(<tuple>item)[1]
        b.append('{"timestamp":', 13)
        _json_timestamp(b, <double>(<tuple>item)[0] - <double>r[16] * 0.001, clk)
        b.append(',"request_id":', 14)
        _json_str(b, r[0])
        b.append(',"listener":', 12)
        _json_str(b, r[1])
        b.append(',"peer":', 8)
        _json_str(b, r[2])
        b.append(',"method":', 10)
        _json_str(b, r[3])
        b.append(',"authority":', 13)
        _json_str(b, r[4])
        b.append(',"path":', 8)
        _json_str(b, r[5])
        b.append(',"protocol":', 12)
        _json_str(b, r[6])
        b.append(',"route":', 9)
        _json_str(b, r[7])
        b.append(',"cluster":', 11)
        _json_str(b, r[8])
        b.append(',"upstream":', 12)
        _json_str(b, r[9])
        b.append(',"status":', 10)
        b.append_int(r[10])
        attempts = r[11]
        b.append(',"flags":', 9)
        _json_flags(b, r[12], attempts, r[13] is not None)
        b.append(',"retries":', 11)
        b.append_int(attempts - 1 if attempts > 1 else 0)
        b.append(',"reason":', 10)
        _json_str(b, r[13])
        b.append(',"request_bytes":', 17)
        b.append_int(r[14])
        b.append(',"response_bytes":', 18)
        b.append_int(r[15])
        b.append(',"duration_ms":', 15)
        _json_ms(b, r[16])
        b.append(',"upstream_ms":', 15)
        if r[17] is None:
            b.append("null", 4)
        else:
            _json_ms(b, r[17])
        b.append(',"user_agent":', 14)
        _json_str(b, r[18])
        b.append("}\n", 2)
    return b.take()
