# The slice of OpenSSL's libssl/libcrypto ABI the core's TLS layer calls. No header is
# included and nothing is linked: omnirelay_core.tls resolves these functions at import
# time from the very library Python's `_ssl` module runs on, because the SSL_CTX it drives
# belongs to an ssl.SSLContext built by that library (two OpenSSL copies must never mix).
# Everything here is stable across OpenSSL 1.1.1 and 3.x.
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    typedef struct ssl_st SSL;
    typedef struct ssl_ctx_st SSL_CTX;
    typedef struct bio_st BIO;
    typedef struct bio_method_st BIO_METHOD;
    typedef struct x509_st X509;
    typedef struct ssl_cipher_st SSL_CIPHER;
    typedef struct X509_VERIFY_PARAM_st X509_VERIFY_PARAM;
    """
    ctypedef struct SSL
    ctypedef struct SSL_CTX
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct X509
    ctypedef struct SSL_CIPHER
    ctypedef struct X509_VERIFY_PARAM

# SSL_get_error
cdef enum:
    SSL_ERROR_NONE = 0
    SSL_ERROR_SSL = 1
    SSL_ERROR_WANT_READ = 2
    SSL_ERROR_WANT_WRITE = 3
    SSL_ERROR_SYSCALL = 5
    SSL_ERROR_ZERO_RETURN = 6

# ctrl codes behind the header's macros
cdef enum:
    BIO_CTRL_PENDING = 10
    BIO_C_SET_BUF_MEM_EOF_RETURN = 130
    SSL_CTRL_SET_TLSEXT_SERVERNAME_CB = 53
    SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG = 54
    SSL_CTRL_GET_MIN_PROTO_VERSION = 130
    SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
    TLSEXT_NAMETYPE_host_name = 0
    SSL_TLSEXT_ERR_OK = 0
    SSL_TLSEXT_ERR_ALERT_FATAL = 2
    SSL_AD_INTERNAL_ERROR = 80
    SSL_VERIFY_NONE = 0
    X509_V_OK = 0

ctypedef int (*servername_cb_t)(SSL*, int*, void*) noexcept nogil
ctypedef void (*generic_cb_t)() noexcept nogil

# One pointer per function, filled by omnirelay_core.tls._resolve().
ctypedef struct OpenSSLApi:
    SSL* (*SSL_new)(SSL_CTX*) noexcept nogil
    void (*SSL_free)(SSL*) noexcept nogil
    void (*SSL_set_bio)(SSL*, BIO*, BIO*) noexcept nogil
    void (*SSL_set_accept_state)(SSL*) noexcept nogil
    int (*SSL_do_handshake)(SSL*) noexcept nogil
    int (*SSL_read)(SSL*, void*, int) noexcept nogil
    int (*SSL_write)(SSL*, const void*, int) noexcept nogil
    int (*SSL_shutdown)(SSL*) noexcept nogil
    int (*SSL_get_error)(const SSL*, int) noexcept nogil
    int (*SSL_pending)(const SSL*) noexcept nogil
    void (*SSL_get0_alpn_selected)(const SSL*, const unsigned char**, unsigned int*) noexcept nogil
    const char* (*SSL_get_servername)(const SSL*, int) noexcept nogil
    SSL_CTX* (*SSL_set_SSL_CTX)(SSL*, SSL_CTX*) noexcept nogil
    SSL_CTX* (*SSL_get_SSL_CTX)(const SSL*) noexcept nogil
    int (*SSL_set_ex_data)(SSL*, int, void*) noexcept nogil
    void* (*SSL_get_ex_data)(const SSL*, int) noexcept nogil
    X509* (*SSL_get_peer_certificate)(const SSL*) noexcept nogil   # SSL_get1_peer_certificate
    long (*SSL_get_verify_result)(const SSL*) noexcept nogil
    const char* (*SSL_get_version)(const SSL*) noexcept nogil
    const SSL_CIPHER* (*SSL_get_current_cipher)(const SSL*) noexcept nogil
    const char* (*SSL_CIPHER_get_name)(const SSL_CIPHER*) noexcept nogil
    int (*SSL_CIPHER_get_bits)(const SSL_CIPHER*, int*) noexcept nogil
    long (*SSL_CTX_ctrl)(SSL_CTX*, int, long, void*) noexcept nogil
    long (*SSL_CTX_callback_ctrl)(SSL_CTX*, int, generic_cb_t) noexcept nogil
    uint64_t (*SSL_CTX_get_options)(const SSL_CTX*) noexcept nogil
    int (*SSL_CTX_get_verify_mode)(const SSL_CTX*) noexcept nogil
    const BIO_METHOD* (*BIO_s_mem)() noexcept nogil
    BIO* (*BIO_new)(const BIO_METHOD*) noexcept nogil
    int (*BIO_write)(BIO*, const void*, int) noexcept nogil
    int (*BIO_read)(BIO*, void*, int) noexcept nogil
    long (*BIO_ctrl)(BIO*, int, long, void*) noexcept nogil
    int (*i2d_X509)(X509*, unsigned char**) noexcept nogil
    void (*X509_free)(X509*) noexcept nogil
    unsigned long (*ERR_get_error)() noexcept nogil
    void (*ERR_error_string_n)(unsigned long, char*, size_t) noexcept nogil
    void (*ERR_clear_error)() noexcept nogil
    # the client side (upstream TLS)
    void (*SSL_set_connect_state)(SSL*) noexcept nogil
    long (*SSL_ctrl)(SSL*, int, long, void*) noexcept nogil
    X509_VERIFY_PARAM* (*SSL_get0_param)(SSL*) noexcept nogil
    int (*X509_VERIFY_PARAM_set1_host)(X509_VERIFY_PARAM*, const char*, size_t) noexcept nogil
    int (*X509_VERIFY_PARAM_set1_ip)(X509_VERIFY_PARAM*, const unsigned char*, size_t) noexcept nogil
    const char* (*X509_verify_cert_error_string)(long) noexcept nogil
    const char* (*ERR_reason_error_string)(unsigned long) noexcept nogil
