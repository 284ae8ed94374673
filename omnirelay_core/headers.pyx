# A header map stored as offsets into one arena: the codec appends raw bytes as
# the parser reports them, filters and the router read them without creating
# Python objects. HTTP/2 fills the same structure.
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy

from omnirelay_core.buffers cimport ByteBuilder


cdef inline char _lower(char c) noexcept:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef bint ascii_ieq(const char* a, const char* lower_b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(a[i]) != lower_b[i]:
            return False
    return True


cdef bytes _b(object s):
    if isinstance(s, str):
        return (<str>s).encode("latin-1")
    return bytes(s)


cdef bytes _lb(object s):
    return _b(s).lower()


def _check_value(bytes v):
    # Filters must not be able to inject header lines downstream.
    if b"\r" in v or b"\n" in v or b"\0" in v:
        raise ValueError("header value contains CR, LF or NUL")


def _check_name(bytes n):
    if not n or b":" in n or b" " in n or b"\r" in n or b"\n" in n or b"\0" in n:
        raise ValueError(f"invalid header name {n!r}")


cdef class HeaderMap:

    def __cinit__(self):
        self.arena_cap = 1024
        self.arena = <char*>PyMem_Malloc(self.arena_cap)
        self.cap = 32
        self.entries = <HeaderEntry*>PyMem_Malloc(self.cap * sizeof(HeaderEntry))
        if self.arena == NULL or self.entries == NULL:
            raise MemoryError()
        self.clear()

    def __dealloc__(self):
        PyMem_Free(self.arena)
        PyMem_Free(self.entries)

    cdef void clear(self) noexcept:
        self.arena_len = 0
        self.count = 0
        self.live = 0
        self._feed_state = 0

    cdef int _grow_arena(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap = self.arena_cap
        cdef char* p
        while cap < self.arena_len + extra:
            cap *= 2
        p = <char*>PyMem_Realloc(self.arena, cap)
        if p == NULL:
            raise MemoryError()
        self.arena = p
        self.arena_cap = cap
        return 0

    cdef int _new_entry(self) except -1:
        cdef HeaderEntry* p
        if self.count == self.cap:
            p = <HeaderEntry*>PyMem_Realloc(self.entries, self.cap * 2 * sizeof(HeaderEntry))
            if p == NULL:
                raise MemoryError()
            self.entries = p
            self.cap *= 2
        self.entries[self.count].name_off = self.arena_len
        self.entries[self.count].name_len = 0
        self.entries[self.count].value_off = self.arena_len
        self.entries[self.count].value_len = 0
        self.count += 1
        self.live += 1
        return 0

    cdef int feed_name(self, const char* p, Py_ssize_t n) except -1:
        if self._feed_state != 1:
            self._new_entry()
            self._feed_state = 1
        if self.arena_len + n > self.arena_cap:
            self._grow_arena(n)
        memcpy(self.arena + self.arena_len, p, n)
        self.arena_len += n
        self.entries[self.count - 1].name_len += n
        self.entries[self.count - 1].value_off = self.arena_len
        return 0

    cdef int feed_value(self, const char* p, Py_ssize_t n) except -1:
        if self._feed_state == 0:
            return 0
        self._feed_state = 2
        if self.arena_len + n > self.arena_cap:
            self._grow_arena(n)
        memcpy(self.arena + self.arena_len, p, n)
        self.arena_len += n
        self.entries[self.count - 1].value_len += n
        return 0

    cdef void end_value(self) noexcept:
        cdef HeaderEntry* e
        if self.count:
            e = &self.entries[self.count - 1]
            # llhttp skips leading whitespace; trailing OWS is ours to drop.
            while e.value_len and (self.arena[e.value_off + e.value_len - 1] == 32 or
                                   self.arena[e.value_off + e.value_len - 1] == 9):
                e.value_len -= 1
        self._feed_state = 0

    cdef int add_raw(self, const char* n, Py_ssize_t nl, const char* v, Py_ssize_t vl) except -1:
        self._feed_state = 0
        if self.arena_len + nl + vl > self.arena_cap:
            self._grow_arena(nl + vl)
        self._new_entry()
        memcpy(self.arena + self.arena_len, n, nl)
        self.entries[self.count - 1].name_len = nl
        self.arena_len += nl
        self.entries[self.count - 1].value_off = self.arena_len
        memcpy(self.arena + self.arena_len, v, vl)
        self.entries[self.count - 1].value_len = vl
        self.arena_len += vl
        return 0

    cdef Py_ssize_t find(self, const char* lname, Py_ssize_t nl, Py_ssize_t start) noexcept:
        cdef Py_ssize_t i
        cdef HeaderEntry* e
        for i in range(start, self.count):
            e = &self.entries[i]
            if e.name_len == nl and ascii_ieq(self.arena + e.name_off, lname, nl):
                return i
        return -1

    cdef void remove_at(self, Py_ssize_t i) noexcept:
        if self.entries[i].name_len >= 0:
            self.entries[i].name_len = -1
            self.live -= 1

    cdef int remove_raw(self, const char* lname, Py_ssize_t nl) noexcept:
        cdef int removed = 0
        cdef Py_ssize_t i = self.find(lname, nl, 0)
        while i >= 0:
            self.remove_at(i)
            removed += 1
            i = self.find(lname, nl, i + 1)
        return removed

    cdef int set_raw(self, const char* n, Py_ssize_t nl, const char* v, Py_ssize_t vl) except -1:
        cdef bytes lname = PyBytes_FromStringAndSize(n, nl).lower()
        self.remove_raw(lname, nl)
        return self.add_raw(n, nl, v, vl)

    cdef bint value_has_token(self, Py_ssize_t i, const char* ltoken, Py_ssize_t tl) noexcept:
        # Comma-separated token list match (Connection: keep-alive, Upgrade).
        cdef const char* v = self.value_at(i)
        cdef Py_ssize_t n = self.entries[i].value_len
        cdef Py_ssize_t j = 0, start, end
        while j < n:
            while j < n and (v[j] == 32 or v[j] == 9 or v[j] == 44):
                j += 1
            start = j
            while j < n and v[j] != 44:
                j += 1
            end = j
            while end > start and (v[end - 1] == 32 or v[end - 1] == 9):
                end -= 1
            if end - start == tl and ascii_ieq(v + start, ltoken, tl):
                return True
        return False

    cdef int serialize_into(self, ByteBuilder out) except -1:
        cdef Py_ssize_t i
        cdef HeaderEntry* e
        for i in range(self.count):
            e = &self.entries[i]
            if e.name_len < 0:
                continue
            out.reserve(e.name_len + e.value_len + 4)
            out.append(self.arena + e.name_off, e.name_len)
            out.append(b": ", 2)
            out.append(self.arena + e.value_off, e.value_len)
            out.append(b"\r\n", 2)
        return 0

    cdef int copy_from(self, HeaderMap other) except -1:
        cdef Py_ssize_t i
        cdef HeaderEntry* e
        self.clear()
        for i in range(other.count):
            e = &other.entries[i]
            if e.name_len >= 0:
                self.add_raw(other.arena + e.name_off, e.name_len,
                             other.arena + e.value_off, e.value_len)
        return 0

    # ---- Python API (filters, tests); str values are latin-1 like the wire ----

    def get(self, name, default=None):
        cdef bytes ln = _lb(name)
        cdef Py_ssize_t i = self.find(ln, len(ln), 0)
        if i < 0:
            return default
        return PyBytes_FromStringAndSize(self.value_at(i), self.entries[i].value_len).decode("latin-1")

    def getall(self, name):
        cdef bytes ln = _lb(name)
        cdef list out = []
        cdef Py_ssize_t i = self.find(ln, len(ln), 0)
        while i >= 0:
            out.append(PyBytes_FromStringAndSize(self.value_at(i), self.entries[i].value_len).decode("latin-1"))
            i = self.find(ln, len(ln), i + 1)
        return out

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        cdef bytes ln = _lb(name)
        return self.find(ln, len(ln), 0) >= 0

    def add(self, name, value):
        cdef bytes n = _b(name), v = _b(value)
        _check_name(n)
        _check_value(v)
        self.add_raw(n, len(n), v, len(v))

    def set(self, name, value):
        cdef bytes n = _b(name), v = _b(value)
        _check_name(n)
        _check_value(v)
        self.set_raw(n, len(n), v, len(v))

    def __setitem__(self, name, value):
        self.set(name, value)

    def remove(self, name):
        cdef bytes ln = _lb(name)
        return self.remove_raw(ln, len(ln))

    def __delitem__(self, name):
        if not self.remove(name):
            raise KeyError(name)

    def items(self):
        cdef list out = []
        cdef Py_ssize_t i
        cdef HeaderEntry* e
        for i in range(self.count):
            e = &self.entries[i]
            if e.name_len >= 0:
                out.append((PyBytes_FromStringAndSize(self.arena + e.name_off, e.name_len).decode("latin-1"),
                            PyBytes_FromStringAndSize(self.arena + e.value_off, e.value_len).decode("latin-1")))
        return out

    def raw_items(self):
        """(name, value) as bytes, in order."""
        cdef list out = []
        cdef Py_ssize_t i
        cdef HeaderEntry* e
        for i in range(self.count):
            e = &self.entries[i]
            if e.name_len >= 0:
                out.append((PyBytes_FromStringAndSize(self.arena + e.name_off, e.name_len),
                            PyBytes_FromStringAndSize(self.arena + e.value_off, e.value_len)))
        return out

    def keys(self):
        return [k for k, _ in self.items()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return self.live

    def __repr__(self):
        return f"HeaderMap({self.items()!r})"

    @staticmethod
    def from_items(items):
        cdef HeaderMap h = HeaderMap()
        for k, v in items:
            h.add(k, v)
        return h
