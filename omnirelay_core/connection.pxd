from omnirelay_core.http1 cimport Http1Events
from omnirelay_core.buffers cimport BufferPool


cdef BufferPool worker_pool()
cdef double monotonic() noexcept


cdef class Connection(Http1Events):
    """Lifecycle base of every socket the core owns (downstream and upstream):
    transport, pooled read slab, read pausing, close/abort."""
    cdef object transport
    cdef object _write
    cdef BufferPool pool
    cdef bytearray slab
    cdef object view
    cdef Py_ssize_t start
    cdef Py_ssize_t end
    cdef bint closed
    cdef bint reading_paused
    cdef bint writing_paused
    cdef double last_activity
    cdef int corked                 # > 0: writes are held, and leave as one at uncork
    cdef list held

    cdef char* read_space(self, Py_ssize_t* room) except NULL
    cdef int received(self, Py_ssize_t nbytes) except -1
    cdef int data_ready(self) except -1
    cdef void consumed_all(self) noexcept
    cdef int write(self, object data) except -1
    cdef void cork(self) noexcept
    cdef int uncork(self) except -1
    cdef int flush_held(self) except -1
    cdef void pause_reading(self)
    cdef void resume_reading(self)
    cdef void close(self)
    cdef void abort(self)
    cdef int on_connection_lost(self, object exc) except -1
    cdef int on_eof(self) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
