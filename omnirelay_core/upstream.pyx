# Upstream side: clusters, endpoints with keep-alive pools, and the HTTP/1.1
# client connection whose response events go to the stream that holds it.
import asyncio
import logging
import ssl

from cpython.mem cimport PyMem_Malloc, PyMem_Free

_log = logging.getLogger("omnirelay.upstream")

from omnirelay_core.includes.llhttp cimport HPE_OK, HPE_PAUSED, HPE_PAUSED_UPGRADE, F_CONTENT_LENGTH, F_CHUNKED
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.http1 cimport Http1Parser
from omnirelay_core.tls cimport TlsClient, TlsProtocol

from omnirelay_core.tls import unavailable as tls_unavailable
from omnirelay_core.errors import (UpstreamUnavailable, UpstreamReset,
                                   UpstreamProtocolError, UpstreamTimeout)


cdef class UpstreamCallbacks:
    cdef int on_upstream_ready(self, UpstreamConnection c) except -1:
        return 0
    cdef int on_upstream_connect_failed(self, UpstreamConnection c, object exc) except -1:
        return 0
    cdef int on_upstream_headers(self, UpstreamConnection c) except -1:
        return 0
    cdef int on_upstream_body(self, const char* p, size_t n) except -1:
        return 0
    cdef int on_upstream_complete(self, UpstreamConnection c) except -1:
        return 0
    cdef int on_upstream_reset(self, object exc) except -1:
        return 0
    cdef int on_upstream_tunnel_data(self, const char* p, size_t n) except -1:
        return 0
    cdef int on_upstream_tunnel_eof(self) except -1:
        return 0
    cdef int on_upstream_read(self, bint begin) except -1:
        return 0
    cdef int on_upstream_write_paused(self, bint paused) except -1:
        return 0


LB_POLICIES = {"round_robin": LB_ROUND_ROBIN, "least_request": LB_LEAST_REQUEST,
               "random": LB_RANDOM, "ring_hash": LB_RING_HASH, "maglev": LB_MAGLEV}
_RING_POINTS_PER_WEIGHT = 100
_MAGLEV_SIZE = 65537      # prime, as the Maglev paper requires


cdef unsigned long long hash_bytes(const char* p, Py_ssize_t n) noexcept:
    # FNV-1a, then a murmur3 finalizer so nearby keys land far apart on the ring.
    cdef unsigned long long h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= <unsigned char>p[i]
        h *= 1099511628211ULL
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


def hash_key(data):
    """The core's hash of a key (header value or client address), for tests and tools."""
    cdef bytes b = data.encode() if isinstance(data, str) else bytes(data)
    return hash_bytes(b, len(b))


cdef class PriorityLevel:
    """Envoy's host set of one priority: pick() balances over its endpoints with
    the cluster's policy, skipping unavailable ones (panic: any of them)."""

    def __init__(self, int priority, list endpoints):
        self.priority = priority
        self.endpoints = endpoints
        # Weighted round robin by repetition: weights are small integers.
        self._ring = [e for e in endpoints for _ in range((<Endpoint>e).weight)]
        self.rr = 0
        self._hash_eps = []
        self._maglev = []

    def __dealloc__(self):
        PyMem_Free(self._hkeys)

    cdef int rebuild_lb(self, int lb) except -1:
        cdef list points = []
        cdef Endpoint ep
        cdef Py_ssize_t i, n
        cdef bytes b
        PyMem_Free(self._hkeys)
        self._hkeys = NULL
        self._hn = 0
        self._hash_eps = []
        self._maglev = []
        if lb == LB_RING_HASH and self.endpoints:
            for ep in self.endpoints:
                for i in range(_RING_POINTS_PER_WEIGHT * ep.weight):
                    b = f"{ep.host}:{ep.port}_{i}".encode()
                    points.append((hash_bytes(b, len(b)), ep))
            points.sort(key=lambda p: p[0])
            n = len(points)
            self._hkeys = <unsigned long long*>PyMem_Malloc(n * sizeof(unsigned long long))
            if self._hkeys == NULL:
                raise MemoryError()
            for i in range(n):
                self._hkeys[i] = points[i][0]
            self._hash_eps = [p[1] for p in points]
            self._hn = n
        elif lb == LB_MAGLEV and self.endpoints:
            self._maglev = _maglev_table(self.endpoints, _MAGLEV_SIZE)
        return 0

    cdef int update_health(self, double overprovisioning) except -1:
        cdef long long total = 0, up = 0
        cdef double h
        cdef Endpoint ep
        for ep in self.endpoints:
            total += ep.weight
            if ep.available():
                up += ep.weight
        if up == 0:
            self.health = 0
            return 0
        h = overprovisioning * 100.0 * up / total
        # The epsilon keeps 1.4 x 25% from truncating to 34; a level with an
        # available endpoint earns at least 1% so it is never passed over for panic.
        self.health = 100 if h >= 100.0 else max(1, <int>(h + 1e-9))
        return 0

    cdef Endpoint _next_rr(self):
        # Round robin over the weighted ring, skipping unavailable endpoints;
        # when none is available (panic) spread load over all of them.
        cdef list ring = self._ring
        cdef Py_ssize_t n = len(ring), k
        cdef Endpoint ep
        for k in range(n):
            self.rr += 1
            if self.rr >= n:
                self.rr = 0
            ep = <Endpoint>ring[self.rr]
            if ep.available():
                return ep
        # n steps brought rr back where it began: one more keeps panic mode rotating.
        self.rr += 1
        if self.rr >= n:
            self.rr = 0
        return <Endpoint>ring[self.rr]

    cdef Endpoint pick(self, Cluster c, unsigned long long key):
        cdef list ring = self._ring
        cdef Py_ssize_t n = len(ring), lo, hi, mid, k, m
        cdef int lb = c.lb
        cdef Endpoint a, b
        if n == 0:
            return None
        if lb == LB_ROUND_ROBIN:
            return self._next_rr()
        if lb == LB_RANDOM:
            a = <Endpoint>ring[c._rand() % n]
            return a if a.available() else self._next_rr()
        if lb == LB_LEAST_REQUEST:
            # Power of two choices on in-flight requests.
            a = <Endpoint>ring[c._rand() % n]
            b = <Endpoint>ring[c._rand() % n]
            if a.available() and b.available():
                return a if a.active <= b.active else b
            if a.available():
                return a
            if b.available():
                return b
            return self._next_rr()
        if lb == LB_RING_HASH and self._hn:
            lo, hi = 0, self._hn
            while lo < hi:
                mid = (lo + hi) >> 1
                if self._hkeys[mid] < key:
                    lo = mid + 1
                else:
                    hi = mid
            for k in range(self._hn):
                a = <Endpoint>self._hash_eps[(lo + k) % self._hn]
                if a.available():
                    return a
            return <Endpoint>self._hash_eps[lo % self._hn]
        if lb == LB_MAGLEV and self._maglev:
            m = len(self._maglev)
            for k in range(m):
                a = <Endpoint>self._maglev[(key + k) % m]
                if a.available():
                    return a
            return <Endpoint>self._maglev[key % m]
        return self._next_rr()


cdef tuple _endpoint_spec(object spec):
    # (host, port, weight[, priority, locality]): 3-tuples are the pre-priority form.
    if len(spec) == 3:
        host, port, weight = spec
        priority, locality = 0, None
    else:
        host, port, weight, priority, locality = spec
    if not 0 <= priority <= 7:
        raise ValueError(f"endpoint {host}:{port}: priority {priority} is not in 0..7")
    return host, port, weight, priority, locality


cdef class Cluster:
    """Endpoints and their pools; kept across config reloads for endpoints that stay.

    Endpoints are grouped into priority levels. Requests go to level 0 as far as
    its health allows and spill over to the next levels (Envoy's priority load);
    each level balances with the cluster's policy."""

    def __init__(self, str name, double connect_timeout=1.0, double idle_timeout=60.0,
                 int max_idle=64, Py_ssize_t buffer_limit=1048576):
        self.name = name
        self.endpoints = []
        self.levels = []
        self.overprovisioning = 1.4
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.buffer_limit = buffer_limit
        self.max_connections = self.max_pending_requests = self.max_requests = 1024
        self.max_retries = 3
        self.od_interval = 10.0
        self._last_uneject = -1e300     # the first sweep runs an un-ejection pass
        self._rng = (hash_bytes(name.encode(), len(name.encode())) | 1)

    def set_lb(self, str policy, str hash_header=None, bint hash_source_ip=False):
        cdef PriorityLevel lvl
        if policy not in LB_POLICIES:
            raise ValueError(f"unknown lb_policy {policy!r}")
        self.lb = LB_POLICIES[policy]
        self.hash_header = hash_header.lower().encode("latin-1") if hash_header else None
        self.hash_source_ip = hash_source_ip
        for lvl in self.levels:
            lvl.rebuild_lb(self.lb)

    def set_circuit_breakers(self, int max_connections, int max_pending_requests,
                             int max_requests, int max_retries):
        self.max_connections = max_connections
        self.max_pending_requests = max_pending_requests
        self.max_requests = max_requests
        self.max_retries = max_retries

    def set_outlier_detection(self, int consecutive_5xx=0, int consecutive_gateway=0,
                              double base_ejection=30.0, double max_ejection=300.0,
                              int max_percent=10, double interval=10.0):
        self.od_consecutive_5xx = consecutive_5xx
        self.od_consecutive_gateway = consecutive_gateway
        self.od_base_ejection = base_ejection
        self.od_max_ejection = max_ejection
        self.od_max_percent = max_percent
        self.od_interval = interval

    def set_http2(self, bint enabled, unsigned int max_concurrent_streams=100,
                  unsigned int initial_stream_window=262144,
                  unsigned int initial_connection_window=1048576):
        """Speak HTTP/2 (h2c, prior knowledge) to this cluster's endpoints."""
        if self.h2 and not enabled:
            self.close_idle()
        self.h2 = enabled
        self.h2_max_concurrent_streams = max_concurrent_streams
        self.h2_initial_stream_window = initial_stream_window
        self.h2_initial_connection_window = initial_connection_window

    def set_tls(self, ssl_context=None, str sni=None, allowed_spiffe_ids=(), bint core=True):
        """Originate TLS to the endpoints (None: cleartext), in the core unless `core` is
        false or it cannot be (then the event loop's TLS). Pooled connections keep the
        context they were made with; new ones use this one."""
        if ssl_context is not self.ssl_context:
            self.close_idle()
            self.tls_client = None
            if ssl_context is not None and core and tls_unavailable() is None:
                self.tls_client = TlsClient(ssl_context)
        self.ssl_context = ssl_context
        self.tls_sni = sni
        self.spiffe_allow = tuple(allowed_spiffe_ids)

    def set_overprovisioning(self, double factor):
        """A level of health h takes min(100%, factor x h) of the load it is offered."""
        if factor <= 0:
            raise ValueError(f"overprovisioning factor must be > 0, not {factor}")
        self.overprovisioning = factor
        self._dirty = True

    def set_endpoints(self, list specs):
        """specs: [(host, port, weight, priority, locality)], or [(host, port, weight)]
        for priority 0 and no locality. Endpoint objects (their idle connections,
        health and ejection) are kept for addresses that stay."""
        cdef list parsed = [_endpoint_spec(s) for s in specs]   # all valid before any change
        cdef dict old = {(e.host, e.port): e for e in self.endpoints}
        cdef dict by_priority = {}
        cdef list new = []
        cdef Endpoint ep
        cdef PriorityLevel lvl
        for host, port, weight, priority, locality in parsed:
            ep = old.pop((host, port), None)
            if ep is None:
                ep = Endpoint(self, host, port, weight, priority, locality)
            else:
                ep.weight = weight
                ep.priority = priority
                ep.locality = locality
            new.append(ep)
            by_priority.setdefault(priority, []).append(ep)
        for ep in old.values():
            ep.close_idle()
        self.endpoints = new
        self.levels = [PriorityLevel(p, by_priority[p]) for p in sorted(by_priority)]
        self._only = self.levels[0] if len(self.levels) == 1 else None
        self._dirty = True
        for lvl in self.levels:
            lvl.rebuild_lb(self.lb)

    cdef unsigned long long _rand(self) noexcept:
        cdef unsigned long long x = self._rng
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self._rng = x
        return x

    cdef int _update_loads(self) except -1:
        # Envoy's priority load: each level takes what its health allows of what
        # the levels above it left; short of 100 in total, scale up to 100.
        cdef PriorityLevel lvl, first = None
        cdef int total = 0, left = 100
        self._dirty = False
        for lvl in self.levels:
            lvl.update_health(self.overprovisioning)
            total += lvl.health
            lvl.load = 0
        if total == 0:
            # Nothing available anywhere: panic on the first level, as with one level.
            (<PriorityLevel>self.levels[0]).load = 100
            return 0
        total = min(total, 100)
        for lvl in self.levels:
            lvl.load = min(left, lvl.health * 100 // total)
            left -= lvl.load
            if first is None and lvl.health:
                first = lvl
        first.load += left      # rounding remainder, as Envoy
        return 0

    cdef PriorityLevel _choose_level(self, unsigned long long key):
        cdef PriorityLevel lvl
        cdef unsigned long long r
        if not self.levels:
            return None
        if self._dirty:
            self._update_loads()
        # Hash policies draw from the key so that a key stays on its level
        # while health is stable; the others draw at random.
        r = (key if self.lb >= LB_RING_HASH else self._rand()) % 100
        for lvl in self.levels:
            if r < <unsigned long long>lvl.load:
                return lvl
            r -= lvl.load
        return <PriorityLevel>self.levels[0]    # not reached: loads sum to 100

    cdef Endpoint pick(self, unsigned long long key):
        cdef PriorityLevel lvl = self._only
        if lvl is None:
            lvl = self._choose_level(key)
            if lvl is None:
                return None
        return lvl.pick(self, key)

    def choose(self, key=None):
        """The endpoint a request with this hash key would go to (None: a random
        key); for tests and the admin API."""
        return self.pick(self._rand() if key is None else key)

    def priority_loads(self):
        """Percent of requests per priority, indexed by priority (0 where absent)."""
        cdef PriorityLevel lvl
        if not self.levels:
            return []
        if self._dirty:
            self._update_loads()
        loads = [0] * ((<PriorityLevel>self.levels[len(self.levels) - 1]).priority + 1)
        for lvl in self.levels:
            loads[lvl.priority] = lvl.load
        return loads

    cpdef int report(self, Endpoint ep, int status) except -1:
        """Outlier detection input: an upstream status, or 0 for a connect
        failure / reset (a gateway failure)."""
        cdef bint gateway = status == 0 or status == 502 or status == 503 or status == 504
        cdef int ejected = 0, limit
        cdef double t
        if status >= 500 or status == 0:
            ep.consecutive_5xx += 1
            if gateway:
                ep.consecutive_gateway += 1
        else:
            ep.consecutive_5xx = 0
            ep.consecutive_gateway = 0
            return 0
        if ep._ejected or not (
                (self.od_consecutive_5xx and ep.consecutive_5xx >= self.od_consecutive_5xx) or
                (self.od_consecutive_gateway and ep.consecutive_gateway >= self.od_consecutive_gateway)):
            return 0
        for e in self.endpoints:
            if (<Endpoint>e)._ejected:
                ejected += 1
        # At least one endpoint may always be ejected, as in Envoy.
        limit = max(1, len(self.endpoints) * self.od_max_percent // 100)
        if ejected >= limit:
            return 0
        ep.ejections += 1
        t = min(self.od_base_ejection * ep.ejections, self.od_max_ejection)
        ep.set_state(ep._healthy, True)
        ep.ejected_until = monotonic() + t
        ep.consecutive_5xx = ep.consecutive_gateway = 0
        _log.warning("cluster %s: ejected %s:%d for %.1fs (ejection %d)",
                     self.name, ep.host, ep.port, t, ep.ejections)
        return 0

    def close_idle(self):
        for ep in self.endpoints:
            ep.close_idle()

    def sweep(self, double now):
        """Close idle connections past idle_timeout; every od_interval, also
        return endpoints whose ejection has expired."""
        cdef Endpoint e
        cdef bint uneject = now - self._last_uneject >= self.od_interval
        if uneject:
            self._last_uneject = now
        for e in self.endpoints:
            e.sweep_idle(now)
            if uneject and e._ejected and now >= e.ejected_until:
                e.set_state(e._healthy, False)
                _log.info("cluster %s: %s:%d back from ejection", self.name, e.host, e.port)

    def stats(self):
        return {"name": self.name, "priority_loads": self.priority_loads(),
                "endpoints": [e.stats() for e in self.endpoints]}


cdef class Endpoint:

    def __init__(self, Cluster cluster, str host, int port, int weight=1,
                 int priority=0, str locality=None):
        self.cluster = cluster
        self.host = host
        self.port = port
        self.weight = weight
        self.priority = priority
        self.locality = locality
        self.idle = []
        self.h2_conns = []
        self._healthy = True

    cdef void set_state(self, bint healthy, bint ejected) noexcept:
        # Only a change of availability can move priority loads.
        cdef bint was = self.available()
        self._healthy = healthy
        self._ejected = ejected
        if self.available() != was:
            self.cluster._dirty = True

    @property
    def healthy(self):
        return self._healthy

    @healthy.setter
    def healthy(self, bint value):
        self.set_state(value, self._ejected)

    @property
    def ejected(self):
        return self._ejected

    @ejected.setter
    def ejected(self, bint value):
        self.set_state(self._healthy, value)

    cdef UpstreamConnection acquire(self):
        cdef UpstreamConnection c
        while self.idle:
            c = <UpstreamConnection>self.idle.pop()
            # An idle connection the upstream closed was removed on
            # connection_lost; is_closing() catches a close we began ourselves.
            if c.closed or c.transport.is_closing():
                continue
            self.reuses += 1
            c.reused = True
            self.active += 1
            return c
        return None

    cdef void release(self, UpstreamConnection c):
        self.active -= 1
        if c.closed or len(self.idle) >= self.cluster.max_idle:
            c.close()
            return
        c.cb = None
        c.idle_since = monotonic()
        # A stream may have paused reads (backpressure, a filter): an idle
        # connection must read again to notice the upstream closing it.
        c.resume_reading()
        self.idle.append(c)

    cdef void forget(self, UpstreamConnection c):
        try:
            self.idle.remove(c)
        except ValueError:
            pass

    cdef UpstreamConnection connect(self, UpstreamCallbacks cb):
        """Start connecting; cb hears of this connection (returned, so the caller
        can tell it from a stale one) through on_upstream_ready / _connect_failed."""
        cdef UpstreamConnection c = _new_upstream(self)
        self.connects += 1
        self.active += 1
        asyncio.get_running_loop().create_task(_connect(self, c, cb))
        return c

    cdef int sweep_idle(self, double now) except -1:
        cdef UpstreamConnection c
        cdef double limit = self.cluster.idle_timeout
        if self.h2_conns:
            for h2c in list(self.h2_conns):
                h2c.sweep(now, limit)
        for c in list(self.idle):
            if now - c.idle_since >= limit:
                self.idle.remove(c)
                c.close()
        return 0

    def adopt(self, transport):
        """Add an already-connected transport to the idle pool (used by the
        in-memory harness in bench/micro; real connections come from connect)."""
        cdef UpstreamConnection c = _new_upstream(self)
        c.connection_made(transport)
        self.open_connections += 1
        self.active += 1
        self.release(c)
        return c

    def close_idle(self):
        for c in self.idle:
            (<UpstreamConnection>c).close()
        self.idle.clear()
        if self.h2_conns:
            for h2c in list(self.h2_conns):
                h2c.shutdown()

    def stats(self):
        return {"address": f"{self.host}:{self.port}", "weight": self.weight,
                "priority": self.priority, "locality": self.locality,
                "healthy": self._healthy, "ejected": self._ejected, "ejections": self.ejections,
                "open_connections": self.open_connections,
                "idle": len(self.idle), "active": self.active, "connects": self.connects,
                "connect_failures": self.connect_failures, "reuses": self.reuses}


async def open_connection(Endpoint ep, protocol):
    """Connect `protocol` to the endpoint: TCP, then TLS when the cluster originates
    it (SNI, verification, ALPN, the SPIFFE allow list). Counts the connection in
    open_connections once it exists; raises UpstreamUnavailable saying what failed."""
    cdef Cluster cl = ep.cluster
    cdef TlsProtocol tls_protocol = None
    loop = asyncio.get_running_loop()
    kw = {}
    if cl.tls_client is not None:
        tls_protocol = (<TlsClient>cl.tls_client).protocol(protocol, cl.tls_sni or ep.host)
        protocol = tls_protocol
    elif cl.ssl_context is not None:
        kw["ssl"] = cl.ssl_context
        kw["server_hostname"] = cl.tls_sni or ep.host
    where = f"{ep.host}:{ep.port}"
    try:
        transport, _ = await asyncio.wait_for(_connect_and_handshake(
            loop, protocol, ep.host, ep.port, kw, tls_protocol), cl.connect_timeout)
    except asyncio.TimeoutError:
        if tls_protocol is not None:
            tls_protocol.abort()
        raise UpstreamUnavailable(f"connect to {where} timed out",
                                  reason="upstream_connect_timeout") from None
    except ssl.SSLError as e:
        _log.warning("cluster %s: TLS with %s failed: %s", cl.name, where,
                     getattr(e, "verify_message", None) or e.reason or e)
        raise UpstreamUnavailable(f"TLS handshake with {where} failed: "
                                  f"{getattr(e, 'verify_message', None) or e.reason or e}",
                                  reason="upstream_tls_failure") from None
    except OSError as e:
        raise UpstreamUnavailable(f"connect to {where} failed: {e.strerror or e}",
                                  reason="upstream_connect_failure") from None
    ep.open_connections += 1
    if cl.ssl_context is None:
        return transport
    tls = transport.get_extra_info("ssl_object")
    if cl.spiffe_allow:
        ids = _uri_sans(tls.getpeercert() or {})
        if not any(i in cl.spiffe_allow for i in ids):
            transport.abort()
            _log.warning("cluster %s: %s presented %s, not an allowed SPIFFE ID", cl.name,
                         where, ", ".join(ids) or "no URI SAN")
            raise UpstreamUnavailable(
                f"upstream {where} identity {', '.join(ids) or '(none)'} is not allowed",
                reason="upstream_identity_mismatch")
    if cl.h2 and tls.selected_alpn_protocol() != "h2":
        transport.abort()
        raise UpstreamUnavailable(f"upstream {where} did not negotiate h2 by ALPN",
                                  reason="upstream_alpn_mismatch")
    return transport


async def _connect_and_handshake(loop, protocol, str host, int port, dict kw,
                                 TlsProtocol tls_protocol):
    # The event loop's TLS finishes its handshake inside create_connection; the core's
    # finishes after it, on the same deadline.
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kw)
    if tls_protocol is None:
        return transport, protocol
    await tls_protocol.handshake_done
    return tls_protocol, tls_protocol.get_protocol()    # the app's transport is the TLS layer


def _uri_sans(cert):
    return [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]


async def _connect(Endpoint ep, UpstreamConnection c, UpstreamCallbacks cb):
    try:
        await open_connection(ep, c)
    except UpstreamUnavailable as e:
        ep.connect_failures += 1
        ep.active -= 1
        cb.on_upstream_connect_failed(c, e)
        return
    cb.on_upstream_ready(c)
    c.flush_early()


cdef UpstreamConnection _new_upstream(Endpoint ep):
    cdef UpstreamConnection c = _UpstreamProtocol()
    c.endpoint = ep
    c.parser = Http1Parser(c, False, 65536)
    c.parser.too_large_exc = UpstreamProtocolError
    return c


cdef class UpstreamConnection(Connection):

    cdef int response_status(self):
        return self.parser.p.status_code

    cdef HeaderMap response_headers(self):
        return self.parser.headers

    cdef HeaderMap swap_response_headers(self, HeaderMap empty):
        # Swap maps instead of copying: the parser gets an empty one back.
        cdef HeaderMap h = self.parser.headers
        self.parser.headers = empty
        empty.clear()
        return h

    cdef long long response_content_length(self):
        if (self.parser.p.flags & F_CONTENT_LENGTH) and not (self.parser.p.flags & F_CHUNKED):
            return self.parser.p.content_length
        return -1

    cdef HeaderMap take_trailers(self):
        cdef HeaderMap t
        if not self.parser.trailers.live:
            return None
        t = self.parser.trailers
        self.parser.trailers = HeaderMap()
        return t

    cdef void attach(self, UpstreamCallbacks cb, bint head_request):
        self.cb = cb
        self.attached_once = True
        self.head_request = head_request
        self.request_done = False
        self.response_done = False
        self.got_bytes = False

    cdef int flush_early(self) except -1:
        cdef UpstreamCallbacks cb = self.cb
        if self.start >= self.end or self.closed:
            return 0
        self.resume_reading()
        if self.tunnel or cb is None:
            return self.data_ready()
        if not self.got_bytes:
            # An HTTP upstream spoke before it saw a request: not a response to it.
            self.endpoint.forget(self)
            self.detach_and_close()
            cb.on_upstream_reset(UpstreamProtocolError("upstream sent data before the request"))
        return 0

    cdef void request_finished(self):
        self.request_done = True
        self.maybe_release()

    cdef void maybe_release(self):
        # Back to the pool only when both directions of the exchange are done
        # and the upstream agreed to keep the connection open.
        if self.request_done and self.response_done and self.cb is not None:
            self.cb = None
            if self.parser.keep_alive and not self.closed:
                self.endpoint.release(self)
            else:
                self.endpoint.active -= 1
                self.close()

    cdef void detach_and_close(self):
        if self.cb is not None:
            self.cb = None
            self.endpoint.active -= 1
        self.abort()

    cdef int data_ready(self) except -1:
        cdef size_t consumed
        cdef int err
        cdef UpstreamCallbacks cb, corked
        if self.cb is None and not self.attached_once:
            # Server-first protocol (a banner) before the stream took the
            # connection: keep the bytes; flush_early decides.
            self.pause_reading()
            return 0
        self.got_bytes = True
        corked = self.cb
        if corked is not None:
            corked.on_upstream_read(True)
        try:
            while self.start < self.end:
                if self.tunnel:
                    cb = self.cb
                    if cb is not None:
                        cb.on_upstream_tunnel_data((<char*>self.slab) + self.start, self.end - self.start)
                    break
                if self.cb is None:
                    # Bytes on an idle connection: the upstream broke the protocol.
                    self.endpoint.forget(self)
                    self.abort()
                    break
                try:
                    err = self.parser.execute((<char*>self.slab) + self.start,
                                              self.end - self.start, &consumed)
                except Exception as e:
                    cb = self.cb
                    self.detach_and_close()
                    if cb is not None:
                        cb.on_upstream_reset(UpstreamProtocolError(str(e)))
                    break
                self.start += consumed
                if err == HPE_PAUSED_UPGRADE:
                    self.parser.resume_after_upgrade()
                    self.tunnel = True
                elif err == HPE_PAUSED:
                    self.parser.resume()
                    if self.start < self.end and not self.tunnel:
                        # Bytes after a complete response we did not ask for.
                        cb = self.cb
                        self.endpoint.forget(self)
                        self.detach_and_close()
                        if cb is not None:
                            cb.on_upstream_reset(UpstreamProtocolError("data after a complete response"))
                        break
        finally:
            if corked is not None:
                corked.on_upstream_read(False)
        self.consumed_all()
        return 0

    # ---- parser events ----
    cdef int on_headers_complete(self) except -1:
        cdef int status = self.parser.p.status_code
        cdef UpstreamCallbacks cb = self.cb
        if cb is None:
            return -1
        if 100 <= status < 200 and status != 101:
            return 0    # interim response: swallowed, the final one follows
        cb.on_upstream_headers(self)
        if status == 101:
            return 2
        if self.head_request:
            return 1
        return 0

    cdef int on_body(self, const char* at, size_t n) except -1:
        if self.cb is not None:
            self.cb.on_upstream_body(at, n)
        return 0

    cdef int on_message_complete(self) except -1:
        cdef UpstreamCallbacks cb = self.cb
        cdef int status = self.parser.p.status_code
        if cb is None or (100 <= status < 200 and status != 101):
            return 0
        if status == 101:
            return 0
        self.response_done = True
        # Back to the pool before the stream hears of it, so a pipelined request
        # that the stream's completion unblocks can reuse this connection.
        self.maybe_release()
        cb.on_upstream_complete(self)
        return HPE_PAUSED

    # ---- transport events ----
    cdef int on_eof(self) except -1:
        cdef UpstreamCallbacks cb = self.cb
        if self.tunnel and cb is not None:
            cb.on_upstream_tunnel_eof()
            return 0
        if cb is not None and not self.response_done and self.got_bytes:
            # A close-delimited body ends here.
            try:
                self.parser.finish()
            except Exception:
                pass
        self.close()
        return 0

    cdef int on_connection_lost(self, object exc) except -1:
        cdef UpstreamCallbacks cb = self.cb
        self.endpoint.forget(self)
        self.endpoint.open_connections -= 1
        if cb is not None:
            self.cb = None
            self.endpoint.active -= 1
            if not self.response_done:
                cb.on_upstream_reset(UpstreamReset(
                    "upstream closed the connection" if exc is None else str(exc),
                    reason="upstream_reset_before_response" if not self.got_bytes
                    else "upstream_reset_after_response_started"))
            elif self.tunnel:
                cb.on_upstream_tunnel_eof()
        return 0

    cdef int on_pause_writing(self) except -1:
        if self.cb is not None:
            self.cb.on_upstream_write_paused(True)
        return 0

    cdef int on_resume_writing(self) except -1:
        if self.cb is not None:
            self.cb.on_upstream_write_paused(False)
        return 0

    def get_status(self):
        return self.parser.p.status_code


def _maglev_table(list endpoints, Py_ssize_t m):
    """Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint walks its
    own permutation of slots; weights give an endpoint that many turns per round."""
    cdef list table = [None] * m
    cdef list offsets = [], skips = [], nexts = []
    cdef Py_ssize_t filled = 0, i, c
    cdef bytes b
    for ep in endpoints:
        b = f"{ep.host}:{ep.port}".encode()
        offsets.append(hash_bytes(b, len(b)) % m)
        b = b + b"#skip"
        skips.append(hash_bytes(b, len(b)) % (m - 1) + 1)
        nexts.append(0)
    while True:
        for i in range(len(endpoints)):
            for _ in range((<Endpoint>endpoints[i]).weight):
                c = (offsets[i] + nexts[i] * skips[i]) % m
                while table[c] is not None:
                    nexts[i] += 1
                    c = (offsets[i] + nexts[i] * skips[i]) % m
                table[c] = endpoints[i]
                nexts[i] += 1
                filled += 1
                if filled == m:
                    return table


class _UpstreamProtocol(UpstreamConnection, asyncio.BufferedProtocol):
    """asyncio's BufferedProtocol mixed in so the stdlib loop also feeds slabs."""
    __slots__ = ()
