# Counters are cdef fields (cheap to bump from C); the names come from the
# declarations, so a new counter is added in stats.pxd only.
_NAMES = None


cdef class Stats:
    def as_dict(self):
        global _NAMES
        if _NAMES is None:
            _NAMES = tuple(n for n in dir(Stats) if n.startswith(("downstream_", "upstream_")))
        return {k: getattr(self, k) for k in _NAMES}
