# The lifecycle base shared by downstream and upstream connections: asyncio's
# BufferedProtocol callbacks land here and reads go straight into pooled slabs.
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.string cimport memmove
from omnirelay_core.http1 cimport Http1Events
from omnirelay_core.buffers cimport BufferPool

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef BufferPool _pool = BufferPool()


cdef double monotonic() noexcept:
    # Same clock as time.monotonic(), without a Python call on the hot path.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef BufferPool worker_pool():
    return _pool


def pool_stats():
    return _pool.stats()


cdef class Connection(Http1Events):

    def __cinit__(self, *args, **kwargs):
        self.pool = _pool

    # ---- asyncio protocol surface ----
    def connection_made(self, transport):
        self.transport = transport
        self._write = transport.write
        self.last_activity = monotonic()

    def get_buffer(self, Py_ssize_t sizehint):
        cdef Py_ssize_t room
        self.read_space(&room)
        if self.end == 0:
            return self.slab
        if self.view is None:
            self.view = memoryview(self.slab)
        return self.view[self.end:]

    def buffer_updated(self, Py_ssize_t nbytes):
        self.received(nbytes)

    def eof_received(self):
        # on_eof returns 1 to keep the write side open (half-close).
        return self.on_eof() == 1

    def connection_lost(self, exc):
        self.closed = True
        self.consumed_all()
        self.on_connection_lost(exc)

    def pause_writing(self):
        self.writing_paused = True
        self.on_pause_writing()

    def resume_writing(self):
        self.writing_paused = False
        self.on_resume_writing()

    # ---- reads, also fed by the core's TLS layer (tls.pyx) without a memoryview ----
    cdef char* read_space(self, Py_ssize_t* room) except NULL:
        """Where the next read goes, with `room` bytes free: a pooled slab, after the
        unparsed bytes (a paused pipelined request), grown when full."""
        if self.slab is None:
            self.slab = self.pool.acquire()
            self.view = None
            self.start = self.end = 0
        elif self.end != 0:
            if self.start > 0:
                memmove(<char*>self.slab, (<char*>self.slab) + self.start, self.end - self.start)
                self.end -= self.start
                self.start = 0
            if self.end == len(self.slab):
                self.view = None    # an exported view would block the resize
                self.slab.extend(bytes(len(self.slab)))
        room[0] = len(self.slab) - self.end
        return PyByteArray_AS_STRING(self.slab) + self.end

    cdef int received(self, Py_ssize_t nbytes) except -1:
        self.end += nbytes
        return self.data_ready()

    # ---- for subclasses ----
    cdef int data_ready(self) except -1:
        self.consumed_all()
        return 0

    cdef void consumed_all(self) noexcept:
        # Every byte parsed: the slab goes back to the pool until the next read.
        if self.slab is not None:
            self.view = None
            if len(self.slab) == self.pool.slab_size:
                self.pool.release(self.slab)
            else:
                self.pool.in_use -= 1
            self.slab = None
        self.start = self.end = 0

    cdef int write(self, object data) except -1:
        if self.closed:
            return 0
        if self.corked:
            if self.held is None:
                self.held = [data]
            else:
                self.held.append(data)
            return 0
        self._write(data)
        return 0

    # A response's head and body written in one callback (an upstream read that holds
    # both) leave in one send, and over TLS in one record, instead of one each.
    cdef void cork(self) noexcept:
        self.corked += 1

    cdef int uncork(self) except -1:
        self.corked -= 1
        if self.corked == 0 and self.held is not None:
            self.flush_held()
        return 0

    cdef int flush_held(self) except -1:
        cdef list held = self.held
        if held is None:
            return 0
        self.held = None
        if not self.closed:
            self._write(held[0] if len(held) == 1 else b"".join(held))
        return 0

    cdef void pause_reading(self):
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            try:
                self.transport.pause_reading()
            except Exception:
                pass

    cdef void resume_reading(self):
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            try:
                self.transport.resume_reading()
            except Exception:
                pass

    cdef void close(self):
        if self.transport is not None and not self.closed:
            if self.held is not None:
                try:
                    self.flush_held()
                except Exception:
                    pass
            self.closed = True
            self.transport.close()

    cdef void abort(self):
        if self.transport is not None and not self.closed:
            self.held = None
            self.closed = True
            self.transport.abort()

    cdef int on_connection_lost(self, object exc) except -1:
        return 0

    cdef int on_eof(self) except -1:
        self.close()
        return 0

    cdef int on_pause_writing(self) except -1:
        return 0

    cdef int on_resume_writing(self) except -1:
        return 0
