# The compiled route table the core executes: Python builds RouteEntry objects
# once per config; matching compares C bytes and creates no Python objects.
from libc.string cimport memcmp
from omnirelay_core.headers cimport HeaderMap, ascii_ieq
from omnirelay_core.upstream cimport Cluster
from omnirelay_core.filterchain cimport FilterChain


cdef bytes _host_bytes(str host):
    # Internationalized names are matched in their ASCII (punycode) form, as sent on the wire.
    host = host.lower()
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        name, sep, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        return (name or host).encode("idna") + (sep + port).encode("ascii")


_RETRY_ON = {"5xx": RETRY_5XX, "gateway-error": RETRY_GATEWAY_ERROR,
             "connect-failure": RETRY_CONNECT_FAILURE, "reset": RETRY_RESET,
             "retriable-status-codes": RETRY_STATUS_CODES}


cdef class RouteEntry:

    def __init__(self, str name, Cluster cluster, *, double timeout=15.0,
                 double per_try_timeout=0.0, Py_ssize_t max_request_body=-1,
                 FilterChain chain=None, hosts=("*",), bytes path=b"/",
                 bint path_exact=False, headers=(), retry_on=(), int num_retries=0,
                 retriable_status_codes=(), double retry_base_interval=0.025,
                 double retry_max_interval=0.25, double retry_budget_percent=20.0,
                 int retry_min_concurrency=3):
        self.name = name
        self.retry_on = 0
        for cond in retry_on:
            self.retry_on |= _RETRY_ON[cond]
        self.num_retries = num_retries if self.retry_on else 0
        self.retriable_status_codes = tuple(int(c) for c in retriable_status_codes)
        self.retry_base_interval = retry_base_interval
        self.retry_max_interval = retry_max_interval
        self.retry_budget_percent = retry_budget_percent
        self.retry_min_concurrency = retry_min_concurrency
        self.cluster = cluster
        self.timeout = timeout
        self.per_try_timeout = per_try_timeout
        self.max_request_body = max_request_body
        self.chain = chain if chain is not None and not chain.empty else None
        self.any_host = "*" in hosts
        self.hosts_exact = tuple(_host_bytes(h) for h in hosts if not h.startswith("*"))
        # "*.example.com" matches any host ending in ".example.com".
        self.hosts_suffix = tuple(b"." + _host_bytes(h[2:]) for h in hosts if h.startswith("*."))
        self.path = path
        self.path_exact = path_exact
        self.header_names = tuple(n.lower().encode("latin-1") for n, _ in headers)
        self.header_values = tuple(v.encode("latin-1") for _, v in headers)

    cdef bint matches(self, const char* host, Py_ssize_t hl, const char* path,
                      Py_ssize_t pl, HeaderMap headers) noexcept:
        cdef Py_ssize_t n, i, j, hl_noport
        cdef bytes b
        cdef bint ok
        # path (without the query string)
        n = len(self.path)
        if self.path_exact:
            if pl != n or memcmp(path, <const char*>self.path, n) != 0:
                return False
        elif pl < n or memcmp(path, <const char*>self.path, n) != 0:
            return False
        # host
        if not self.any_host:
            hl_noport = hl
            for i in range(hl - 1, -1, -1):
                if host[i] == 58:       # ':' port separator (not inside IPv6 brackets)
                    hl_noport = i
                    break
                if host[i] == 93:       # ']'
                    break
            ok = False
            for b in self.hosts_exact:
                n = len(b)
                if (n == hl or n == hl_noport) and ascii_ieq(host, <const char*>b, n):
                    ok = True
                    break
            if not ok:
                for b in self.hosts_suffix:
                    n = len(b)
                    if hl_noport > n and ascii_ieq(host + hl_noport - n, <const char*>b, n):
                        ok = True
                        break
            if not ok:
                return False
        # headers: every listed header must have a value equal to the expected one
        for j in range(len(self.header_names)):
            b = <bytes>self.header_names[j]
            i = headers.find(<const char*>b, len(b), 0)
            ok = False
            b = <bytes>self.header_values[j]
            while i >= 0:
                if headers.entries[i].value_len == len(b) and memcmp(
                        headers.value_at(i), <const char*>b, len(b)) == 0:
                    ok = True
                    break
                i = headers.find(<const char*>self.header_names[j], len(<bytes>self.header_names[j]), i + 1)
            if not ok:
                return False
        return True

    def __repr__(self):
        return f"RouteEntry({self.name!r} -> {self.cluster.name!r})"


cdef class RouteTable:
    """First match wins, in the order the entries were given."""

    def __init__(self, entries):
        self.entries = tuple(entries)

    cdef RouteEntry match(self, const char* host, Py_ssize_t hl, const char* path,
                          Py_ssize_t pl, HeaderMap headers):
        cdef RouteEntry e
        for e in self.entries:
            if e.matches(host, hl, path, pl, headers):
                return e
        return None

    def match_request(self, host, path, headers=None):
        """Python entry point for tests and the admin API."""
        cdef bytes h = host.encode("latin-1")
        cdef bytes p = path.split("?", 1)[0].encode("latin-1")
        cdef HeaderMap hm = headers if isinstance(headers, HeaderMap) else HeaderMap.from_items(headers or [])
        return self.match(h, len(h), p, len(p), hm)
