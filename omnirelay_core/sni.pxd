# TLS helpers for L4 listeners and TLS-terminating HTTP listeners: the ClientHello
# SNI parser (C level, no Python objects), the server-name route table and the
# negotiated ALPN protocol of a TLS transport.

cdef enum:
    HELLO_NEED_MORE = 0     # not a whole ClientHello yet: read more
    HELLO_SNI = 1           # complete, server name written to the output buffer
    HELLO_NO_SNI = 2        # complete, no server_name extension (or no host_name in it)
    HELLO_NOT_TLS = -1      # the first record is not a TLS handshake record
    HELLO_MALFORMED = -2    # a TLS record, but a broken or oversized ClientHello

    # The largest handshake message accepted (the first records' payload), and the most
    # bytes a listener buffers while waiting for a whole ClientHello: one full record.
    HELLO_MAX_MESSAGE = 16384
    HELLO_MAX_BUFFER = 16384 + 5
    SNI_MAX_NAME = 255


cdef int client_hello_sni(const unsigned char* p, Py_ssize_t n, unsigned char* name,
                          Py_ssize_t* name_len) noexcept nogil


cdef class SniTable:
    """Server-name routes in match order: exact names, `*.suffix` (any label depth
    below the suffix) and `*` (anything, including a ClientHello without SNI).
    The first route with a matching name wins."""
    cdef readonly tuple entries         # ((server_names, ...), target) in config order
    cdef list _exact                    # per entry: frozenset of lowercase bytes
    cdef list _suffix                   # per entry: tuple of b".suffix"
    cdef list _any                      # per entry: bool

    cdef object lookup(self, const unsigned char* name, Py_ssize_t n)


cpdef str negotiated_alpn(object transport)
