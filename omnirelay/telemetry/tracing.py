"""Distributed tracing: W3C trace context propagation and OTLP span export.

Cost model (issue 8):
- No tracing and no tap on a listener: `ListenerState.trace` is None and the core only tests
  it (twice per request).
- With tracing: the core calls `ListenerHook.begin(stream)` once the request heads upstream,
  `RequestTrace.attempt/attempt_status/attempt_error/attempt_end` around each upstream
  attempt, and `ListenerHook.finish(stream)` when the request is done. `begin` reads the
  client's `traceparent` (a missing or invalid one starts a new trace) and each attempt
  rewrites the upstream `traceparent` with that attempt's span id; `tracestate` passes through.
- Spans are built at `finish` only for sampled traces, with explicit timestamps (the core's
  monotonic times turned into wall-clock once per request), and handed to the OpenTelemetry
  SDK's BatchSpanProcessor, whose thread batches them to the OTLP exporter. A full queue
  drops spans rather than stalling the loop.

One `Pipeline` (processor + exporter) serves every listener with the same export settings;
a `ListenerHook` is made per listener and config generation, so spans carry the config
version that handled the request.
"""
from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from omnirelay._version import __version__
from omnirelay.config.model import Tracing

log = logging.getLogger("omnirelay.tracing")

# W3C trace context, level 1: version-traceid-parentid-flags, lowercase hex. A version
# above 00 may append fields after another "-"; version ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
SAMPLED = 0x01
_UNSET = Status(StatusCode.UNSET)
_FLAGS = (TraceFlags(0), TraceFlags(SAMPLED))

# access_record() tuple positions (see omnirelay.telemetry.accesslog)
_RID, _PEER, _METHOD, _AUTHORITY, _PATH, _PROTO, _ROUTE, _CLUSTER = 0, 2, 3, 4, 5, 6, 7, 8
_STATUS, _REASON = 10, 13


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid header value, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    tid, pid = int(trace_id, 16), int(parent_id, 16)
    if tid == 0 or pid == 0:
        return None
    return tid, pid, int(flags, 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def _new_id(bits: int) -> int:
    return random.getrandbits(bits) or 1  # never the invalid all-zero id


@dataclass(frozen=True)
class ExportSettings:
    """What makes two listeners share a Pipeline (everything but sampling)."""

    collector: str
    protocol: str
    service_name: str
    max_queue: int
    max_batch: int
    export_interval: float
    export_timeout: float

    @classmethod
    def of(cls, spec: Tracing) -> ExportSettings:
        return cls(spec.collector, spec.protocol, spec.service_name, spec.max_queue,
                   spec.max_batch, spec.export_interval, spec.export_timeout)


# Loggers of the OTLP exporters: a collector that is down logs a failure per batch.
EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                    "opentelemetry.exporter.otlp.proto.grpc.exporter")
LOG_EVERY = 60.0  # seconds: at most one record per logger and message in this time


class _Throttle(logging.Filter):
    """Passes one record per logger and message template every LOG_EVERY seconds, so an
    unreachable collector is reported without flooding the proxy's log."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, -math.inf) < LOG_EVERY:
                return False
            self.last[key] = now
        return True


_THROTTLE = _Throttle()


def _throttle_exporter_logs() -> None:
    for name in EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if _THROTTLE not in logger.filters:
            logger.addFilter(_THROTTLE)


def _exporter(s: ExportSettings) -> SpanExporter:
    _throttle_exporter_logs()
    if s.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=s.collector, insecure=s.collector.startswith("http:"),
                                timeout=s.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
    return Http(endpoint=s.collector, timeout=s.export_timeout)


class Pipeline:
    """The SDK's batch processor and OTLP exporter for one set of export settings. The
    processor (and its thread) starts with the first span: a config built only to be
    checked (the supervisor's) or one without traffic starts nothing."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.processor: BatchSpanProcessor | None = None
        self.resource = Resource.create({"service.name": settings.service_name,
                                         "service.version": __version__})
        self.scope = InstrumentationScope("omnirelay", __version__)
        self.spans = 0  # handed to the processor
        self.closed = False

    def export(self, span: ReadableSpan) -> None:
        processor = self.processor
        if processor is None:
            if self.closed:
                return
            s = self.settings
            processor = self.processor = BatchSpanProcessor(
                _exporter(s), max_queue_size=s.max_queue,
                schedule_delay_millis=s.export_interval * 1000,
                max_export_batch_size=s.max_batch,
                export_timeout_millis=s.export_timeout * 1000)
        self.spans += 1
        processor.on_end(span)

    def flush(self, timeout: float) -> bool:
        """Export what is queued; False if that did not finish within `timeout` seconds."""
        if self.processor is None:
            return True
        return self.processor.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Export what is queued (bounded by export_timeout) and stop the thread."""
        self.closed = True
        if self.processor is not None:
            self.processor.shutdown()


class ListenerHook:
    """`ListenerState.trace`: per-request tracing of one listener and config generation,
    and the taps (omnirelay.telemetry.tap) watching it."""

    __slots__ = ("config_version", "listener", "pipeline", "sampling", "taps")

    def __init__(self, listener: str, pipeline: Pipeline | None, sampling: float,
                 config_version: str, taps: Any) -> None:
        self.listener = listener
        self.pipeline = pipeline
        self.sampling = sampling
        self.config_version = config_version
        self.taps = taps  # a tap.TapHub

    def begin(self, stream: Any) -> RequestTrace | _Untraced:
        try:
            if self.taps.taps:
                self.taps.offer(self.listener, stream, None)
            if self.pipeline is None:
                return UNTRACED  # tapped only: seen once, nothing to trace
            return RequestTrace(self, stream)
        except Exception:  # tracing and taps must never fail a request
            log.exception("tracing: cannot start the request's trace")
            return UNTRACED

    def finish(self, stream: Any) -> None:
        rt = stream.trace
        if rt is UNTRACED:
            return
        try:
            if rt is None:  # answered before heading upstream (no route, a filter's reply)
                if self.taps.taps:
                    self.taps.offer(self.listener, stream, stream.status)
                if self.pipeline is None:
                    return
                rt = RequestTrace(self, stream)
            if rt.flags & SAMPLED:
                rt.export(stream)
        except Exception:
            log.exception("tracing: cannot record the request's spans")


class _Untraced:
    """The per-request hook of a listener that is tapped but not traced."""

    __slots__ = ()

    def attempt(self, host: str, port: int, start: float) -> None:
        pass

    def attempt_status(self, status: int) -> None:
        pass

    def attempt_error(self, exc: BaseException) -> None:
        pass

    def attempt_end(self, t: float) -> None:
        pass


UNTRACED = _Untraced()


class RequestTrace:
    """One request's trace context and its upstream attempts (the core calls these)."""

    __slots__ = ("attempts", "flags", "hook", "parent_id", "request_headers", "span_id",
                 "trace_id")

    def __init__(self, hook: ListenerHook, stream: Any) -> None:
        self.hook = hook
        headers = self.request_headers = stream.request_headers
        parent = parse_traceparent(headers.get("traceparent")) if headers is not None else None
        if parent is None:
            self.trace_id, self.parent_id = _new_id(128), 0
            self.flags = SAMPLED if random.random() < hook.sampling else 0
            if headers is not None and "tracestate" in headers:
                headers.remove("tracestate")  # it belonged to the trace we do not continue
        else:
            self.trace_id, self.parent_id, flags = parent
            self.flags = flags & SAMPLED  # the parent decided; other flag bits are its own
        self.span_id = _new_id(64)
        # [span id, start, end (0 = until the request ends), host, port, status, error]
        self.attempts: list[list[Any]] = []

    # ---- called by the core ----
    def attempt(self, host: str, port: int, start: float) -> None:
        sid = _new_id(64)
        self.attempts.append([sid, start, 0.0, host, port, 0, None])
        self.request_headers.set("traceparent", format_traceparent(self.trace_id, sid,
                                                                   self.flags))

    def attempt_status(self, status: int) -> None:
        if self.attempts:
            self.attempts[-1][5] = status

    def attempt_error(self, exc: BaseException) -> None:
        if self.attempts:
            self.attempts[-1][6] = getattr(exc, "reason", None) or type(exc).__name__

    def attempt_end(self, t: float) -> None:
        if self.attempts:
            self.attempts[-1][2] = t

    # ---- spans ----
    def export(self, stream: Any) -> None:
        hook = self.hook
        pipeline = hook.pipeline
        assert pipeline is not None
        rec = stream.access_record()
        mono, wall = time.monotonic(), time.time_ns()

        def ns(t: float) -> int:
            return wall - int((mono - t) * 1e9)

        flags = _FLAGS[self.flags]
        server = SpanContext(self.trace_id, self.span_id, False, flags)
        parent = (SpanContext(self.trace_id, self.parent_id, True, flags)
                  if self.parent_id else None)
        method = rec[_METHOD] or "HTTP"
        status = rec[_STATUS]
        common: dict[str, Any] = {"omnirelay.listener": hook.listener,
                                  "omnirelay.config_version": hook.config_version}
        if rec[_ROUTE] is not None:
            common["omnirelay.route"] = rec[_ROUTE]
        if rec[_CLUSTER] is not None:
            common["omnirelay.cluster"] = rec[_CLUSTER]
        attrs = {**common, "http.request.method": method,
                 "url.path": (rec[_PATH] or "/").partition("?")[0],
                 "network.protocol.version": rec[_PROTO].partition("/")[2],
                 "client.address": rec[_PEER], "omnirelay.request_id": rec[_RID],
                 "http.response.status_code": status}
        if rec[_AUTHORITY]:
            attrs["server.address"] = _host_of(rec[_AUTHORITY])
        if len(self.attempts) > 1:
            attrs["omnirelay.attempts"] = len(self.attempts)
        error = rec[_REASON] if rec[_REASON] is not None else (
            str(status) if status >= 500 else None)
        if error is not None:
            attrs["error.type"] = error
        pipeline.export(ReadableSpan(
            method, server, parent, pipeline.resource, attrs, kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR, error) if status >= 500 else _UNSET,
            start_time=ns(stream.start_time), end_time=wall,
            instrumentation_scope=pipeline.scope))
        last = len(self.attempts) - 1
        for i, (sid, start, end, host, port, code, err) in enumerate(self.attempts):
            if i == last and not code and err is None and rec[_REASON] is not None:
                err = rec[_REASON]  # the request ended while this attempt ran (a timeout)
            a = {**common, "http.request.method": method, "server.address": host,
                 "server.port": port}
            if code:
                a["http.response.status_code"] = code
            if i:
                a["http.request.resend_count"] = i
            failed = err is not None or code >= 500 or not code
            if failed:
                a["error.type"] = err if err is not None else (str(code) if code else "incomplete")
            pipeline.export(ReadableSpan(
                method, SpanContext(self.trace_id, sid, False, flags), server,
                pipeline.resource, a, kind=SpanKind.CLIENT,
                status=Status(StatusCode.ERROR, a["error.type"]) if failed else _UNSET,
                start_time=ns(start), end_time=ns(end) if end else wall,
                instrumentation_scope=pipeline.scope))


def _host_of(authority: str) -> str:
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


__all__ = ["ExportSettings", "ListenerHook", "Pipeline", "RequestTrace", "format_traceparent",
           "parse_traceparent"]
