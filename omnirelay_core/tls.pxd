from omnirelay_core.includes.openssl cimport SSL, SSL_CTX, BIO
from omnirelay_core.connection cimport Connection


cdef class TlsServer:
    """What a terminating listener's connections share: the front context and how the
    ClientHello's server name picks the context of the current config."""
    cdef readonly object front        # ssl.SSLContext whose SSL_CTX new connections start on
    cdef readonly object select       # server name (str or None) -> ssl.SSLContext or None
    cdef readonly double handshake_timeout
    cdef readonly long long handshakes
    cdef readonly long long handshake_failures
    cdef readonly long long handshake_timeouts
    cdef SSL_CTX* front_ctx


cdef class TlsClient:
    """A cluster's upstream TLS: its ssl.SSLContext (verification, client certificate,
    ALPN) driven by the core."""
    cdef readonly object context
    cdef readonly bint check_hostname
    cdef SSL_CTX* ctx


cdef class TlsProtocol:
    """One TLS connection: the asyncio protocol of the TCP transport below (ciphertext) and
    the transport of the core connection above (plaintext)."""
    cdef TlsServer server               # a downstream connection's listener, or None
    cdef TlsClient client               # an upstream connection's cluster, or None
    cdef str hostname                   # client: the name verified and sent as SNI
    cdef readonly object handshake_done # client: a future, its exception the failure
    cdef SSL* ssl
    cdef BIO* rbio
    cdef BIO* wbio
    cdef object transport
    cdef object _twrite
    cdef Connection app
    cdef object context               # the SSLContext chosen by server name (kept alive)
    cdef object timer
    cdef object info
    cdef int state
    cdef bint app_connected
    cdef bint app_paused
    cdef bint resume_scheduled

    cdef int process(self) except -1
    cdef int handshake(self) except -1
    cdef int client_names(self) except -1
    cdef int read_records(self) except -1
    cdef int flush(self) except -1
    cdef int fail(self, str what) except -1
    cdef int encrypt(self, const char* p, Py_ssize_t n) except -1
    cdef void release(self) noexcept
