# llhttp bound at C level: every callback is a C function that appends bytes to
# C structures or calls a cdef method on the owning connection; exceptions are
# stored on the parser and llhttp is told HPE_USER (the httptools pattern).
from cpython.bytes cimport PyBytes_FromStringAndSize
from omnirelay_core.includes.llhttp cimport *
from omnirelay_core.headers cimport HeaderMap
from omnirelay_core.buffers cimport ByteBuilder

from omnirelay_core.errors import BadRequest, HeadersTooLarge


cdef llhttp_settings_t _settings


cdef class Http1Events:
    cdef int on_message_begin(self) except -1:
        return 0

    cdef int on_headers_complete(self) except -1:
        return 0

    cdef int on_body(self, const char* at, size_t n) except -1:
        return 0

    cdef int on_message_complete(self) except -1:
        return 0


cdef class Http1Parser:
    """One llhttp parser for the request or response direction of a connection."""

    def __cinit__(self, Http1Events owner, bint is_request, Py_ssize_t max_header_bytes=65536):
        self.owner = owner
        self.is_request = is_request
        self.headers = HeaderMap()
        self.trailers = HeaderMap()
        self._target = self.headers
        self.url = ByteBuilder(256)
        self.max_header_bytes = max_header_bytes
        self.too_large_exc = HeadersTooLarge
        llhttp_init(&self.p, HTTP_REQUEST if is_request else HTTP_RESPONSE, &_settings)
        self.p.data = <void*>self

    cdef void reset(self) noexcept:
        self.headers.clear()
        self.trailers.clear()
        self._target = self.headers
        self.url.length = 0
        self.header_bytes = 0
        self.in_body = False

    cdef int execute(self, const char* data, size_t n, size_t* consumed) except -1:
        """Feed bytes. Returns the llhttp errno (HPE_OK, HPE_PAUSED,
        HPE_PAUSED_UPGRADE); raises the stored callback exception or BadRequest."""
        cdef llhttp_errno_t err = llhttp_execute(&self.p, data, n)
        cdef object exc
        if err == HPE_OK:
            consumed[0] = n
            return err
        consumed[0] = <size_t>(llhttp_get_error_pos(&self.p) - data)
        if err == HPE_PAUSED or err == HPE_PAUSED_UPGRADE:
            return err
        # Any callback may have stored an exception (HPE_USER or an HPE_CB_* code).
        exc = self.exc
        self.exc = None
        if exc is not None:
            raise exc
        raise BadRequest(self.error_reason().decode("latin-1", "replace"))

    cdef int finish(self) except -1:
        # End of stream: only legal where the message is close-delimited.
        cdef llhttp_errno_t err = llhttp_finish(&self.p)
        if err != HPE_OK:
            raise BadRequest(self.error_reason().decode("latin-1", "replace"))
        return 0

    cdef void resume(self) noexcept:
        llhttp_resume(&self.p)

    cdef void resume_after_upgrade(self) noexcept:
        llhttp_resume_after_upgrade(&self.p)

    cdef int count_header_bytes(self, size_t n) except -1:
        self.header_bytes += n
        if self.header_bytes > self.max_header_bytes:
            raise self.too_large_exc("header section exceeds %d bytes" % self.max_header_bytes)
        return 0

    cdef bytes error_reason(self):
        cdef const char* r = llhttp_get_error_reason(&self.p)
        cdef const char* name = llhttp_errno_name(llhttp_get_errno(&self.p))
        if r == NULL:
            return <bytes>name
        return <bytes>name + b": " + <bytes>r

    cdef bint should_keep_alive(self) noexcept:
        return llhttp_should_keep_alive(&self.p)

    def feed(self, data):
        """Parse bytes from Python (tests, micro benchmarks): returns
        (bytes consumed, llhttp errno)."""
        cdef bytes b = bytes(data)
        cdef size_t consumed = 0
        cdef int err = self.execute(<const char*>b, len(b), &consumed)
        return consumed, err

    # ---- read-only views for the connection and tests ----
    @property
    def method(self):
        return (<bytes>llhttp_method_name(<llhttp_method_t>self.p.method)).decode()

    @property
    def status_code(self):
        return self.p.status_code

    @property
    def http_version(self):
        return (self.p.http_major, self.p.http_minor)

    @property
    def target(self):
        return PyBytes_FromStringAndSize(self.url.data, self.url.length)

    @property
    def keep_alive(self):
        return bool(llhttp_should_keep_alive(&self.p))


# llhttp aborts on an unknown method number: 0..46 is its whole map in 9.x.
cdef list _METHODS = [(<bytes>llhttp_method_name(<llhttp_method_t>m)) for m in range(47)]


cdef bytes method_bytes(int method):
    return <bytes>_METHODS[method]


cdef inline Http1Parser _parser(llhttp_t* p):
    return <Http1Parser>p.data


cdef int cb_message_begin(llhttp_t* p) noexcept:
    cdef Http1Parser self = _parser(p)
    self.reset()
    try:
        return self.owner.on_message_begin()
    except BaseException as e:
        self.exc = e
        return HPE_USER


cdef int cb_url(llhttp_t* p, const char* at, size_t n) noexcept:
    cdef Http1Parser self = _parser(p)
    try:
        self.count_header_bytes(n)
        self.url.append(at, n)
        return 0
    except BaseException as e:
        self.exc = e
        return HPE_USER


cdef int cb_header_field(llhttp_t* p, const char* at, size_t n) noexcept:
    cdef Http1Parser self = _parser(p)
    try:
        self.count_header_bytes(n)
        self._target.feed_name(at, n)
        return 0
    except BaseException as e:
        self.exc = e
        return HPE_USER


cdef int cb_header_value(llhttp_t* p, const char* at, size_t n) noexcept:
    cdef Http1Parser self = _parser(p)
    try:
        self.count_header_bytes(n)
        self._target.feed_value(at, n)
        return 0
    except BaseException as e:
        self.exc = e
        return HPE_USER


cdef int cb_header_value_complete(llhttp_t* p) noexcept:
    (_parser(p))._target.end_value()
    return 0


cdef int cb_headers_complete(llhttp_t* p) noexcept:
    cdef Http1Parser self = _parser(p)
    self.in_body = True
    self._target = self.trailers
    try:
        return self.owner.on_headers_complete()
    except BaseException as e:
        self.exc = e
        return -1


cdef int cb_body(llhttp_t* p, const char* at, size_t n) noexcept:
    cdef Http1Parser self = _parser(p)
    try:
        return self.owner.on_body(at, n)
    except BaseException as e:
        self.exc = e
        return HPE_USER


cdef int cb_message_complete(llhttp_t* p) noexcept:
    cdef Http1Parser self = _parser(p)
    try:
        return self.owner.on_message_complete()
    except BaseException as e:
        self.exc = e
        return -1


llhttp_settings_init(&_settings)
_settings.on_message_begin = cb_message_begin
_settings.on_url = cb_url
_settings.on_header_field = cb_header_field
_settings.on_header_value = cb_header_value
_settings.on_header_value_complete = cb_header_value_complete
_settings.on_headers_complete = cb_headers_complete
_settings.on_body = cb_body
_settings.on_message_complete = cb_message_complete
