from omnirelay_core.connection cimport Connection
from omnirelay_core.stats cimport Stats
from omnirelay_core.stream cimport ListenerState


cdef class ServerConnection(Connection):
    """What every downstream connection (HTTP/1.1, HTTP/2) shares: its listener,
    the peer, and the listener's housekeeping hooks."""
    cdef ListenerRuntime listener
    cdef str peer
    cdef bytes peer_bytes
    cdef bint draining
    cdef str peer_identity          # the client certificate's SPIFFE ID (URI SAN), if any
    cdef int register(self, object transport) except -1
    cdef int sweep(self, double now) except -1
    cdef int start_drain(self) except -1


cdef str peer_identity_of(object transport)


cdef class ListenerRuntime:
    cdef public ListenerState state
    cdef readonly set connections
    cdef readonly Stats stats
    cdef public object server
    cdef public bint draining
    cdef public object ssl
    cdef public object tls              # a tls.TlsServer: TLS terminated in the core
