"""Taps: stream the heads of matching requests for debugging (admin `POST /tap`).

A tap is bounded in count and time and at most MAX_TAPS run at once. While none runs, a
listener without tracing has no request hook at all (zero cost); starting the first tap
installs the hook on the live listeners and ending the last one removes it (`on_change`).
Headers that carry credentials are redacted.

Under `omnirelay run` the workers serve the requests: the supervisor's RelayedTaps sends
each worker {"tap_start": {...}} and {"tap_stop": id} commands, each worker runs the tap on
its own TapHub with a `sink` that reports the records back, and the supervisor holds the
count and time bound across all workers (RelayedTap).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

MAX_TAPS = 4
MAX_COUNT = 1000  # requests one tap may stream
MAX_SECONDS = 300.0
QUEUE = 256  # records waiting to be written; past that a tap skips records (counted)
REDACTED = "[redacted]"
SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                       "x-api-key", "x-auth-token", "x-forwarded-client-cert"})


class TapError(ValueError):
    """A tap request that cannot be served; the message says why."""


class TapBusy(TapError):
    """MAX_TAPS taps are running."""


@dataclass(frozen=True)
class TapFilter:
    """Which requests a tap sees: all of the given conditions hold."""

    listener: str | None = None
    path_prefix: str | None = None
    header: str | None = None  # lowercase name that must be present
    header_value: str | None = None  # ... with exactly this value

    @classmethod
    def parse(cls, listener: str | None, path: str | None, header: str | None) -> TapFilter:
        name = value = None
        if header:
            name, sep, v = header.partition(":")
            name = name.strip().lower()
            if not name:
                raise TapError("header must be 'name' or 'name:value'")
            value = v.strip() if sep else None
        if path is not None and not path.startswith("/"):
            raise TapError("path must be a prefix starting with '/'")
        return cls(listener or None, path or None, name, value)

    def matches(self, listener: str, stream: Any) -> bool:
        if self.listener is not None and listener != self.listener:
            return False
        if self.path_prefix is not None:
            target = stream.target
            if target is None or not target.decode("latin-1").startswith(self.path_prefix):
                return False
        if self.header is not None:
            h = stream.request_headers
            got = h.get(self.header) if h is not None else None
            if got is None or (self.header_value is not None and got != self.header_value):
                return False
        return True


def check_limits(count: int, seconds: float, running: int) -> None:
    if not 1 <= count <= MAX_COUNT:
        raise TapError(f"max must be between 1 and {MAX_COUNT}")
    if not 0 < seconds <= MAX_SECONDS:
        raise TapError(f"seconds must be in (0, {MAX_SECONDS:g}]")
    if running >= MAX_TAPS:
        raise TapBusy(f"{MAX_TAPS} taps are running; wait for one to end")


def _done(reason: str, skipped: int) -> bytes:
    return json.dumps({"tap": "done", "reason": reason, "skipped": skipped}).encode() + b"\n"


class Tap:
    """A tap of this process. Its records wait in a queue for `lines()`, or with a `sink`
    (a worker of `omnirelay run`) go straight to it."""

    def __init__(self, hub: TapHub, flt: TapFilter, count: int, seconds: float,
                 sink: Callable[[dict], None] | None = None) -> None:
        self.hub = hub
        self.filter = flt
        self.left = count
        self.deadline = time.monotonic() + seconds
        self.queue: asyncio.Queue[dict | None] = asyncio.Queue(QUEUE)
        self.skipped = 0
        self.sink = sink

    def stream(self) -> AsyncIterator[bytes]:
        """The response body, for the asyncio admin server."""
        return self.lines()

    def push(self, record: dict) -> None:
        if self.left <= 0:
            return
        if self.sink is not None:
            self.sink(record)
        else:
            try:
                self.queue.put_nowait(record)
            except asyncio.QueueFull:
                self.skipped += 1
                return
        self.left -= 1
        if self.left == 0:
            self.hub.remove(self)

    async def lines(self) -> AsyncIterator[bytes]:
        """JSON lines of matching requests until the count or the time is used up; a last
        line {"tap": "done", ...} says why it ended."""
        why = "count"
        try:
            while True:
                left = self.deadline - time.monotonic()
                if self.left <= 0 and self.queue.empty():
                    break
                if left <= 0:
                    why = "time"
                    break
                try:
                    record = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    why = "time"
                    break
                yield json.dumps(record).encode() + b"\n"
        finally:
            self.hub.remove(self)
        yield _done(why, self.skipped)


class TapHub:
    """The taps of one process. `on_change()` runs when the first tap starts and when the
    last one ends (the owner installs or removes the listeners' request hooks)."""

    def __init__(self) -> None:
        self.taps: list[Tap] = []
        self.on_change: Callable[[], None] | None = None

    def start(self, flt: TapFilter, count: int, seconds: float,
              sink: Callable[[dict], None] | None = None) -> Tap:
        check_limits(count, seconds, len(self.taps))
        tap = Tap(self, flt, count, seconds, sink)
        self.taps.append(tap)
        if len(self.taps) == 1 and self.on_change is not None:
            self.on_change()
        return tap

    def remove(self, tap: Tap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
            if not self.taps and self.on_change is not None:
                self.on_change()

    def start_command(self, command: dict, sink: Callable[[dict], None]) -> Tap:
        """Start the tap of a supervisor's {"tap_start": command} (RelayedTap.command)."""
        flt = TapFilter(**{f.name: command.get(f.name) for f in dataclasses.fields(TapFilter)})
        return self.start(flt, int(command["count"]), float(command["seconds"]), sink)

    def offer(self, listener: str, stream: Any, status: int | None) -> None:
        """A request head (and its status, if it was answered without going upstream)."""
        record = None
        now = time.monotonic()
        for tap in list(self.taps):
            if now > tap.deadline:  # its reader is gone or never came
                self.remove(tap)
                continue
            if not tap.filter.matches(listener, stream):
                continue
            if record is None:
                record = _record(listener, stream, status)
            tap.push(record)


class RelayedTap:
    """A tap of `omnirelay run`, served by all the workers. The admin connection streaming
    it calls `attach` with `send` (takes a chunk, or says False when its client reads too
    slowly: the record is skipped) and `end` (takes the last chunk and finishes the
    response), `expire` once `deadline` passed, and `cancel` when its client left."""

    def __init__(self, hub: RelayedTaps, tap_id: str, flt: TapFilter, count: int,
                 seconds: float) -> None:
        self.hub = hub
        self.id = tap_id
        self.filter = flt
        self.left = count
        self.deadline = time.monotonic() + seconds
        self.skipped = 0
        self.send: Callable[[bytes], bool] | None = None
        self.end: Callable[[bytes], None] | None = None

    def stream(self) -> RelayedTap:
        """The response body, for the poll-loop admin server."""
        return self

    def command(self) -> dict:
        """What starts this tap in a worker: the count and time still left."""
        left = max(0.001, self.deadline - time.monotonic())
        return {"tap_start": {"id": self.id, **dataclasses.asdict(self.filter),
                              "count": self.left, "seconds": round(left, 3)}}

    def attach(self, send: Callable[[bytes], bool], end: Callable[[bytes], None]) -> None:
        self.send, self.end = send, end

    def deliver(self, record: dict) -> None:
        if self.left <= 0 or self.send is None:
            return
        if not self.send(json.dumps(record).encode() + b"\n"):
            self.skipped += 1
            return
        self.left -= 1
        if self.left == 0:
            self._finish("count")

    def expire(self, now: float) -> None:
        if now >= self.deadline:
            self._finish("time")

    def cancel(self) -> None:
        self.send = self.end = None
        self.hub.remove(self)

    def _finish(self, reason: str) -> None:
        end = self.end
        self.cancel()
        if end is not None:
            end(_done(reason, self.skipped))


class RelayedTaps:
    """The taps of `omnirelay run` (its supervisor): `broadcast` sends a command to every
    worker, `deliver` takes the records they report ({"tap": id, "record": ...})."""

    def __init__(self, broadcast: Callable[[dict], None]) -> None:
        self.broadcast = broadcast
        self.taps: dict[str, RelayedTap] = {}
        self._ids = itertools.count(1)

    def start(self, flt: TapFilter, count: int, seconds: float) -> RelayedTap:
        check_limits(count, seconds, len(self.taps))
        tap = RelayedTap(self, str(next(self._ids)), flt, count, seconds)
        self.taps[tap.id] = tap
        self.broadcast(tap.command())
        return tap

    def commands(self) -> list[dict]:
        """What a worker started while taps run needs to join them."""
        return [tap.command() for tap in self.taps.values()]

    def deliver(self, tap_id: str, record: dict) -> None:
        tap = self.taps.get(tap_id)
        if tap is not None:  # else it ended while the record was on its way
            tap.deliver(record)

    def remove(self, tap: RelayedTap) -> None:
        if self.taps.pop(tap.id, None) is not None:
            self.broadcast({"tap_stop": tap.id})


def _record(listener: str, stream: Any, status: int | None) -> dict:
    h = stream.request_headers
    headers = [[k, REDACTED if k.lower() in SENSITIVE else v]
               for k, v in (h.items() if h is not None else ())]
    out = {"time": round(time.time(), 6), "listener": listener,
           "request_id": stream.request_id.decode("latin-1") if stream.request_id else None,
           "method": stream.method.decode("latin-1") if stream.method else None,
           "path": stream.target.decode("latin-1") if stream.target else None,
           "headers": headers}
    if status is not None:
        out["status"] = status
    return out


__all__ = ["MAX_TAPS", "RelayedTap", "RelayedTaps", "Tap", "TapBusy", "TapError", "TapFilter",
           "TapHub"]
