# Traffic shadowing: the primary stream hands each mirror a serialized request
# head and then its body chunks; the mirror's response is read and discarded.
import asyncio

from omnirelay_core.buffers cimport ByteBuilder
from omnirelay_core.upstream cimport UpstreamCallbacks, UpstreamConnection, Endpoint, Cluster
from omnirelay_core.stats cimport Stats

cdef ByteBuilder _out = ByteBuilder(1024)


cdef ShadowRequest new_shadow(Cluster cluster, Stats stats, bytes head, bint head_request,
                              bint chunked, Py_ssize_t limit):
    cdef ShadowRequest s = ShadowRequest.__new__(ShadowRequest)
    s.cluster = cluster
    s.stats = stats
    s.head = head
    s.head_request = head_request
    s.chunked = chunked
    s.limit = limit
    return s


cdef class ShadowRequest(UpstreamCallbacks):

    cdef int start(self, double timeout, unsigned long long key) except -1:
        cdef Endpoint ep
        cdef UpstreamConnection c
        cdef Cluster cluster = self.cluster
        self.stats.upstream_rq_shadow += 1
        if cluster.rq_active >= cluster.max_requests:
            cluster.overflows += 1
            return self._finish(True)
        ep = cluster.pick(key)
        if ep is None:
            return self._finish(True)
        cluster.rq_active += 1
        self.counted = True
        self.endpoint = ep
        if timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)
        c = ep.acquire()
        if c is not None:
            return self._attach(c)
        self.connecting = ep.connect(self)
        return 0

    def _on_timeout(self):
        self.timer = None
        self._finish(True)

    cdef int feed(self, object data) except -1:
        cdef ByteBuilder out
        cdef Py_ssize_t n = len(data)
        if self.done or n == 0:
            return 0
        if self.chunked:
            out = _out
            out.append_hex(n)
            out.append(b"\r\n", 2)
            out.append_obj(data)
            out.append(b"\r\n", 2)
            data = out.take()
        if self.upstream is not None:
            self.upstream.write(data)
            return 0
        self.pending_bytes += n
        if self.pending_bytes > self.limit:
            return self._finish(True)
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        return 0

    cdef int end(self) except -1:
        self.ended = True
        if self.upstream is not None and not self.end_sent:
            self.end_sent = True
            if self.chunked:
                self.upstream.write(b"0\r\n\r\n")
            self.upstream.request_finished()
        return 0

    cdef int abort(self) except -1:
        # The primary request broke off mid-body: the copy would be truncated.
        if not self.ended:
            return self._finish(True)
        return 0

    cdef int _attach(self, UpstreamConnection c) except -1:
        self.upstream = c
        c.attach(self, self.head_request)
        c.write(self.head)
        if self.pending is not None:
            for data in self.pending:
                c.write(data)
            self.pending = None
        if self.ended:
            self.end()
        return 0

    cdef int _finish(self, bint failed) except -1:
        if self.done:
            return 0
        self.done = True
        self.pending = None
        if failed:
            self.stats.upstream_rq_shadow_failed += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.cluster.rq_active -= 1
        self.connecting = None
        if self.upstream is not None:
            if not (self.upstream.request_done and self.upstream.response_done):
                self.upstream.detach_and_close()
            self.upstream = None
        return 0

    # ---- upstream events ----
    cdef int on_upstream_ready(self, UpstreamConnection c) except -1:
        if c is not self.connecting or self.done:
            c.attach(None, False)
            c.endpoint.release(c)
            return 0
        self.connecting = None
        return self._attach(c)

    cdef int on_upstream_connect_failed(self, UpstreamConnection c, object exc) except -1:
        if c is self.connecting:
            self.cluster.report(self.endpoint, 0)
            self._finish(True)
        return 0

    cdef int on_upstream_headers(self, UpstreamConnection c) except -1:
        self.cluster.report(c.endpoint, c.parser.p.status_code)
        return 0

    cdef int on_upstream_body(self, const char* p, size_t n) except -1:
        return 0

    cdef int on_upstream_complete(self, UpstreamConnection c) except -1:
        return self._finish(False)

    cdef int on_upstream_reset(self, object exc) except -1:
        self.upstream = None
        return self._finish(True)

    cdef int on_upstream_tunnel_data(self, const char* p, size_t n) except -1:
        return 0

    cdef int on_upstream_tunnel_eof(self) except -1:
        return 0

    cdef int on_upstream_write_paused(self, bint paused) except -1:
        # The mirror cannot keep up: drop the copy instead of buffering without bound.
        if paused:
            self._finish(True)
        return 0
