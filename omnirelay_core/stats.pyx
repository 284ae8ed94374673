# Counters are cdef fields (cheap to bump from C); the names come from the
# declarations, so a new counter is added in stats.pxd only.
_NAMES = None

# Upper bounds (seconds) of the upstream response time buckets, log-scale; the C array
# below is what the stream compares against, this tuple is what exporters read.
UPSTREAM_TIME_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
cdef double _BOUNDS[UPSTREAM_TIME_BUCKETS - 1]
assert len(UPSTREAM_TIME_BOUNDS) == UPSTREAM_TIME_BUCKETS - 1
for _i, _b in enumerate(UPSTREAM_TIME_BOUNDS):
    _BOUNDS[_i] = _b


cdef class Stats:
    def as_dict(self):
        global _NAMES
        if _NAMES is None:
            _NAMES = tuple(n for n in dir(Stats) if n.startswith(("downstream_", "upstream_")))
        return {k: getattr(self, k) for k in _NAMES}


_UPSTREAM_NAMES = None


cdef class UpstreamStats:

    cdef void record_time(self, double seconds) noexcept:
        cdef int i = 0
        while i < UPSTREAM_TIME_BUCKETS - 1 and seconds > _BOUNDS[i]:
            i += 1
        self.time_counts[i] += 1
        self.time_sum += seconds

    cdef void count_status(self, int status) noexcept:
        cdef int cls = status // 100
        if cls == 2:
            self.rq_2xx += 1
        elif cls == 5:
            self.rq_5xx += 1
        elif cls == 4:
            self.rq_4xx += 1
        elif cls == 3:
            self.rq_3xx += 1
        elif cls == 1:
            self.rq_1xx += 1

    def as_dict(self):
        """Counters by name, plus `time_counts` (one count per bucket, not cumulative;
        bounds in UPSTREAM_TIME_BOUNDS, then the overflow slot) and `time_sum`."""
        global _UPSTREAM_NAMES
        if _UPSTREAM_NAMES is None:
            _UPSTREAM_NAMES = tuple(n for n in dir(UpstreamStats)
                                    if n.startswith(("rq_", "cx_")))
        d = {k: getattr(self, k) for k in _UPSTREAM_NAMES}
        d["time_counts"] = [self.time_counts[i] for i in range(UPSTREAM_TIME_BUCKETS)]
        d["time_sum"] = self.time_sum
        return d

    def observe(self, double seconds):
        """Record one response time (Python entry point for tests)."""
        self.record_time(seconds)
