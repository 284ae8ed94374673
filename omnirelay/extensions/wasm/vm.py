"""One Proxy-Wasm VM: a wasmtime Store + Instance of a plugin's module, its root context
and the per-stream contexts, and the host functions (ABI 0.2.1 and the WASI subset that
SDK-built modules import).

A VM knows nothing of the filter API: callbacks return the guest's action
(``abi.ACTION_CONTINUE`` / ``abi.ACTION_PAUSE``) and leave local replies and body
rewrites on the stream context; ``omnirelay.filters.http.wasm`` maps them to CONTINUE /
STOP / LocalReply. Any callback may raise ``GuestFailure`` (trap, deadline, memory limit,
proc_exit, host error); the VM is dead afterwards and must not be called again.

The stream object is the core's HttpStream (duck-typed: request_headers,
response_headers, request/response_trailers, method, target, peer, status, ...).
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
import time
from typing import Any

import wasmtime

from omnirelay.extensions.wasm import abi, runtime
from omnirelay.extensions.wasm.config import PluginConfig
from omnirelay.extensions.wasm.errors import GuestFailure, WasmLoadError
from omnirelay.extensions.wasm.runtime import InvalidMemory, RawFunc
from omnirelay.extensions.wasm.shared import METRICS, SHARED_DATA, SHARED_QUEUES

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")

ROOT_CONTEXT_ID = 1

# Python logging levels for proxy_log_level_t (TRACE below DEBUG).
TRACE_LEVEL = 5
_LEVELS = (TRACE_LEVEL, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
           logging.CRITICAL)

# Guest exports the host calls, when present.
CALLBACKS = (
    "_initialize", "_start", "main", "proxy_on_memory_allocate", "malloc",
    "proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure", "proxy_on_done",
    "proxy_on_log", "proxy_on_delete", "proxy_on_tick", "proxy_on_queue_ready",
    "proxy_on_request_headers", "proxy_on_request_body", "proxy_on_request_trailers",
    "proxy_on_response_headers", "proxy_on_response_body", "proxy_on_response_trailers",
    "proxy_on_foreign_function", "proxy_on_http_call_response",
)

_PSEUDO_REQUEST = (b":authority", b":path", b":method", b":scheme")

MAX_CALLS_IN_FLIGHT = 1024  # per VM
DEFAULT_CALL_TIMEOUT = 5.0  # seconds, when the guest gives 0


class _CallMap:
    """A callout response's headers or trailers, read-only, shaped like the HeaderMap
    methods the header-map host functions read."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.pairs = pairs

    def raw_items(self) -> list[tuple[bytes, bytes]]:
        return list(self.pairs)

    def getall(self, key: bytes) -> list[str]:
        k = key.lower()
        return [v.decode("latin-1") for n, v in self.pairs if n.lower() == k]


class StreamContext:
    """The host's side of one Proxy-Wasm context (a stream, or the root with stream None).

    ``owner`` is the per-stream filter: it gets ``resume(stream_type)``,
    ``reply(status, body, headers, details)`` and ``close(stream_type)`` for what the
    guest asks outside of a callback of this stream (from a tick, a queue, ...).
    """

    __slots__ = ("body", "body_dirty", "body_type", "close_requested", "finished", "id",
                 "in_callback", "local_reply", "owner", "props", "req_trailers",
                 "resp_trailers", "stream")

    def __init__(self, cid: int, stream: Any = None, owner: Any = None) -> None:
        self.id = cid
        self.stream = stream
        self.owner = owner
        self.body = b""
        self.body_type = -1
        self.body_dirty = False
        self.local_reply: tuple[int, bytes, list[tuple[str, str]], str] | None = None
        self.close_requested = False
        self.in_callback = False
        self.finished = False
        self.props: dict[tuple[str, ...], bytes] | None = None
        self.req_trailers = None
        self.resp_trailers = None


class WasmVM:
    """A plugin's VM in this process. ``events`` receives ``tick_period_changed(vm)``,
    ``queue_ready(vm, queue_id)`` and ``defer(fn)`` (run fn soon on the event loop)."""

    def __init__(self, cfg: PluginConfig, module: wasmtime.Module, events: Any,
                 log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.events = events
        self.log = log or logging.getLogger("omnirelay.wasm").getChild(cfg.name or "plugin")
        self.dead = False
        self.tick_period_ms = 0
        self.contexts: dict[int, StreamContext] = {}
        self._next_id = ROOT_CONTEXT_ID + 1
        self._pending_done: dict[int, StreamContext] = {}
        # HTTP callouts in flight: token -> id of the context that made the call; and the
        # response being handed to proxy_on_http_call_response (headers, body, trailers).
        self.calls: dict[int, int] = {}
        self._next_token = 1
        self._call_response: tuple[_CallMap, bytes, _CallMap] | None = None
        self._failure: GuestFailure | None = None
        self._starting = False
        self._orphans: list = []
        self._keep: list = []
        self._stdio = {1: bytearray(), 2: bytearray()}
        self._env = [f"{k}={v}".encode() + b"\0" for k, v in cfg.environment]
        self.root = StreamContext(ROOT_CONTEXT_ID)
        self.contexts[ROOT_CONTEXT_ID] = self.root
        self.cur: StreamContext = self.root
        rt = runtime.process_runtime()
        self._runtime = rt
        self._deadline = cfg.callback_deadline
        self.store = wasmtime.Store(rt.engine)
        self.store.set_limits(memory_size=cfg.memory_limit)
        self._ctx = ctypes.cast(self.store._context(), ctypes.c_void_p).value
        linker = wasmtime.Linker(rt.engine)
        self._link(linker, module)
        self._deadline = cfg.start_deadline
        self._call_started = time.monotonic()
        self._keep.append(runtime.install_watchdog(self.store, self._overdue))
        try:
            self.instance = linker.instantiate(self.store, module)
        except wasmtime.Trap as e:
            raise WasmLoadError(f"instantiation trapped: {runtime._trap_summary(e.message)}") \
                from None
        except wasmtime.WasmtimeError as e:
            raise WasmLoadError(f"cannot instantiate: {_limit_hint(str(e), cfg)}") from None
        exports = self.instance.exports(self.store)
        names = set(exports)
        if not names.intersection(abi.ABI_MARKERS):
            raise WasmLoadError(
                "module does not export a Proxy-Wasm ABI version marker "
                f"({' or '.join(abi.ABI_MARKERS)}); ABI {abi.ABI_VERSION} is supported")
        memory = exports["memory"] if "memory" in names else None
        if not isinstance(memory, wasmtime.Memory):
            raise WasmLoadError("module does not export its linear memory as 'memory'")
        self.memory = memory
        self._mem_base = 0
        self._mem_len = 0
        self._mv: memoryview | None = None
        self._refresh_memory()
        self.f: dict[str, RawFunc | None] = {}
        for name in CALLBACKS:
            ext = exports[name] if name in names else None
            self.f[name] = (RawFunc(self._ctx, ext, name, ext.type(self.store))
                            if isinstance(ext, wasmtime.Func) else None)
        self._alloc = self.f["proxy_on_memory_allocate"] or self.f["malloc"]
        self.exports = frozenset(n for n, f in self.f.items() if f is not None)
        rt.attach(self)
        self._start_guest()

    # ------------------------------------------------------------------ lifecycle

    def _link(self, linker: wasmtime.Linker, module: wasmtime.Module) -> None:
        unknown = []
        for imp in module.imports:
            spec = _HOST.get((imp.module, imp.name or ""))
            if spec is None or not isinstance(imp.type, wasmtime.FuncType):
                unknown.append(f"{imp.module}.{imp.name}")
                continue
            params, results, method, bad_mem = spec
            runtime.define_host_func(linker, imp.module, imp.name, params, results,
                                     getattr(self, method), self._keep, self._host_error,
                                     bad_mem)
        if unknown:
            raise WasmLoadError("module imports functions this host does not provide: "
                                + ", ".join(sorted(unknown)))

    def _start_guest(self) -> None:
        root, f = self.root, self.f
        self._deadline = self.cfg.start_deadline
        self._starting = True
        try:
            if f["_initialize"] is not None:
                self._call(root, f["_initialize"])
                if f["main"] is not None and f["main"].nparams == 2:
                    self._call(root, f["main"], 0, 0)
            elif f["_start"] is not None:
                try:
                    self._call(root, f["_start"])
                except GuestFailure as e:
                    if e.message != "proc_exit(0)":
                        raise
            if f["proxy_on_context_create"] is not None:
                self._call(root, f["proxy_on_context_create"], ROOT_CONTEXT_ID, 0)
            if f["proxy_on_vm_start"] is not None and not self._call(
                    root, f["proxy_on_vm_start"], ROOT_CONTEXT_ID,
                    len(self.cfg.vm_configuration)):
                raise WasmLoadError("proxy_on_vm_start returned false (VM configuration "
                                    "rejected)")
            if f["proxy_on_configure"] is not None and not self._call(
                    root, f["proxy_on_configure"], ROOT_CONTEXT_ID,
                    len(self.cfg.configuration)):
                raise WasmLoadError("proxy_on_configure returned false (plugin configuration "
                                    "rejected)")
        except GuestFailure as e:
            self.close()
            raise WasmLoadError(f"plugin failed to start: {e}") from None
        except WasmLoadError:
            self.close()
            raise
        finally:
            self._deadline = self.cfg.callback_deadline
            self._starting = False

    def close(self) -> None:
        """Drop the store and instance; the VM is dead. Idempotent."""
        if self._mv is None and self.dead:
            return
        self.dead = True
        self._flush_stdio()
        self._mv = None
        self.f = {}
        self._alloc = None
        self._orphans = [c.owner for c in self.contexts.values() if c.owner is not None]
        self.contexts.clear()
        self._pending_done.clear()
        for attr in ("instance", "memory", "store"):
            if hasattr(self, attr):
                delattr(self, attr)

    # ------------------------------------------------------------------ calls

    def _call(self, ctx: StreamContext, fn: RawFunc, *args: int):
        """A top-level callback: effective context, deadline, failure classification."""
        if self.dead:
            raise GuestFailure("dead", "the VM failed earlier")
        self.cur = ctx
        self._call_started = time.monotonic()
        try:
            return fn.call(*args)
        except GuestFailure as e:
            failure = self._failure or e
            self._failure = None
            if self._starting and failure.kind == "exit" and failure.message == "proc_exit(0)":
                raise failure from None  # a command module's _start ending normally
            if failure.kind == "trap" and self._near_limit():
                failure = GuestFailure(
                    "memory", f"memory limit of {self.cfg.memory_limit} bytes reached "
                              f"({failure.message})")
            self.close()
            raise failure from None

    def _overdue(self) -> str | None:
        """The watchdog, at each epoch tick while the guest runs."""
        elapsed = time.monotonic() - self._call_started
        if elapsed <= self._deadline:
            return None
        failure = GuestFailure("deadline", "callback deadline exceeded")
        if self._failure is None:
            self._failure = failure
        return str(failure)

    def _near_limit(self) -> bool:
        """Whether a trap is probably the guest's reaction to a refused memory.grow.

        wasmtime's store limiter makes memory.grow past the limit return -1 (it does not
        trap); SDK allocators then abort with a trap. The C API cannot tell us that a
        grow was refused, so a trap while less than max(1 MiB, limit / 8) of the limit
        is left counts as hitting the memory limit."""
        try:
            size = runtime.memory_size(self._ctx, self.memory)
        except Exception:  # noqa: BLE001
            return False
        limit = self.cfg.memory_limit
        return limit - size < max(1 << 20, limit // 8)

    def _host_error(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, GuestFailure):
            failure = exc
        else:
            failure = GuestFailure("host", f"{name}: {type(exc).__name__}: {exc}")
            self.log.error("wasm plugin %s: host function %s failed", self.cfg.name, name,
                           exc_info=exc)
        if self._failure is None:
            self._failure = failure

    def has(self, name: str) -> bool:
        return name in self.exports

    def take_orphans(self) -> list:
        """Owners of the stream contexts that were live when the VM died (once)."""
        orphans, self._orphans = self._orphans, []
        return orphans

    # ------------------------------------------------------------------ stream contexts

    def create_context(self, stream: Any, owner: Any) -> StreamContext:
        if self.dead:
            raise GuestFailure("dead", "the VM failed earlier")
        cid = self._next_id
        self._next_id = cid + 1 if cid < 0x7FFFFFFF else ROOT_CONTEXT_ID + 1
        ctx = StreamContext(cid, stream, owner)
        self.contexts[cid] = ctx
        fn = self.f.get("proxy_on_context_create")
        if fn is not None:
            self._call(ctx, fn, cid, ROOT_CONTEXT_ID)
        return ctx

    def _hook(self, ctx: StreamContext, name: str, *args: int) -> int:
        if self.dead:
            raise GuestFailure("dead", "the VM failed earlier")
        fn = self.f.get(name)
        if fn is None:
            return abi.ACTION_CONTINUE
        ctx.in_callback = True
        try:
            return self._call(ctx, fn, ctx.id, *args)
        finally:
            ctx.in_callback = False

    def request_headers(self, ctx: StreamContext, end_stream: bool) -> int:
        return self._hook(ctx, "proxy_on_request_headers",
                          len(ctx.stream.request_headers) + 4, end_stream)

    def response_headers(self, ctx: StreamContext, end_stream: bool) -> int:
        return self._hook(ctx, "proxy_on_response_headers",
                          len(ctx.stream.response_headers) + 1, end_stream)

    def request_body(self, ctx: StreamContext, data: bytes, end_stream: bool) -> int:
        ctx.body, ctx.body_type, ctx.body_dirty = data, abi.HTTP_REQUEST_BODY, False
        return self._hook(ctx, "proxy_on_request_body", len(data), end_stream)

    def response_body(self, ctx: StreamContext, data: bytes, end_stream: bool) -> int:
        ctx.body, ctx.body_type, ctx.body_dirty = data, abi.HTTP_RESPONSE_BODY, False
        return self._hook(ctx, "proxy_on_response_body", len(data), end_stream)

    def request_trailers(self, ctx: StreamContext, trailers: Any) -> int:
        ctx.req_trailers = trailers
        return self._hook(ctx, "proxy_on_request_trailers", len(trailers))

    def response_trailers(self, ctx: StreamContext, trailers: Any) -> int:
        ctx.resp_trailers = trailers
        return self._hook(ctx, "proxy_on_response_trailers", len(trailers))

    def finish(self, ctx: StreamContext) -> None:
        """The stream is over: proxy_on_done, then (unless the plugin asks to wait for
        proxy_done) proxy_on_log and proxy_on_delete."""
        if ctx.finished or self.dead:
            return
        ctx.finished = True
        fn = self.f.get("proxy_on_done")
        if fn is not None and not self._call(ctx, fn, ctx.id):
            self._pending_done[ctx.id] = ctx
            return
        self._finalize(ctx)

    def _finalize(self, ctx: StreamContext) -> None:
        try:
            for name in ("proxy_on_log", "proxy_on_delete"):
                fn = self.f.get(name)
                if fn is not None:
                    self._call(ctx, fn, ctx.id)
        finally:
            self.contexts.pop(ctx.id, None)
            ctx.stream = ctx.owner = None
            ctx.body = b""

    def http_call_response(self, token: int, status: int, headers: list[tuple[str, str]],
                           body: bytes) -> None:
        """Deliver a callout's outcome: status 0 (and nothing else) when it failed. The
        calling stream's context may be gone; then the response is dropped, as the call
        ended with its stream."""
        cid = self.calls.pop(token, None)
        ctx = self.contexts.get(cid) if cid is not None else None
        fn = self.f.get("proxy_on_http_call_response")
        if ctx is None or fn is None or self.dead:
            return
        pairs = [(b":status", str(status).encode())] if status else []
        pairs += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        head = _CallMap(pairs)
        self._call_response = (head, body, _CallMap([]))
        try:
            # Called with the root context's id, as Envoy does (a call belongs to the
            # root context; SDKs dispatch on it), the calling stream being the effective
            # context, so header and reply calls made here act on that stream.
            self._call(ctx, fn, ROOT_CONTEXT_ID, token, len(pairs), len(body), 0)
        finally:
            self._call_response = None

    def tick(self) -> None:
        fn = self.f.get("proxy_on_tick")
        if fn is not None:
            self._call(self.root, fn, ROOT_CONTEXT_ID)

    def queue_ready(self, qid: int) -> None:
        fn = self.f.get("proxy_on_queue_ready")
        if fn is not None and not self.dead:
            self._call(self.root, fn, ROOT_CONTEXT_ID, qid)

    def notify_queue_ready(self, qid: int) -> None:
        """From SharedQueues.enqueue (possibly inside another VM's callback): deferred."""
        if not self.dead:
            self.events.queue_ready(self, qid)

    # ------------------------------------------------------------------ guest memory

    def _refresh_memory(self) -> None:
        base = runtime.memory_base(self._ctx, self.memory)
        size = runtime.memory_size(self._ctx, self.memory)
        if base != self._mem_base or size != self._mem_len or self._mv is None:
            self._mem_base, self._mem_len = base, size
            self._mv = (memoryview((ctypes.c_char * size).from_address(base)).cast("B")
                        if size else memoryview(b""))

    def _check(self, ptr: int, n: int) -> memoryview:
        if ptr + n > self._mem_len:
            if self.dead:
                raise InvalidMemory()
            self._refresh_memory()
            if ptr + n > self._mem_len:
                raise InvalidMemory()
        return self._mv

    def read(self, ptr: int, n: int) -> bytes:
        if n == 0:
            return b""
        mv = self._check(ptr, n)
        return bytes(mv[ptr:ptr + n])

    def write(self, ptr: int, data: bytes) -> None:
        n = len(data)
        if n:
            mv = self._check(ptr, n)
            mv[ptr:ptr + n] = data

    def write_u32(self, ptr: int, value: int) -> None:
        _U32.pack_into(self._check(ptr, 4), ptr, value & 0xFFFFFFFF)

    def write_u64(self, ptr: int, value: int) -> None:
        _U64.pack_into(self._check(ptr, 8), ptr, value & 0xFFFFFFFFFFFFFFFF)

    def give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copy ``data`` into guest memory the guest allocates; write its address and
        size at ``ptr_ptr`` / ``size_ptr``."""
        n = len(data)
        addr = 0
        if n:
            alloc = self._alloc
            if alloc is None:
                raise GuestFailure("host", "module exports neither proxy_on_memory_allocate "
                                           "nor malloc")
            addr = alloc.call(n)
            if not addr:
                return abi.INTERNAL_FAILURE
            self.write(addr, data)
        self.write_u32(ptr_ptr, addr)
        self.write_u32(size_ptr, n)
        return abi.OK

    # ------------------------------------------------------------------ host: logging

    def h_log(self, level: int, ptr: int, size: int) -> int:
        if level > abi.CRITICAL:
            return abi.BAD_ARGUMENT
        lvl = _LEVELS[level]
        if self.log.isEnabledFor(lvl):
            msg = self.read(ptr, size).decode("utf-8", "replace")
            self.log.log(lvl, "wasm %s: %s", self.cfg.name, msg)
        return abi.OK

    def h_get_log_level(self, ret: int) -> int:
        eff = self.log.getEffectiveLevel()
        level = next((i for i, lv in enumerate(_LEVELS) if eff <= lv), abi.CRITICAL)
        self.write_u32(ret, level)
        return abi.OK

    # ------------------------------------------------------------------ host: time, timers

    def h_get_current_time_nanoseconds(self, ret: int) -> int:
        self.write_u64(ret, time.time_ns())
        return abi.OK

    def h_set_tick_period_milliseconds(self, period: int) -> int:
        self.tick_period_ms = period
        self.events.tick_period_changed(self)
        return abi.OK

    # ------------------------------------------------------------------ host: buffers

    def _buffer(self, btype: int) -> bytes | None:
        ctx = self.cur
        if btype in (abi.HTTP_REQUEST_BODY, abi.HTTP_RESPONSE_BODY):
            return ctx.body if ctx.body_type == btype else None
        if btype == abi.PLUGIN_CONFIGURATION:
            return self.cfg.configuration
        if btype == abi.VM_CONFIGURATION:
            return self.cfg.vm_configuration
        if btype == abi.HTTP_CALL_RESPONSE_BODY and self._call_response is not None:
            return self._call_response[1]
        return None

    def h_get_buffer_bytes(self, btype: int, start: int, max_size: int, ret_ptr: int,
                           ret_size: int) -> int:
        if btype > abi.FOREIGN_FUNCTION_ARGUMENTS:
            return abi.BAD_ARGUMENT
        buf = self._buffer(btype)
        if buf is None:
            return abi.NOT_FOUND
        if start > len(buf):
            return abi.BAD_ARGUMENT
        return self.give(buf[start:start + max_size], ret_ptr, ret_size)

    def h_get_buffer_status(self, btype: int, ret_size: int, ret_flags: int) -> int:
        if btype > abi.FOREIGN_FUNCTION_ARGUMENTS:
            return abi.BAD_ARGUMENT
        buf = self._buffer(btype)
        if buf is None:
            return abi.NOT_FOUND
        self.write_u32(ret_size, len(buf))
        self.write_u32(ret_flags, 0)
        return abi.OK

    def h_set_buffer_bytes(self, btype: int, start: int, size: int, ptr: int, n: int) -> int:
        if btype > abi.FOREIGN_FUNCTION_ARGUMENTS:
            return abi.BAD_ARGUMENT
        ctx = self.cur
        if btype not in (abi.HTTP_REQUEST_BODY, abi.HTTP_RESPONSE_BODY) or ctx.body_type != btype:
            return abi.NOT_FOUND
        data = self.read(ptr, n)
        body = ctx.body
        if start >= len(body):
            ctx.body = body + data
        else:
            ctx.body = body[:start] + data + body[start + size:]
        ctx.body_dirty = True
        return abi.OK

    # ------------------------------------------------------------------ host: header maps

    def _map(self, mtype: int):
        """(HeaderMap or None, is_request_headers, is_response_headers); raises KeyError
        for a map type the host does not know."""
        ctx = self.cur
        stream = ctx.stream
        if mtype > abi.HTTP_CALL_RESPONSE_TRAILERS:
            raise KeyError(mtype)
        if mtype in (abi.HTTP_CALL_RESPONSE_HEADERS, abi.HTTP_CALL_RESPONSE_TRAILERS):
            resp = self._call_response
            if resp is None:
                return None, False, False
            return (resp[0] if mtype == abi.HTTP_CALL_RESPONSE_HEADERS else resp[2]), False, False
        if stream is None:
            return None, False, False
        if mtype == abi.HTTP_REQUEST_HEADERS:
            return stream.request_headers, True, False
        if mtype == abi.HTTP_RESPONSE_HEADERS:
            return stream.response_headers, False, True
        if mtype == abi.HTTP_REQUEST_TRAILERS:
            t = ctx.req_trailers
            return (stream.request_trailers if t is None else t), False, False
        if mtype == abi.HTTP_RESPONSE_TRAILERS:
            t = ctx.resp_trailers
            return (stream.response_trailers if t is None else t), False, False
        return None, False, False

    def _pseudo(self, name: bytes, req: bool, resp: bool) -> bytes | None:
        stream = self.cur.stream
        if req:
            if name == b":path":
                return stream.target
            if name == b":method":
                return stream.method
            if name == b":authority":
                host = stream.request_headers.get("host")
                return host.encode("latin-1") if host is not None else None
            if name == b":scheme":
                return stream.listener.scheme
        elif resp and name == b":status" and stream.status:
            return str(stream.status).encode()
        return None

    def _pairs(self, mtype: int) -> list[tuple[bytes, bytes]] | None:
        headers, req, resp = self._map(mtype)
        if headers is None:
            return None
        pairs = headers.raw_items()
        if req:
            pseudo = [(n, self._pseudo(n, True, False)) for n in _PSEUDO_REQUEST]
            pairs = [(n, v) for n, v in pseudo if v is not None] + pairs
        elif resp:
            status = self._pseudo(b":status", False, True)
            if status is not None:
                pairs = [(b":status", status), *pairs]
        return pairs

    def h_get_header_map_pairs(self, mtype: int, ret_ptr: int, ret_size: int) -> int:
        try:
            pairs = self._pairs(mtype)
        except KeyError:
            return abi.BAD_ARGUMENT
        return self.give(abi.serialize_map(pairs or ()), ret_ptr, ret_size)

    def h_get_header_map_size(self, mtype: int, ret_size: int) -> int:
        try:
            pairs = self._pairs(mtype)
        except KeyError:
            return abi.BAD_ARGUMENT
        self.write_u32(ret_size, len(abi.serialize_map(pairs or ())))
        return abi.OK

    def h_get_header_map_value(self, mtype: int, kptr: int, klen: int, ret_ptr: int,
                               ret_size: int) -> int:
        try:
            headers, req, resp = self._map(mtype)
        except KeyError:
            return abi.BAD_ARGUMENT
        if headers is None:
            return abi.NOT_FOUND
        key = self.read(kptr, klen)
        if key[:1] == b":" and not isinstance(headers, _CallMap):
            value = self._pseudo(key.lower(), req, resp)
            if value is None:
                return abi.NOT_FOUND
        else:
            values = headers.getall(key)
            if not values:
                return abi.NOT_FOUND
            value = (values[0] if len(values) == 1 else ",".join(values)).encode("latin-1")
        return self.give(value, ret_ptr, ret_size)

    def _edit(self, mtype: int, op: str, key: bytes, value: bytes = b"") -> int:
        try:
            headers, req, _resp = self._map(mtype)
        except KeyError:
            return abi.BAD_ARGUMENT
        if headers is None:
            return abi.NOT_FOUND
        if isinstance(headers, _CallMap):
            return abi.BAD_ARGUMENT  # a callout's response is read-only
        if key[:1] == b":":
            return self._edit_pseudo(key.lower(), op, value, req)
        try:
            if op == "add":
                headers.add(key, value)
            elif op == "replace":
                headers.set(key, value)
            else:
                headers.remove(key)
        except ValueError:
            return abi.BAD_ARGUMENT
        return abi.OK

    def _edit_pseudo(self, key: bytes, op: str, value: bytes, req: bool) -> int:
        stream = self.cur.stream
        if not req or op == "remove":
            return abi.BAD_ARGUMENT if op != "remove" else abi.OK
        if b"\r" in value or b"\n" in value or b"\0" in value or not value:
            return abi.BAD_ARGUMENT
        if key == b":path":
            stream.target = value
        elif key == b":method":
            stream.method = value
        elif key == b":authority":
            stream.request_headers.set("host", value)
        elif key != b":scheme":
            return abi.BAD_ARGUMENT
        return abi.OK

    def h_add_header_map_value(self, mtype: int, kptr: int, klen: int, vptr: int,
                               vlen: int) -> int:
        return self._edit(mtype, "add", self.read(kptr, klen), self.read(vptr, vlen))

    def h_replace_header_map_value(self, mtype: int, kptr: int, klen: int, vptr: int,
                                   vlen: int) -> int:
        return self._edit(mtype, "replace", self.read(kptr, klen), self.read(vptr, vlen))

    def h_remove_header_map_value(self, mtype: int, kptr: int, klen: int) -> int:
        return self._edit(mtype, "remove", self.read(kptr, klen))

    def h_set_header_map_pairs(self, mtype: int, ptr: int, size: int) -> int:
        try:
            headers, req, _resp = self._map(mtype)
        except KeyError:
            return abi.BAD_ARGUMENT
        if headers is None:
            return abi.NOT_FOUND
        if isinstance(headers, _CallMap):
            return abi.BAD_ARGUMENT
        try:
            pairs = abi.deserialize_map(self.read(ptr, size))
        except abi.SerializationError:
            return abi.BAD_ARGUMENT
        for name, _ in headers.raw_items():
            headers.remove(name)
        status = abi.OK
        for k, v in pairs:
            if k[:1] == b":":
                if req:
                    self._edit_pseudo(k.lower(), "replace", v, True)
                continue
            try:
                headers.add(k, v)
            except ValueError:
                status = abi.BAD_ARGUMENT
        return status

    # ------------------------------------------------------------------ host: stream control

    def _stream_ctx(self) -> StreamContext | None:
        ctx = self.cur
        return ctx if ctx.stream is not None and not ctx.finished else None

    def h_continue_stream(self, stype: int) -> int:
        if stype > abi.STREAM_UPSTREAM:
            return abi.BAD_ARGUMENT
        if stype >= abi.STREAM_DOWNSTREAM:
            return abi.UNIMPLEMENTED
        ctx = self._stream_ctx()
        if ctx is None:
            return abi.NOT_FOUND
        owner = ctx.owner
        if not ctx.in_callback and owner is not None:
            self.events.defer(lambda: owner.resume(stype))
        return abi.OK

    def h_continue_request(self) -> int:
        return self.h_continue_stream(abi.STREAM_HTTP_REQUEST)

    def h_continue_response(self) -> int:
        return self.h_continue_stream(abi.STREAM_HTTP_RESPONSE)

    def h_close_stream(self, stype: int) -> int:
        if stype > abi.STREAM_UPSTREAM:
            return abi.BAD_ARGUMENT
        if stype >= abi.STREAM_DOWNSTREAM:
            return abi.UNIMPLEMENTED
        ctx = self._stream_ctx()
        if ctx is None:
            return abi.NOT_FOUND
        owner = ctx.owner
        if ctx.in_callback:
            ctx.close_requested = True
        elif owner is not None:
            self.events.defer(lambda: owner.close(stype))
        return abi.OK

    def h_close_request(self) -> int:
        return self.h_close_stream(abi.STREAM_HTTP_REQUEST)

    def h_close_response(self) -> int:
        return self.h_close_stream(abi.STREAM_HTTP_RESPONSE)

    def h_send_local_response(self, status: int, dptr: int, dlen: int, bptr: int, blen: int,
                              hptr: int, hlen: int, grpc_status: int) -> int:
        ctx = self._stream_ctx()
        if ctx is None:
            return abi.NOT_FOUND
        if not 100 <= status <= 599:
            return abi.BAD_ARGUMENT
        details = self.read(dptr, dlen).decode("utf-8", "replace")
        body = self.read(bptr, blen)
        try:
            pairs = abi.deserialize_map(self.read(hptr, hlen))
        except abi.SerializationError:
            return abi.BAD_ARGUMENT
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs
                   if not k.startswith(b":")]
        if grpc_status <= 16 and getattr(ctx.stream, "is_grpc", False):
            headers.append(("grpc-status", str(grpc_status)))
        reply = (status, body, headers, details or "wasm_local_reply")
        owner = ctx.owner
        if ctx.in_callback:
            ctx.local_reply = reply
        elif owner is not None:
            self.events.defer(lambda: owner.reply(*reply))
        return abi.OK

    def h_done(self) -> int:
        ctx = self._pending_done.pop(self.cur.id, None)
        if ctx is None:
            return abi.NOT_FOUND
        self.events.defer(lambda: self._finalize(ctx) if not self.dead else None)
        return abi.OK

    def h_set_effective_context(self, cid: int) -> int:
        ctx = self.contexts.get(cid)
        if ctx is None:
            return abi.BAD_ARGUMENT
        self.cur = ctx
        return abi.OK

    def h_clear_route_cache(self) -> int:
        return abi.OK

    # ------------------------------------------------------------------ host: HTTP callouts

    def h_http_call(self, uptr: int, ulen: int, hptr: int, hlen: int, bptr: int, blen: int,
                    tptr: int, tlen: int, timeout_ms: int, token_ptr: int) -> int:
        """Dispatch a request to a cluster of the proxy's config (`upstream` is its name);
        the response arrives later in proxy_on_http_call_response on the calling context."""
        upstream = self.read(uptr, ulen).decode("utf-8", "replace")
        try:
            pairs = abi.deserialize_map(self.read(hptr, hlen))
            abi.deserialize_map(self.read(tptr, tlen))  # trailers: checked, not sent (HTTP/1.1)
        except abi.SerializationError:
            return abi.BAD_ARGUMENT
        pseudo = {k.lower(): v for k, v in pairs if k[:1] == b":"}
        method, path = pseudo.get(b":method"), pseudo.get(b":path")
        authority = pseudo.get(b":authority") or upstream.encode()
        if not method or not path or not path.startswith(b"/"):
            return abi.BAD_ARGUMENT  # :method and :path are required (as in Envoy)
        if len(self.calls) >= MAX_CALLS_IN_FLIGHT:
            return abi.INTERNAL_FAILURE
        headers = [("host", authority.decode("latin-1"))]
        headers += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs
                    if k[:1] != b":" and k.lower() != b"host"]
        token = self._next_token
        self._next_token = token + 1 if token < 0x7FFFFFFF else 1
        if not self.events.http_call(self, token, upstream, method.decode("latin-1"),
                                     path.decode("latin-1"), headers, self.read(bptr, blen),
                                     timeout_ms / 1000 if timeout_ms else DEFAULT_CALL_TIMEOUT):
            return abi.BAD_ARGUMENT  # no such cluster, or no event loop to run it
        self.calls[token] = self.cur.id
        self.write_u32(token_ptr, token)
        return abi.OK

    # ------------------------------------------------------------------ host: properties

    def h_get_property(self, pptr: int, plen: int, ret_ptr: int, ret_size: int) -> int:
        path = abi.property_path(self.read(pptr, plen))
        value = self.property(self.cur, path)
        if value is None:
            return abi.NOT_FOUND
        return self.give(value, ret_ptr, ret_size)

    def h_set_property(self, pptr: int, plen: int, vptr: int, vlen: int) -> int:
        path = abi.property_path(self.read(pptr, plen))
        ctx = self.cur
        if ctx.props is None:
            ctx.props = {}
        ctx.props[path] = self.read(vptr, vlen)
        return abi.OK

    def property(self, ctx: StreamContext, path: tuple[str, ...]) -> bytes | None:
        """Property values: strings as bytes, integers as 8-byte little-endian, maps in
        the header-map serialization (as Envoy encodes them)."""
        if ctx.props and path in ctx.props:
            return ctx.props[path]
        cfg = self.cfg
        if len(path) == 1:
            key = path[0]
            if key == "plugin_name":
                return cfg.name.encode()
            if key == "plugin_root_id":
                return cfg.root_id.encode()
            if key == "plugin_vm_id":
                return cfg.vm_id.encode()
        stream = ctx.stream
        if stream is None or not path:
            return None
        head = path[0]
        if head == "xds" and len(path) == 2:
            head, path = path[1], (path[1],)
        if len(path) == 1:
            if head == "route_name":
                return _enc(stream.route_name)
            if head == "cluster_name":
                return _enc(stream.cluster_name)
            return None
        key = path[1]
        if head == "request" and len(path) == 2:
            return self._request_property(stream, key)
        if head == "request" and len(path) == 3 and key == "headers":
            v = stream.request_headers.getall(path[2])
            return ",".join(v).encode("latin-1") if v else None
        if head == "response" and len(path) == 2:
            if key == "code":
                return abi.encode_int(stream.status) if stream.status else None
            if key == "headers":
                return abi.serialize_map(stream.response_headers.raw_items())
            if key == "size":
                return abi.encode_int(stream.resp_body_bytes)
            return None
        if head == "response" and len(path) == 3 and key == "headers":
            v = stream.response_headers.getall(path[2])
            return ",".join(v).encode("latin-1") if v else None
        if head == "source" and len(path) == 2 and key == "address":
            return _enc(stream.peer)
        return None

    @staticmethod
    def _request_property(stream: Any, key: str) -> bytes | None:
        target = stream.target
        if key == "path":
            return target
        if key == "url_path":
            return target.split(b"?", 1)[0]
        if key == "query":
            return target.split(b"?", 1)[1] if b"?" in target else b""
        if key == "method":
            return stream.method
        if key == "host":
            return _enc(stream.request_headers.get("host"))
        if key == "scheme":
            return stream.listener.scheme
        if key == "protocol":
            return b"HTTP/2" if stream.stream_id else f"HTTP/1.{stream.http_minor}".encode()
        if key == "id":
            return stream.request_id
        if key == "headers":
            return abi.serialize_map(stream.request_headers.raw_items())
        if key == "duration":
            return abi.encode_int(int((time.monotonic() - stream.start_time) * 1e9))
        return None

    # ------------------------------------------------------------------ host: shared data

    def h_get_shared_data(self, kptr: int, klen: int, ret_ptr: int, ret_size: int,
                          ret_cas: int) -> int:
        entry = SHARED_DATA.get(self.cfg.vm_id, self.read(kptr, klen))
        if entry is None:
            return abi.NOT_FOUND
        status = self.give(entry[0], ret_ptr, ret_size)
        if status == abi.OK:
            self.write_u32(ret_cas, entry[1])
        return status

    def h_set_shared_data(self, kptr: int, klen: int, vptr: int, vlen: int, cas: int) -> int:
        return SHARED_DATA.set(self.cfg.vm_id, self.read(kptr, klen), self.read(vptr, vlen), cas)

    def h_register_shared_queue(self, nptr: int, nlen: int, ret_id: int) -> int:
        qid = SHARED_QUEUES.register(self.cfg.vm_id, self.read(nptr, nlen), self)
        self.write_u32(ret_id, qid)
        return abi.OK

    def h_resolve_shared_queue(self, vptr: int, vlen: int, nptr: int, nlen: int,
                               ret_id: int) -> int:
        vm_id = self.read(vptr, vlen).decode("utf-8", "replace")
        qid = SHARED_QUEUES.resolve(vm_id, self.read(nptr, nlen))
        if qid is None:
            return abi.NOT_FOUND
        self.write_u32(ret_id, qid)
        return abi.OK

    def h_enqueue_shared_queue(self, qid: int, vptr: int, vlen: int) -> int:
        return SHARED_QUEUES.enqueue(qid, self.read(vptr, vlen))

    def h_dequeue_shared_queue(self, qid: int, ret_ptr: int, ret_size: int) -> int:
        status, value = SHARED_QUEUES.dequeue(qid)
        if status != abi.OK:
            return status
        return self.give(value, ret_ptr, ret_size)

    # ------------------------------------------------------------------ host: metrics

    def h_define_metric(self, mtype: int, nptr: int, nlen: int, ret_id: int) -> int:
        mid = METRICS.define(mtype, self.read(nptr, nlen).decode("utf-8", "replace"))
        if mid is None:
            return abi.BAD_ARGUMENT
        self.write_u32(ret_id, mid)
        return abi.OK

    def h_increment_metric(self, mid: int, delta: int) -> int:
        if delta >= 1 << 63:
            delta -= 1 << 64
        return METRICS.increment(mid, delta)

    def h_record_metric(self, mid: int, value: int) -> int:
        return METRICS.record(mid, value)

    def h_get_metric(self, mid: int, ret: int) -> int:
        status, value = METRICS.get(mid)
        if status == abi.OK:
            self.write_u64(ret, value)
        return status

    # ------------------------------------------------------------------ host: not supported

    def h_unimplemented(self, *args: int) -> int:
        return abi.UNIMPLEMENTED

    def h_get_status(self, code_ptr: int, msg_ptr: int, msg_size: int) -> int:
        return abi.NOT_FOUND

    def h_call_foreign_function(self, nptr: int, nlen: int, aptr: int, alen: int,
                                ret_ptr: int, ret_size: int) -> int:
        return abi.NOT_FOUND

    def h_get_configuration(self, ret_ptr: int, ret_size: int) -> int:
        return self.give(self.cfg.configuration, ret_ptr, ret_size)

    # ------------------------------------------------------------------ WASI

    def w_fd_write(self, fd: int, iovs: int, iovs_len: int, ret_written: int) -> int:
        if fd not in (1, 2):
            return abi.WASI_BADF
        raw = self.read(iovs, 8 * iovs_len)
        total = 0
        out = self._stdio[fd]
        for i in range(iovs_len):
            ptr, n = _U32x2.unpack_from(raw, 8 * i)
            out += self.read(ptr, n)
            total += n
        self.write_u32(ret_written, total)
        if b"\n" in out:
            *lines, rest = bytes(out).split(b"\n")
            out[:] = rest
            level = logging.INFO if fd == 1 else logging.ERROR
            for line in lines:
                self.log.log(level, "wasm %s: %s", self.cfg.name, line.decode("utf-8", "replace"))
        elif len(out) > 16384:
            self._flush_stdio()
        return abi.WASI_SUCCESS

    def _flush_stdio(self) -> None:
        for fd, buf in self._stdio.items():
            if buf:
                self.log.log(logging.INFO if fd == 1 else logging.ERROR, "wasm %s: %s",
                             self.cfg.name, bytes(buf).decode("utf-8", "replace"))
                buf.clear()

    def w_fd_read(self, fd: int, iovs: int, iovs_len: int, ret_read: int) -> int:
        if fd != 0:
            return abi.WASI_BADF
        self.write_u32(ret_read, 0)
        return abi.WASI_SUCCESS

    def w_fd_close(self, fd: int) -> int:
        return abi.WASI_SUCCESS if fd <= 2 else abi.WASI_BADF

    def w_fd_seek(self, fd: int, offset: int, whence: int, ret: int) -> int:
        return abi.WASI_SPIPE if fd <= 2 else abi.WASI_BADF

    def w_fd_fdstat_get(self, fd: int, ret: int) -> int:
        if fd > 2:
            return abi.WASI_BADF
        # filetype character_device, no flags; rights: fd_read (0x2) or fd_write (0x40).
        self.write(ret, struct.pack("<BxHxxxxQQ", 2, 0, 0x2 if fd == 0 else 0x40, 0))
        return abi.WASI_SUCCESS

    def w_fd_prestat_get(self, fd: int, ret: int) -> int:
        return abi.WASI_BADF  # no preopened directories

    def w_fd_prestat_dir_name(self, fd: int, ptr: int, n: int) -> int:
        return abi.WASI_BADF

    def w_clock_time_get(self, clock: int, precision: int, ret: int) -> int:
        if clock == abi.CLOCK_REALTIME:
            self.write_u64(ret, time.time_ns())
        elif clock == abi.CLOCK_MONOTONIC:
            self.write_u64(ret, time.monotonic_ns())
        else:
            return abi.WASI_NOTSUP
        return abi.WASI_SUCCESS

    def w_clock_res_get(self, clock: int, ret: int) -> int:
        if clock > abi.CLOCK_MONOTONIC:
            return abi.WASI_NOTSUP
        self.write_u64(ret, 1000)
        return abi.WASI_SUCCESS

    def w_random_get(self, ptr: int, n: int) -> int:
        if n > 1 << 20:
            return abi.WASI_INVAL
        self.write(ptr, os.urandom(n))
        return abi.WASI_SUCCESS

    def w_environ_sizes_get(self, ret_count: int, ret_size: int) -> int:
        self.write_u32(ret_count, len(self._env))
        self.write_u32(ret_size, sum(map(len, self._env)))
        return abi.WASI_SUCCESS

    def w_environ_get(self, array: int, buf: int) -> int:
        pos = buf
        for i, item in enumerate(self._env):
            self.write_u32(array + 4 * i, pos)
            self.write(pos, item)
            pos += len(item)
        return abi.WASI_SUCCESS

    def w_args_sizes_get(self, ret_count: int, ret_size: int) -> int:
        self.write_u32(ret_count, 0)
        self.write_u32(ret_size, 0)
        return abi.WASI_SUCCESS

    def w_args_get(self, array: int, buf: int) -> int:
        return abi.WASI_SUCCESS

    def w_proc_exit(self, code: int) -> None:
        raise GuestFailure("exit", f"proc_exit({code})")

    def w_sched_yield(self) -> int:
        return abi.WASI_SUCCESS

    def w_poll_oneoff(self, inp: int, out: int, nsubs: int, ret: int) -> int:
        return abi.WASI_NOTSUP


def _enc(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else value.encode("latin-1", "replace")


def _limit_hint(message: str, cfg: PluginConfig) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    if "memory" in message and ("limit" in message or "resource" in message):
        return f"{first} (memory_limit is {cfg.memory_limit} bytes)"
    return first


# (module, name) -> (params, results, VM method, status for a bad guest pointer).
# Params: i = i32, I = i64.
_E = abi.INVALID_MEMORY_ACCESS
_W = abi.WASI_FAULT
_HOST: dict[tuple[str, str], tuple[str, str, str, int]] = {}


def _env(name: str, params: str, method: str, results: str = "i") -> None:
    _HOST[("env", name)] = (params, results, method, _E)


def _wasi(name: str, params: str, method: str, results: str = "i") -> None:
    _HOST[("wasi_snapshot_preview1", name)] = (params, results, method, _W)


for _name, _params, _method in (
    ("proxy_log", "iii", "h_log"),
    ("proxy_get_log_level", "i", "h_get_log_level"),
    ("proxy_get_current_time_nanoseconds", "i", "h_get_current_time_nanoseconds"),
    ("proxy_set_tick_period_milliseconds", "i", "h_set_tick_period_milliseconds"),
    ("proxy_get_buffer_bytes", "iiiii", "h_get_buffer_bytes"),
    ("proxy_set_buffer_bytes", "iiiii", "h_set_buffer_bytes"),
    ("proxy_get_buffer_status", "iii", "h_get_buffer_status"),
    ("proxy_get_header_map_size", "ii", "h_get_header_map_size"),
    ("proxy_get_header_map_pairs", "iii", "h_get_header_map_pairs"),
    ("proxy_set_header_map_pairs", "iii", "h_set_header_map_pairs"),
    ("proxy_get_header_map_value", "iiiii", "h_get_header_map_value"),
    ("proxy_add_header_map_value", "iiiii", "h_add_header_map_value"),
    ("proxy_replace_header_map_value", "iiiii", "h_replace_header_map_value"),
    ("proxy_remove_header_map_value", "iii", "h_remove_header_map_value"),
    ("proxy_continue_stream", "i", "h_continue_stream"),
    ("proxy_close_stream", "i", "h_close_stream"),
    ("proxy_get_status", "iii", "h_get_status"),
    ("proxy_send_local_response", "iiiiiiii", "h_send_local_response"),
    ("proxy_http_call", "iiiiiiiiii", "h_http_call"),
    ("proxy_dispatch_http_call", "iiiiiiiiii", "h_http_call"),
    ("proxy_grpc_call", "iiiiiiiiiiii", "h_unimplemented"),
    ("proxy_grpc_stream", "iiiiiiiii", "h_unimplemented"),
    ("proxy_grpc_send", "iiii", "h_unimplemented"),
    ("proxy_grpc_cancel", "i", "h_unimplemented"),
    ("proxy_grpc_close", "i", "h_unimplemented"),
    ("proxy_set_shared_data", "iiiii", "h_set_shared_data"),
    ("proxy_get_shared_data", "iiiii", "h_get_shared_data"),
    ("proxy_register_shared_queue", "iii", "h_register_shared_queue"),
    ("proxy_resolve_shared_queue", "iiiii", "h_resolve_shared_queue"),
    ("proxy_enqueue_shared_queue", "iii", "h_enqueue_shared_queue"),
    ("proxy_dequeue_shared_queue", "iii", "h_dequeue_shared_queue"),
    ("proxy_define_metric", "iiii", "h_define_metric"),
    ("proxy_record_metric", "iI", "h_record_metric"),
    ("proxy_increment_metric", "iI", "h_increment_metric"),
    ("proxy_get_metric", "ii", "h_get_metric"),
    ("proxy_get_property", "iiii", "h_get_property"),
    ("proxy_set_property", "iiii", "h_set_property"),
    ("proxy_call_foreign_function", "iiiiii", "h_call_foreign_function"),
    ("proxy_done", "", "h_done"),
    ("proxy_set_effective_context", "i", "h_set_effective_context"),
    # Names from ABI 0.1.0 / Envoy that SDKs still import.
    ("proxy_continue_request", "", "h_continue_request"),
    ("proxy_continue_response", "", "h_continue_response"),
    ("proxy_resume_http_request", "", "h_continue_request"),
    ("proxy_resume_http_response", "", "h_continue_response"),
    ("proxy_close_http_request", "", "h_close_request"),
    ("proxy_close_http_response", "", "h_close_response"),
    ("proxy_clear_route_cache", "", "h_clear_route_cache"),
    ("proxy_get_configuration", "ii", "h_get_configuration"),
):
    _env(_name, _params, _method)

for _name, _params, _method, _results in (
    ("fd_write", "iiii", "w_fd_write", "i"),
    ("fd_read", "iiii", "w_fd_read", "i"),
    ("fd_close", "i", "w_fd_close", "i"),
    ("fd_seek", "iIii", "w_fd_seek", "i"),
    ("fd_fdstat_get", "ii", "w_fd_fdstat_get", "i"),
    ("fd_prestat_get", "ii", "w_fd_prestat_get", "i"),
    ("fd_prestat_dir_name", "iii", "w_fd_prestat_dir_name", "i"),
    ("clock_time_get", "iIi", "w_clock_time_get", "i"),
    ("clock_res_get", "ii", "w_clock_res_get", "i"),
    ("random_get", "ii", "w_random_get", "i"),
    ("environ_sizes_get", "ii", "w_environ_sizes_get", "i"),
    ("environ_get", "ii", "w_environ_get", "i"),
    ("args_sizes_get", "ii", "w_args_sizes_get", "i"),
    ("args_get", "ii", "w_args_get", "i"),
    ("proc_exit", "i", "w_proc_exit", ""),
    ("sched_yield", "", "w_sched_yield", "i"),
    ("poll_oneoff", "iiii", "w_poll_oneoff", "i"),
):
    _wasi(_name, _params, _method, _results)

# Older toolchains (e.g. AssemblyScript's proxy-runtime SDK) import WASI under its pre-snapshot
# name; Envoy's host answers these under both names, and their signatures, errno values and
# (for what these shims do) semantics are the same in both snapshots.
for _name in ("fd_write", "fd_read", "fd_seek", "fd_close", "fd_fdstat_get", "environ_get",
              "environ_sizes_get", "args_get", "args_sizes_get", "proc_exit"):
    _HOST[("wasi_unstable", _name)] = _HOST[("wasi_snapshot_preview1", _name)]


del _name, _params, _method, _results


def supported_imports() -> list[str]:
    """Every ``module.name`` a plugin may import (for docs and the capability set)."""
    return sorted(f"{m}.{n}" for m, n in _HOST)
