# Iteration over a route's filters. A chain is immutable and built once per
# config load; a FilterState holds one stream's per-stream filter objects and
# where iteration paused. Hooks a filter does not override are never called.
#
# Native (C function-pointer) filters sit in the same index tables and are
# called without the GIL; only Python filters need the interpreter.
import logging

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uintptr_t

_log = logging.getLogger("omnirelay.filters")

HOOK_METHODS = (
    "on_request_headers", "on_request_body", "on_request_trailers",
    "on_response_headers", "on_response_body", "on_response_trailers", "on_log",
)


class LocalReply:
    """Returned by a hook to answer the request without (further) upstream work."""
    __slots__ = ("status", "body", "headers", "reason")

    def __init__(self, int status, body=b"", headers=None, reason="filter"):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = [(str(n), str(v)) for n, v in headers or ()]
        for n, v in self.headers:
            # Rejected here so the filter's failure path (a logged 500) applies.
            if not n or any(c in n for c in ":\r\n\0 ") or any(c in v for c in "\r\n\0"):
                raise ValueError(f"invalid local reply header {n!r}: {v!r}")
        self.reason = reason

    def __repr__(self):
        return f"LocalReply({self.status}, reason={self.reason!r})"


def _failure(f, str meth, exc):
    # A failing filter fails its own request only, with a 500 and a log line.
    _log.error("filter %s.%s failed: %s", type(f).__name__, meth, exc,
               exc_info=not isinstance(exc, TypeError))
    return LocalReply(500, b"filter failure\n", reason="filter_failure")


cdef class FilterChain:
    """factories: objects with `create() -> per-stream filter`; hooks: for each
    factory, the set of hook names its per-stream filter overrides."""

    def __init__(self, factories, hooks):
        cdef list by_hook = [[] for _ in range(N_HOOKS)]
        cdef int h
        cdef NativeFilterTable* tbl
        self.factories = tuple(factories)
        self.native = <NativeFilterTable**>PyMem_Calloc(len(self.factories) + 1, sizeof(void*))
        if self.native == NULL:
            raise MemoryError()
        for i, names in enumerate(hooks):
            # A factory exposing `native_table` (the address of a NativeFilterTable
            # it keeps alive) is called at C level, for every hook it fills in.
            addr = getattr(self.factories[i], "native_table", 0)
            if addr:
                tbl = <NativeFilterTable*><uintptr_t>addr
                self.native[i] = tbl
                for h in range(N_HOOKS):
                    if tbl.hooks[h] != NULL:
                        by_hook[h].append(i)
                continue
            for h, name in enumerate(HOOK_METHODS):
                if name in names:
                    by_hook[h].append(i)
        # Response-side hooks run in reverse order, as encoders do in Envoy.
        for h in (RESPONSE_HEADERS, RESPONSE_BODY, RESPONSE_TRAILERS):
            by_hook[h].reverse()
        self.by_hook = tuple(tuple(x) for x in by_hook)
        self.empty = len(self.factories) == 0

    cdef FilterState new_state(self):
        cdef FilterState st = FilterState.__new__(FilterState)
        st.chain = self
        st.filters = [None if self.native[i] != NULL else f.create()
                      for i, f in enumerate(self.factories)]
        st.paused_hook = -1
        return st

    cdef bint has(self, int hook) noexcept:
        return len(<tuple>self.by_hook[hook]) > 0

    def __dealloc__(self):
        PyMem_Free(self.native)

    def __len__(self):
        return len(self.factories)


cdef class FilterState:

    cdef int run(self, int hook, object stream, object arg, bint end_stream,
                 Py_ssize_t start) except -1:
        """Headers/trailers hooks: returns CONTINUE, STOP or LOCAL_REPLY."""
        cdef tuple idx = <tuple>self.chain.by_hook[hook]
        cdef Py_ssize_t k
        cdef str meth = HOOK_METHODS[hook]
        cdef NativeFilterTable* tbl
        cdef native_hook_t fn
        cdef void* handle = <void*>stream
        cdef int rc
        for k in range(start, len(idx)):
            tbl = self.chain.native[<Py_ssize_t>idx[k]]
            if tbl != NULL:
                fn = tbl.hooks[hook]
                with nogil:
                    rc = fn(tbl.config, handle, end_stream)
                if self.local_reply is not None:
                    return LOCAL_REPLY      # the host API stored a reply
                if rc == 0:
                    continue
                if rc == 1:
                    self.paused_hook = hook
                    self.paused_at = k
                    return STOP
                if 100 <= rc <= 599:
                    self.local_reply = LocalReply(rc, reason="native_filter")
                else:
                    _log.error("native filter %d returned %d", <Py_ssize_t>idx[k], rc)
                    self.local_reply = LocalReply(500, b"filter failure\n", reason="filter_failure")
                return LOCAL_REPLY
            f = self.filters[<Py_ssize_t>idx[k]]
            try:
                if hook == REQUEST_TRAILERS or hook == RESPONSE_TRAILERS:
                    r = getattr(f, meth)(stream, arg)
                else:
                    r = getattr(f, meth)(stream, end_stream)
                if r is None or r is 0 or r is CONTINUE:
                    continue
                if isinstance(r, LocalReply):
                    self.local_reply = r
                    return LOCAL_REPLY
                if r is STOP or r == STOP:
                    self.paused_hook = hook
                    self.paused_at = k
                    return STOP
                raise TypeError(f"returned {r!r}; expected CONTINUE, STOP or LocalReply")
            except Exception as e:
                self.local_reply = _failure(f, meth, e)
                return LOCAL_REPLY
        return CONTINUE

    cdef object run_body(self, int hook, object stream, object data, bint end_stream):
        """Body hooks: returns the bytes to pass on, None when a filter asked to
        buffer (STOP), or a LocalReply."""
        cdef tuple idx = <tuple>self.chain.by_hook[hook]
        cdef str meth = HOOK_METHODS[hook]
        cdef NativeFilterTable* tbl
        cdef native_hook_t fn
        cdef void* handle = <void*>stream
        cdef int rc
        if self.buffered is not None:
            self.buffered += data
            data = bytes(self.buffered)
        for k in range(len(idx)):
            tbl = self.chain.native[<Py_ssize_t>idx[k]]
            if tbl != NULL:
                fn = tbl.hooks[hook]
                self.body_chunk = data
                with nogil:
                    rc = fn(tbl.config, handle, end_stream)
                if self.body_out is not None:
                    data = self.body_out
                self.body_chunk = self.body_out = None
                if self.local_reply is not None:
                    r, self.local_reply, self.buffered = self.local_reply, None, None
                    return r
                if rc == 0:
                    continue
                if rc == 1 and not end_stream:
                    if self.buffered is None:
                        self.buffered = bytearray(data)
                    return None
                self.buffered = None
                if 100 <= rc <= 599:
                    return LocalReply(rc, reason="native_filter")
                _log.error("native filter %d returned %d from a body hook",
                           <Py_ssize_t>idx[k], rc)
                return LocalReply(500, b"filter failure\n", reason="filter_failure")
            f = self.filters[<Py_ssize_t>idx[k]]
            try:
                r = getattr(f, meth)(stream, data, end_stream)
                if r is None or r is 0 or r is CONTINUE:
                    continue
                if isinstance(r, (bytes, bytearray, memoryview)):
                    data = bytes(r)
                    continue
                if isinstance(r, LocalReply):
                    return r
                if r is STOP or r == STOP:
                    if end_stream:
                        raise TypeError("returned STOP at end of stream")
                    if self.buffered is None:
                        self.buffered = bytearray(data)
                    return None
                raise TypeError(f"returned {r!r}")
            except Exception as e:
                self.buffered = None
                return _failure(f, meth, e)
        self.buffered = None
        return data

    cdef int run_log(self, object stream) except -1:
        cdef tuple idx = <tuple>self.chain.by_hook[LOG]
        cdef NativeFilterTable* tbl
        cdef void* handle = <void*>stream
        for k in idx:
            tbl = self.chain.native[<Py_ssize_t>k]
            if tbl != NULL:
                with nogil:
                    tbl.hooks[<int>LOG](tbl.config, handle, 1)
                continue
            try:
                self.filters[<Py_ssize_t>k].on_log(stream)
            except Exception:
                _log.exception("filter log hook failed")
        return 0
