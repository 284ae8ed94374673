"""Real HTTP/2 and gRPC peers for the HTTP/2 and gRPC tests, usable with or without a proxy.

Everything here talks to real sockets on 127.0.0.1 and is proven against itself (no proxy) by
``test_grpc_peers.py``; ``test_grpc_proxy.py`` and ``test_http2_proxy.py`` put OmniRelay in
between and reuse the same clients.

- ``EchoServer``: a grpcio server (the threaded ``grpc.server``: it runs on its own threads, so
  it neither needs nor disturbs the test's uvloop loop, on which the in-process proxy runs).
  Service ``test.Echo`` with generic handlers and raw-bytes (de)serializers, so no protoc:
  ``Unary`` (echo), ``ServerStream``, ``ClientStream``, ``Bidi``, ``Status``, ``Slow``,
  ``Flaky``. It records every call it sees (``ServerCall``: metadata, ``:authority``, deadline,
  whether it was cancelled, what it received).
- ``EchoClient``: a blocking grpcio client with one helper per kind, each returning a
  ``Reply`` (status code, details, initial and trailing metadata, messages) instead of raising.
  ``AsyncEchoClient`` runs the same helpers on its own threads for ``async def`` tests, so a
  blocking gRPC call never blocks the loop the proxy runs on.
- ``H2Origin``: an h2c upstream (hypercorn, HTTP/2 by prior knowledge and HTTP/1.1 on the same
  port) on its own thread and loop, with the JSON echo of ``harness.Origin``.
- ``RawH2``: a raw HTTP/2 client connection for protocol edge cases and floods: frames come
  from the small encoder below (HPACK literals only, so every header block is self-contained);
  received header blocks are decoded with ``hpack``.
- ``slow_h2_download``: a well-behaved HTTP/2 client (the ``h2`` package) that opens its flow
  control windows slowly, for backpressure tests.

Run as a script, it serves ``EchoServer`` until SIGTERM and prints ``PORT <n>`` (for bench/).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Self

import grpc

HOST = "127.0.0.1"
SERVICE = "test.Echo"
METHODS = ("Unary", "ServerStream", "ClientStream", "Bidi", "Status", "Slow", "Flaky")
DEFAULT_TIMEOUT = 30.0  # every client call carries a deadline: no thread can hang forever


def path(method: str) -> str:
    """The HTTP/2 :path of a method of test.Echo."""
    return f"/{SERVICE}/{method}"


def _identity(b: bytes) -> bytes:
    return b


def stream_message(i: int, size: int) -> bytes:
    """Message i of a ServerStream: its index, repeated, cut to ``size`` bytes."""
    return (struct.pack(">I", i) * (size // 4 + 1))[:size]


def bidi_message(i: int) -> bytes:
    """Message i of the test bidi streams: 4..1003 bytes that encode i, so order is checked."""
    head = struct.pack(">I", i)
    return head + bytes((i + k) & 0xFF for k in range(i % 1000))


def digest(messages: Iterable[bytes]) -> tuple[int, str]:
    """(count, sha256 over the length-prefixed messages): equal only for the same sequence."""
    h = hashlib.sha256()
    n = 0
    for m in messages:
        h.update(struct.pack(">I", len(m)))
        h.update(m)
        n += 1
    return n, h.hexdigest()


# --------------------------------------------------------------------------- gRPC server


@dataclass
class ServerCall:
    """One RPC as the server saw it."""

    method: str
    authority: str | None
    metadata: list[tuple[str, str | bytes]]
    peer: str
    deadline: float | None  # seconds left when the handler started; None: no deadline
    started: float = field(default_factory=time.monotonic)
    request: bytes = b""  # the request message of unary / server-streaming calls
    received: int = 0  # messages received (streaming requests)
    received_sha256: str = ""  # digest() of the messages received (streaming requests)
    sent: int = 0  # response messages sent
    completed: bool = False  # the handler ran to its end with the RPC still active
    cancelled: bool = False  # cancelled by the client, its deadline or a lost connection
    headers_sent: bool = False  # initial metadata went out
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def header(self, name: str) -> str | bytes | None:
        for k, v in self.metadata:
            if k == name:
                return v
        return None


class EchoServer:
    """The ``test.Echo`` service on 127.0.0.1:<ephemeral> (``port``; ``target`` for clients).

    Every response carries trailing metadata ``x-server-trailer: <name>``. Initial metadata
    (``x-server: <name>``, and request metadata ``x-echo-<k>`` echoed back) goes out with the
    first response message, so a call that fails before any message is a trailers-only
    response on the wire (grpc-status in its one HEADERS frame): what a proxy can retry.

    Methods (requests of the control methods are JSON):
    - ``Unary``: the request message back.
    - ``ServerStream`` ``{"count", "size", "interval"}``: ``count`` messages
      ``stream_message(i, size)``, ``interval`` seconds apart.
    - ``ClientStream``: ``{"count", "bytes", "sha256"}`` of what was received (``digest``).
    - ``Bidi``: each message back as it arrives.
    - ``Status`` ``{"code", "message", "trailers", "headers_first"}``: ends with that status
      code (int) and message, with the given trailing metadata (``[[k, v], ...]``; a ``-bin``
      value is hex); ``headers_first`` sends the initial metadata before failing (HEADERS, then
      the status in trailers) instead of a trailers-only response.
    - ``Slow`` ``{"seconds", "headers_first"}``: sleeps, checking every 5 ms whether the call
      is still active; answers ``slept`` or, cancelled, nothing (the call records
      ``cancelled``). ``headers_first`` sends the initial metadata before sleeping.
    - ``Flaky`` ``{"key", "failures", "code"}``: the first ``failures`` calls with that key end
      with status ``code``; later ones answer ``ok after <n>``. ``flaky[key]`` counts calls.
    """

    def __init__(self, name: str = "grpc", *, port: int = 0, max_workers: int = 64,
                 options: Iterable[tuple[str, Any]] = (), record: bool = True) -> None:
        self.name = name
        self.record = record  # False: keep no ServerCall (long benchmark runs)
        self.port = port  # 0: an ephemeral port, known once started
        self.calls: list[ServerCall] = []
        self.flaky: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._max_workers = max_workers
        self._options = list(options)
        self._server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    # ---- lifecycle
    def start(self) -> EchoServer:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._wrap("Unary", self._unary)),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                self._wrap("ServerStream", self._server_stream, streaming_response=True)),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                self._wrap("ClientStream", self._client_stream)),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                self._wrap("Bidi", self._bidi, streaming_response=True)),
            "Status": grpc.unary_unary_rpc_method_handler(self._wrap("Status", self._status)),
            "Slow": grpc.unary_unary_rpc_method_handler(self._wrap("Slow", self._slow)),
            "Flaky": grpc.unary_unary_rpc_method_handler(self._wrap("Flaky", self._flaky)),
        }
        generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
        self._server = grpc.server(futures.ThreadPoolExecutor(self._max_workers),
                                   handlers=[generic], options=self._options)
        self.port = self._server.add_insecure_port(f"{HOST}:{self.port}")
        self._server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(5)
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---- what was seen
    def calls_to(self, method: str) -> list[ServerCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def cancelled_calls(self, method: str | None = None) -> list[ServerCall]:
        with self._lock:
            return [c for c in self.calls if c.cancelled and method in (None, c.method)]

    async def wait_async(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll ``predicate`` on the loop (the server's threads do the work) until it holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := predicate()):
            if loop.time() > deadline:
                return value
            await asyncio.sleep(0.005)
        return value

    async def wait_cancelled(self, method: str, timeout: float = 5.0) -> ServerCall:
        found = await self.wait_async(lambda: self.cancelled_calls(method), timeout)
        assert found, (f"{self.name}: no cancelled {method} call within {timeout} s; "
                       f"calls seen: {[(c.method, c.completed, c.cancelled) for c in self.calls]}")
        return found[-1]

    # ---- plumbing
    def _wrap(self, method: str, fn: Callable, streaming_response: bool = False) -> Callable:
        def begin(context: grpc.ServicerContext) -> ServerCall:
            details = getattr(getattr(context, "_rpc_event", None), "call_details", None)
            host = getattr(details, "host", None)
            if isinstance(host, bytes):
                host = host.decode("latin-1")
            md = [(m.key, m.value) for m in (context.invocation_metadata() or ())]
            call = ServerCall(method, host or None, md, context.peer(), context.time_remaining())
            if self.record:
                with self._lock:
                    self.calls.append(call)

            def on_end() -> None:
                # grpc-core's verdict (the RECV_CLOSE_ON_SERVER op): the call was cancelled by
                # the client, by its deadline, or by a broken connection. A request stream that
                # ends because of a cancellation can look like a normal end to the handler.
                client = getattr(getattr(context, "_state", None), "client", None)
                if client is not None:
                    call.cancelled = call.cancelled or client == "cancelled"
                elif not call.completed:  # no such private state: judge by the handler
                    call.cancelled = True
                call.ended.set()

            if not context.add_callback(on_end):
                on_end()
            context.set_trailing_metadata((("x-server-trailer", self.name),))
            return call

        def finish(call: ServerCall, context: grpc.ServicerContext) -> bool:
            # The handler is done: the RPC is still active unless it was cancelled (the
            # termination callback may run before or after this, depending on the race).
            if context.is_active():
                call.completed = True
            else:
                call.cancelled = True
            return call.completed

        if streaming_response:
            def stream_handler(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
                call = begin(context)
                try:
                    for msg in fn(request, context, call):
                        self._send_headers(call, context)
                        call.sent += 1
                        yield msg
                except grpc.RpcError:  # the request stream of a cancelled call
                    if context.is_active():
                        raise
                finish(call, context)
            return stream_handler

        def unary_handler(request: Any, context: grpc.ServicerContext) -> bytes:
            call = begin(context)
            try:
                out = fn(request, context, call)
            except grpc.RpcError:  # the request stream of a cancelled call
                if context.is_active():
                    raise
                out = b""
            except Exception:  # context.abort(): grpc sends the status, and no message
                finish(call, context)
                raise
            if finish(call, context):
                self._send_headers(call, context)
                call.sent += 1
            return out
        return unary_handler

    def _send_headers(self, call: ServerCall, context: grpc.ServicerContext) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            initial = [("x-server", self.name)]
            initial += [(k, v) for k, v in call.metadata if k.startswith("x-echo-")]
            context.send_initial_metadata(initial)

    def _received(self, request_iterator: Iterator[bytes], call: ServerCall) -> Iterator[bytes]:
        h = hashlib.sha256()
        for m in request_iterator:
            h.update(struct.pack(">I", len(m)))
            h.update(m)
            call.received += 1
            call.received_sha256 = h.hexdigest()
            yield m
        call.received_sha256 = h.hexdigest()

    # ---- the methods
    def _unary(self, request: bytes, context: grpc.ServicerContext, call: ServerCall) -> bytes:
        call.request = request
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext,
                       call: ServerCall) -> Iterator[bytes]:
        call.request = request
        spec = json.loads(request)
        interval = float(spec.get("interval", 0))
        for i in range(int(spec["count"])):
            if interval and i:
                time.sleep(interval)
            if not context.is_active():
                return
            yield stream_message(i, int(spec.get("size", 16)))

    def _client_stream(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext,
                       call: ServerCall) -> bytes:
        total = 0
        for m in self._received(request_iterator, call):
            total += len(m)
        return json.dumps({"count": call.received, "bytes": total,
                           "sha256": call.received_sha256}).encode()

    def _bidi(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext,
              call: ServerCall) -> Iterator[bytes]:
        yield from self._received(request_iterator, call)

    def _status(self, request: bytes, context: grpc.ServicerContext, call: ServerCall) -> bytes:
        call.request = request
        spec = json.loads(request)

        def md(pairs: list) -> list[tuple[str, str | bytes]]:
            return [(k, bytes.fromhex(v) if k.endswith("-bin") else v) for k, v in pairs]

        if spec.get("headers_first"):
            self._send_headers(call, context)
        trailers = md(spec.get("trailers", []))
        context.set_trailing_metadata((("x-server-trailer", self.name), *trailers))
        code = _code(spec["code"])
        if code is not grpc.StatusCode.OK:
            context.abort(code, spec.get("message", ""))
        return b"status ok"

    def _slow(self, request: bytes, context: grpc.ServicerContext, call: ServerCall) -> bytes:
        call.request = request
        spec = json.loads(request)
        if spec.get("headers_first"):
            self._send_headers(call, context)
        seconds = float(spec["seconds"])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not context.is_active():
                return b""
            time.sleep(0.005)
        return b"slept"

    def _flaky(self, request: bytes, context: grpc.ServicerContext, call: ServerCall) -> bytes:
        call.request = request
        spec = json.loads(request)
        with self._lock:
            self.flaky[spec["key"]] += 1
            n = self.flaky[spec["key"]]
        if n <= int(spec["failures"]):
            context.abort(_code(spec.get("code", 14)), f"flaky failure {n}")
        return f"ok after {n}".encode()


def _code(value: int | str | grpc.StatusCode) -> grpc.StatusCode:
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, str):
        return grpc.StatusCode[value]
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    raise ValueError(f"no grpc status code {value}")


# --------------------------------------------------------------------------- gRPC client


@dataclass
class Reply:
    """How one RPC ended, as the client saw it."""

    code: grpc.StatusCode
    details: str | None
    initial_metadata: tuple = ()
    trailing_metadata: tuple = ()
    messages: list[bytes] = field(default_factory=list)

    @property
    def message(self) -> bytes:
        assert len(self.messages) == 1, f"{len(self.messages)} messages: {self}"
        return self.messages[0]

    def json(self) -> Any:
        return json.loads(self.message)

    def initial(self, key: str) -> str | bytes | None:
        return _md_get(self.initial_metadata, key)

    def trailer(self, key: str) -> str | bytes | None:
        return _md_get(self.trailing_metadata, key)

    def ok(self) -> Reply:
        assert self.code is grpc.StatusCode.OK, f"RPC failed: {self.code} {self.details!r}"
        return self


def _md_get(md: Iterable, key: str) -> Any:
    for m in md or ():
        k, v = (m.key, m.value) if hasattr(m, "key") else m
        if k == key:
            return v
    return None


def _reply_from_error(e: grpc.RpcError, messages: list[bytes]) -> Reply:
    call: Any = e
    return Reply(call.code(), call.details(), tuple(call.initial_metadata() or ()),
                 tuple(call.trailing_metadata() or ()), messages)


class EchoClient:
    """A blocking client of ``test.Echo`` on one channel (one HTTP/2 connection).

    ``authority`` overrides the ``:authority`` the channel sends (default: the target)."""

    def __init__(self, target: str, *, authority: str | None = None,
                 options: Iterable[tuple[str, Any]] = ()) -> None:
        opts = list(options)
        if authority:
            opts.append(("grpc.default_authority", authority))
        # No client-side retries: what the test sees is what was sent. A local subchannel
        # pool: grpc-core otherwise shares one connection among all channels of the process
        # with the same target, and each client here stands for one HTTP/2 connection.
        opts += [("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1),
                 ("grpc.max_receive_message_length", 64 << 20),
                 ("grpc.max_send_message_length", 64 << 20)]
        self.target = target
        self.channel = grpc.insecure_channel(target, options=opts)
        kw = {"request_serializer": _identity, "response_deserializer": _identity}
        self._uu = {m: self.channel.unary_unary(path(m), **kw)
                    for m in ("Unary", "Status", "Slow", "Flaky")}
        self._us = self.channel.unary_stream(path("ServerStream"), **kw)
        self._su = self.channel.stream_unary(path("ClientStream"), **kw)
        self._ss = self.channel.stream_stream(path("Bidi"), **kw)

    def close(self) -> None:
        self.channel.close()  # cancels every RPC still in flight

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 5.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # ---- one helper per kind; none raises on a non-OK status
    def _unary_call(self, method: str, request: bytes, metadata: Iterable = (),
                    timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        try:
            resp, call = self._uu[method].with_call(request, metadata=tuple(metadata),
                                                    timeout=timeout)
        except grpc.RpcError as e:
            return _reply_from_error(e, [])
        return Reply(call.code(), call.details(), tuple(call.initial_metadata() or ()),
                     tuple(call.trailing_metadata() or ()), [resp])

    def unary(self, payload: bytes, metadata: Iterable = (),
              timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        return self._unary_call("Unary", payload, metadata, timeout)

    def status(self, code: int | str | grpc.StatusCode, message: str = "",
               trailers: Iterable[tuple[str, str | bytes]] = (), metadata: Iterable = (),
               timeout: float | None = DEFAULT_TIMEOUT, headers_first: bool = False) -> Reply:
        spec = {"code": _code(code).value[0], "message": message, "headers_first": headers_first,
                "trailers": [[k, v.hex() if isinstance(v, bytes) else v] for k, v in trailers]}
        return self._unary_call("Status", json.dumps(spec).encode(), metadata, timeout)

    def slow(self, seconds: float, metadata: Iterable = (),
             timeout: float | None = DEFAULT_TIMEOUT, headers_first: bool = False) -> Reply:
        spec = {"seconds": seconds, "headers_first": headers_first}
        return self._unary_call("Slow", json.dumps(spec).encode(), metadata, timeout)

    def flaky(self, key: str, failures: int, code: int | str = "UNAVAILABLE",
              metadata: Iterable = (), timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        spec = {"key": key, "failures": failures, "code": _code(code).value[0]}
        return self._unary_call("Flaky", json.dumps(spec).encode(), metadata, timeout)

    def _collect(self, call: Any) -> Reply:
        messages: list[bytes] = []
        try:
            messages.extend(call)
        except grpc.RpcError as e:
            return _reply_from_error(e, messages)
        return Reply(call.code(), call.details(), tuple(call.initial_metadata() or ()),
                     tuple(call.trailing_metadata() or ()), messages)

    def server_stream(self, count: int, size: int = 16, interval: float = 0.0,
                      metadata: Iterable = (), timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        req = json.dumps({"count": count, "size": size, "interval": interval}).encode()
        return self._collect(self._us(req, metadata=tuple(metadata), timeout=timeout))

    def client_stream(self, messages: Iterable[bytes], metadata: Iterable = (),
                      timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        try:
            resp, call = self._su.with_call(iter(messages), metadata=tuple(metadata),
                                            timeout=timeout)
        except grpc.RpcError as e:
            return _reply_from_error(e, [])
        return Reply(call.code(), call.details(), tuple(call.initial_metadata() or ()),
                     tuple(call.trailing_metadata() or ()), [resp])

    def bidi(self, messages: Iterable[bytes], metadata: Iterable = (),
             timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        return self._collect(self._ss(iter(messages), metadata=tuple(metadata), timeout=timeout))

    # ---- cancellation from the client side
    def server_stream_cancel(self, after: int, count: int = 100_000, size: int = 16,
                             interval: float = 0.01, metadata: Iterable = (),
                             timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        """Start a long ServerStream, read ``after`` messages, then cancel it."""
        req = json.dumps({"count": count, "size": size, "interval": interval}).encode()
        call = self._us(req, metadata=tuple(metadata), timeout=timeout)
        messages = []
        for m in call:
            messages.append(m)
            if len(messages) >= after:
                break
        call.cancel()
        return self._collect_after_cancel(call, messages)

    def slow_cancel(self, seconds: float, after: float, metadata: Iterable = (),
                    timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        """Start a Slow call and cancel it after ``after`` seconds."""
        fut = self._uu["Slow"].future(json.dumps({"seconds": seconds}).encode(),
                                      metadata=tuple(metadata), timeout=timeout)
        time.sleep(after)
        fut.cancel()
        try:
            fut.result()
        except grpc.FutureCancelledError:
            return Reply(grpc.StatusCode.CANCELLED, "cancelled by the client")
        except grpc.RpcError as e:
            return _reply_from_error(e, [])
        return Reply(fut.code(), fut.details(), tuple(fut.initial_metadata() or ()),
                     tuple(fut.trailing_metadata() or ()), [])

    def bidi_cancel(self, after: int, metadata: Iterable = (),
                    timeout: float | None = DEFAULT_TIMEOUT) -> Reply:
        """A Bidi call whose request stream stays open; cancel after ``after`` echoes."""
        gate = threading.Event()

        def requests() -> Iterator[bytes]:
            for i in range(after):
                yield bidi_message(i)
            gate.wait(timeout or DEFAULT_TIMEOUT)  # keep the request side open

        call = self._ss(requests(), metadata=tuple(metadata), timeout=timeout)
        messages = []
        try:
            for m in call:
                messages.append(m)
                if len(messages) >= after:
                    break
            call.cancel()
            return self._collect_after_cancel(call, messages)
        finally:
            gate.set()

    def _collect_after_cancel(self, call: Any, messages: list[bytes]) -> Reply:
        try:
            messages.extend(call)
        except grpc.RpcError as e:
            return _reply_from_error(e, messages)
        return Reply(call.code(), call.details(), (), (), messages)


class AsyncEchoClient:
    """``EchoClient``'s helpers as coroutines, each run on this client's own threads."""

    def __init__(self, target: str, *, authority: str | None = None,
                 options: Iterable[tuple[str, Any]] = (), threads: int = 16) -> None:
        self.sync = EchoClient(target, authority=authority, options=options)
        self._pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc-client")

    async def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))

    async def wait_ready(self, timeout: float = 5.0) -> None:
        await self.run(self.sync.wait_ready, timeout)

    async def unary(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.unary, *a, **kw)

    async def status(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.status, *a, **kw)

    async def slow(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.slow, *a, **kw)

    async def flaky(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.flaky, *a, **kw)

    async def server_stream(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.server_stream, *a, **kw)

    async def client_stream(self, messages: Iterable[bytes], *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.client_stream, messages, *a, **kw)

    async def bidi(self, messages: Iterable[bytes], *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.bidi, messages, *a, **kw)

    async def server_stream_cancel(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.server_stream_cancel, *a, **kw)

    async def slow_cancel(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.slow_cancel, *a, **kw)

    async def bidi_cancel(self, *a: Any, **kw: Any) -> Reply:
        return await self.run(self.sync.bidi_cancel, *a, **kw)

    async def close(self) -> None:
        self.sync.close()  # unblocks every helper still running
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- h2c origin


class H2Origin:
    """An HTTP/2 (h2c, prior knowledge) and HTTP/1.1 upstream: hypercorn on its own thread.

    - ``/size/<n>``: n ``harness.pattern`` bytes with Content-Length.
    - anything else: JSON describing the request (method, path, headers, http_version, body
      length and sha256, peer port), also appended to ``seen``.
    Every response carries ``x-origin: <name>``.
    """

    def __init__(self, name: str = "h2origin") -> None:
        self.name = name
        self.port = 0
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def connections(self) -> set[int]:
        with self._lock:
            return {s["peer_port"] for s in self.seen}

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        from harness import pattern, sha256  # tests/integration is on sys.path

        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        client = scope.get("client") or ("", 0)
        info = {"method": scope["method"], "path": scope["path"]
                + (("?" + scope["query_string"].decode()) if scope["query_string"] else ""),
                "headers": headers, "http_version": scope["http_version"],
                "body_len": len(body), "sha256": sha256(body), "peer_port": client[1],
                "origin": self.name}
        with self._lock:
            self.seen.append(info)
        parts = scope["path"].strip("/").split("/")
        extra = [(b"x-origin", self.name.encode())]
        if len(parts) == 2 and parts[0] == "size":
            data = pattern(int(parts[1]))
            await send({"type": "http.response.start", "status": 200, "headers": extra + [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(data)).encode())]})
            step = 1 << 16
            for i in range(0, len(data), step):
                await send({"type": "http.response.body", "body": data[i:i + step],
                            "more_body": i + step < len(data)})
            return
        out = json.dumps(info).encode()
        await send({"type": "http.response.start", "status": 200, "headers": extra + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    def start(self) -> H2Origin:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        cfg = Config()
        # hypercorn takes ownership of (and closes) the descriptor it is given: pass a dup.
        cfg.bind = [f"fd://{os.dup(self._sock.fileno())}"]
        cfg.accesslog = None
        cfg.errorlog = None
        cfg.keep_alive_timeout = 120
        cfg.keep_alive_max_requests = 1 << 30
        cfg.graceful_timeout = 0.2
        cfg.h2_max_concurrent_streams = 1000
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()

            async def main() -> None:
                started.set()
                await serve(self._app, cfg, shutdown_trigger=self._stop.wait)

            try:
                loop.run_until_complete(main())
            except BaseException as e:  # noqa: BLE001 - reported by start()/stop()
                self._error = e
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"h2origin-{self.port}", daemon=True)
        self._thread.start()
        started.wait(5)
        # serve() binds asynchronously: wait until a connect succeeds.
        deadline = time.monotonic() + 5
        while True:
            if self._error is not None:
                raise RuntimeError(f"H2Origin failed to start: {self._error!r}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                if self._stop is not None:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("H2Origin did not come up")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


# --------------------------------------------------------------------------- raw HTTP/2 frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY",
               RST_STREAM: "RST_STREAM", SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE",
               PING: "PING", GOAWAY: "GOAWAY", WINDOW_UPDATE: "WINDOW_UPDATE",
               CONTINUATION: "CONTINUATION"}
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# error codes (RFC 9113 section 7)
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
               "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, \
    STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, \
    CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = \
    range(len(ERROR_NAMES))


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"error {code:#x}"


# settings identifiers
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, \
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = \
    range(1, 7)


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags,
                                                              stream_id & 0x7FFFFFFF) + payload


def settings_frame(pairs: Iterable[tuple[int, int]] = (), ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0,
                 b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping_frame(data: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def data_frame(stream_id: int, payload: bytes = b"", end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def rst_stream_frame(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def goaway_frame(last_stream_id: int, code: int = NO_ERROR) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code))


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(s: bytes) -> bytes:
    return _hpack_int(len(s), 7) + s  # no Huffman


def hpack_block(headers: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """A header block of literal fields without indexing (RFC 7541 6.2.2): no dynamic table
    state, so the same bytes can be sent any number of times."""
    out = bytearray()
    for name, value in headers:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        out += b"\x00" + _hpack_str(n) + _hpack_str(v)
    return bytes(out)


def headers_frames(stream_id: int, headers: Iterable[tuple[str | bytes, str | bytes]],
                   end_stream: bool = True, max_frame: int = 16384) -> bytes:
    """HEADERS (+ CONTINUATION frames when the block is larger than ``max_frame``)."""
    block = hpack_block(headers)
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = bytearray()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        flags = END_HEADERS if last else 0
        if i == 0:
            out += frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, part)
        else:
            out += frame(CONTINUATION, flags, stream_id, part)
    return bytes(out)


def request_headers(method: str = "GET", path_: str = "/", authority: str = "example.test",
                    extra: Iterable[tuple[str, str]] = (), scheme: str = "http"
                    ) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", scheme), (":path", path_),
            (":authority", authority), *extra]


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes
    headers: list[tuple[str, str]] | None = None  # decoded, for HEADERS (with CONTINUATIONs)

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, f"type{self.type}")

    @property
    def error_code(self) -> int:
        """RST_STREAM's code, or GOAWAY's."""
        if self.type == RST_STREAM:
            return struct.unpack(">I", self.payload[:4])[0]
        if self.type == GOAWAY:
            return struct.unpack(">I", self.payload[4:8])[0]
        raise ValueError(f"{self.name} has no error code")

    @property
    def last_stream_id(self) -> int:
        assert self.type == GOAWAY
        return struct.unpack(">I", self.payload[:4])[0] & 0x7FFFFFFF

    @property
    def settings(self) -> dict[int, int]:
        assert self.type == SETTINGS
        return {k: v for k, v in (struct.unpack(">HI", self.payload[i:i + 6])
                                  for i in range(0, len(self.payload) - 5, 6))}

    def header(self, name: str) -> str | None:
        for k, v in self.headers or ():
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        extra = ""
        if self.type in (RST_STREAM, GOAWAY) and len(self.payload) >= 4:
            code = self.error_code
            extra = f" {error_name(code)}"
        elif self.headers is not None:
            extra = f" {self.headers}"
        elif self.type == DATA:
            extra = f" {len(self.payload)} bytes"
        return f"<{self.name} s={self.stream_id} f={self.flags:#x}{extra}>"


@dataclass
class H2Response:
    stream_id: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None  # RST_STREAM code, when the stream was reset
    ended: bool = False

    @property
    def status(self) -> int | None:
        for k, v in self.headers:
            if k == ":status":
                return int(v)
        return None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def trailer(self, name: str) -> str | None:
        for k, v in self.trailers:
            if k == name:
                return v
        return None


class ConnectionClosed(Exception):
    pass


class RawH2:
    """A raw HTTP/2 connection: write frames as bytes, read frames as ``Frame`` objects.

    As frames are read, server SETTINGS are ACKed (``auto_ack``) and the flow-control credit
    of every DATA frame is given back at once (``auto_window``); nothing else is automatic
    (no PING answers, no flow control on what it sends). ``server_settings`` holds the first
    SETTINGS received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []  # everything read so far, in order
        self.server_settings: dict[int, int] | None = None
        self.auto_ack = True
        self.auto_window = True
        self.closed_how: str | None = None  # "eof" | "reset" once the peer closed
        self._buf = bytearray()
        self._queue: list[Frame] = []  # parsed, not yet looked at by read_until
        self._pending_headers: Frame | None = None
        self._block = bytearray()
        import hpack

        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 16

    @classmethod
    async def open(cls, addr: tuple[str, int], *, rcvbuf: int | None = None,
                   preface: bool = True, settings: Iterable[tuple[int, int]] = ()) -> RawH2:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, addr), 5)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
        conn = cls(reader, writer)
        if preface:
            await conn.send(PREFACE + settings_frame(settings))
        return conn

    async def send(self, data: bytes, timeout: float = 5.0) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    def _write(self, data: bytes) -> None:
        """A write on the side (ACKs, WINDOW_UPDATEs): dropped once the connection is gone."""
        if not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- reading
    def _parse(self) -> list[Frame]:
        out = []
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < 9 + length:
                break
            ftype, flags, sid = struct.unpack(">BBI", self._buf[3:9])
            payload = bytes(self._buf[9:9 + length])
            del self._buf[:9 + length]
            f = Frame(ftype, flags, sid & 0x7FFFFFFF, payload)
            if ftype == HEADERS:
                body = payload
                pad = 0
                if flags & PADDED:
                    pad, body = body[0], body[1:]
                if flags & PRIORITY_FLAG:
                    body = body[5:]
                if pad:
                    body = body[:-pad]
                self._block = bytearray(body)
                if flags & END_HEADERS:
                    f.headers = self._decode()
                else:
                    self._pending_headers = f
                    continue
            elif ftype == CONTINUATION and self._pending_headers is not None:
                self._block += payload
                if flags & END_HEADERS:
                    f = self._pending_headers
                    f.flags |= END_HEADERS
                    self._pending_headers = None
                    f.headers = self._decode()
                else:
                    continue
            elif ftype == DATA and length and self.auto_window:
                # give the flow-control credit back at once (the stream's only while it lasts)
                self._write(window_update_frame(0, length) + (
                    b"" if flags & END_STREAM else window_update_frame(sid & 0x7FFFFFFF, length)))
            elif ftype == SETTINGS and not flags & ACK:
                if self.server_settings is None:
                    self.server_settings = f.settings
                if self.auto_ack:
                    self._write(settings_frame(ack=True))
            out.append(f)
        return out

    def _decode(self) -> list[tuple[str, str]]:
        pairs = self._decoder.decode(bytes(self._block), raw=True)
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs]

    async def _fill(self) -> bool:
        """Read more bytes; False once the peer has closed."""
        if self.closed_how is not None:
            return False
        try:
            data = await self.reader.read(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            self.closed_how = "reset"
            return False
        if not data:
            self.closed_how = "eof"
            return False
        self._buf += data
        return True

    async def read_until(self, predicate: Callable[[Frame], bool],
                         timeout: float = 5.0) -> Frame:
        """Read frames until one satisfies ``predicate`` (frames before it are kept in
        ``frames``); raises ConnectionClosed if the peer closes first."""
        async def go() -> Frame:
            while True:
                self._queue.extend(self._parse())
                while self._queue:
                    f = self._queue.pop(0)
                    self.frames.append(f)
                    if predicate(f):
                        return f
                if not await self._fill():
                    raise ConnectionClosed(
                        f"closed ({self.closed_how}) before the frame; got {self.frames[-8:]}")
        try:
            return await asyncio.wait_for(go(), timeout)
        except TimeoutError:
            raise AssertionError(f"no such frame within {timeout} s; got {self.frames[-8:]}"
                                 ) from None

    async def until_closed(self, timeout: float = 5.0) -> str:
        """Read (and keep) every frame until the peer closes; returns "eof" or "reset"."""
        async def go() -> str:
            while True:
                self._queue.extend(self._parse())
                self.frames.extend(self._queue)
                self._queue.clear()
                if not await self._fill():
                    self.frames.extend(self._parse())
                    return self.closed_how or "eof"
        try:
            return await asyncio.wait_for(go(), timeout)
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout} s; "
                                 f"last frames {self.frames[-8:]}") from None

    async def handshake(self, timeout: float = 5.0) -> dict[int, int]:
        """Wait for the server's SETTINGS; returns them."""
        await self.read_until(lambda f: f.type == SETTINGS and not f.flags & ACK, timeout)
        assert self.server_settings is not None
        return self.server_settings

    def goaway(self) -> Frame | None:
        for f in self.frames:
            if f.type == GOAWAY:
                return f
        return None

    # ---- requests
    async def request(self, stream_id: int, method: str = "GET", path_: str = "/",
                      authority: str = "example.test", extra: Iterable[tuple[str, str]] = (),
                      body: bytes | None = None) -> None:
        """HEADERS, then ``body`` (if given) in DATA frames of at most 16 KiB, the last one with
        END_STREAM. No flow control: keep bodies within the peer's initial windows."""
        out = headers_frames(stream_id, request_headers(method, path_, authority, extra),
                             end_stream=body is None)
        if body is not None:
            step = 16384
            for i in range(0, max(len(body), 1), step):
                out += data_frame(stream_id, body[i:i + step], end_stream=i + step >= len(body))
        await self.send(out)

    async def response(self, stream_id: int, timeout: float = 5.0) -> H2Response:
        """Read until ``stream_id`` ends (END_STREAM or RST_STREAM); collects its frames."""
        resp = H2Response(stream_id)
        for f in self.frames:  # frames of this stream read while waiting for another one
            self._apply(resp, f)

        def done(f: Frame) -> bool:
            if f.stream_id == stream_id:
                self._apply(resp, f)
            return resp.ended or resp.reset is not None

        if not (resp.ended or resp.reset is not None):
            await self.read_until(done, timeout)
        return resp

    @staticmethod
    def _apply(resp: H2Response, f: Frame) -> None:
        if f.stream_id != resp.stream_id:
            return
        if f.type == HEADERS:
            if not resp.headers or (resp.status or 0) < 200:
                resp.headers = f.headers or []
            else:
                resp.trailers = f.headers or []
        elif f.type == DATA:
            resp.body += f.payload
        elif f.type == RST_STREAM:
            resp.reset = f.error_code
        if f.type in (HEADERS, DATA) and f.flags & END_STREAM:
            resp.ended = True


@dataclass
class FloodResult:
    sent: int  # units written before the writer stopped
    write_error: str | None  # why the writer stopped early, if it did
    closed: str  # "eof" | "reset"
    goaway: Frame | None
    frames: list[Frame]
    elapsed: float


async def flood(addr: tuple[str, int], unit: bytes | Callable[[int], bytes], count: int, *,
                prelude: bytes = b"", batch: int | None = None,
                timeout: float = 10.0) -> FloodResult:
    """Open a connection (preface + empty SETTINGS + ``prelude``), then write ``count`` units
    (``unit`` bytes, or ``unit(i)``) while reading concurrently, until the peer closes or
    everything is written; then wait (within ``timeout`` overall) for the close. Fails the
    test if the connection is still open at the end.

    Units go out ``batch`` at a time (default: ~256 KiB per write), so that the peer reads
    many frames at once, as from a real attacker: a defence that counts the answers queued
    while it processes one read (nghttp2's, Envoy's) sees the flood. Reading concurrently
    keeps the peer's answers flowing, so its GOAWAY is not stuck behind them when it closes."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = await RawH2.open(addr)
    await conn.send(prelude)
    reader = asyncio.ensure_future(conn.until_closed(timeout))
    if batch is None:
        size = len(unit) if isinstance(unit, bytes) else len(unit(0))
        batch = max(1, (256 << 10) // size)
    sent = 0
    write_error = None
    try:
        for start in range(0, count, batch):
            if reader.done():
                break
            n = min(batch, count - start)
            chunk = unit * n if isinstance(unit, bytes) else b"".join(
                unit(start + k) for k in range(n))
            try:
                conn.writer.write(chunk)
                await asyncio.wait_for(conn.writer.drain(), max(0.1, timeout - (loop.time() - t0)))
            except (ConnectionError, TimeoutError, OSError, RuntimeError) as e:
                # RuntimeError: uvloop's "handler is closed", a write after the peer closed
                write_error = f"{type(e).__name__}: {e}"
                break
            sent += n
        closed = await reader
    finally:
        reader.cancel()
        conn.writer.transport.abort()
    return FloodResult(sent, write_error, closed, conn.goaway(), conn.frames, loop.time() - t0)


# --------------------------------------------------------------------------- slow h2 client


@dataclass
class SlowDownload:
    status: int | None
    headers: list[tuple[str, str]]
    length: int
    sha256: str
    elapsed: float


async def slow_h2_download(addr: tuple[str, int], path_: str, *, rate: float,
                           authority: str = "example.test", window: int = 65535,
                           pause_at: int | None = None,
                           pause: Callable[[], Awaitable[Any]] | None = None,
                           timeout: float = 60.0) -> SlowDownload:
    """GET ``path_`` over h2c with the ``h2`` package, acknowledging the DATA it receives (and
    so reopening the flow-control windows) no faster than ``rate`` bytes/s; socket reads
    stop whenever it is ahead of that rate. Once ``pause_at`` bytes have arrived it awaits
    ``pause()`` without reading or acknowledging anything (a stalled reader). Returns the
    body's length and sha256."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(addr[0], addr[1])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
        h2.settings.SettingCodes.ENABLE_PUSH: 0})
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers("GET", path_, authority), end_stream=True)
    writer.write(conn.data_to_send())
    h = hashlib.sha256()
    got = 0
    status = None
    headers: list[tuple[str, str]] = []
    t0 = loop.time()
    ended = False
    try:
        async with asyncio.timeout(timeout):
            while not ended:
                await writer.drain()
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionClosed(f"closed after {got} bytes")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in ev.headers]
                        status = int(dict(headers)[":status"])
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        h.update(ev.data)
                        got += len(ev.data)
                        if pause is not None and pause_at is not None and got >= pause_at:
                            await pause()
                            pause = None
                            t0 = loop.time() - got / rate
                        ahead = got / rate - (loop.time() - t0)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        ended = True
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        raise ConnectionClosed(f"stream reset ({ev.error_code}) after {got}")
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        raise ConnectionClosed(f"GOAWAY {ev.error_code} after {got} bytes")
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    return SlowDownload(status, headers, got, h.hexdigest(), loop.time() - t0)


# --------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> int:
    """Serve test.Echo until SIGTERM/SIGINT; prints ``PORT <n>`` once listening."""
    import argparse
    import signal

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--name", default="grpc")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--workers", type=int, default=16, help="handler threads")
    args = p.parse_args(argv)
    server = EchoServer(args.name, port=args.port, max_workers=args.workers,
                        record=False).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"PORT {server.port}", flush=True)
    stop.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

