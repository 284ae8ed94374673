# Read slabs shared by every connection of a worker, and the builder used to
# serialize outgoing heads and chunk frames with one allocation per write.
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy


cdef class BufferPool:
    """Fixed-size read slabs. A connection holds a slab only while it has
    unparsed bytes, so idle keep-alive connections cost no buffer memory."""

    def __cinit__(self, Py_ssize_t slab_size=65536, Py_ssize_t max_free=256):
        self._free = []
        self.slab_size = slab_size
        self.max_free = max_free
        self.in_use = 0
        self.peak_in_use = 0

    cdef bytearray acquire(self):
        self.in_use += 1
        if self.in_use > self.peak_in_use:
            self.peak_in_use = self.in_use
        if self._free:
            return <bytearray>self._free.pop()
        return bytearray(self.slab_size)

    cdef void release(self, bytearray slab):
        self.in_use -= 1
        if len(self._free) < self.max_free:
            self._free.append(slab)

    def stats(self):
        return {"slab_size": self.slab_size, "in_use": self.in_use,
                "peak_in_use": self.peak_in_use, "free": len(self._free)}


cdef class ByteBuilder:
    """A growable C buffer; `take()` copies it out as one bytes object."""

    def __cinit__(self, Py_ssize_t cap=1024):
        self.data = <char*>PyMem_Malloc(cap)
        if self.data == NULL:
            raise MemoryError()
        self.cap = cap
        self.length = 0

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.length + extra
        cdef Py_ssize_t cap = self.cap
        cdef char* p
        if need <= cap:
            return 0
        while cap < need:
            cap *= 2
        p = <char*>PyMem_Realloc(self.data, cap)
        if p == NULL:
            raise MemoryError()
        self.data = p
        self.cap = cap
        return 0

    cdef int append(self, const char* p, Py_ssize_t n) except -1:
        if self.length + n > self.cap:
            self.reserve(n)
        memcpy(self.data + self.length, p, n)
        self.length += n
        return 0

    cdef int append_obj(self, object b) except -1:
        cdef Py_buffer view
        if type(b) is bytes:
            return self.append(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            self.append(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int append_int(self, long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        cdef bint neg = v < 0
        cdef unsigned long long u = <unsigned long long>(-v if neg else v)
        if u == 0:
            i -= 1
            tmp[i] = 48
        while u:
            i -= 1
            tmp[i] = <char>(48 + u % 10)
            u //= 10
        if neg:
            i -= 1
            tmp[i] = 45
        return self.append(tmp + i, 24 - i)

    cdef int append_hex(self, unsigned long long v) except -1:
        cdef char tmp[20]
        cdef int i = 20
        cdef const char* digits = b"0123456789abcdef"
        if v == 0:
            i -= 1
            tmp[i] = 48
        while v:
            i -= 1
            tmp[i] = digits[v & 15]
            v >>= 4
        return self.append(tmp + i, 20 - i)

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.data, self.length)
        self.length = 0
        return out

    def __len__(self):
        return self.length
