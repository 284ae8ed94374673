"""Two transports for the admin app: asyncio (an embedded Relay) and a poll loop (the
supervisor of `omnirelay run`, which must not run an event loop: it forks workers).

Both bind a plain listening socket (no SO_REUSEPORT: a second process on the same admin
port is an error), answer requests in order on keep-alive connections, and close
connections idle for IDLE_TIMEOUT.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import selectors
import socket
import time
from collections.abc import AsyncIterator, Callable

from .app import AdminApp
from .http import HttpError, PushedBody, RequestReader, Response

log = logging.getLogger("omnirelay.admin")

IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 64
MAX_PENDING_OUTPUT = 8 * 1024 * 1024  # stop reading a client that does not read replies
MAX_STREAM_BACKLOG = 1024 * 1024  # unsent streamed output past which a tap skips records


class AdminBindError(OSError):
    """The admin address cannot be bound; the message says which."""


def bind_admin_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise AdminBindError(f"admin: cannot listen on {where}: {e.strerror or e}") from None
    return sock


def _answer(app: AdminApp, reader: RequestReader
            ) -> tuple[list[bytes], bool, AsyncIterator[bytes] | PushedBody | None]:
    """Encoded responses for the whole requests in `reader`, whether to keep the
    connection open afterwards, and the body stream of a streamed last response."""
    out: list[bytes] = []
    while True:
        try:
            request = reader.next()
        except HttpError as e:
            out.append(Response.error(e.status, str(e)).encode(keep_alive=False))
            return out, False, None
        if request is None:
            return out, True, None
        response = app.handle(request)
        out.append(response.encode(request.keep_alive, head_only=request.method == "HEAD"))
        if response.stream is not None:
            return out, False, response.stream
        if not request.keep_alive:
            return out, False, None


# --------------------------------------------------------------------------- asyncio


class AsyncAdminServer:
    """The admin app on the running asyncio loop."""

    def __init__(self, app: AdminApp):
        self.app = app
        self.server: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] | None = None
        self._conns: set[_AdminProtocol] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        sock = bind_admin_socket(host, port)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _AdminProtocol(self), sock=sock)
        self.address = sock.getsockname()[:2]
        return self.address

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for c in list(self._conns):
            c.transport.close()  # after what is buffered (a reply to POST /drain, say)
        self._conns.clear()
        await self.server.wait_closed()
        self.server = None


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, owner: AsyncAdminServer):
        self.owner = owner
        self.reader = RequestReader()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.streaming: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.owner._conns) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.owner._conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.streaming is not None:
            return  # a streamed response owns the connection until it ends
        self._arm()
        self.reader.feed(data)
        out, keep, stream = _answer(self.owner.app, self.reader)
        for chunk in out:
            self.transport.write(chunk)
        if stream is not None:
            if self.timer is not None:
                self.timer.cancel()
            self.streaming = asyncio.get_running_loop().create_task(self._pump(stream))
        elif not keep:
            self.transport.close()

    async def _pump(self, stream: AsyncIterator[bytes]) -> None:
        # Chunked framing; the stream's own bounds (count, time) end it.
        try:
            async for chunk in stream:
                if self.transport.is_closing():
                    break
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if not self.transport.is_closing():
                self.transport.write(b"0\r\n\r\n")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()  # runs the stream's cleanup (a tap unregisters)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.streaming is not None:
            self.streaming.cancel()  # the client left: end the tap
        self.owner._conns.discard(self)


# --------------------------------------------------------------------------- poll loop


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn:
    __slots__ = ("closing", "deadline", "out", "reader", "sock", "stream")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.reader = RequestReader()
        self.out = bytearray()
        self.closing = False
        self.deadline = now + IDLE_TIMEOUT
        self.stream: PushedBody | None = None  # a streamed response in progress

    def due(self) -> float:
        return self.stream.deadline if self.stream is not None else self.deadline


class PolledAdminServer:
    """The admin app driven by someone else's selector (the supervisor's `_step`).

    The owner calls `attach(sel)` once; the selector's key data for our sockets is a
    callable taking the ready events. `timeout()` says how soon `run_timers()` is due;
    `fds()` lists the descriptors a forked child must close. A streamed response (a tap)
    is a PushedBody: the owner's loop pushes its chunks; it ends at its own deadline, and
    is cancelled when its client leaves."""

    def __init__(self, app: AdminApp, host: str, port: int):
        self.app = app
        self.sock = bind_admin_socket(host, port)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._sel: selectors.BaseSelector | None = None
        self._conns: dict[int, _Conn] = {}

    def attach(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self.sock, selectors.EVENT_READ, self._on_accept)

    def fds(self) -> list[int]:
        return [self.sock.fileno(), *self._conns]

    def timeout(self, now: float) -> float | None:
        if not self._conns:
            return None
        return max(0.0, min(c.due() for c in self._conns.values()) - now)

    def run_timers(self, now: float) -> None:
        for fd, c in list(self._conns.items()):
            if c.stream is not None:
                if c.stream.deadline <= now:
                    c.stream.expire(now)  # ends it: the last chunk, then the close
            elif c.deadline <= now:
                self._close(fd)

    def forget(self) -> None:
        """In a forked child: close the descriptors, leave the (shared) selector alone."""
        for c in self._conns.values():
            os.close(c.sock.detach())
        self._conns.clear()
        os.close(self.sock.detach())

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        for fd in list(self._conns):
            self._close(fd)
        if self._sel is not None:
            try:
                self._sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()

    # ---- events ----
    def _on_accept(self, events: int) -> None:
        now = time.monotonic()
        for _ in range(16):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("admin: cannot accept: %s", e)
                    return
                raise
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            fd = sock.fileno()
            self._conns[fd] = _Conn(sock, now)
            self._sel.register(sock, selectors.EVENT_READ, self._handler(fd))

    def _handler(self, fd: int) -> Callable[[int], None]:
        return lambda events: self._on_ready(fd, events)

    def _on_ready(self, fd: int, events: int) -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        c.deadline = time.monotonic() + IDLE_TIMEOUT
        if events & selectors.EVENT_READ and not c.closing:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(fd)
                return
            if data == b"":
                self._close(fd)
                return
            if data and c.stream is None:  # a streamed response owns the connection
                c.reader.feed(data)
                out, keep, stream = _answer(self.app, c.reader)
                for chunk in out:
                    c.out += chunk
                c.closing = not keep
                if stream is not None:
                    self._stream(fd, c, stream)
        self._flush(fd, c)

    def _stream(self, fd: int, c: _Conn, body: PushedBody) -> None:
        c.stream = body
        c.closing = False  # until the body ends
        c.deadline = math.inf

        def send(data: bytes) -> bool:
            if self._conns.get(fd) is not c or len(c.out) >= MAX_STREAM_BACKLOG:
                return False
            c.out += _chunk(data)
            self._flush(fd, c)
            return True

        def end(data: bytes) -> None:
            if self._conns.get(fd) is not c:
                return
            c.stream = None
            c.out += _chunk(data) + b"0\r\n\r\n"
            c.closing = True
            c.deadline = time.monotonic() + IDLE_TIMEOUT
            self._flush(fd, c)

        body.attach(send, end)

    def _flush(self, fd: int, c: _Conn) -> None:
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(fd)
                return
            del c.out[:n]
        if not c.out and c.closing:
            self._close(fd)
            return
        want = selectors.EVENT_WRITE if c.out else 0
        if not c.closing and len(c.out) < MAX_PENDING_OUTPUT:
            want |= selectors.EVENT_READ
        self._sel.modify(c.sock, want or selectors.EVENT_WRITE, self._handler(fd))

    def _close(self, fd: int) -> None:
        c = self._conns.pop(fd, None)
        if c is None:
            return
        if c.stream is not None:
            c.stream.cancel()  # the client left (or the server stops): end the tap
            c.stream = None
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
