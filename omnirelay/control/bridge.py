"""Hands configs from the control client's thread to the supervisor's poll loop.

Before the supervisor exists, the first config is handed to whoever waits in `wait_first`
(`omnirelay run` starts the workers with it); its activation completes once the workers are
ready. Afterwards every config is queued, a byte on a pipe wakes the poll loop, and the
supervisor activates it through its reload path; the client thread blocks until every worker
answered (or ACTIVATE_TIMEOUT).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from omnirelay.config import Config

from .wakeup import PipeService

ACTIVATE_TIMEOUT = 60.0


@dataclass(eq=False)
class _Pending:
    config: Config
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str | None = None

    def finish(self, outcome: str | None) -> None:
        self.outcome = outcome
        self.done.set()


class SupervisorBridge(PipeService):
    """A supervisor Service, and the client's `activate` callable."""

    def __init__(self) -> None:
        super().__init__()
        self.supervisor = None  # set by start(); Supervisor (runtime level, not imported here)
        self._lock = threading.Lock()
        self._first: _Pending | None = None
        self.first_ready = threading.Event()  # a config for the first start exists
        self._running = threading.Event()  # workers are serving
        self._stopped = False
        self._pending: list[_Pending] = []

    # ---- the client's side (its thread) ----
    def activate(self, config: Config) -> str | None:
        with self._lock:
            if self._stopped:
                return "the proxy is stopping"
            if self._first is None:
                item = self._first = _Pending(config)
                self.first_ready.set()
                first = True
            else:
                item = _Pending(config)
                self._pending.append(item)
                first = False
        if first:
            if not self._running.wait(ACTIVATE_TIMEOUT):
                return f"workers not serving after {ACTIVATE_TIMEOUT:g}s"
            return None
        self._wake()
        if not item.done.wait(ACTIVATE_TIMEOUT):
            return f"not active on every worker after {ACTIVATE_TIMEOUT:g}s"
        return item.outcome

    # ---- the first config (main thread) ----
    def take_first(self, fallback: Config | None = None) -> Config | None:
        """The control plane's first config if one arrived, else `fallback` (which then counts
        as the first: later snapshots go to the running supervisor)."""
        with self._lock:
            if self._first is None and fallback is not None:
                self._first = _Pending(fallback)
                self.first_ready.set()
            return None if self._first is None else self._first.config

    def started(self, supervisor) -> None:
        """Called once the supervisor's workers are ready."""
        self.supervisor = supervisor
        self._running.set()
        self._wake()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            pending, self._pending = self._pending, []
        for item in pending:
            item.finish("the proxy is stopping")
        self._running.set()

    def _wake(self) -> None:
        self._pipe.wake()

    # ---- the supervisor's side (Service protocol, poll loop thread) ----
    def timeout(self, now: float) -> float | None:
        return 0.0 if self._runnable() else None

    def _runnable(self) -> bool:
        sup = self.supervisor
        return bool(self._pending) and sup is not None and sup.phase.value == "serving"

    def run_timers(self, now: float) -> None:
        if not self._runnable():
            return
        with self._lock:
            pending, self._pending = self._pending, []
        for item in pending:
            problem = self.supervisor.activate(item.config, self._done(item))
            if problem is not None:
                item.finish(problem)

    def _done(self, item: _Pending):
        def done(outcome: str | None) -> None:
            if outcome is None:  # active on every worker: no longer the LKG
                self.supervisor.config_source = "control_plane"
            item.finish(outcome)
        return done

    def staged(self) -> Config | None:
        """The config waiting to be activated, if any (the oldest)."""
        with self._lock:
            return self._pending[0].config if self._pending else None

    def close(self) -> None:
        self.stop()
        self.detach()  # the pipe stays open: the client thread may still write to it
