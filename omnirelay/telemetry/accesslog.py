"""Structured access logs: one record per finished request, JSON lines or a text template.

Cost model (issue 8):
- No access log on a listener: the core only tests `ListenerState.access_log is None`.
- With one: the core calls `AccessLogger(stream)` once per finished request. That call samples
  and applies the token-bucket rate limit first (no formatting, no allocation for a dropped
  request), then takes one tuple of C-read values (`HttpStream.access_record()`) and appends it
  to a list.
- Formatting happens in batches on a short loop timer (`FLUSH_INTERVAL`, or sooner when
  `BATCH` records are pending); the formatted chunk goes to a writer thread that does the
  blocking `write(2)`. If the writer falls behind (slow disk) by more than `MAX_BACKLOG` bytes,
  whole chunks are dropped and counted (`dropped_backlog`) rather than stalling the loop.
- Per-tenant limit (`tenant_header`, `tenant_max_per_second`): one token bucket per value of
  that request header, checked before the listener-wide bucket so one noisy tenant cannot
  use it all up. At most MAX_TENANTS buckets are kept; when full, idle (refilled) buckets are
  swept (at most once a second) and, if none is idle, new tenants share one overflow bucket.
- Rotation: the writer thread checks every `REOPEN_CHECK` seconds whether the path still names
  the file it has open (same device and inode); after a move/rename (logrotate without
  copytruncate) or a delete it reopens the path. No signal is used, so an embedding
  application keeps SIGUSR1 for itself.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from omnirelay._core import AccessSink, HttpStream
from omnirelay.config.model import ACCESS_LOG_FIELDS, AccessLog

log = logging.getLogger("omnirelay.accesslog")

FLUSH_INTERVAL = 0.1  # seconds between batch flushes
BATCH = 512  # pending records that trigger an early flush
MAX_PENDING = 16384  # records held before formatting; more are dropped (dropped_backlog)
MAX_BACKLOG = 8 * 1024 * 1024  # formatted bytes queued for the writer thread
REOPEN_CHECK = 1.0  # seconds between inode checks of the log path
MAX_TENANTS = 1024  # per-tenant buckets kept
MAX_TENANT_KEY = 128  # characters of the header value that name a tenant
OVERFLOW_TENANT = "\x00overflow"  # the bucket tenants share once MAX_TENANTS are busy

DEFAULT_TEMPLATE = (
    '%TIMESTAMP% %PEER% "%METHOD% %PATH% %PROTOCOL%" %STATUS% %RESPONSE_BYTES% '
    '%DURATION_MS% %ROUTE% %CLUSTER% %UPSTREAM% %FLAGS% %REQUEST_ID% "%USER_AGENT%"'
)

# HttpStream.access_record() tuple positions
(_RID, _LISTENER, _PEER, _METHOD, _AUTHORITY, _PATH, _PROTO, _ROUTE, _CLUSTER, _ENDPOINT,
 _STATUS, _ATTEMPTS, _FLAGS, _REASON, _RQ_BYTES, _RS_BYTES, _DURATION, _UPSTREAM, _UA) = range(19)

# HttpStream.log_flags bits (omnirelay_core.stream LOG_FLAG_*)
_F_UPSTREAM_TIMEOUT = 1
_F_PER_TRY_TIMEOUT = 2
_F_UPSTREAM_RESET = 4
_F_SHADOWED = 8

_live: weakref.WeakSet[AccessLogger] = weakref.WeakSet()


def _flags(rec: tuple) -> list[str]:
    bits = rec[_FLAGS]
    out = []
    if bits & _F_UPSTREAM_TIMEOUT:
        out.append("upstream_timeout")
    if bits & _F_PER_TRY_TIMEOUT:
        out.append("per_try_timeout")
    if rec[_ATTEMPTS] > 1:
        out.append("retried")
    if rec[_REASON] is not None:
        out.append("local_reply")
    if bits & _F_UPSTREAM_RESET:
        out.append("upstream_reset")
    if bits & _F_SHADOWED:
        out.append("shadowed")
    return out


def _timestamp(wall: float) -> str:
    secs = int(wall)
    ms = int((wall - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def record_fields(wall_end: float, rec: tuple) -> dict[str, Any]:
    """All fields of one record (ACCESS_LOG_FIELDS order); `wall_end` is when it finished.
    The reference for what the generated formatters print."""
    up = rec[_UPSTREAM]
    return {
        "timestamp": _timestamp(wall_end - rec[_DURATION] / 1000),  # when the request started
        "request_id": rec[_RID],
        "listener": rec[_LISTENER],
        "peer": rec[_PEER],
        "method": rec[_METHOD],
        "authority": rec[_AUTHORITY],
        "path": rec[_PATH],
        "protocol": rec[_PROTO],
        "route": rec[_ROUTE],
        "cluster": rec[_CLUSTER],
        "upstream": rec[_ENDPOINT],
        "status": rec[_STATUS],
        "flags": _flags(rec),
        "retries": max(rec[_ATTEMPTS] - 1, 0),
        "reason": rec[_REASON],
        "request_bytes": rec[_RQ_BYTES],
        "response_bytes": rec[_RS_BYTES],
        "duration_ms": round(rec[_DURATION], 3),
        "upstream_ms": None if up is None else round(up, 3),
        "user_agent": rec[_UA],
    }


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value) if value else "-"
    return str(value)


_esc = json.encoder.encode_basestring  # the C escaper when available: '"..."'


# field -> (JSON value expression, text value expression) over `r` (the access_record()
# tuple) and `ts` (the start timestamp); compiled into one f-string per logger.
def _js(i: int) -> str:
    return f'("null" if r[{i}] is None else esc(r[{i}]))'


def _ts(i: int) -> str:
    return f'("-" if r[{i}] is None else r[{i}])'


_ANY_FLAG = f"(r[{_FLAGS}] or r[{_ATTEMPTS}] > 1 or r[{_REASON}] is not None)"
_RETRIES = f"(r[{_ATTEMPTS}] - 1 if r[{_ATTEMPTS}] > 1 else 0)"
_UP = f"r[{_UPSTREAM}]"
_EXPR = {
    "timestamp": ('"{ts}"', "{ts}"),
    "request_id": (_js(_RID), _ts(_RID)),
    "listener": (_js(_LISTENER), _ts(_LISTENER)),
    "peer": (_js(_PEER), _ts(_PEER)),
    "method": (_js(_METHOD), _ts(_METHOD)),
    "authority": (_js(_AUTHORITY), _ts(_AUTHORITY)),
    "path": (_js(_PATH), _ts(_PATH)),
    "protocol": (f'"{{r[{_PROTO}]}}"', f"{{r[{_PROTO}]}}"),
    "route": (_js(_ROUTE), _ts(_ROUTE)),
    "cluster": (_js(_CLUSTER), _ts(_CLUSTER)),
    "upstream": (_js(_ENDPOINT), _ts(_ENDPOINT)),
    "status": (f"r[{_STATUS}]", f"r[{_STATUS}]"),
    "flags": (f'(dumps(fl(r)) if {_ANY_FLAG} else "[]")',
              f'(txt(fl(r)) if {_ANY_FLAG} else "-")'),
    "retries": (_RETRIES, _RETRIES),
    "reason": (_js(_REASON), _ts(_REASON)),
    "request_bytes": (f"r[{_RQ_BYTES}]", f"r[{_RQ_BYTES}]"),
    "response_bytes": (f"r[{_RS_BYTES}]", f"r[{_RS_BYTES}]"),
    "duration_ms": (f"round(r[{_DURATION}], 3)", f"round(r[{_DURATION}], 3)"),
    "upstream_ms": (f'("null" if {_UP} is None else round({_UP}, 3))',
                    f'("-" if {_UP} is None else round({_UP}, 3))'),
    "user_agent": (_js(_UA), _ts(_UA)),
}
assert tuple(_EXPR) == ACCESS_LOG_FIELDS

# The generated function: the start timestamp (cached per second), then one f-string.
_LINE_SRC = f"""\
def line(w, r):
    t = w - r[{_DURATION}] * 0.001
    s = int(t)
    if s != clk[0]:
        clk[0] = s
        clk[1] = strftime("%Y-%m-%dT%H:%M:%S", gmtime(s))
    ts = f"{{clk[1]}}.{{int((t - s) * 1000):03d}}Z"
    return f'BODY'
"""


def _lit(text: str) -> str:
    """`text` as literal f-string source between single quotes."""
    text = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return text.replace("{", "{{").replace("}", "}}")


def _field(expr: str) -> str:
    # an expression already holding its own braces (a quoted value) stays as is
    return expr if expr.startswith(("{", '"{')) else "{" + expr + "}"


class Formatter:
    """Turns raw records into lines: JSON objects or a filled text template. The line
    function is generated once (one f-string) from the field list or template."""

    def __init__(self, fmt: str = "json", template: str | None = None,
                 fields: Sequence[str] | None = None) -> None:
        pieces: list[str] = []
        if fmt == "json":
            for i, name in enumerate(fields or ACCESS_LOG_FIELDS):
                pieces.append(_lit(("{" if i == 0 else ",") + json.dumps(name) + ":"))
                pieces.append(_field(_EXPR[name][0]))
            pieces.append("}}")
        else:
            for i, piece in enumerate((template or DEFAULT_TEMPLATE).split("%")):
                if i % 2 == 0:
                    pieces.append(_lit(piece))
                elif piece == "":
                    pieces.append("%")  # "%%"
                else:
                    pieces.append(_field(_EXPR[piece.lower()][1]))
        env = {"clk": [-1, ""], "strftime": time.strftime, "gmtime": time.gmtime, "esc": _esc,
               "fl": _flags, "txt": _text, "round": round, "dumps": _dumps_list}
        src = _LINE_SRC.replace("BODY", "".join(pieces))
        exec(compile(src, "<access-log-format>", "exec"), env)  # noqa: S102 - our own source
        self.line = env["line"]
        self._clk = env["clk"]
        self._bclk = [-1, b""]  # the compiled twin's clock cache (second, its ISO text)
        # The default JSON record (every field) has a compiled twin in the core.
        self.compiled = fmt == "json" and fields is None

    def batch(self, pending: list[tuple[float, tuple]]) -> bytes:
        """Newline-terminated UTF-8 lines for (wall_end, record) pairs."""
        if self.compiled:
            return HttpStream.access_json_lines(pending, self._bclk)
        line = self.line
        return ("\n".join([line(w, r) for w, r in pending]) + "\n").encode("utf-8")


def _dumps_list(items: list[str]) -> str:
    return "[" + ",".join(f'"{x}"' for x in items) + "]" if items else "[]"


class _Writer(threading.Thread):
    """Owns the file descriptor; does every blocking write and the rotation check."""

    def __init__(self, path: str, owner: AccessLogger) -> None:
        super().__init__(name=f"accesslog-writer:{path}", daemon=True)
        self.path = path
        self.owner = owner
        self.q: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self.fd = -1
        self.ident_ = (0, 0)
        self.last_check = 0.0

    def _open(self) -> None:
        if self.path == "-":
            self.fd = 1
            return
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                              0o644)
            st = os.fstat(self.fd)
            self.ident_ = (st.st_dev, st.st_ino)
        except OSError as exc:
            self.fd = -1
            log.warning("access log %s: cannot open: %s", self.path, exc)

    def _check_rotation(self) -> None:
        now = time.monotonic()
        if self.path == "-" or now - self.last_check < REOPEN_CHECK:
            return
        self.last_check = now
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self.ident_
        except OSError:
            same = False
        if not same:
            if self.fd > 2:
                os.close(self.fd)
            self.fd = -1
            self.owner.reopens += 1
            self._open()

    def run(self) -> None:
        self._open()
        while True:
            try:
                item = self.q.get(timeout=REOPEN_CHECK)
            except queue.Empty:
                self._check_rotation()
                continue
            if item is None:
                break
            data, count = item
            self._check_rotation()
            self._write(data, count)
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1

    def _write(self, data: bytes, count: int) -> None:
        owner = self.owner
        try:
            if self.fd < 0:
                self._open()
            if self.fd < 0:
                raise OSError("not open")
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            owner.written += count
        except OSError:
            owner.write_errors += count
        finally:
            with owner.lock:
                owner.backlog -= len(data)


class AccessLogger:
    """The callable a ListenerState holds as `access_log`. Counters: `logged` (accepted for
    writing), `written`, `sampled_out`, `dropped_rate_limit`, `dropped_tenant_rate_limit`,
    `dropped_backlog`, `write_errors`, `reopens`."""

    def __init__(self, spec: AccessLog) -> None:
        self.spec = spec
        self.formatter = Formatter(spec.format, spec.template, spec.fields)
        self.sample = spec.sample
        self.rate = float(spec.max_per_second)
        self.tokens = self.rate
        self.refilled = time.monotonic()
        self.tenant_header = spec.tenant_header
        self.tenant_rate = float(spec.tenant_max_per_second)
        self.tenants: dict[str, list[float]] = {}  # tenant -> [tokens, refilled at]
        self.tenants_swept = 0.0
        self.pending: list[tuple[float, tuple]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writer: _Writer | None = None
        self.lock = threading.Lock()
        self.backlog = 0
        self.closed = False
        self.logged = 0
        self.written = 0
        self.sampled_out = 0
        self.dropped_rate_limit = 0
        self.dropped_tenant_rate_limit = 0
        self.dropped_backlog = 0
        self.write_errors = 0
        self.reopens = 0
        # Whether a request must pass sampling or a rate limit before it is recorded.
        self.filtering = self.sample < 1.0 or self.tenant_header is not None or self.rate > 0
        # The default JSON record with nothing to filter is formatted by the core when the
        # request finishes (ListenerState.access_sink): no Python call per request.
        self.sink = (AccessSink(MAX_BACKLOG, self._on_sink_data)
                     if self.formatter.compiled and not self.filtering else None)
        self._sink_counted = (0, 0)  # sink (records, dropped) already in the counters
        _live.add(self)

    # -- hot path: called by the core once per finished request ---------------------------
    def __call__(self, stream: Any) -> None:
        if self.filtering and not self._admit(stream):
            return
        if self.closed or len(self.pending) >= MAX_PENDING:
            self.dropped_backlog += 1
            return
        try:
            rec = stream.access_record()
        except Exception:  # never let logging fail a request
            log.exception("access log: cannot read the request")
            return
        self.pending.append((time.time(), rec))
        self.logged += 1
        if self.timer is None:
            self._schedule(FLUSH_INTERVAL)
        elif len(self.pending) == BATCH:
            self.timer.cancel()
            self._schedule(0)

    def _admit(self, stream: Any) -> bool:
        """Sampling, then the tenant's and the listener's rate limits (only when set)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            self.sampled_out += 1
            return False
        if self.tenant_header is not None and not self._tenant_token(stream):
            self.dropped_tenant_rate_limit += 1
            return False
        if self.rate > 0:
            now = time.monotonic()
            tokens = self.tokens + (now - self.refilled) * self.rate
            self.refilled = now
            tokens = min(tokens, self.rate)  # burst: one second's worth
            if tokens < 1.0:
                self.tokens = tokens
                self.dropped_rate_limit += 1
                return False
            self.tokens = tokens - 1.0
        return True

    def _tenant_token(self, stream: Any) -> bool:
        """Take a token from the request's tenant bucket; False if it has none."""
        headers = stream.request_headers
        key = headers.get(self.tenant_header, "") if headers is not None else ""
        key = key[:MAX_TENANT_KEY]
        now = time.monotonic()
        rate = self.tenant_rate
        bucket = self.tenants.get(key)
        if bucket is None:
            if len(self.tenants) >= MAX_TENANTS:
                if now - self.tenants_swept >= 1.0:  # a flood of new names sweeps once a second
                    self.tenants_swept = now
                    self._sweep_tenants(now)
                if len(self.tenants) >= MAX_TENANTS:
                    key = OVERFLOW_TENANT
                    bucket = self.tenants.get(key)
            if bucket is None:
                bucket = self.tenants[key] = [rate, now]
        tokens = min(bucket[0] + (now - bucket[1]) * rate, rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _sweep_tenants(self, now: float) -> None:
        # A bucket idle long enough to be full again holds no state worth keeping.
        rate = self.tenant_rate
        idle = [k for k, (tokens, at) in self.tenants.items()
                if tokens + (now - at) * rate >= rate and k != OVERFLOW_TENANT]
        for k in idle:
            del self.tenants[k]

    def _schedule(self, delay: float) -> None:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        self.timer = loop.call_later(delay, self.flush)

    # -- off the hot path ---------------------------------------------------------------------
    def _on_sink_data(self) -> None:
        # The core's sink got its first line since the last flush.
        if self.timer is None and not self.closed:
            self._schedule(FLUSH_INTERVAL)

    def _take_sink(self) -> tuple[bytes, int]:
        """The sink's lines and how many they are; its drops join dropped_backlog."""
        sink = self.sink
        data = sink.take()
        records, dropped = sink.records, sink.dropped
        n = records - self._sink_counted[0]
        self.dropped_backlog += dropped - self._sink_counted[1]
        self._sink_counted = (records, dropped)
        self.logged += n
        return data, n

    def flush(self) -> None:
        """Format what is pending and hand it to the writer thread."""
        self.timer = None
        if self.sink is not None:
            data, count = self._take_sink()
            if count:
                self._hand_over(data, count)
        pending = self.pending
        if not pending:
            return
        self.pending = []
        try:
            data = self.formatter.batch(pending)
        except Exception:
            log.exception("access log: cannot format records")
            self.write_errors += len(pending)
            return
        self._hand_over(data, len(pending))

    def _hand_over(self, data: bytes, count: int) -> None:
        """Queue `count` formatted lines for the writer thread, or drop them past
        MAX_BACKLOG (the writer is behind: dropping beats stalling the event loop)."""
        with self.lock:
            if self.backlog and self.backlog + len(data) > MAX_BACKLOG:
                self.dropped_backlog += count
                return
            self.backlog += len(data)
        if self.writer is None:
            self.writer = _Writer(self.spec.path, self)
            self.writer.start()
        self.writer.q.put((data, count))

    def close(self, timeout: float = 2.0) -> None:
        """Flush what is pending and stop the writer (waiting up to `timeout` seconds)."""
        if self.closed:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.flush()
        self.closed = True
        if self.writer is not None:
            self.writer.q.put(None)
            self.writer.join(timeout)

    def stats(self) -> dict[str, int]:
        return {
            "logged": self.logged,
            "written": self.written,
            "sampled_out": self.sampled_out,
            "dropped_rate_limit": self.dropped_rate_limit,
            "dropped_tenant_rate_limit": self.dropped_tenant_rate_limit,
            "dropped_backlog": self.dropped_backlog,
            "write_errors": self.write_errors,
            "reopens": self.reopens,
        }


# omnirelay_access_log_records_total{listener, result}: result -> AccessLogger counter
SERIES_RESULTS = (("written", "written"), ("sampled_out", "sampled_out"),
                  ("rate_limited", "dropped_rate_limit"),
                  ("tenant_rate_limited", "dropped_tenant_rate_limit"),
                  ("dropped", "dropped_backlog"), ("write_error", "write_errors"))


def access_log_series(loggers: Mapping[str, AccessLogger]) -> list[tuple[str, tuple, int]]:
    """Metric series (telemetry.samples entries) of the access loggers by listener."""
    return [("omnirelay_access_log_records_total", (name, result), getattr(lg, attr))
            for name, lg in loggers.items() for result, attr in SERIES_RESULTS]


@atexit.register
def _close_all() -> None:
    for logger in list(_live):
        try:
            logger.close(timeout=1.0)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("access log: cannot close %s", logger.spec.path)


__all__ = ["ACCESS_LOG_FIELDS", "AccessLogger", "Formatter", "access_log_series",
           "record_fields"]
