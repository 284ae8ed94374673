# The compiled route table the core executes: Python builds RouteEntry objects
# once per config. Host, path prefix/exact, method and exact header matching
# compare C bytes and create no Python objects; regexes and query parameters
# are the only per-request Python work, and only for routes that use them.
import re
from urllib.parse import parse_qsl

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
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


cdef Py_ssize_t _strip_port(const char* host, Py_ssize_t hl) noexcept:
    cdef Py_ssize_t i
    for i in range(hl - 1, -1, -1):
        if host[i] == 58:       # ':' port separator (not inside IPv6 brackets)
            return i
        if host[i] == 93:       # ']'
            break
    return hl


cdef bytes _lower_bytes(const char* p, Py_ssize_t n):
    cdef bytes b = PyBytes_FromStringAndSize(p, n)
    cdef char* q = PyBytes_AS_STRING(b)
    cdef Py_ssize_t i
    for i in range(n):
        if 65 <= q[i] <= 90:
            q[i] += 32
    return b


_RETRY_ON = {"5xx": RETRY_5XX, "gateway-error": RETRY_GATEWAY_ERROR,
             "connect-failure": RETRY_CONNECT_FAILURE, "reset": RETRY_RESET,
             "retriable-status-codes": RETRY_STATUS_CODES,
             "cancelled": RETRY_GRPC_CANCELLED, "deadline-exceeded": RETRY_GRPC_DEADLINE_EXCEEDED,
             "internal": RETRY_GRPC_INTERNAL, "resource-exhausted": RETRY_GRPC_RESOURCE_EXHAUSTED,
             "unavailable": RETRY_GRPC_UNAVAILABLE}
_MATCH_KINDS = {"exact": MATCH_EXACT, "regex": MATCH_REGEX, "present": MATCH_PRESENT}
_DEFAULT_PORTS = {"http": 80, "https": 443}


cdef class HeaderEdits:

    def __init__(self, remove=(), set=(), add=()):
        self.remove = tuple(n.lower().encode("latin-1") for n in remove)
        self.set_names = tuple(n.lower().encode("latin-1") for n, _ in set)
        self.set_values = tuple(v.encode("latin-1") for _, v in set)
        self.add_names = tuple(n.lower().encode("latin-1") for n, _ in add)
        self.add_values = tuple(v.encode("latin-1") for _, v in add)

    @property
    def empty(self):
        return not (self.remove or self.set_names or self.add_names)

    cdef int apply(self, HeaderMap h) except -1:
        cdef bytes n, v
        cdef Py_ssize_t i
        for n in self.remove:
            h.remove_raw(n, len(n))
        for i in range(len(self.set_names)):
            n = <bytes>self.set_names[i]
            v = <bytes>self.set_values[i]
            h.remove_raw(n, len(n))
            h.add_raw(n, len(n), v, len(v))
        for i in range(len(self.add_names)):
            n = <bytes>self.add_names[i]
            v = <bytes>self.add_values[i]
            h.add_raw(n, len(n), v, len(v))
        return 0

    def apply_to(self, HeaderMap h):
        """Python entry point for tests."""
        self.apply(h)


cdef inline bint _text_matches(int kind, object expected, str value):
    if kind == MATCH_PRESENT:
        return True
    if kind == MATCH_EXACT:
        return value == expected
    return expected.fullmatch(value) is not None


cdef class RouteEntry:

    def __init__(self, str name, Cluster cluster=None, *, weighted=(), direct=None,
                 redirect=None, double timeout=15.0, double per_try_timeout=0.0,
                 Py_ssize_t max_request_body=-1, FilterChain chain=None, hosts=("*",),
                 str path="/", str path_kind="prefix", methods=(), headers=(), query=(),
                 retry_on=(), int num_retries=0, retriable_status_codes=(),
                 double retry_base_interval=0.025, double retry_max_interval=0.25,
                 double retry_budget_percent=20.0, int retry_min_concurrency=3,
                 str prefix_rewrite=None, str regex_rewrite=None, str regex_substitution=None,
                 str host_rewrite=None, bint auto_host=False, HeaderEdits request_edits=None,
                 HeaderEdits response_edits=None, mirrors=(), upstream_stats=None):
        """`headers`: (name, kind, value, invert) with kind "exact" | "regex" | "present";
        `query`: (name, kind, value); `weighted`: (Cluster, weight); `direct`:
        (status, body bytes, [(name, value)]); `redirect`: a dict (code, scheme, host,
        port, path, prefix_rewrite, strip_query); `mirrors`: (Cluster, percent);
        `upstream_stats`: {cluster name: UpstreamStats} to count into (kept across
        reloads by the caller); a cluster missing from it gets a fresh one."""
        cdef unsigned long long total = 0
        self.name = name
        if direct is not None:
            self.action = ACTION_DIRECT
            self.reply_status, self.reply_body, hdrs = direct
            self.reply_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in hdrs]
        elif redirect is not None:
            self.action = ACTION_REDIRECT
            self.redirect = dict(redirect)
            self.reply_status = self.redirect.get("code", 301)
            self.reply_body = b""
            self.reply_headers = []
        elif weighted:
            self.action = ACTION_WEIGHTED
            cum = []
            for c, w in weighted:
                total += w
                cum.append(total)
            self.clusters = tuple(c for c, _ in weighted)
            self.cum_weights = tuple(cum)
            self.total_weight = total
            self.cluster = self.clusters[0]
        else:
            if cluster is None:
                raise ValueError(f"route {name!r} has no action")
            self.action = ACTION_CLUSTER
            self.cluster = cluster
        stats = upstream_stats or {}
        if self.action == ACTION_WEIGHTED:
            self.weighted_stats = tuple(stats.get(c.name) or UpstreamStats()
                                        for c in self.clusters)
            self.cluster_stats = self.weighted_stats[0]
        elif self.action == ACTION_CLUSTER:
            self.cluster_stats = stats.get(cluster.name) or UpstreamStats()
        self.retry_on = 0
        for cond in retry_on:
            self.retry_on |= _RETRY_ON[cond]
        self.num_retries = num_retries if self.retry_on else 0
        self.retriable_status_codes = tuple(int(c) for c in retriable_status_codes)
        self.retry_base_interval = retry_base_interval
        self.retry_max_interval = retry_max_interval
        self.retry_budget_percent = retry_budget_percent
        self.retry_min_concurrency = retry_min_concurrency
        self.timeout = timeout
        self.per_try_timeout = per_try_timeout
        self.max_request_body = max_request_body
        self.chain = chain if chain is not None and not chain.empty else None
        self.any_host = "*" in hosts
        self.hosts_exact = tuple(_host_bytes(h) for h in hosts if not h.startswith("*"))
        # "*.example.com" matches any host ending in ".example.com".
        self.hosts_suffix = tuple(b"." + _host_bytes(h[2:]) for h in hosts if h.startswith("*."))
        self.path_kind = {"prefix": PATH_PREFIX, "exact": PATH_EXACT, "regex": PATH_REGEX}[path_kind]
        if self.path_kind == PATH_REGEX:
            self.path_re = re.compile(path)
            self.path = b""
        else:
            self.path = path.encode("latin-1")
        self.methods = tuple(m.encode("ascii") for m in methods)
        self.header_names = tuple(h[0].lower().encode("latin-1") for h in headers)
        self.header_kinds = tuple(_MATCH_KINDS[h[1]] for h in headers)
        self.header_values = tuple(
            re.compile(h[2]) if h[1] == "regex" else
            (h[2].encode("latin-1") if h[1] == "exact" else None) for h in headers)
        self.header_inverts = tuple(bool(h[3]) for h in headers)
        self.query = tuple((n, _MATCH_KINDS[k], re.compile(v) if k == "regex" else v)
                           for n, k, v in query)
        self.prefix_rewrite = prefix_rewrite.encode("latin-1") if prefix_rewrite is not None else None
        self.regex_rewrite = re.compile(regex_rewrite) if regex_rewrite is not None else None
        self.regex_substitution = (regex_substitution or "").encode("latin-1")
        self.host_rewrite = host_rewrite.encode("ascii") if host_rewrite else None
        self.auto_host = auto_host
        self.request_edits = request_edits if request_edits is not None and not request_edits.empty else None
        self.response_edits = response_edits if response_edits is not None and not response_edits.empty else None
        # percent -> threshold on a uniform 64-bit draw (100% always mirrors).
        self.mirrors = tuple(
            (c, 0xFFFFFFFFFFFFFFFF if p >= 100 else <unsigned long long>(p / 100.0 * 18446744073709551615.0))
            for c, p in mirrors if p > 0)

    cdef int matches(self, RequestView* rq, HeaderMap headers) except -1:
        cdef Py_ssize_t n, i, j
        cdef bytes b
        cdef bint ok
        cdef int kind
        # path (without the query string)
        if self.path_kind == PATH_PREFIX:
            n = len(self.path)
            if rq.pl < n or memcmp(rq.path, <const char*>self.path, n) != 0:
                return 0
        elif self.path_kind == PATH_EXACT:
            n = len(self.path)
            if rq.pl != n or memcmp(rq.path, <const char*>self.path, n) != 0:
                return 0
        # host
        if not self.any_host:
            ok = False
            for b in self.hosts_exact:
                n = len(b)
                if (n == rq.hl or n == rq.hl_noport) and ascii_ieq(rq.host, <const char*>b, n):
                    ok = True
                    break
            if not ok:
                for b in self.hosts_suffix:
                    n = len(b)
                    if rq.hl_noport > n and ascii_ieq(rq.host + rq.hl_noport - n, <const char*>b, n):
                        ok = True
                        break
            if not ok:
                return 0
        if self.methods:
            ok = False
            for b in self.methods:
                if len(b) == rq.ml and memcmp(rq.method, <const char*>b, rq.ml) == 0:
                    ok = True
                    break
            if not ok:
                return 0
        # headers: any value of a repeated header may satisfy the condition
        for j in range(len(self.header_names)):
            b = <bytes>self.header_names[j]
            kind = self.header_kinds[j]
            i = headers.find(<const char*>b, len(b), 0)
            ok = False
            while i >= 0:
                if kind == MATCH_PRESENT:
                    ok = True
                elif kind == MATCH_EXACT:
                    n = headers.entries[i].value_len
                    ok = n == len(<bytes>self.header_values[j]) and memcmp(
                        headers.value_at(i), <const char*>self.header_values[j], n) == 0
                else:
                    ok = self.header_values[j].fullmatch(PyBytes_FromStringAndSize(
                        headers.value_at(i), headers.entries[i].value_len).decode("latin-1")) is not None
                if ok:
                    break
                i = headers.find(<const char*>b, len(b), i + 1)
            if ok == self.header_inverts[j]:
                return 0
        if self.path_kind == PATH_REGEX and self.path_re.fullmatch(
                PyBytes_FromStringAndSize(rq.path, rq.pl).decode("latin-1")) is None:
            return 0
        if self.query and not self._query_matches(PyBytes_FromStringAndSize(rq.query, rq.ql)):
            return 0
        return 1

    def _query_matches(self, bytes raw):
        params = parse_qsl(raw.decode("latin-1"), keep_blank_values=True,
                           encoding="utf-8", errors="replace")
        for name, kind, expected in self.query:
            if not any(k == name and _text_matches(kind, expected, v) for k, v in params):
                return False
        return True

    cdef Cluster pick_cluster(self, unsigned long long r):
        cdef Py_ssize_t i
        if self.action != ACTION_WEIGHTED:
            return self.cluster
        r %= self.total_weight
        for i in range(len(self.cum_weights)):
            if r < <unsigned long long>self.cum_weights[i]:
                return <Cluster>self.clusters[i]
        return <Cluster>self.clusters[len(self.clusters) - 1]

    cdef UpstreamStats stats_for(self, Cluster c):
        # The counters of `c` on this route (c is the route's cluster or one of its
        # weighted clusters): a scan of a few pointers, no Python call.
        cdef Py_ssize_t i
        if self.action == ACTION_WEIGHTED:
            for i in range(len(self.clusters)):
                if self.clusters[i] is c:
                    return <UpstreamStats>self.weighted_stats[i]
        return self.cluster_stats

    cdef bytes rewrite_target(self, bytes target):
        # The upstream request target after prefix or regex rewriting (query kept).
        cdef bytes path, query
        if self.prefix_rewrite is None and self.regex_rewrite is None:
            return target
        path, sep, query = target.partition(b"?")
        if self.prefix_rewrite is not None:
            path = self.prefix_rewrite + path[len(self.path):]
        else:
            path = self.regex_rewrite.sub(self.regex_substitution.decode("latin-1"),
                                          path.decode("latin-1")).encode("latin-1")
        if not path.startswith(b"/"):
            path = b"/" + path
        return path + sep + query

    def rewritten(self, target):
        """Python entry point for tests."""
        return self.rewrite_target(target.encode("latin-1")).decode("latin-1")

    def location(self, bytes scheme, bytes authority, bytes target):
        """The Location of a redirect answered for a request to scheme://authority/target."""
        rd = self.redirect
        orig_scheme = scheme.decode("ascii")
        new_scheme = rd.get("scheme") or orig_scheme
        auth = authority.decode("latin-1")
        host, port = auth, None
        i = auth.rfind(":")
        if i > auth.rfind("]"):
            host, port = auth[:i], auth[i + 1:]
        if rd.get("host"):
            host = rd["host"]
            if ":" in host and not host.startswith("["):
                host, _, port = host.rpartition(":")
        if rd.get("port"):
            port = str(rd["port"])
        elif new_scheme != orig_scheme:
            port = None
        if port is not None and port == str(_DEFAULT_PORTS.get(new_scheme)):
            port = None
        path, sep, query = target.decode("latin-1").partition("?")
        if rd.get("path"):
            new_path = rd["path"]
            if "?" in new_path:
                path, sep, query = new_path.partition("?")
            else:
                path = new_path
        elif rd.get("prefix_rewrite") is not None:
            path = rd["prefix_rewrite"] + path[len(self.path):]
        if rd.get("strip_query"):
            sep = query = ""
        return (f"{new_scheme}://{host}{':' + port if port else ''}{path}{sep}{query}"
                ).encode("latin-1")

    def __repr__(self):
        target = self.cluster.name if self.cluster is not None else (
            "redirect" if self.action == ACTION_REDIRECT else f"direct {self.reply_status}")
        return f"RouteEntry({self.name!r} -> {target!r})"


cdef class RouteTable:
    """First match wins, in the order the entries were given.

    Routes listing exact hosts are indexed by host, so a request only walks the
    routes that can match its host (plus wildcard ones), still in table order.
    """

    def __init__(self, entries):
        cdef RouteEntry e
        self.entries = tuple(entries)
        generic = [i for i, e in enumerate(self.entries) if e.any_host or e.hosts_suffix]
        index = {}
        for i, e in enumerate(self.entries):
            for h in e.hosts_exact:
                index.setdefault(h, set()).add(i)
        by_host = {}
        for h, ids in index.items():
            ids = set(ids) | set(generic)
            name, sep, port = h.rpartition(b":")
            if sep and port.isdigit():
                # "a.com:8080" also takes the routes of "a.com".
                ids |= index.get(name, set())
            by_host[h] = tuple(self.entries[i] for i in sorted(ids))
        self.generic = tuple(self.entries[i] for i in generic)
        self.by_host = by_host

    cdef RouteEntry match(self, RequestView* rq, HeaderMap headers):
        cdef RouteEntry e
        cdef tuple candidates = self.generic
        cdef object found
        if self.by_host:
            found = self.by_host.get(_lower_bytes(rq.host, rq.hl))
            if found is None and rq.hl_noport != rq.hl:
                found = self.by_host.get(_lower_bytes(rq.host, rq.hl_noport))
            if found is not None:
                candidates = <tuple>found
        for e in candidates:
            if e.matches(rq, headers):
                return e
        return None

    def match_request(self, host, path, headers=None, method="GET"):
        """Python entry point for tests and the admin API; `path` may carry a query."""
        cdef RequestView rq
        cdef bytes h = host.encode("latin-1")
        p, _, q = path.encode("latin-1").partition(b"?")
        cdef bytes pb = p, qb = q
        cdef bytes m = method.encode("ascii")
        cdef HeaderMap hm = headers if isinstance(headers, HeaderMap) else HeaderMap.from_items(headers or [])
        fill_view(&rq, h, len(h), pb, len(pb), qb, len(qb), m, len(m))
        return self.match(&rq, hm)


cdef void fill_view(RequestView* rq, const char* host, Py_ssize_t hl, const char* path,
                    Py_ssize_t pl, const char* query, Py_ssize_t ql, const char* method,
                    Py_ssize_t ml) noexcept:
    rq.host = host
    rq.hl = hl
    rq.hl_noport = _strip_port(host, hl)
    rq.path = path
    rq.pl = pl
    rq.query = query
    rq.ql = ql
    rq.method = method
    rq.ml = ml
