from libc.stdint cimport int64_t, uint32_t, uint64_t

from omnirelay_core.filterchain cimport NativeFilterTable


cdef extern from "include/omnirelay_plugin.h":
    ctypedef struct omnirelay_stream:
        pass
    ctypedef int (*omnirelay_hook)(void* ctx, omnirelay_stream* stream, int end_stream) noexcept nogil

ctypedef void (*omnirelay_destroy_fn)(void* ctx) noexcept nogil


# One binding (a filter entry of a loaded config) of a plugin: the plugin's hooks
# and context, the call-time monitor's limits, its counters and the policy once
# the binding is disabled. The core calls it through NativeBinding.table.
cdef struct Binding:
    omnirelay_hook hooks[7]
    void* ctx
    omnirelay_destroy_fn destroy
    int64_t max_call_ns         # a call longer than this is a watchdog trip; 0 = off
    uint64_t max_trips          # trips that disable the binding
    bint fallback_open          # when disabled: skip the filter (else reply 503)
    bint disabled
    uint64_t calls
    uint64_t trips
    uint64_t failures
    uint64_t fallback_calls
    int64_t total_ns
    int64_t max_ns
    void* owner                 # the NativeBinding (borrowed: it owns this struct)


cdef class NativeBinding:
    cdef NativeFilterTable table
    cdef Binding b
    cdef readonly str name
    cdef readonly str disabled_reason
    cdef object on_disable
