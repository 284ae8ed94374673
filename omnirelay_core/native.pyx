# The native-plugin host (omnirelay_plugin.h): the host API table handed to
# plugins, and NativeBinding, the NativeFilterTable a plugin binding puts in a
# filter chain. The table's hooks are trampolines that time each plugin call
# (the call-time monitor) and apply the binding's failure policy once it is
# disabled. Everything on the call path runs without the GIL; host functions
# that must touch Python objects (header edits, replies, metadata, logs) take it
# for the duration of the call.
import logging
import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from omnirelay_core.filterchain cimport (FilterState, native_hook_t, REQUEST_HEADERS, REQUEST_BODY,
                                         REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_BODY,
                                         RESPONSE_TRAILERS, LOG, N_HOOKS)
from omnirelay_core.headers cimport HeaderEntry, HeaderMap
from omnirelay_core.stream cimport HttpStream

from omnirelay_core.filterchain import LocalReply

_log = logging.getLogger("omnirelay.extensions.native")

cdef extern from "include/omnirelay_plugin.h":
    enum:
        OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR
        OMNIRELAY_PLUGIN_ABI_VERSION_MINOR
        OMNIRELAY_OK
        OMNIRELAY_NOT_FOUND
        OMNIRELAY_BAD_ARGUMENT
        OMNIRELAY_BAD_STATE
        OMNIRELAY_NO_MEMORY
        OMNIRELAY_REQUEST_HEADERS
        OMNIRELAY_RESPONSE_HEADERS
        OMNIRELAY_REQUEST_TRAILERS
        OMNIRELAY_RESPONSE_TRAILERS
    ctypedef struct omnirelay_host_api:
        uint32_t abi_major
        uint32_t abi_minor
        int (*get_header)(omnirelay_stream*, int, const char*, size_t, const char**,
                          size_t*) noexcept nogil
        int (*set_header)(omnirelay_stream*, int, const char*, size_t, const char*,
                          size_t) noexcept nogil
        int (*add_header)(omnirelay_stream*, int, const char*, size_t, const char*,
                          size_t) noexcept nogil
        int (*remove_header)(omnirelay_stream*, int, const char*, size_t) noexcept nogil
        int (*get_body)(omnirelay_stream*, const char**, size_t*) noexcept nogil
        int (*set_body)(omnirelay_stream*, const char*, size_t) noexcept nogil
        int (*send_local_reply)(omnirelay_stream*, int, const char*, size_t,
                                const char*) noexcept nogil
        void (*log)(int, const char*, size_t) noexcept nogil
        int64_t (*get_metadata)(omnirelay_stream*, const char*, size_t, char*,
                                size_t) noexcept nogil
        int (*set_metadata)(omnirelay_stream*, const char*, size_t, const char*,
                            size_t) noexcept nogil

cdef extern from "Python.h":
    # On a borrowed pointer, without touching reference counts (no GIL needed).
    char* _bytes_data "PyBytes_AS_STRING"(void* o) nogil
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE"(void* o) nogil

ABI_MAJOR = OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR
ABI_MINOR = OMNIRELAY_PLUGIN_ABI_VERSION_MINOR

cdef enum:
    _FAIL_CLOSED_STATUS = 503
FAIL_CLOSED_STATUS = _FAIL_CLOSED_STATUS
FAIL_CLOSED_BODY = b"native plugin unavailable\n"
FAIL_CLOSED_REASON = "native_fail_closed"
LOCAL_REPLY_REASON = "native_local_reply"

cdef void* _NONE = <void*>None
cdef omnirelay_host_api _HOST


def include_dir():
    """The directory holding omnirelay_plugin.h (shipped with the package)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def host_api_address():
    """The address of the host API table, for a plugin's init function."""
    return <uintptr_t>&_HOST


# --------------------------------------------------------------------------- helpers

cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline char _lower(char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef bint _ieq(const char* a, const char* b, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if _lower(a[i]) != _lower(b[i]):
            return False
    return True


cdef void* _map(void* s, int which) noexcept nogil:
    """The stream's header map `which` (borrowed), or NULL when it has none yet."""
    cdef void* m
    if which == OMNIRELAY_REQUEST_HEADERS:
        m = <void*>(<HttpStream>s).request_headers
    elif which == OMNIRELAY_RESPONSE_HEADERS:
        m = <void*>(<HttpStream>s).response_headers
    elif which == OMNIRELAY_REQUEST_TRAILERS:
        m = <void*>(<HttpStream>s).request_trailers
    elif which == OMNIRELAY_RESPONSE_TRAILERS:
        m = <void*>(<HttpStream>s).response_trailers
    else:
        return NULL
    return NULL if m == _NONE else m


cdef bint _token(const char* p, size_t n) noexcept:
    # RFC 9110 field-name characters.
    cdef size_t i
    cdef char c
    if n == 0:
        return False
    for i in range(n):
        c = p[i]
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or
                c in b"!#$%&'*+-.^_`|~"):
            return False
    return True


cdef bint _field_value(const char* p, size_t n) noexcept:
    cdef size_t i
    for i in range(n):
        if p[i] == 13 or p[i] == 10 or p[i] == 0:
            return False
    return True


cdef FilterState _state(void* s):
    cdef object st = (<HttpStream>s).fstate
    return <FilterState>st if st is not None else None


# --------------------------------------------------------------------------- host API

cdef int _get_header(omnirelay_stream* s, int which, const char* name, size_t nl,
                     const char** value, size_t* vl) noexcept nogil:
    cdef void* m
    cdef void* b
    cdef Py_ssize_t i
    cdef HeaderEntry* e
    if s == NULL or name == NULL or value == NULL or vl == NULL:
        return OMNIRELAY_BAD_ARGUMENT
    if which == OMNIRELAY_REQUEST_HEADERS and nl > 0 and name[0] == 58:  # ':'
        if nl == 5 and _ieq(name, ":path", 5):
            b = <void*>(<HttpStream>s).target
        elif nl == 7 and _ieq(name, ":method", 7):
            b = <void*>(<HttpStream>s).method
        else:
            return OMNIRELAY_NOT_FOUND
        if b == _NONE:
            return OMNIRELAY_NOT_FOUND
        value[0] = _bytes_data(b)
        vl[0] = <size_t>_bytes_size(b)
        return OMNIRELAY_OK
    m = _map(<void*>s, which)
    if m == NULL:
        return OMNIRELAY_BAD_STATE if which <= 3 and which >= 0 else OMNIRELAY_BAD_ARGUMENT
    for i in range((<HeaderMap>m).count):
        e = &(<HeaderMap>m).entries[i]
        if e.name_len == <Py_ssize_t>nl and _ieq((<HeaderMap>m).arena + e.name_off, name, nl):
            value[0] = (<HeaderMap>m).arena + e.value_off
            vl[0] = <size_t>e.value_len
            return OMNIRELAY_OK
    return OMNIRELAY_NOT_FOUND


cdef int _edit(void* s, int which, const char* name, size_t nl, const char* value, size_t vl,
               int op) noexcept:
    # op: 0 set, 1 add, 2 remove
    cdef HttpStream st = <HttpStream>s
    cdef HeaderMap h
    cdef bytes lname, name_copy, value_copy
    try:
        if name == NULL or (value == NULL and vl) or not _field_value(value, vl):
            return OMNIRELAY_BAD_ARGUMENT
        if which == OMNIRELAY_REQUEST_HEADERS and nl == 5 and _ieq(name, ":path", 5):
            if op != 0 or vl == 0 or value[0] != 47 or b" " in value[:vl]:
                return OMNIRELAY_BAD_ARGUMENT
            st.target = PyBytes_FromStringAndSize(value, vl)
            return OMNIRELAY_OK
        if not _token(name, nl):
            return OMNIRELAY_BAD_ARGUMENT
        if which < 0 or which > 3:
            return OMNIRELAY_BAD_ARGUMENT
        m = _map(s, which)
        if m == NULL:
            return OMNIRELAY_BAD_STATE
        h = <HeaderMap>m
        # A name or value read from this map (get_header) points into its arena, which
        # the edit may move: copy it first.
        if name >= h.arena and name < h.arena + h.arena_cap:
            name_copy = PyBytes_FromStringAndSize(name, nl)
            name = <const char*>name_copy
        if value != NULL and value >= h.arena and value < h.arena + h.arena_cap:
            value_copy = PyBytes_FromStringAndSize(value, vl)
            value = <const char*>value_copy
        if op == 0:
            h.set_raw(name, nl, value, vl)
        elif op == 1:
            h.add_raw(name, nl, value, vl)
        else:
            lname = PyBytes_FromStringAndSize(name, nl).lower()
            if h.remove_raw(lname, nl) == 0:
                return OMNIRELAY_NOT_FOUND
        return OMNIRELAY_OK
    except MemoryError:
        return OMNIRELAY_NO_MEMORY
    except BaseException:
        _log.exception("native host: header edit failed")
        return OMNIRELAY_BAD_STATE


cdef int _set_header(omnirelay_stream* s, int which, const char* name, size_t nl,
                     const char* value, size_t vl) noexcept nogil:
    if s == NULL:
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        return _edit(<void*>s, which, name, nl, value, vl, 0)


cdef int _add_header(omnirelay_stream* s, int which, const char* name, size_t nl,
                     const char* value, size_t vl) noexcept nogil:
    if s == NULL:
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        return _edit(<void*>s, which, name, nl, value, vl, 1)


cdef int _remove_header(omnirelay_stream* s, int which, const char* name,
                        size_t nl) noexcept nogil:
    if s == NULL:
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        return _edit(<void*>s, which, name, nl, NULL, 0, 2)


cdef int _get_body(omnirelay_stream* s, const char** data, size_t* n) noexcept nogil:
    cdef void* st
    cdef void* b
    if s == NULL or data == NULL or n == NULL:
        return OMNIRELAY_BAD_ARGUMENT
    st = <void*>(<HttpStream>s).fstate
    if st == _NONE:
        return OMNIRELAY_BAD_STATE
    b = <void*>(<FilterState>st).body_out
    if b == _NONE:
        b = <void*>(<FilterState>st).body_chunk
        if b == _NONE:
            return OMNIRELAY_BAD_STATE     # not in a body hook
    data[0] = _bytes_data(b)
    n[0] = <size_t>_bytes_size(b)
    return OMNIRELAY_OK


cdef int _set_body(omnirelay_stream* s, const char* data, size_t n) noexcept nogil:
    if s == NULL or (data == NULL and n):
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        try:
            st = _state(<void*>s)
            if st is None or st.body_chunk is None:
                return OMNIRELAY_BAD_STATE
            st.body_out = PyBytes_FromStringAndSize(data, n)
            return OMNIRELAY_OK
        except MemoryError:
            return OMNIRELAY_NO_MEMORY
        except BaseException:
            return OMNIRELAY_BAD_STATE


cdef int _send_local_reply(omnirelay_stream* s, int status, const char* body, size_t n,
                           const char* reason) noexcept nogil:
    if s == NULL or status < 100 or status > 599 or (body == NULL and n):
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        try:
            if (<HttpStream>s).done:
                return OMNIRELAY_BAD_STATE
            st = _state(<void*>s)
            if st is None:
                return OMNIRELAY_BAD_STATE
            why = LOCAL_REPLY_REASON
            if reason != NULL:
                why = (<bytes>reason).decode("ascii")
                if not why or not why.isprintable() or len(why) > 256:
                    return OMNIRELAY_BAD_ARGUMENT
            st.local_reply = LocalReply(status, PyBytes_FromStringAndSize(body, n), reason=why)
            return status
        except MemoryError:
            return OMNIRELAY_NO_MEMORY
        except BaseException:
            return OMNIRELAY_BAD_ARGUMENT


cdef void _host_log(int level, const char* msg, size_t n) noexcept nogil:
    if msg == NULL:
        return
    with gil:
        try:
            if _log.isEnabledFor(level):
                _log.log(level, "%s", PyBytes_FromStringAndSize(msg, n).decode("utf-8", "replace"))
        except BaseException:
            pass


cdef int64_t _get_metadata(omnirelay_stream* s, const char* key, size_t kl, char* buf,
                           size_t cap) noexcept nogil:
    if s == NULL or key == NULL or (buf == NULL and cap):
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        return _copy_metadata(<void*>s, key, kl, buf, cap)


cdef int64_t _copy_metadata(void* s, const char* key, size_t kl, char* buf,
                            size_t cap) noexcept:
    cdef bytes v
    try:
        md = (<HttpStream>s).metadata
        if not isinstance(md, dict):
            return OMNIRELAY_NOT_FOUND
        value = md.get(PyBytes_FromStringAndSize(key, kl).decode("utf-8"))
        if isinstance(value, str):
            v = value.encode("utf-8")
        elif isinstance(value, bytes):
            v = value
        else:
            return OMNIRELAY_NOT_FOUND
        memcpy(buf, <const char*>v, min(<size_t>len(v), cap))
        return len(v)
    except UnicodeError:
        return OMNIRELAY_BAD_ARGUMENT
    except BaseException:
        return OMNIRELAY_BAD_STATE


cdef int _set_metadata(omnirelay_stream* s, const char* key, size_t kl, const char* value,
                       size_t vl) noexcept nogil:
    if s == NULL or key == NULL or (value == NULL and vl):
        return OMNIRELAY_BAD_ARGUMENT
    with gil:
        try:
            k = PyBytes_FromStringAndSize(key, kl).decode("utf-8")
            v = PyBytes_FromStringAndSize(value, vl).decode("utf-8")
            st = <HttpStream>s
            if st.metadata is None:
                st.metadata = {}
            elif not isinstance(st.metadata, dict):
                return OMNIRELAY_BAD_STATE
            st.metadata[k] = v
            return OMNIRELAY_OK
        except UnicodeError:
            return OMNIRELAY_BAD_ARGUMENT
        except MemoryError:
            return OMNIRELAY_NO_MEMORY
        except BaseException:
            return OMNIRELAY_BAD_STATE


_HOST.abi_major = OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR
_HOST.abi_minor = OMNIRELAY_PLUGIN_ABI_VERSION_MINOR
_HOST.get_header = _get_header
_HOST.set_header = _set_header
_HOST.add_header = _add_header
_HOST.remove_header = _remove_header
_HOST.get_body = _get_body
_HOST.set_body = _set_body
_HOST.send_local_reply = _send_local_reply
_HOST.log = _host_log
_HOST.get_metadata = _get_metadata
_HOST.set_metadata = _set_metadata


# --------------------------------------------------------------------------- monitor

cdef enum:
    DISABLED_WATCHDOG = 0
    DISABLED_BAD_RESULT = 1


cdef void _disable(Binding* b, int why, int hook, int64_t value) noexcept nogil:
    if b.disabled:
        return
    b.disabled = True
    with gil:
        try:
            (<NativeBinding>b.owner)._disabled(why, hook, value)
        except BaseException:
            _log.exception("native binding: disable handler failed")


cdef int _fallback(Binding* b, int hook, void* s) noexcept nogil:
    b.fallback_calls += 1
    if b.fallback_open:
        return 0
    with gil:
        try:
            st = _state(s)
            if st is not None and not (<HttpStream>s).done:
                st.local_reply = LocalReply(FAIL_CLOSED_STATUS, FAIL_CLOSED_BODY,
                                            reason=FAIL_CLOSED_REASON)
        except BaseException:
            pass
    return _FAIL_CLOSED_STATUS


cdef inline int _call(Binding* b, int hook, void* s, int end_stream) noexcept nogil:
    cdef int64_t t0, dt
    cdef int rc
    if b.disabled:
        return 0 if hook == LOG else _fallback(b, hook, s)
    t0 = _now_ns()
    rc = b.hooks[hook](b.ctx, <omnirelay_stream*>s, end_stream)
    dt = _now_ns() - t0
    b.calls += 1
    b.total_ns += dt
    if dt > b.max_ns:
        b.max_ns = dt
    if b.max_call_ns > 0 and dt > b.max_call_ns:
        b.trips += 1
        if b.trips >= b.max_trips:
            _disable(b, DISABLED_WATCHDOG, hook, dt)
    # STOP only buffers bodies: a plugin has no way to resume a paused stream (yet).
    if rc == 0 or 100 <= rc <= 599 or hook == LOG or (
            rc == 1 and not end_stream and (hook == REQUEST_BODY or hook == RESPONSE_BODY)):
        return rc
    b.failures += 1
    _disable(b, DISABLED_BAD_RESULT, hook, rc)
    return _fallback(b, hook, s)


cdef int _t_request_headers(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, REQUEST_HEADERS, s, e)

cdef int _t_request_body(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, REQUEST_BODY, s, e)

cdef int _t_request_trailers(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, REQUEST_TRAILERS, s, 1)

cdef int _t_response_headers(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, RESPONSE_HEADERS, s, e)

cdef int _t_response_body(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, RESPONSE_BODY, s, e)

cdef int _t_response_trailers(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, RESPONSE_TRAILERS, s, 1)

cdef int _t_log(void* b, void* s, int e) noexcept nogil:
    return _call(<Binding*>b, LOG, s, 1)


cdef native_hook_t _TRAMPOLINES[7]
_TRAMPOLINES[:] = [_t_request_headers, _t_request_body, _t_request_trailers,
                   _t_response_headers, _t_response_body, _t_response_trailers, _t_log]

_DISABLED_KINDS = ("watchdog", "bad_result")
_HOOK_NAMES = ("on_request_headers", "on_request_body", "on_request_trailers",
               "on_response_headers", "on_response_body", "on_response_trailers", "on_log")


cdef class NativeBinding:
    """One plugin binding as a NativeFilterTable the chain calls without the GIL.

    hooks: 7 addresses of the plugin's hook functions (0 = absent), in
    HOOK_METHODS order; ctx / destroy: the binding's context and the plugin's
    destroy function (called when this object goes away); max_call_us: the
    call-time limit (0 = no monitor); max_trips: calls over it that disable the
    binding; fallback_open: what a disabled binding does (skip, else reply 503);
    on_disable(kind, hook, value): called once, when the binding is disabled.
    """

    def __cinit__(self, str name, hooks, uintptr_t ctx, uintptr_t destroy, double max_call_us,
                  int max_trips, bint fallback_open, on_disable=None):
        cdef int h
        hooks = tuple(hooks)
        if len(hooks) != N_HOOKS:
            raise ValueError(f"expected {N_HOOKS} hook addresses")
        if max_trips < 1:
            raise ValueError("max_trips must be at least 1")
        self.name = name
        self.on_disable = on_disable
        self.b.ctx = <void*>ctx
        self.b.destroy = <omnirelay_destroy_fn>destroy
        self.b.max_call_ns = <int64_t>(max_call_us * 1000.0)
        self.b.max_trips = max_trips
        self.b.fallback_open = fallback_open
        self.b.owner = <void*>self
        for h in range(N_HOOKS):
            self.b.hooks[h] = <omnirelay_hook><uintptr_t>hooks[h]
        self.table.config = &self.b
        for h in range(N_HOOKS):
            self.table.hooks[h] = _TRAMPOLINES[h] if self.b.hooks[h] != NULL else NULL

    def __dealloc__(self):
        if self.b.destroy != NULL and self.b.ctx != NULL:
            self.b.destroy(self.b.ctx)
            self.b.ctx = NULL

    @property
    def table_address(self):
        """The address of the NativeFilterTable (valid while this object lives)."""
        return <uintptr_t>&self.table

    @property
    def disabled(self):
        return bool(self.b.disabled)

    def hooks(self):
        """The hook names the plugin implements."""
        cdef int h
        return frozenset([_HOOK_NAMES[h] for h in range(7) if self.b.hooks[h] != NULL])

    def disable(self, str reason):
        """Stop calling the plugin; the fallback (open or closed) applies from now on."""
        if not self.b.disabled:
            self.b.disabled = True
            self.disabled_reason = reason

    def stats(self):
        """Counters since the binding was built (calls and times of enabled calls)."""
        return {
            "calls": self.b.calls, "trips": self.b.trips, "failures": self.b.failures,
            "fallback_calls": self.b.fallback_calls, "total_ns": self.b.total_ns,
            "max_ns": self.b.max_ns, "disabled": bool(self.b.disabled),
            "disabled_reason": self.disabled_reason,
        }

    def _disabled(self, int why, int hook, int64_t value):
        if why == DISABLED_WATCHDOG:
            self.disabled_reason = (
                f"watchdog: {self.b.trips} call(s) over {self.b.max_call_ns // 1000} us "
                f"(last: {_HOOK_NAMES[hook]} took {value // 1000} us)")
        else:
            self.disabled_reason = f"bad_result: {_HOOK_NAMES[hook]} returned {value}"
        if self.on_disable is not None:
            self.on_disable(_DISABLED_KINDS[why], self.disabled_reason)
