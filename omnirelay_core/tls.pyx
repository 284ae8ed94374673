# TLS termination in the core: OpenSSL driven through memory BIOs, between the TCP
# transport (ciphertext) and the core's connections (plaintext), with no Python ssl
# object on the way. Records are decrypted straight into the connection's pooled slab
# and a response is encrypted in one SSL_write and handed to the transport as one bytes.
#
# Certificates, versions, ciphers, ALPN and client verification stay where the config
# builds them: in ssl.SSLContext objects (omnirelay.runtime.tls). A connection starts on
# the listener's front context's SSL_CTX; the server-name callback asks the listener which
# context the current config wants for that name (or to refuse, when its material has
# expired) and switches to it, as uvloop's SSLProtocol path does through sni_callback.
import asyncio
import ipaddress
import logging
import ssl as _ssl_module

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t

from omnirelay_core.includes.openssl cimport *
from omnirelay_core.connection cimport Connection

_log = logging.getLogger("omnirelay.tls")

cdef OpenSSLApi api
cdef str _unavailable = "not resolved yet"

# In the order of OpenSSLApi's fields (includes/openssl.pxd); a tuple entry lists the
# names one function has had across OpenSSL versions.
_FUNCTIONS = (
    "SSL_new", "SSL_free", "SSL_set_bio", "SSL_set_accept_state", "SSL_do_handshake",
    "SSL_read", "SSL_write", "SSL_shutdown", "SSL_get_error", "SSL_pending",
    "SSL_get0_alpn_selected", "SSL_get_servername", "SSL_set_SSL_CTX", "SSL_get_SSL_CTX",
    "SSL_set_ex_data", "SSL_get_ex_data",
    ("SSL_get1_peer_certificate", "SSL_get_peer_certificate"),
    "SSL_get_verify_result", "SSL_get_version", "SSL_get_current_cipher",
    "SSL_CIPHER_get_name", "SSL_CIPHER_get_bits", "SSL_CTX_ctrl", "SSL_CTX_callback_ctrl",
    "SSL_CTX_get_options", "SSL_CTX_get_verify_mode", "BIO_s_mem", "BIO_new", "BIO_write",
    "BIO_read", "BIO_ctrl", "i2d_X509", "X509_free", "ERR_get_error", "ERR_error_string_n",
    "ERR_clear_error", "SSL_set_connect_state", "SSL_ctrl", "SSL_get0_param",
    "X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_set1_ip", "X509_verify_cert_error_string",
    "ERR_reason_error_string",
)


cdef str _resolve():
    """Fill `api` from the libssl/libcrypto that Python's _ssl module is linked with; the
    reason it cannot, or None. ctypes does the dlopen/dlsym so that the extension links no
    libdl (whose symbol versions would raise the wheels' manylinux tag)."""
    import ctypes
    import os
    import _ssl
    cdef void** slots = <void**>&api
    if sizeof(OpenSSLApi) != len(_FUNCTIONS) * sizeof(void*):
        return "OpenSSLApi and _FUNCTIONS disagree"
    path = getattr(_ssl, "__file__", None)    # None: _ssl is built into the interpreter
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD) if path else ctypes.CDLL(None)
    except OSError as e:
        return f"cannot open Python's _ssl module: {e}"
    for i, names in enumerate(_FUNCTIONS):
        address = None
        for name in ((names,) if isinstance(names, str) else names):
            try:    # looked up in _ssl and the libraries it depends on
                address = ctypes.cast(lib[name], ctypes.c_void_p).value
                break
            except AttributeError:
                continue
        if not address:
            return f"{names} is not exported by the OpenSSL of Python's _ssl module"
        slots[i] = <void*><size_t>address
    return None


def unavailable():
    """Why TLS cannot be terminated in the core here (the listener then uses the event
    loop's TLS), or None when it can."""
    return _unavailable


_unavailable = _resolve()


cdef SSL_CTX* _ctx_of(object context) except NULL:
    # CPython's PySSLContext starts with its SSL_CTX* right after the object header; the
    # TlsServer constructor checks this against values the ssl module reports.
    if not isinstance(context, _ssl_module.SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, not {type(context).__name__}")
    return (<SSL_CTX**>((<char*><PyObject*>context) + sizeof(PyObject)))[0]


cdef str _error_text():
    """The oldest queued OpenSSL error, and clear the queue (it is per thread and shared
    with Python's ssl module)."""
    cdef char buf[256]
    cdef unsigned long e = api.ERR_get_error()
    api.ERR_clear_error()
    if e == 0:
        return "protocol error"
    api.ERR_error_string_n(e, buf, sizeof(buf))
    return (<bytes>buf).decode("ascii", "replace")


cdef str _reason_text():
    """The reason of the oldest queued OpenSSL error ("certificate verify failed"), and
    clear the queue."""
    cdef unsigned long e = api.ERR_get_error()
    cdef const char* text = api.ERR_reason_error_string(e) if e else NULL
    api.ERR_clear_error()
    return "handshake failed" if text == NULL else (<bytes>text).decode("ascii", "replace")


cdef int _on_server_name(SSL* s, int* alert, void* arg) noexcept with gil:
    # Every ClientHello, with or without SNI: the current config's context for that name.
    cdef void* owner = api.SSL_get_ex_data(s, 0)
    cdef const char* name
    cdef TlsProtocol proto
    if owner == NULL:
        alert[0] = SSL_AD_INTERNAL_ERROR
        return SSL_TLSEXT_ERR_ALERT_FATAL
    proto = <TlsProtocol>owner
    try:
        name = api.SSL_get_servername(s, TLSEXT_NAMETYPE_host_name)
        server_name = None if name == NULL else (<bytes>name).decode("latin-1")
        context = proto.server.select(server_name)
        if context is None:
            alert[0] = SSL_AD_INTERNAL_ERROR
            return SSL_TLSEXT_ERR_ALERT_FATAL
        if context is not proto.server.front:
            api.SSL_set_SSL_CTX(s, _ctx_of(context))
        proto.context = context
        return SSL_TLSEXT_ERR_OK
    except BaseException:
        _log.exception("TLS server name selection failed")
        alert[0] = SSL_AD_INTERNAL_ERROR
        return SSL_TLSEXT_ERR_ALERT_FATAL


_VERIFY_MODES = {0: _ssl_module.CERT_NONE, 1: _ssl_module.CERT_OPTIONAL,
                 3: _ssl_module.CERT_REQUIRED}


cdef int _check_context(object context, SSL_CTX* ctx) except -1:
    # The pointer and the functions must be the ssl module's own: compare what both report
    # for this context before driving it.
    cdef long min_version = api.SSL_CTX_ctrl(ctx, SSL_CTRL_GET_MIN_PROTO_VERSION, 0, NULL)
    if (api.SSL_CTX_get_options(ctx) != <uint64_t>context.options
            or _VERIFY_MODES.get(api.SSL_CTX_get_verify_mode(ctx)) != context.verify_mode
            or (min_version > 0 and min_version != context.minimum_version)):
        raise RuntimeError("TLS in the core is unavailable: the ssl module's context does "
                           "not have the expected layout")
    if context.keylog_filename is not None or getattr(context, "_msg_callback", None):
        # Those callbacks expect Python's own SSL objects.
        raise RuntimeError("TLS in the core does not support keylog_filename or "
                           "_msg_callback on the context")
    return 0


cdef class TlsServer:

    def __init__(self, front, select, double handshake_timeout=10.0):
        if _unavailable is not None:
            raise RuntimeError(f"TLS in the core is unavailable: {_unavailable}")
        cdef SSL_CTX* ctx = _ctx_of(front)
        _check_context(front, ctx)
        self.front = front
        self.select = select
        self.handshake_timeout = handshake_timeout
        self.front_ctx = ctx
        api.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
                                  <generic_cb_t>_on_server_name)
        api.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, NULL)

    def protocol(self, Connection app):
        """A TlsProtocol for a new TCP connection, serving `app` once the handshake is done."""
        cdef TlsProtocol p = TlsProtocol.__new__(TlsProtocol)
        p.server = self
        p.app = app
        return p


cdef class TlsClient:

    def __init__(self, context):
        if _unavailable is not None:
            raise RuntimeError(f"TLS in the core is unavailable: {_unavailable}")
        cdef SSL_CTX* ctx = _ctx_of(context)
        _check_context(context, ctx)
        self.context = context
        self.check_hostname = context.check_hostname
        self.ctx = ctx

    def protocol(self, Connection app, str server_hostname):
        """A TlsProtocol that connects `app` once the handshake with `server_hostname` (SNI
        unless an IP address; verified against the certificate when the context checks host
        names) is done; await its `handshake_done`."""
        cdef TlsProtocol p = TlsProtocol.__new__(TlsProtocol)
        p.client = self
        p.app = app
        p.hostname = server_hostname
        p.handshake_done = asyncio.get_running_loop().create_future()
        # A caller that gave up (its deadline passed) no longer awaits the outcome.
        p.handshake_done.add_done_callback(_outcome_seen)
        return p


def _outcome_seen(future):
    if not future.cancelled():
        future.exception()


def _handshake_error(str reason, long verify_result):
    """The ssl module's exception for a failed client handshake, with its attributes."""
    cdef const char* text
    if verify_result != X509_V_OK:
        text = api.X509_verify_cert_error_string(verify_result)
        message = "unknown" if text == NULL else (<bytes>text).decode("ascii", "replace")
        exc = _ssl_module.SSLCertVerificationError(1, f"certificate verify failed: {message}")
        exc.reason = "CERTIFICATE_VERIFY_FAILED"
        exc.verify_message = message
        exc.verify_code = verify_result
        return exc
    exc = _ssl_module.SSLError(1, reason)
    exc.reason = reason
    return exc


cdef enum:
    ST_HANDSHAKE = 0
    ST_OPEN = 1
    ST_CLOSED = 2
    MAX_IO = 1 << 30

# Ciphertext lands here and goes into the connection's read BIO at once, so one buffer
# serves every connection of the worker.
cdef bytearray _rx = bytearray(256 * 1024)
cdef object _rx_view = memoryview(_rx)


cdef class TlsProtocol:

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        if self.ssl != NULL:
            api.SSL_free(self.ssl)      # and both BIOs
            self.ssl = NULL
            self.rbio = self.wbio = NULL

    # ------------------------------------------------------------ TCP side (ciphertext)
    def connection_made(self, transport):
        cdef SSL* s = api.SSL_new(self.server.front_ctx if self.server is not None
                                  else self.client.ctx)
        self.transport = transport
        self._twrite = transport.write
        if s == NULL:
            _log.error("cannot start a TLS connection: %s", _error_text())
            self.state = ST_CLOSED
            transport.abort()
            return
        self.ssl = s
        self.rbio = api.BIO_new(api.BIO_s_mem())
        self.wbio = api.BIO_new(api.BIO_s_mem())
        if self.rbio == NULL or self.wbio == NULL:
            _log.error("cannot start a TLS connection: %s", _error_text())
            self.state = ST_CLOSED
            transport.abort()
            return
        # An empty read BIO means "wait for more", not end of stream.
        api.BIO_ctrl(self.rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL)
        api.BIO_ctrl(self.wbio, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL)
        api.SSL_set_bio(s, self.rbio, self.wbio)
        if self.client is not None:
            self.context = self.client.context
            api.SSL_set_connect_state(s)
            try:
                self.client_names()
            except ValueError as exc:
                self.handshake_done.set_exception(_handshake_error(str(exc), X509_V_OK))
                self.state = ST_CLOSED
                transport.abort()
                return
            self.handshake()        # the ClientHello
            return
        api.SSL_set_ex_data(s, 0, <void*>self)    # for _on_server_name
        api.SSL_set_accept_state(s)
        if self.server.handshake_timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(
                self.server.handshake_timeout, self._handshake_expired)
        self.context = self.server.front

    cdef int client_names(self) except -1:
        # As the ssl module does: SNI for a DNS name only; the name or the IP address is
        # what the certificate must match when the context checks host names.
        cdef bytes packed = None
        cdef bytes name = self.hostname.encode("idna")
        try:
            packed = ipaddress.ip_address(self.hostname).packed
        except ValueError:
            api.SSL_ctrl(self.ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                         <char*>name)
        if not self.client.check_hostname:
            return 0
        if packed is not None:
            ok = api.X509_VERIFY_PARAM_set1_ip(api.SSL_get0_param(self.ssl),
                                               <const unsigned char*>packed, len(packed))
        else:
            ok = api.X509_VERIFY_PARAM_set1_host(api.SSL_get0_param(self.ssl), name, len(name))
        if not ok:
            raise ValueError(f"cannot verify the host name {self.hostname!r}: {_error_text()}")
        return 0

    def get_buffer(self, Py_ssize_t sizehint):
        return _rx_view

    def buffer_updated(self, Py_ssize_t nbytes):
        if self.ssl == NULL or self.state == ST_CLOSED:
            return
        api.BIO_write(self.rbio, PyByteArray_AS_STRING(_rx), <int>nbytes)
        self.process()

    def data_received(self, data):     # a loop without BufferedProtocol support
        if self.ssl == NULL or self.state == ST_CLOSED:
            return
        api.BIO_write(self.rbio, PyBytes_AS_STRING(data), <int>PyBytes_GET_SIZE(data))
        self.process()

    def eof_received(self):
        if self.app_connected and self.state == ST_OPEN:
            return self.app.eof_received()   # a FIN without close_notify: the app decides
        return False

    def connection_lost(self, exc):
        self.state = ST_CLOSED
        if self.handshake_done is not None and not self.handshake_done.done():
            self.handshake_done.set_exception(exc or ConnectionResetError(
                "the connection closed during the TLS handshake"))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.release()
        if self.app_connected:
            self.app_connected = False
            self.app.connection_lost(exc)

    def pause_writing(self):
        if self.app_connected:
            self.app.pause_writing()

    def resume_writing(self):
        if self.app_connected:
            self.app.resume_writing()

    def _handshake_expired(self):
        self.timer = None
        if self.state == ST_HANDSHAKE:
            self.server.handshake_timeouts += 1
            self.state = ST_CLOSED
            self.transport.abort()

    # ------------------------------------------------------------ the record layer
    cdef int process(self) except -1:
        if self.state == ST_HANDSHAKE:
            self.handshake()
        if self.state == ST_OPEN and not self.app_paused:
            self.read_records()
        return 0

    cdef int handshake(self) except -1:
        cdef int r = api.SSL_do_handshake(self.ssl)
        cdef int err
        if r == 1:
            self.state = ST_OPEN
            if self.server is not None:
                self.server.handshakes += 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.flush()        # the last flight (and a server's session tickets)
            self.app_connected = True
            self.app.connection_made(self)
            if self.handshake_done is not None and not self.handshake_done.done():
                self.handshake_done.set_result(None)
            return 0
        err = api.SSL_get_error(self.ssl, r)
        if err == SSL_ERROR_WANT_READ:
            self.flush()
            return 0
        if self.server is not None:
            self.server.handshake_failures += 1
        if self.handshake_done is not None and not self.handshake_done.done():
            self.handshake_done.set_exception(_handshake_error(
                _reason_text(), api.SSL_get_verify_result(self.ssl)))
        self.fail("handshake")
        return 0

    cdef int read_records(self) except -1:
        cdef Connection app
        cdef Py_ssize_t room
        cdef char* p
        cdef int n, err
        while self.state == ST_OPEN and not self.app_paused:
            if api.SSL_pending(self.ssl) == 0 and \
                    api.BIO_ctrl(self.rbio, BIO_CTRL_PENDING, 0, NULL) == 0:
                break       # nothing buffered: no slab to take and give back
            app = self.app
            p = app.read_space(&room)
            n = api.SSL_read(self.ssl, p, <int>(room if room < MAX_IO else MAX_IO))
            if n > 0:
                app.received(n)
                continue
            err = api.SSL_get_error(self.ssl, n)
            if app.end == 0:
                app.consumed_all()      # the slab goes back to the pool
            if err == SSL_ERROR_WANT_READ:
                break
            if err == SSL_ERROR_ZERO_RETURN:        # close_notify
                self.flush()
                if not self.app.eof_received():
                    self.close()
                break
            self.fail("read")
        self.flush()
        return 0

    cdef int flush(self) except -1:
        # Whatever OpenSSL wrote (records, alerts, tickets) goes out as one bytes.
        cdef long n
        if self.wbio == NULL:
            return 0
        n = api.BIO_ctrl(self.wbio, BIO_CTRL_PENDING, 0, NULL)
        if n <= 0:
            return 0
        data = PyBytes_FromStringAndSize(NULL, n)
        api.BIO_read(self.wbio, PyBytes_AS_STRING(data), <int>n)
        self._twrite(data)
        return 0

    cdef int fail(self, str what) except -1:
        reason = _error_text()
        _log.debug("TLS %s failed with %s: %s", what,
                   self.transport.get_extra_info("peername"), reason)
        self.flush()            # the alert, if OpenSSL wrote one
        self.state = ST_CLOSED
        self.transport.close()
        return 0

    cdef int encrypt(self, const char* p, Py_ssize_t n) except -1:
        cdef int chunk, r
        while n > 0:
            chunk = <int>(n if n < MAX_IO else MAX_IO)
            r = api.SSL_write(self.ssl, p, chunk)
            if r <= 0:
                self.fail("write")
                return 0
            p += r
            n -= r
        return 0

    # ------------------------------------------------------------ app side (plaintext)
    def write(self, data):
        cdef Py_buffer view
        if self.state != ST_OPEN:
            return
        if type(data) is bytes:
            self.encrypt(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self.encrypt(<const char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        self.flush()

    def writelines(self, chunks):
        self.write(b"".join(chunks))

    def write_eof(self):
        raise NotImplementedError("a TLS connection cannot half-close")

    def can_write_eof(self):
        return False

    def close(self):
        if self.state == ST_CLOSED:
            return
        if self.state == ST_OPEN and self.ssl != NULL:
            api.SSL_shutdown(self.ssl)     # close_notify
            api.ERR_clear_error()
            self.flush()
        self.state = ST_CLOSED
        self.transport.close()

    def abort(self):
        self.state = ST_CLOSED
        self.transport.abort()

    def is_closing(self):
        return self.state == ST_CLOSED or self.transport.is_closing()

    def pause_reading(self):
        if not self.app_paused:
            self.app_paused = True
            self.transport.pause_reading()

    def resume_reading(self):
        if not self.app_paused:
            return
        self.app_paused = False
        self.transport.resume_reading()
        # Records already received wait in OpenSSL: read them on the next loop turn, not
        # inside the app's own call.
        if self.state == ST_OPEN and not self.resume_scheduled and self.ssl != NULL and (
                api.SSL_pending(self.ssl) > 0
                or api.BIO_ctrl(self.rbio, BIO_CTRL_PENDING, 0, NULL) > 0):
            self.resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self):
        self.resume_scheduled = False
        if self.state == ST_OPEN and not self.app_paused:
            self.read_records()

    def is_reading(self):
        return not self.app_paused and self.transport.is_reading()

    def set_write_buffer_limits(self, high=None, low=None):
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self.transport.get_write_buffer_limits()

    def get_write_buffer_size(self):
        return self.transport.get_write_buffer_size()

    def set_protocol(self, Connection protocol):
        self.app = protocol

    def get_protocol(self):
        return self.app

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            if self.info is None:
                self.info = TlsInfo(self)
            return self.info
        if name == "sslcontext":
            return self.context
        if name == "peercert":
            return self.get_extra_info("ssl_object").getpeercert()
        if name == "cipher":
            return self.get_extra_info("ssl_object").cipher()
        return self.transport.get_extra_info(name, default)


cdef class TlsInfo:
    """The `ssl_object` extra info of a core TLS connection: the parts of ssl.SSLObject's
    interface that code reading a connection's TLS state uses."""
    cdef TlsProtocol proto

    def __init__(self, TlsProtocol proto):
        self.proto = proto

    @property
    def context(self):
        return self.proto.context

    @property
    def server_side(self):
        return self.proto.server is not None

    @property
    def server_hostname(self):
        return self.proto.hostname

    def selected_alpn_protocol(self):
        cdef const unsigned char* p = NULL
        cdef unsigned int n = 0
        if self.proto.ssl == NULL:
            return None
        api.SSL_get0_alpn_selected(self.proto.ssl, &p, &n)
        return None if p == NULL or n == 0 else (<const char*>p)[:n].decode("ascii", "replace")

    def version(self):
        if self.proto.ssl == NULL or self.proto.state == ST_HANDSHAKE:
            return None
        return (<bytes>api.SSL_get_version(self.proto.ssl)).decode()

    def cipher(self):
        cdef const SSL_CIPHER* c
        cdef int bits
        if self.proto.ssl == NULL:
            return None
        c = api.SSL_get_current_cipher(self.proto.ssl)
        if c == NULL:
            return None
        bits = api.SSL_CIPHER_get_bits(c, NULL)
        return ((<bytes>api.SSL_CIPHER_get_name(c)).decode(),
                (<bytes>api.SSL_get_version(self.proto.ssl)).decode(), bits)

    def getpeercert(self, binary_form=False):
        """As ssl.SSLObject.getpeercert: None without a peer certificate, {} when it was
        not verified, else the DER (binary_form) or a dict in the ssl module's shape."""
        cdef SSL* s = self.proto.ssl
        cdef X509* x
        cdef int n
        cdef unsigned char* out
        if s == NULL:
            return None
        x = api.SSL_get_peer_certificate(s)
        if x == NULL:
            return None
        try:
            n = api.i2d_X509(x, NULL)
            if n <= 0:
                api.ERR_clear_error()
                return None
            der = PyBytes_FromStringAndSize(NULL, n)
            out = <unsigned char*>PyBytes_AS_STRING(der)
            api.i2d_X509(x, &out)
        finally:
            api.X509_free(x)
        if binary_form:
            return der
        if api.SSL_CTX_get_verify_mode(api.SSL_get_SSL_CTX(s)) == SSL_VERIFY_NONE:
            return {}
        return _decode_certificate(der)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _decode_certificate(bytes der):
    """The dict ssl.SSLObject.getpeercert() returns, from a DER certificate."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)

    def name(n):
        return tuple(tuple((getattr(a.oid, "_name", a.oid.dotted_string), a.value)
                           for a in rdn) for rdn in n.rdns)

    def when(t):
        return f"{_MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S} {t.year} GMT"

    serial = f"{cert.serial_number:X}"
    out = {"subject": name(cert.subject), "issuer": name(cert.issuer),
           "version": cert.version.value + 1,
           "serialNumber": ("0" + serial) if len(serial) % 2 else serial,
           "notBefore": when(cert.not_valid_before_utc),
           "notAfter": when(cert.not_valid_after_utc)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return out
    names = []
    for entry in san:
        if isinstance(entry, x509.DNSName):
            names.append(("DNS", entry.value))
        elif isinstance(entry, x509.UniformResourceIdentifier):
            names.append(("URI", entry.value))
        elif isinstance(entry, x509.IPAddress):
            ip = entry.value
            names.append(("IP Address", str(ip) if ip.version == 4 else ":".join(
                f"{int.from_bytes(ip.packed[i:i + 2], 'big'):X}" for i in range(0, 16, 2))))
        elif isinstance(entry, x509.RFC822Name):
            names.append(("email", entry.value))
    out["subjectAltName"] = tuple(names)
    return out
