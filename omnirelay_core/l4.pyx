# L4 listeners: TCP passthrough to one cluster, and TLS passthrough routed by the
# SNI of the ClientHello. Both sides are Connection subclasses (pooled read slabs,
# read pausing, close/abort); bytes are copied both ways with backpressure from
# the write-buffer watermarks and half-closes propagated with write_eof.
import asyncio
import logging
import socket

from cpython.bytes cimport PyBytes_FromStringAndSize
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.upstream cimport Cluster, Endpoint, hash_bytes, LB_RING_HASH
from omnirelay_core.sni cimport (SniTable, client_hello_sni, HELLO_NEED_MORE, HELLO_SNI,
                                 HELLO_NO_SNI, HELLO_NOT_TLS, HELLO_MALFORMED,
                                 HELLO_MAX_BUFFER, SNI_MAX_NAME)

_log = logging.getLogger("omnirelay.l4")

MODES = {"tcp": L4_TCP, "tls_passthrough": L4_TLS_PASSTHROUGH}
_STAT_NAMES = None


cdef class L4Stats:
    def as_dict(self):
        global _STAT_NAMES
        if _STAT_NAMES is None:
            _STAT_NAMES = tuple(n for n in dir(L4Stats)
                                if n.startswith(("downstream_", "upstream_")))
        return {k: getattr(self, k) for k in _STAT_NAMES}


cdef class L4ListenerState:

    def __init__(self, str name, str mode, routes, *, double idle_timeout=3600.0,
                 Py_ssize_t buffer_limit=1048576, double hello_timeout=5.0):
        """`routes`: (server_names, Cluster) pairs in match order. A tcp listener has
        one, `(("*",), cluster)`; tls_passthrough routes on the SNI."""
        if mode not in MODES:
            raise ValueError(f"unknown L4 mode {mode!r}")
        self.name = name
        self.mode = MODES[mode]
        self.routes = routes if isinstance(routes, SniTable) else SniTable(routes)
        for _, target in self.routes.entries:
            if not isinstance(target, Cluster):
                raise TypeError(f"L4 route target must be a Cluster, got {type(target).__name__}")
        if self.mode == L4_TCP and len(self.routes.entries) != 1:
            raise ValueError("a tcp listener forwards to exactly one cluster")
        self.idle_timeout = idle_timeout
        self.buffer_limit = buffer_limit
        self.hello_timeout = hello_timeout
        self.stats = L4Stats()

    @property
    def mode_name(self):
        return "tcp" if self.mode == L4_TCP else "tls_passthrough"


# ---------------------------------------------------------------- downstream

cdef class L4ServerConnection(Connection):

    def connection_made(self, transport):
        cdef L4ListenerState st = self.state
        Connection.connection_made(self, transport)
        peer = transport.get_extra_info("peername")
        self.peer_bytes = (peer[0] if peer else "unknown").encode()
        transport.set_write_buffer_limits(st.buffer_limit)
        self.listener.connections.add(self)
        st.stats.downstream_cx_total += 1
        st.stats.downstream_cx_active += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if st.mode == L4_TCP:
            self.route(NULL, 0)
        else:
            self.phase = PHASE_HELLO
            self.arm_timer(st.hello_timeout)

    cdef int data_ready(self) except -1:
        cdef unsigned char name[SNI_MAX_NAME]
        cdef Py_ssize_t n = self.end - self.start, nlen = 0
        cdef int r
        if self.phase == PHASE_PROXYING:
            if n > 0:
                self.state.stats.downstream_cx_rx_bytes_total += n
                self.last_activity = monotonic()
                self.upstream.write(PyBytes_FromStringAndSize((<char*>self.slab) + self.start, n))
            self.consumed_all()
        elif self.phase == PHASE_HELLO:
            r = client_hello_sni((<unsigned char*>(<char*>self.slab)) + self.start, n, name, &nlen)
            if r == HELLO_NEED_MORE:
                if n >= HELLO_MAX_BUFFER:
                    self.state.stats.downstream_cx_tls_invalid += 1
                    self.finish(False)
                return 0        # keep the bytes in the slab; the next read appends
            if r == HELLO_NOT_TLS or r == HELLO_MALFORMED:
                self.state.stats.downstream_cx_tls_invalid += 1
                self.finish(False)
                return 0
            self.early = PyBytes_FromStringAndSize((<char*>self.slab) + self.start, n)
            self.consumed_all()
            if r == HELLO_SNI:
                self.route(name, nlen)
            else:
                self.route(NULL, 0)
        elif self.phase == PHASE_CONNECTING:
            # Reads are paused while connecting; a read already under way lands here.
            if n > 0:
                chunk = PyBytes_FromStringAndSize((<char*>self.slab) + self.start, n)
                self.early = chunk if self.early is None else self.early + chunk
            self.consumed_all()
        else:
            self.consumed_all()
        return 0

    cdef int route(self, const unsigned char* name, Py_ssize_t n) except -1:
        cdef L4ListenerState st = self.state
        target = st.routes.lookup(name, n)
        if target is None:
            st.stats.downstream_cx_no_route += 1
            return self.finish(False)
        return self.connect(<Cluster>target)

    cdef int connect(self, Cluster cluster) except -1:
        cdef L4ListenerState st = self.state
        cdef Endpoint ep
        cdef unsigned long long key = 0
        cdef int open_cx = 0
        self.cancel_timer()
        self.phase = PHASE_CONNECTING
        # Until the upstream answers, client bytes wait in the kernel (flow control).
        self.pause_reading()
        for e in cluster.endpoints:
            open_cx += (<Endpoint>e).open_connections
        if (cluster.rq_pending >= cluster.max_pending_requests
                or open_cx + cluster.rq_pending >= cluster.max_connections):
            cluster.overflows += 1
            st.stats.upstream_cx_overflow += 1
            return self.finish(False)
        if cluster.lb >= LB_RING_HASH:
            key = hash_bytes(self.peer_bytes, len(self.peer_bytes))
        ep = cluster.pick(key)
        if ep is None:
            st.stats.upstream_cx_none_healthy += 1
            return self.finish(False)
        self.cluster = cluster
        self.endpoint = ep
        cluster.rq_pending += 1
        self.pending_counted = True
        ep.connects += 1
        ep.active += 1
        st.stats.upstream_cx_total += 1
        up = _L4UpstreamProtocol()
        (<L4UpstreamConnection>up).down = self
        (<L4UpstreamConnection>up).endpoint = ep
        (<L4UpstreamConnection>up).active_counted = True
        asyncio.get_running_loop().create_task(
            _connect(self, up, ep.host, ep.port, cluster.connect_timeout))
        return 0

    cdef int _uncount_pending(self) except -1:
        if self.pending_counted:
            self.pending_counted = False
            self.cluster.rq_pending -= 1
        return 0

    cdef int upstream_ready(self, L4UpstreamConnection up) except -1:
        cdef bytes early
        self._uncount_pending()
        self.cluster.report(self.endpoint, 200)     # resets consecutive failures
        if self.closed or self.phase != PHASE_CONNECTING:
            up.close()                              # the client left meanwhile
            return 0
        self.upstream = up
        self.phase = PHASE_PROXYING
        self.last_activity = monotonic()
        # Resume first: a write below that fills the upstream buffer pauses us again.
        self.resume_reading()
        early, self.early = self.early, None
        if early:
            self.state.stats.downstream_cx_rx_bytes_total += len(early)
            up.write(early)
        if self.eof_pending:
            self.eof_pending = False
            self.on_eof()
        if self.state.idle_timeout > 0:
            self.arm_timer(self.state.idle_timeout)
        return 0

    cdef int upstream_failed(self, L4UpstreamConnection up, bint timed_out) except -1:
        cdef Endpoint ep = self.endpoint
        self._uncount_pending()
        ep.connect_failures += 1
        if up.active_counted:
            up.active_counted = False
            ep.active -= 1
        self.cluster.report(ep, 0)                  # outlier detection: gateway failure
        self.state.stats.upstream_cx_connect_fail += 1
        if timed_out:
            self.state.stats.upstream_cx_connect_timeout += 1
        return self.finish(False)

    cdef int upstream_data(self, const char* p, Py_ssize_t n) except -1:
        self.state.stats.downstream_cx_tx_bytes_total += n
        self.last_activity = monotonic()
        self.write(PyBytes_FromStringAndSize(p, n))
        return 0

    cdef int upstream_eof(self) except -1:
        # The upstream finished sending: pass the FIN on, keep the other direction.
        self.eof_from_upstream = True
        if self.closed:
            return 0
        if self.eof_from_client:
            return self.finish(False)
        try:
            self.transport.write_eof()
        except Exception:
            self.finish(False)
        return 0

    cdef int upstream_lost(self, object exc) except -1:
        self.upstream = None
        if self.phase == PHASE_PROXYING:
            self.phase = PHASE_DONE
        # A clean close flushes what the upstream sent; a reset is passed on as one.
        if exc is None:
            self.close()
        else:
            self.abort()
        return 0

    cdef int finish(self, bint abort) except -1:
        """Close both sides (a clean close flushes pending writes)."""
        cdef L4UpstreamConnection up = self.upstream
        self.phase = PHASE_DONE
        self.cancel_timer()
        if up is not None:
            if abort:
                up.abort()
            else:
                up.close()
        if abort:
            self.abort()
        else:
            self.close()
        return 0

    # ---- timers: one per connection, re-armed lazily (no timer work per read) ----
    cdef int arm_timer(self, double delay) except -1:
        self.cancel_timer()
        self.timer = asyncio.get_running_loop().call_later(delay, self._on_timer)
        return 0

    cdef void cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self):
        cdef double idle, limit
        self.timer = None
        if self.closed:
            return
        if self.phase == PHASE_HELLO:
            self.state.stats.downstream_cx_hello_timeout += 1
            self.finish(False)
        elif self.phase == PHASE_PROXYING:
            limit = self.state.idle_timeout
            idle = monotonic() - self.last_activity
            if idle >= limit:
                self.state.stats.downstream_cx_idle_timeout += 1
                self.finish(False)
            else:
                self.arm_timer(limit - idle)

    # ---- transport events ----
    cdef int on_eof(self) except -1:
        if self.phase == PHASE_CONNECTING:
            self.eof_pending = True
            return 1
        if self.phase != PHASE_PROXYING or self.upstream is None:
            self.finish(False)      # FIN before a whole ClientHello
            return 0
        self.eof_from_client = True
        if self.eof_from_upstream:
            self.finish(False)
            return 0
        try:
            self.upstream.transport.write_eof()
        except Exception:
            self.finish(False)
            return 0
        return 1                    # keep writing what the upstream still sends

    cdef int on_connection_lost(self, object exc) except -1:
        cdef L4UpstreamConnection up = self.upstream
        self.cancel_timer()
        self.listener.connections.discard(self)
        self.state.stats.downstream_cx_active -= 1
        self.phase = PHASE_DONE
        self.early = None
        if up is not None:
            self.upstream = None
            if exc is None:
                up.close()          # flush what the client sent, then FIN
            else:
                up.abort()
        return 0

    cdef int on_pause_writing(self) except -1:
        # The client reads slower than the upstream sends: stop reading the upstream.
        if self.upstream is not None:
            self.upstream.pause_reading()
        return 0

    cdef int on_resume_writing(self) except -1:
        if self.upstream is not None:
            self.upstream.resume_reading()
        return 0


# ---------------------------------------------------------------- upstream

cdef class L4UpstreamConnection(Connection):

    def connection_made(self, transport):
        Connection.connection_made(self, transport)
        self.opened = True
        self.endpoint.open_connections += 1
        transport.set_write_buffer_limits(self.endpoint.cluster.buffer_limit)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    cdef int data_ready(self) except -1:
        cdef L4ServerConnection down = self.down
        if down is not None and self.end > self.start:
            down.upstream_data((<char*>self.slab) + self.start, self.end - self.start)
        self.consumed_all()
        return 0

    cdef int on_eof(self) except -1:
        cdef L4ServerConnection down = self.down
        if down is None:
            self.close()
            return 0
        down.upstream_eof()
        return 0 if self.closed else 1

    cdef int on_connection_lost(self, object exc) except -1:
        cdef L4ServerConnection down = self.down
        if self.opened:
            self.opened = False
            self.endpoint.open_connections -= 1
        if self.active_counted:
            self.active_counted = False
            self.endpoint.active -= 1
        self.down = None
        if down is not None and down.upstream is self:
            down.upstream_lost(exc)
        return 0

    cdef int on_pause_writing(self) except -1:
        # The upstream reads slower than the client sends: stop reading the client.
        if self.down is not None:
            self.down.pause_reading()
        return 0

    cdef int on_resume_writing(self) except -1:
        if self.down is not None:
            self.down.resume_reading()
        return 0


async def _connect(L4ServerConnection down, L4UpstreamConnection up, str host, int port,
                   double timeout):
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: up, host, port), timeout)
    except asyncio.TimeoutError:
        down.upstream_failed(up, True)
        return
    except OSError:
        down.upstream_failed(up, False)
        return
    except Exception:
        _log.exception("connecting to %s:%d failed", host, port)
        down.upstream_failed(up, False)
        return
    down.upstream_ready(up)


class _L4ServerProtocol(L4ServerConnection, asyncio.BufferedProtocol):
    """asyncio's BufferedProtocol mixed in so the stdlib loop also feeds slabs."""
    __slots__ = ()


class _L4UpstreamProtocol(L4UpstreamConnection, asyncio.BufferedProtocol):
    __slots__ = ()


# ---------------------------------------------------------------- listener

cdef class L4ListenerRuntime:
    """One L4 listening socket of a worker and the connections it accepted; the
    same surface as the HTTP ListenerRuntime, so the Relay runs both alike."""

    def __init__(self, L4ListenerState state):
        self.state = state
        self.stats = state.stats
        self.connections = set()

    def protocol_factory(self):
        cdef L4ServerConnection c = _L4ServerProtocol()
        c.listener = self
        c.state = self.state
        return c

    async def start(self, str host, int port, *, bint reuse_port=False, sock=None,
                    int backlog=1024):
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(self.protocol_factory, sock=sock,
                                                   backlog=backlog)
        else:
            self.server = await loop.create_server(
                self.protocol_factory, host, port, reuse_port=reuse_port or None,
                reuse_address=True, backlog=backlog)
        return self.server.sockets[0].getsockname()[:2]

    def swap(self, L4ListenerState state):
        """New connections use `state` (clusters, SNI routes, timeouts); open ones
        keep theirs."""
        state.stats = self.stats
        self.state = state

    def sweep(self, double now):
        pass        # idle and ClientHello timeouts are per-connection timers

    def stop_accepting(self):
        if self.server is not None:
            self.server.close()

    def start_drain(self):
        """Stop accepting; open connections continue until they close or the caller's
        drain deadline aborts them."""
        self.draining = True
        self.stop_accepting()

    def abort_all(self):
        for c in list(self.connections):
            (<L4ServerConnection>c).finish(True)

    @property
    def active_connections(self):
        return len(self.connections)
