# Upstream side: clusters, endpoints with keep-alive pools, and the HTTP/1.1
# client connection whose response events go to the stream that holds it.
import asyncio

from omnirelay_core.includes.llhttp cimport HPE_OK, HPE_PAUSED, HPE_PAUSED_UPGRADE
from omnirelay_core.connection cimport Connection, monotonic
from omnirelay_core.http1 cimport Http1Parser

from omnirelay_core.errors import (UpstreamUnavailable, UpstreamReset,
                                   UpstreamProtocolError, UpstreamTimeout)


cdef class UpstreamCallbacks:
    cdef int on_upstream_ready(self, UpstreamConnection c) except -1:
        return 0
    cdef int on_upstream_connect_failed(self, object exc) except -1:
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
    cdef int on_upstream_write_paused(self, bint paused) except -1:
        return 0


cdef class Cluster:
    """Endpoints and their pools; kept across config reloads for endpoints that stay."""

    def __init__(self, str name, double connect_timeout=1.0, double idle_timeout=60.0,
                 int max_idle=64, Py_ssize_t buffer_limit=1048576):
        self.name = name
        self.endpoints = []
        self.rr = 0
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.buffer_limit = buffer_limit

    def set_endpoints(self, list specs):
        """specs: [(host, port, weight)]; existing Endpoint objects (and their
        idle connections) are kept for addresses that stay."""
        cdef dict old = {(e.host, e.port): e for e in self.endpoints}
        cdef list new = []
        cdef Endpoint ep
        for host, port, weight in specs:
            ep = old.pop((host, port), None)
            if ep is None:
                ep = Endpoint(self, host, port, weight)
            ep.weight = weight
            new.append(ep)
        for ep in old.values():
            ep.close_idle()
        # Weighted round robin by repetition: weights are small integers.
        self.endpoints = new
        self._ring = [e for e in new for _ in range(e.weight)]
        self.rr = 0

    cdef Endpoint pick(self):
        cdef list ring = self._ring
        cdef Py_ssize_t n = len(ring)
        if n == 0:
            return None
        self.rr += 1
        if self.rr >= n:
            self.rr = 0
        return <Endpoint>ring[self.rr]

    def close_idle(self):
        for ep in self.endpoints:
            ep.close_idle()

    def sweep(self, double now):
        for ep in self.endpoints:
            (<Endpoint>ep).sweep_idle(now)

    def stats(self):
        return {"name": self.name, "endpoints": [e.stats() for e in self.endpoints]}


cdef class Endpoint:

    def __init__(self, Cluster cluster, str host, int port, int weight=1):
        self.cluster = cluster
        self.host = host
        self.port = port
        self.weight = weight
        self.idle = []

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

    cdef void connect(self, UpstreamCallbacks cb):
        cdef UpstreamConnection c = _new_upstream(self)
        self.connects += 1
        self.active += 1
        asyncio.get_running_loop().create_task(_connect(self, c, cb))

    cdef int sweep_idle(self, double now) except -1:
        cdef UpstreamConnection c
        cdef double limit = self.cluster.idle_timeout
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
        self.active += 1
        self.release(c)
        return c

    def close_idle(self):
        for c in self.idle:
            (<UpstreamConnection>c).close()
        self.idle.clear()

    def stats(self):
        return {"address": f"{self.host}:{self.port}", "weight": self.weight,
                "idle": len(self.idle), "active": self.active, "connects": self.connects,
                "connect_failures": self.connect_failures, "reuses": self.reuses}


async def _connect(Endpoint ep, UpstreamConnection c, UpstreamCallbacks cb):
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: c, ep.host, ep.port),
            ep.cluster.connect_timeout)
    except asyncio.TimeoutError:
        ep.connect_failures += 1
        ep.active -= 1
        cb.on_upstream_connect_failed(UpstreamUnavailable(
            f"connect to {ep.host}:{ep.port} timed out", reason="upstream_connect_timeout"))
        return
    except OSError as e:
        ep.connect_failures += 1
        ep.active -= 1
        cb.on_upstream_connect_failed(UpstreamUnavailable(
            f"connect to {ep.host}:{ep.port} failed: {e.strerror or e}",
            reason="upstream_connect_failure"))
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
        cdef UpstreamCallbacks cb
        if self.cb is None and not self.attached_once:
            # Server-first protocol (a banner) before the stream took the
            # connection: keep the bytes; flush_early decides.
            self.pause_reading()
            return 0
        self.got_bytes = True
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


class _UpstreamProtocol(UpstreamConnection, asyncio.BufferedProtocol):
    """asyncio's BufferedProtocol mixed in so the stdlib loop also feeds slabs."""
    __slots__ = ()
