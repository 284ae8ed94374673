"""A small HTTP/1.1 server side without I/O: bytes in, requests out; responses to bytes.

The admin API needs GET and small POSTs from curl, Prometheus and `omnirelay status`;
this is enough for them (Content-Length bodies, keep-alive, pipelining in order) and is
shared by the two transports in `server` (asyncio for an embedded Relay, a poll loop for
the supervisor, which runs no event loop).
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024


class HttpError(Exception):
    """The request cannot be read; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names; a repeated header keeps its last value
    body: bytes
    keep_alive: bool


class PushedBody(Protocol):
    """A streamed body whose chunks someone else's loop produces (the supervisor's taps):
    the poll-loop server attaches its connection, and calls `expire` once `deadline` is
    past and `cancel` when the client left."""

    deadline: float

    def attach(self, send: Callable[[bytes], bool], end: Callable[[bytes], None]) -> None: ...
    def expire(self, now: float) -> None: ...
    def cancel(self) -> None: ...


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A streamed body (POST /tap): chunks sent with chunked framing as they come, then the
    # connection closes. An async iterator for the asyncio server, a PushedBody for the
    # poll-loop one.
    stream: AsyncIterator[bytes] | PushedBody | None = None

    @classmethod
    def json(cls, status: int, obj: Any, headers: list[tuple[str, str]] | None = None
             ) -> Response:
        body = json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"
        return cls(status, body, "application/json", headers or [])

    @classmethod
    def error(cls, status: int, message: str, headers: list[tuple[str, str]] | None = None
              ) -> Response:
        return cls.json(status, {"error": message}, headers)

    def encode(self, keep_alive: bool, head_only: bool = False) -> bytes:
        reason = HTTPStatus(self.status).phrase if self.status in HTTPStatus._value2member_map_ \
            else ""
        lines = [f"HTTP/1.1 {self.status} {reason}",
                 f"content-type: {self.content_type}",
                 "transfer-encoding: chunked" if self.stream is not None
                 else f"content-length: {len(self.body)}",
                 "cache-control: no-store"]
        keep_alive = keep_alive and self.stream is None
        lines += [f"{k}: {v}" for k, v in self.headers]
        if not keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class RequestReader:
    """Feed bytes, take whole requests."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> Request | None:
        """The next whole request, None if more bytes are needed; raises HttpError."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                raise HttpError(431, "request head too large")
            return None
        if end > MAX_HEAD:
            raise HttpError(431, "request head too large")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "malformed request line") from None
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505 if version.startswith("HTTP/") else 400,
                            "unsupported HTTP version")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked request bodies are not supported; send content-length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "invalid content-length") from None
        if length < 0:
            raise HttpError(400, "invalid content-length")
        if length > MAX_BODY:
            raise HttpError(413, "request body too large")
        if len(self.buf) < end + 4 + length:
            return None
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        conn = headers.get("connection", "").lower()
        keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        parts = urlsplit(target)
        return Request(method, parts.path or "/", dict(parse_qsl(parts.query)), headers, body,
                       keep_alive)
