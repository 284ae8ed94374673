"""A pipe that a client thread writes one byte to, to wake the supervisor's poll loop."""
from __future__ import annotations

import os
import selectors


class WakePipe:
    """Both ends non-blocking: a wake-up never blocks its thread (a full pipe means one is
    already pending) and draining never blocks the loop."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)

    def wake(self) -> None:
        try:
            os.write(self.w, b"!")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the pipe is closed at shutdown)

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class PipeService:
    """The supervisor-service side of a WakePipe: registered with the poll loop's selector
    (`attach`), drained when a client thread wakes it (then `on_wake` runs on the loop),
    unregistered by `detach`. The pipe stays open until `forget` (a forked worker closes
    the supervisor's ends), because the client thread may still write to it."""

    def __init__(self) -> None:
        self._pipe = WakePipe()
        self._sel: selectors.BaseSelector | None = None

    def attach(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self._pipe.r, selectors.EVENT_READ, self._on_wake)

    def _on_wake(self, events: int) -> None:
        self._pipe.drain()
        self.on_wake()

    def on_wake(self) -> None:
        """Work to do on the poll loop after a wake-up (the default: none; the loop then
        asks the service's `timeout` again)."""

    def detach(self) -> None:
        if self._sel is not None:
            try:
                self._sel.unregister(self._pipe.r)
            except (KeyError, ValueError):
                pass
            self._sel = None

    def forget(self) -> None:
        self._pipe.close()
