# Filter-chain contract (Envoy-like): each hook returns CONTINUE, STOP (the
# filter resumes the stream later) or a LocalReply that ends iteration.
cdef enum:
    CONTINUE = 0
    STOP = 1
    LOCAL_REPLY = 2

cdef enum Hook:
    REQUEST_HEADERS = 0
    REQUEST_BODY = 1
    REQUEST_TRAILERS = 2
    RESPONSE_HEADERS = 3
    RESPONSE_BODY = 4
    RESPONSE_TRAILERS = 5
    LOG = 6
    N_HOOKS = 7


# A native filter: a C table the core calls directly, without the GIL. A hook
# returns 0 (continue), 1 (stop: headers pause until stream.resume(), bodies
# buffer) or an HTTP status 100..599 (local reply); a reply the host API stored
# in FilterState.local_reply during the call wins. `stream` is the HttpStream,
# an opaque handle for the host API of omnirelay_core.native (omnirelay_plugin.h).
ctypedef int (*native_hook_t)(void* config, void* stream, int end_stream) noexcept nogil

cdef struct NativeFilterTable:
    native_hook_t hooks[7]      # indexed by Hook; NULL = pass-through
    void* config


cdef class FilterChain:
    cdef readonly tuple factories
    cdef NativeFilterTable** native   # per factory; NULL for Python filters
    cdef tuple by_hook          # per hook: tuple of filter indexes, in call order
    cdef readonly bint empty

    cdef FilterState new_state(self)
    cdef bint has(self, int hook) noexcept


cdef class FilterState:
    cdef FilterChain chain
    cdef list filters
    cdef Py_ssize_t paused_at   # index into by_hook[hook] of the filter that stopped
    cdef int paused_hook        # -1 when not paused
    cdef public object local_reply
    cdef public object buffered  # bytearray for a body hook that asked to buffer
    # The chunk a native body hook sees, and its replacement through the host API.
    cdef object body_chunk       # bytes during a native body hook, else None
    cdef object body_out         # bytes set by the host API, else None

    cdef int run(self, int hook, object stream, object arg, bint end_stream, Py_ssize_t start) except -1
    cdef object run_body(self, int hook, object stream, object data, bint end_stream)
    cdef int run_log(self, object stream) except -1
