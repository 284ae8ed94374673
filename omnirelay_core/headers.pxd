from omnirelay_core.buffers cimport ByteBuilder

cdef struct HeaderEntry:
    Py_ssize_t name_off
    Py_ssize_t name_len     # -1 marks a removed entry
    Py_ssize_t value_off
    Py_ssize_t value_len


cdef bint ascii_ieq(const char* a, const char* lower_b, Py_ssize_t n) noexcept


cdef class HeaderMap:
    cdef char* arena
    cdef Py_ssize_t arena_len
    cdef Py_ssize_t arena_cap
    cdef HeaderEntry* entries
    cdef Py_ssize_t count
    cdef Py_ssize_t cap
    cdef Py_ssize_t live
    cdef int _feed_state

    cdef void clear(self) noexcept
    cdef int _grow_arena(self, Py_ssize_t extra) except -1
    cdef int _new_entry(self) except -1
    cdef int feed_name(self, const char* p, Py_ssize_t n) except -1
    cdef int feed_value(self, const char* p, Py_ssize_t n) except -1
    cdef void end_value(self) noexcept
    cdef int add_raw(self, const char* n, Py_ssize_t nl, const char* v, Py_ssize_t vl) except -1
    cdef Py_ssize_t find(self, const char* lname, Py_ssize_t nl, Py_ssize_t start) noexcept
    cdef int remove_raw(self, const char* lname, Py_ssize_t nl) noexcept
    cdef void remove_at(self, Py_ssize_t i) noexcept
    cdef int set_raw(self, const char* n, Py_ssize_t nl, const char* v, Py_ssize_t vl) except -1
    cdef inline const char* name_at(self, Py_ssize_t i) noexcept:
        return self.arena + self.entries[i].name_off
    cdef inline const char* value_at(self, Py_ssize_t i) noexcept:
        return self.arena + self.entries[i].value_off
    cdef bint value_has_token(self, Py_ssize_t i, const char* ltoken, Py_ssize_t tl) noexcept
    cdef int serialize_into(self, ByteBuilder out) except -1
    cdef int copy_from(self, HeaderMap other) except -1
