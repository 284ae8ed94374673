"""A pipe that a client thread writes one byte to, to wake the supervisor's poll loop."""
from __future__ import annotations

import os


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
