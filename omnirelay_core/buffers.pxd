cdef class BufferPool:
    cdef list _free
    cdef readonly Py_ssize_t slab_size
    cdef readonly Py_ssize_t max_free
    cdef readonly Py_ssize_t in_use
    cdef readonly Py_ssize_t peak_in_use

    cdef bytearray acquire(self)
    cdef void release(self, bytearray slab)


cdef class ByteBuilder:
    cdef char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t cap

    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef int append(self, const char* p, Py_ssize_t n) except -1
    cdef int append_obj(self, object b) except -1
    cdef int append_int(self, long long v) except -1
    cdef int append_hex(self, unsigned long long v) except -1
    cdef bytes take(self)
