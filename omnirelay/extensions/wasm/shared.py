"""State the Wasm VMs of one process (one worker) share, and what the rest of the proxy
reads from them: shared data (with compare-and-swap), shared queues, the metrics plugins
define, and the status of every plugin binding.

Pure Python (no wasmtime import): the admin API and the metrics exporter can import it
cheaply. Everything here is per process; each worker of ``omnirelay run`` has its own.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from omnirelay.extensions.wasm import abi

# --------------------------------------------------------------------------- shared data


class SharedData:
    """Key -> (value, cas) per vm_id. A cas of 0 in ``set`` means "unconditional"; any
    other value must equal the key's current cas. Every write gets a new non-zero cas."""

    def __init__(self) -> None:
        self._data: dict[str, dict[bytes, tuple[bytes, int]]] = {}
        self._cas = itertools.count(1)

    def get(self, vm_id: str, key: bytes) -> tuple[bytes, int] | None:
        return self._data.get(vm_id, {}).get(key)

    def set(self, vm_id: str, key: bytes, value: bytes, cas: int) -> int:
        """abi.OK or abi.CAS_MISMATCH."""
        space = self._data.setdefault(vm_id, {})
        cur = space.get(key)
        if cas and cur is not None and cur[1] != cas:
            return abi.CAS_MISMATCH
        new = next(self._cas) & 0xFFFFFFFF or next(self._cas)
        space[key] = (value, new)
        return abi.OK

    def keys(self, vm_id: str) -> list[bytes]:
        return list(self._data.get(vm_id, {}))

    def clear(self) -> None:
        self._data.clear()


class _Queue:
    __slots__ = ("id", "items", "name", "owner", "vm_id")

    def __init__(self, qid: int, vm_id: str, name: bytes, owner: Any) -> None:
        self.id = qid
        self.vm_id = vm_id
        self.name = name
        self.items: collections.deque[bytes] = collections.deque()
        # The VM that registered the queue gets proxy_on_queue_ready (weakly held).
        self.owner = weakref.ref(owner) if owner is not None else None


class SharedQueues:
    """Named queues per vm_id. ``register`` creates or opens one (and makes the caller
    its owner, notified on enqueue); ``resolve`` opens an existing one."""

    MAX_ITEMS = 10_000  # per queue; enqueue past it drops the oldest item

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, bytes], _Queue] = {}
        self._by_id: dict[int, _Queue] = {}
        self._ids = itertools.count(1)

    def register(self, vm_id: str, name: bytes, owner: Any) -> int:
        q = self._by_name.get((vm_id, name))
        if q is None:
            q = _Queue(next(self._ids), vm_id, name, owner)
            self._by_name[(vm_id, name)] = q
            self._by_id[q.id] = q
        else:
            q.owner = weakref.ref(owner) if owner is not None else None
        return q.id

    def resolve(self, vm_id: str, name: bytes) -> int | None:
        q = self._by_name.get((vm_id, name))
        return q.id if q is not None else None

    def enqueue(self, qid: int, value: bytes) -> int:
        q = self._by_id.get(qid)
        if q is None:
            return abi.NOT_FOUND
        if len(q.items) >= self.MAX_ITEMS:
            q.items.popleft()
        q.items.append(value)
        owner = q.owner() if q.owner is not None else None
        if owner is not None:
            owner.notify_queue_ready(qid)
        return abi.OK

    def dequeue(self, qid: int) -> tuple[int, bytes]:
        q = self._by_id.get(qid)
        if q is None:
            return abi.NOT_FOUND, b""
        if not q.items:
            return abi.EMPTY, b""
        return abi.OK, q.items.popleft()

    def clear(self) -> None:
        self._by_name.clear()
        self._by_id.clear()


# --------------------------------------------------------------------------- metrics


@dataclass
class Metric:
    """A metric a plugin defined. Histograms keep count, sum and log2 buckets:
    ``buckets[i]`` counts recorded values v with ``v.bit_length() == i`` (0 for v == 0,
    i for 2**(i-1) <= v < 2**i)."""

    id: int
    name: str
    type: str  # "counter" | "gauge" | "histogram"
    value: int = 0
    count: int = 0
    sum: int = 0
    buckets: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "histogram":
            d.update(count=self.count, sum=self.sum, buckets=list(self.buckets))
        else:
            d["value"] = self.value
        return d


class Metrics:
    """Plugin-defined metrics of this process, by id. Defining a name again (same type)
    returns the same id, so every VM and every reload of a plugin shares its metrics."""

    def __init__(self) -> None:
        self._by_id: dict[int, Metric] = {}
        self._by_name: dict[tuple[str, str], int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def define(self, mtype: int, name: str) -> int | None:
        kind = abi.METRIC_TYPES.get(mtype)
        if kind is None:
            return None
        with self._lock:
            mid = self._by_name.get((kind, name))
            if mid is None:
                mid = next(self._ids)
                self._by_name[(kind, name)] = mid
                self._by_id[mid] = Metric(mid, name, kind, buckets=[0] * 65
                                          if kind == "histogram" else [])
            return mid

    def increment(self, mid: int, delta: int) -> int:
        m = self._by_id.get(mid)
        if m is None:
            return abi.NOT_FOUND
        if m.type == "histogram" or (m.type == "counter" and delta < 0):
            return abi.BAD_ARGUMENT
        m.value += delta
        return abi.OK

    def record(self, mid: int, value: int) -> int:
        m = self._by_id.get(mid)
        if m is None:
            return abi.NOT_FOUND
        if m.type == "histogram":
            m.count += 1
            m.sum += value
            m.buckets[min(value.bit_length(), 64)] += 1
        elif m.type == "counter" and value < m.value:
            return abi.BAD_ARGUMENT  # counters only go up
        else:
            m.value = value
        return abi.OK

    def get(self, mid: int) -> tuple[int, int]:
        m = self._by_id.get(mid)
        if m is None:
            return abi.NOT_FOUND, 0
        if m.type == "histogram":
            return abi.BAD_ARGUMENT, 0
        return abi.OK, m.value

    def snapshot(self) -> list[dict[str, Any]]:
        return [m.snapshot() for m in sorted(self._by_id.values(), key=lambda m: m.id)]

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()
            self._by_name.clear()


# --------------------------------------------------------------------------- status


@dataclass(eq=False)
class BindingStatus:
    """One plugin binding (a filter entry of the loaded config) in this process.

    state: "starting" | "running" | "failed" (policy fail_open / fail_closed applies to
    every request) | "reloading" (policy reload: a new VM is on its way; ``fallback``
    applies meanwhile) | "closed" (the config that used it was unloaded).
    """

    binding: str
    plugin: str
    root_id: str
    vm_id: str
    sha256: str
    failure_policy: str
    fallback: str
    state: str = "starting"
    failures: int = 0
    reloads: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None
    requests: int = 0
    fallback_requests: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    callouts: int = 0  # HTTP callouts started
    callout_failures: int = 0  # ... that got no response (connect error, timeout, ...)

    def record_failure(self, kind: str, message: str) -> None:
        self.failures += 1
        self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1
        self.last_error = f"{kind}: {message}"
        self.last_failure_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "binding": self.binding, "plugin": self.plugin, "root_id": self.root_id,
            "vm_id": self.vm_id, "sha256": self.sha256, "state": self.state,
            "failure_policy": self.failure_policy, "fallback": self.fallback,
            "failures": self.failures, "failures_by_kind": dict(self.failures_by_kind),
            "reloads": self.reloads, "last_error": self.last_error,
            "last_failure_at": self.last_failure_at, "requests": self.requests,
            "fallback_requests": self.fallback_requests, "callouts": self.callouts,
            "callout_failures": self.callout_failures,
        }


SHARED_DATA = SharedData()
SHARED_QUEUES = SharedQueues()
METRICS = Metrics()
_STATUSES: weakref.WeakSet[BindingStatus] = weakref.WeakSet()


def register_status(status: BindingStatus) -> None:
    _STATUSES.add(status)


def binding_statuses() -> list[dict[str, Any]]:
    """The status of every live Wasm plugin binding of this process (for the admin API)."""
    return sorted((s.snapshot() for s in list(_STATUSES)),
                  key=lambda d: (d["binding"], d["plugin"]))


def metric_series() -> list[tuple[str, tuple[str, ...], int]]:
    """The plugin-defined metrics as series of the fixed families in telemetry.metrics (a
    plugin's metric name is a label value: the exported names stay a closed, documented
    set). Histograms export their observation count and sum."""
    out: list[tuple[str, tuple[str, ...], int]] = []
    for m in METRICS.snapshot():
        if m["type"] == "counter":
            out.append(("omnirelay_wasm_plugin_counter_total", (m["name"],), m["value"]))
        elif m["type"] == "gauge":
            out.append(("omnirelay_wasm_plugin_gauge", (m["name"],), m["value"]))
        else:
            out.append(("omnirelay_wasm_plugin_histogram_observations_total", (m["name"],),
                        m["count"]))
            out.append(("omnirelay_wasm_plugin_histogram_sum_total", (m["name"],), m["sum"]))
    return out


def metrics_snapshot() -> list[dict[str, Any]]:
    """Every metric Wasm plugins defined in this process (for the metrics exporter)::

        {"name": "...", "type": "counter" | "gauge", "value": int}
        {"name": "...", "type": "histogram", "count": int, "sum": int, "buckets": [65 ints]}
    """
    return METRICS.snapshot()
