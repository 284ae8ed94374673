# The ClientHello parser behind tls_passthrough listeners, the table that maps
# server names to clusters, and the ALPN result of a terminated TLS connection.
#
# RFC 8446 section 4.1.2 (ClientHello), RFC 6066 section 3 (server_name). The
# parser never allocates and never reads past `n`; a ClientHello split over
# several handshake records is reassembled into a stack buffer.
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy, memcmp


# ---------------------------------------------------------------- parser

cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef int _server_name(const unsigned char* d, Py_ssize_t n, unsigned char* name,
                      Py_ssize_t* name_len) noexcept nogil:
    """The first host_name of a server_name extension body."""
    cdef Py_ssize_t pos = 2, end, l, i
    cdef unsigned char c
    cdef unsigned int kind
    if n == 0:
        return HELLO_NO_SNI     # an empty extension (what servers echo): no name
    if n < 2:
        return HELLO_MALFORMED
    end = 2 + _u16(d)
    if end != n:
        return HELLO_MALFORMED
    while pos < end:
        if pos + 3 > end:
            return HELLO_MALFORMED
        kind = d[pos]
        l = _u16(d + pos + 1)
        pos += 3
        if pos + l > end:
            return HELLO_MALFORMED
        if kind == 0:
            # host_name: ASCII, no trailing dot (we drop one anyway), lowercased for matching.
            if l == 0 or l > SNI_MAX_NAME:
                return HELLO_MALFORMED
            for i in range(l):
                c = d[pos + i]
                if c <= 0x20 or c >= 0x7f:
                    return HELLO_MALFORMED
                if 0x41 <= c <= 0x5a:
                    c += 0x20
                name[i] = c
            if name[l - 1] == 0x2e:
                l -= 1
                if l == 0:
                    return HELLO_MALFORMED
            name_len[0] = l
            return HELLO_SNI
        pos += l
    return HELLO_NO_SNI


cdef int _client_hello_body(const unsigned char* b, Py_ssize_t n, unsigned char* name,
                            Py_ssize_t* name_len) noexcept nogil:
    cdef Py_ssize_t pos, end, l
    cdef unsigned int ext
    cdef int r, found = HELLO_NO_SNI
    cdef bint seen = False
    # legacy_version (2) + random (32)
    if n < 34:
        return HELLO_MALFORMED
    if b[0] != 3:
        return HELLO_MALFORMED
    pos = 34
    # legacy_session_id <0..32>
    if pos + 1 > n:
        return HELLO_MALFORMED
    l = b[pos]
    pos += 1
    if l > 32 or pos + l > n:
        return HELLO_MALFORMED
    pos += l
    # cipher_suites <2..2^16-2>
    if pos + 2 > n:
        return HELLO_MALFORMED
    l = _u16(b + pos)
    pos += 2
    if l < 2 or l & 1 or pos + l > n:
        return HELLO_MALFORMED
    pos += l
    # legacy_compression_methods <1..2^8-1>
    if pos + 1 > n:
        return HELLO_MALFORMED
    l = b[pos]
    pos += 1
    if l < 1 or pos + l > n:
        return HELLO_MALFORMED
    pos += l
    if pos == n:
        return HELLO_NO_SNI     # no extensions at all (SSL 3.0 style)
    # extensions <8..2^16-1>
    if pos + 2 > n:
        return HELLO_MALFORMED
    l = _u16(b + pos)
    pos += 2
    if pos + l != n:
        return HELLO_MALFORMED
    end = pos + l
    while pos < end:
        if pos + 4 > end:
            return HELLO_MALFORMED
        ext = _u16(b + pos)
        l = _u16(b + pos + 2)
        pos += 4
        if pos + l > end:
            return HELLO_MALFORMED
        if ext == 0:
            if seen:
                return HELLO_MALFORMED      # one extension of a type (RFC 8446 4.2)
            seen = True
            r = _server_name(b + pos, l, name, name_len)
            if r == HELLO_MALFORMED:
                return r
            found = r
        pos += l
    return found


cdef int client_hello_sni(const unsigned char* p, Py_ssize_t n, unsigned char* name,
                          Py_ssize_t* name_len) noexcept nogil:
    """Look for a whole ClientHello at the start of `p[:n]` (what a client sent first)
    and copy its SNI host name, lowercased, into `name` (SNI_MAX_NAME bytes).
    Returns one of the HELLO_* codes; HELLO_NEED_MORE until the message is complete."""
    cdef unsigned char buf[HELLO_MAX_MESSAGE]
    cdef Py_ssize_t pos = 0, have = 0, rec, need = -1, take
    cdef const unsigned char* payload
    name_len[0] = 0
    if n < 1:
        return HELLO_NEED_MORE
    if p[0] != 22:
        return HELLO_NOT_TLS
    if n >= 2 and p[1] != 3:
        return HELLO_NOT_TLS
    if n >= 3 and p[2] > 4:
        return HELLO_NOT_TLS
    if n < 5:
        return HELLO_NEED_MORE
    rec = _u16(p + 3)
    if rec == 0 or rec > HELLO_MAX_MESSAGE:
        return HELLO_MALFORMED
    # Common case: the whole message sits in the first record; parse it in place.
    if n >= 5 + rec and rec >= 4:
        payload = p + 5
        if payload[0] != 1:
            return HELLO_MALFORMED          # the first handshake message must be ClientHello
        need = (<Py_ssize_t>payload[1] << 16) | (<Py_ssize_t>payload[2] << 8) | payload[3]
        if need + 4 > HELLO_MAX_MESSAGE:
            return HELLO_MALFORMED
        if need + 4 <= rec:
            return _client_hello_body(payload + 4, need, name, name_len)
        need = -1
    # Otherwise gather the handshake fragments of consecutive records.
    while pos < n:
        if pos + 5 > n:
            return HELLO_NEED_MORE
        if p[pos] != 22 or p[pos + 1] != 3:
            return HELLO_MALFORMED
        rec = _u16(p + pos + 3)
        if rec == 0 or rec > HELLO_MAX_MESSAGE:
            return HELLO_MALFORMED
        if pos + 5 + rec > n:
            return HELLO_NEED_MORE
        take = rec
        if have + take > HELLO_MAX_MESSAGE:
            take = HELLO_MAX_MESSAGE - have
        memcpy(buf + have, p + pos + 5, take)
        have += take
        pos += 5 + rec
        if need < 0 and have >= 4:
            if buf[0] != 1:
                return HELLO_MALFORMED
            need = (<Py_ssize_t>buf[1] << 16) | (<Py_ssize_t>buf[2] << 8) | buf[3]
            if need + 4 > HELLO_MAX_MESSAGE:
                return HELLO_MALFORMED
        if need >= 0 and have >= need + 4:
            return _client_hello_body(buf + 4, need, name, name_len)
        if take < rec:
            return HELLO_MALFORMED
    return HELLO_NEED_MORE


_STATUS = {HELLO_NEED_MORE: "need_more", HELLO_SNI: "sni", HELLO_NO_SNI: "no_sni",
           HELLO_NOT_TLS: "not_tls", HELLO_MALFORMED: "malformed"}


def parse_client_hello(data):
    """(status, server_name) for the first bytes a client sent: status is "need_more",
    "sni", "no_sni", "not_tls" or "malformed"; server_name is the lowercased SNI host
    name for "sni", else None. The Python face of the parser the L4 listener runs."""
    cdef const unsigned char[:] view = memoryview(bytes(data)).cast("B")
    cdef unsigned char name[SNI_MAX_NAME]
    cdef Py_ssize_t nlen = 0
    cdef int r
    cdef Py_ssize_t n = view.shape[0]
    if n == 0:
        r = HELLO_NEED_MORE
    else:
        r = client_hello_sni(&view[0], n, name, &nlen)
    if r == HELLO_SNI:
        return _STATUS[r], PyBytes_FromStringAndSize(<char*>name, nlen).decode("ascii")
    return _STATUS[r], None


# ---------------------------------------------------------------- routes

cdef class SniTable:

    def __init__(self, entries):
        """`entries`: (server_names, target) pairs in match order; names are exact DNS
        names, '*.suffix' or '*'."""
        cdef list built = []
        self._exact = []
        self._suffix = []
        self._any = []
        for names, target in entries:
            names = tuple(n.lower() for n in names)
            built.append((names, target))
            self._exact.append(frozenset(n.encode("ascii") for n in names
                                         if not n.startswith("*")))
            self._suffix.append(tuple(n[1:].encode("ascii") for n in names
                                      if n.startswith("*.")))
            self._any.append("*" in names)
        self.entries = tuple(built)

    cdef object lookup(self, const unsigned char* name, Py_ssize_t n):
        """The target for a lowercased server name (NULL: no SNI), or None."""
        cdef Py_ssize_t i, k
        cdef bytes key = None
        cdef bytes suf
        if name != NULL:
            key = PyBytes_FromStringAndSize(<const char*>name, n)
        for i in range(len(self.entries)):
            if self._any[i]:
                return self.entries[i][1]
            if key is None:
                continue
            if key in <frozenset>self._exact[i]:
                return self.entries[i][1]
            for suf in <tuple>self._suffix[i]:
                k = len(suf)
                if n > k and memcmp(name + n - k, PyBytes_AS_STRING(suf), k) == 0:
                    return self.entries[i][1]
        return None

    def match(self, server_name):
        """The target routed for `server_name` (str, or None for a ClientHello
        without SNI), or None when no route matches."""
        cdef bytes b
        if server_name is None:
            return self.lookup(NULL, 0)
        b = server_name.lower().rstrip(".").encode("ascii")
        return self.lookup(<const unsigned char*>PyBytes_AS_STRING(b), len(b))

    def __len__(self):
        return len(self.entries)


# ---------------------------------------------------------------- ALPN

cpdef str negotiated_alpn(object transport):
    """The ALPN protocol a TLS transport agreed on ("h2", "http/1.1"), or None for
    plaintext or when the client offered none. Complete by connection_made: both
    uvloop and asyncio finish the handshake before calling it."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.selected_alpn_protocol()
