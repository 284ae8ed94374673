"""The supervisor of `omnirelay run`: forks workers, restarts them, reloads and drains them.

It never runs an event loop: workers are forked from it (at start and on every restart)
and a forked child must not inherit one. It waits in poll() on the workers' status pipes,
a signal wakeup pipe and the sockets of its services (the admin server), and reaps only
its own workers' pids. Workers report their counters on the status pipe; the supervisor
merges them (`telemetry`) for the admin API, and streams the records of its admin taps,
which every worker runs (`taps`, telemetry.tap.RelayedTaps).
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from omnirelay.config import Config, ConfigError, canonical_json, load_config
from omnirelay.filters import FilterConfigError
from omnirelay.runtime import worker
from omnirelay.runtime.build import TableBuilder
from omnirelay.runtime.ports import Reservations, binding_changes
from omnirelay.telemetry import REPORT_INTERVAL, Aggregate
from omnirelay.telemetry.tap import RelayedTaps

log = logging.getLogger("omnirelay.supervisor")

READY_TIMEOUT = 15.0  # for every worker to be listening, at start
KILL_MARGIN = 5.0  # after the drain timeout, before remaining workers get SIGKILL
RESTART_BASE = 0.1  # first restart delay; doubles per crash of a worker up < STABLE_AFTER
RESTART_MAX = 10.0
STABLE_AFTER = 30.0

OnReady = Callable[[dict[str, tuple[str, int]], int], None]
ReloadDone = Callable[[str | None], None]


class Service(Protocol):
    """Something the supervisor's poll loop drives besides the workers (the admin server).

    Its selector keys carry a callable taking the ready events as data."""

    def attach(self, sel: selectors.BaseSelector) -> None: ...
    def timeout(self, now: float) -> float | None: ...
    def run_timers(self, now: float) -> None: ...
    def forget(self) -> None:
        """In a forked worker: close its descriptors without touching the selector."""
    def close(self) -> None: ...


def load_checked(path: str | os.PathLike[str]) -> Config:
    """Load a config file and build its filters as a worker would (no sockets opened).

    Raises ConfigError or FilterConfigError."""
    return build_checked(load_config(Path(path)))


def build_checked(config: Config) -> Config:
    """Build a loaded config's filters as a worker would (no sockets opened); `config` back.

    Raises ConfigError or FilterConfigError."""
    try:
        TableBuilder().build(config)
    except (FilterConfigError, ConfigError):
        raise  # already names the field at fault (filters, TLS files)
    except Exception as e:  # user filter code may raise anything while being built
        raise FilterConfigError(f"building filters failed: {type(e).__name__}: {e}") from e
    return config


class Phase(Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclass(eq=False)
class _Proc:
    slot: int
    pid: int
    fd: int | None  # read end of its status pipe; None after EOF
    started: float
    cmd_fd: int | None = None  # write end of its command pipe
    config_version: str = ""  # the config it runs (confirmed by its last reload answer)
    ready: bool = False
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    failure: str | None = None
    buf: bytes = b""
    outbox: bytearray = field(default_factory=bytearray)  # commands the pipe did not take yet


class Supervisor:
    def __init__(self, config: Config, *, workers: int, drain_timeout: float,
                 config_path: str | os.PathLike[str] | None = None,
                 on_ready: OnReady | None = None):
        self.config = config
        self.workers = workers
        self.drain_timeout = drain_timeout
        self.config_path = config_path
        self.on_ready = on_ready
        self.phase = Phase.STARTING
        self._procs: dict[int, _Proc] = {}
        self._restarts: list[tuple[float, int]] = []  # (due, slot)
        self._crashes = [0] * workers
        self._reloading: set[int] = set()  # pids yet to answer the last SIGHUP
        self._reload_failed = 0
        self._signals: list[int] = []
        self._exit_code = 0
        self._stop_deadline = 0.0
        self.services: list[Service] = []
        self.report_stats = False  # workers report counters (set when something reads them)
        self.telemetry = Aggregate()
        self.restarts = 0
        self.reloads = {"applied": 0, "rejected": 0}
        self.config_since = time.time()  # when the current config became active
        self.drain_requested = False
        self.external_config = False  # set when a control plane supplies the config
        # Where the active config came from: "file", "control_plane" or "lkg" (a node that
        # started from its last-known-good snapshot, until the control plane delivers one).
        self.config_source = "file"
        self._reload_waiters: list[ReloadDone] = []
        # Endpoint lists from the control plane's discovery feed, by cluster, in the shape
        # of `endpoints`: every worker gets each change, and a new worker all of them.
        self.discovered: dict[str, list[dict]] = {}
        # Admin taps, run by every worker (a new worker joins those running).
        self.taps = RelayedTaps(self._broadcast)

    # ---- lifecycle ----
    def run(self) -> int:
        """Start the workers and supervise them until stopped; returns the exit code."""
        self._open()
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            self._wait_ready()
            while self.phase is Phase.SERVING:
                self._step(self._until_next_restart())
            self._wait_stopped()
            return self._exit_code
        finally:
            self._close()

    def _open(self) -> None:
        self._reserved = Reservations(self.config)
        self._snapdir = Path(tempfile.mkdtemp(prefix="omnirelay-"))
        self._snapshot = self._snapdir / "config.json"
        self._write_snapshot()
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.PollSelector()  # no kernel object for forked children to share
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        for service in self.services:
            service.attach(self._sel)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in worker.FORK_BLOCKED}
        log.info("supervisor pid %d: starting %s, config %s", os.getpid(),
                 _workers(self.workers), self.config.metadata.version)

    def _close(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        for service in self.services:
            service.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
            os.close(fd)
        self._reserved.close()
        shutil.rmtree(self._snapdir, ignore_errors=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while self.phase is Phase.STARTING:
            if all(p.ready for p in self._procs.values()):
                self.phase = Phase.SERVING
                if self.on_ready is not None:
                    first = next(iter(self._procs.values()))
                    self.on_ready(first.addresses, self.workers)
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("workers not listening after %gs; giving up", READY_TIMEOUT)
                self._begin_stop(1)
                return
            self._step(left)

    def _begin_stop(self, code: int) -> None:
        if self.phase is Phase.STOPPING:
            return
        self.phase = Phase.STOPPING
        self._exit_code = code
        self._restarts.clear()
        self._stop_deadline = time.monotonic() + self.drain_timeout + KILL_MARGIN
        if self._procs:
            log.info("stopping %s (drain timeout %gs)", _workers(len(self._procs)),
                     self.drain_timeout)
        self._signal_all(signal.SIGTERM)

    def _wait_stopped(self) -> None:
        while self._procs:
            left = self._stop_deadline - time.monotonic()
            if left <= 0:
                log.warning("%s still running past the deadline; killing them",
                            _workers(len(self._procs)))
                self._signal_all(signal.SIGKILL)
                for pid in list(self._procs):
                    _, status = os.waitpid(pid, 0)
                    self._exited(self._procs[pid], status)
                break
            self._step(left)
        log.info("stopped")

    # ---- the event loop without an event loop ----
    def _step(self, timeout: float | None) -> None:
        now = time.monotonic()
        for service in self.services:
            t = service.timeout(now)
            if t is not None and (timeout is None or t < timeout):
                timeout = t
        for key, events in self._sel.select(timeout):
            if key.fd == self._wake_r:
                _drain(self._wake_r)
            elif isinstance(key.data, _Proc):
                self._read_status(key.data)
            else:
                key.data(events)
        now = time.monotonic()
        for service in self.services:
            service.run_timers(now)
        signals, self._signals = self._signals, []
        for sig in signals:
            self._handle_signal(sig)
        self._reap()
        self._run_due_restarts()

    def _on_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)  # handled in _step; the wakeup fd ends the poll

    def _handle_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.phase is Phase.STOPPING and sig == signal.SIGINT:
                log.warning("second interrupt: killing workers without draining")
                self._signal_all(signal.SIGKILL)
            else:
                log.info("received %s", signal.Signals(sig).name)
                self._begin_stop(self._exit_code)
        elif sig == signal.SIGHUP and self.phase is not Phase.STOPPING:
            self._reload()

    def _signal_all(self, sig: int) -> None:
        for pid in self._procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # already exited; reaped on the next step

    # ---- workers ----
    def _spawn(self, slot: int) -> None:
        r, w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would flush the same buffered text again
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, worker.FORK_BLOCKED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (r, w, cmd_r, cmd_w):
                os.close(fd)
            raise
        if pid == 0:
            self._become_worker(r, w, cmd_r, cmd_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        os.close(cmd_r)
        os.set_blocking(r, False)
        os.set_blocking(cmd_w, False)
        proc = _Proc(slot, pid, r, time.monotonic(), cmd_fd=cmd_w,
                     config_version=self.config.metadata.version)
        self._procs[pid] = proc
        self._sel.register(r, selectors.EVENT_READ, proc)
        for cluster, endpoints in self.discovered.items():
            self._command(proc, {"endpoints": {"cluster": cluster, "list": endpoints}})
        for command in self.taps.commands():
            self._command(proc, command)
        log.debug("worker %d: pid %d started", slot, pid)

    def _become_worker(self, own_read_end: int, status_w: int, cmd_r: int, cmd_w: int) -> None:
        """In the forked child: drop the supervisor's descriptors and run; never returns."""
        code = 1
        try:
            others = [fd for p in self._procs.values() for fd in (p.fd, p.cmd_fd)
                      if fd is not None]
            for fd in (own_read_end, cmd_w, self._wake_r, self._wake_w, self._lifeline_w,
                       *self._reserved.fds(), *others):
                os.close(fd)
            for service in self.services:
                service.forget()
            code = worker.run(worker.WorkerSpec(
                config=self.config, ports=self._reserved.ports, drain_timeout=self.drain_timeout,
                snapshot=self._snapshot, status_fd=status_w, lifeline_fd=self._lifeline_r,
                command_fd=cmd_r,
                report_interval=REPORT_INTERVAL if self.report_stats else None))
        except BaseException:
            log.exception("worker failed")
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _read_status(self, proc: _Proc) -> None:
        try:
            data = os.read(proc.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._sel.unregister(proc.fd)
            os.close(proc.fd)
            proc.fd = None
            return
        proc.buf += data
        while b"\n" in proc.buf:
            line, _, proc.buf = proc.buf.partition(b"\n")
            self._on_message(proc, json.loads(line))

    def _on_message(self, proc: _Proc, msg: dict) -> None:
        if "ready" in msg:
            proc.ready = True
            proc.addresses = {name: (host, port) for name, (host, port) in msg["ready"].items()}
            if self.phase is Phase.SERVING:
                log.info("worker %d: pid %d ready", proc.slot, proc.pid)
        elif "failed" in msg:
            proc.failure = msg["failed"]
        elif "stats" in msg:
            self.telemetry.update(proc.pid, msg["stats"])
        elif "tap" in msg:
            self.taps.deliver(msg["tap"], msg["record"])
        elif "reloaded" in msg:
            proc.config_version = msg["reloaded"]
            self._reload_answered(proc.pid)
        elif "reload_failed" in msg:
            log.error("worker pid %d kept its config: %s", proc.pid, msg["reload_failed"])
            self._reload_failed += 1
            self._reload_answered(proc.pid)

    def _reap(self) -> None:
        for pid, proc in list(self._procs.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._exited(proc, status)

    def _exited(self, proc: _Proc, status: int) -> None:
        while proc.fd is not None:  # read up to EOF: a last message may explain the exit
            self._read_status(proc)
        if proc.cmd_fd is not None:
            if proc.outbox:
                self._sel.unregister(proc.cmd_fd)
                proc.outbox.clear()
            os.close(proc.cmd_fd)
            proc.cmd_fd = None
        del self._procs[proc.pid]
        self.telemetry.retire(proc.pid)
        self._reload_answered(proc.pid)
        how = _describe(status)
        if self.phase is Phase.STOPPING:
            log.info("worker pid %d exited with %s", proc.pid, how)
        elif self.phase is Phase.STARTING:
            log.error("worker pid %d failed to start: %s", proc.pid, proc.failure or how)
            self._begin_stop(1)
        else:
            up = time.monotonic() - proc.started
            crashes = 1 if up >= STABLE_AFTER else self._crashes[proc.slot] + 1
            self._crashes[proc.slot] = crashes
            delay = min(RESTART_MAX, RESTART_BASE * 2 ** (crashes - 1))
            reason = f" ({proc.failure})" if proc.failure else ""
            log.warning("worker pid %d exited with %s%s, restarting in %gs",
                        proc.pid, how, reason, delay)
            self.restarts += 1
            self._restarts.append((time.monotonic() + delay, proc.slot))

    def _until_next_restart(self) -> float | None:
        if not self._restarts:
            return None
        return max(0.0, min(due for due, _ in self._restarts) - time.monotonic())

    def _run_due_restarts(self) -> None:
        now = time.monotonic()
        due = [slot for when, slot in self._restarts if when <= now]
        self._restarts = [(when, slot) for when, slot in self._restarts if when > now]
        for slot in due:
            try:
                self._spawn(slot)
            except OSError as e:
                log.error("cannot fork worker %d: %s; retrying in %gs", slot, e, RESTART_MAX)
                self._restarts.append((now + RESTART_MAX, slot))

    # ---- reload ----
    def _reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP ignored: %s", "the config comes from the control plane"
                        if self.external_config else
                        "the built-in demo config has no file to re-read")
            return
        version = self.config.metadata.version
        try:
            new = load_checked(self.config_path)
        except (ConfigError, FilterConfigError) as e:
            log.error("reload rejected, still serving config %s: %s is invalid:\n%s",
                      version, self.config_path, _indent(str(e)))
            self.reloads["rejected"] += 1
            return
        self.activate(new)

    def activate(self, new: Config, done: ReloadDone | None = None) -> str | None:
        """Make `new` (already built by load_checked or build_checked) the active config on
        every worker, through the SIGHUP reload path. Returns why it was refused (the active
        config keeps serving), or None; `done` is then called once every worker answered,
        with None or what failed."""
        version = self.config.metadata.version
        problem = None
        changes = binding_changes(self.config, new)
        if changes:
            problem = "listener changes need a restart:\n" + _indent("\n".join(changes))
        elif self.services and _admin_binding(self.config) != _admin_binding(new):
            problem = (f"admin address changes need a restart (admin "
                       f"{_admin_binding(self.config)} -> {_admin_binding(new)})")
        if problem is not None:
            log.error("reload rejected, still serving config %s: %s", version, problem)
            self.reloads["rejected"] += 1
            return problem
        self.config = new
        self.config_since = time.time()
        self.reloads["applied"] += 1
        self._write_snapshot()
        for waiter in self._reload_waiters:  # superseded before every worker answered
            waiter(f"superseded by config {new.metadata.version}")
        self._reload_waiters = [] if done is None else [done]
        self._reloading = set(self._procs)
        self._reload_failed = 0
        log.info("reloading %s to config %s", _workers(len(self._procs)), new.metadata.version)
        self._signal_all(signal.SIGHUP)
        if not self._reloading:  # no worker running: the next ones start on the new config
            self._finish_reload()
        return None

    def _reload_answered(self, pid: int) -> None:
        if pid not in self._reloading:
            return
        self._reloading.discard(pid)
        if not self._reloading:
            self._finish_reload()

    def _finish_reload(self) -> None:
        version = self.config.metadata.version
        if self._reload_failed:
            outcome = f"{self._reload_failed} worker(s) failed to reload"
            log.error("config %s active on some workers only: %s", version, outcome)
        else:
            outcome = None
            log.info("config %s active on all workers", version)
        waiters, self._reload_waiters = self._reload_waiters, []
        for waiter in waiters:
            waiter(outcome)

    # ---- what the admin API asks for ----
    def workers_status(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for p in sorted(self._procs.values(), key=lambda p: p.slot):
            src = self.telemetry.sources.get(p.pid)
            out.append({"slot": p.slot, "pid": p.pid, "ready": p.ready,
                        "uptime_s": round(now - p.started, 3),
                        "config_version": p.config_version,
                        "stats_age_s": round(now - src.updated, 3) if src else None})
        return out

    @property
    def reloading(self) -> bool:
        """Whether a reload is out to the workers and not yet answered by all of them."""
        return bool(self._reloading)

    def request_drain(self) -> None:
        """Drain and stop, as on SIGTERM (the admin's POST /drain)."""
        self.drain_requested = True
        self._begin_stop(self._exit_code)

    def set_log_level(self, level: str, logger: str = "") -> None:
        """Set a logger's level here and in every worker (new workers inherit it)."""
        logging.getLogger(logger or None).setLevel(level.upper())
        for p in self._procs.values():
            self._command(p, {"log_level": level, "logger": logger})

    def push_endpoints(self, cluster: str, endpoints: list[dict]) -> None:
        """A cluster's endpoints from the discovery feed, to every worker (now and later)."""
        self.discovered[cluster] = endpoints
        for p in self._procs.values():
            self._command(p, {"endpoints": {"cluster": cluster, "list": endpoints}})

    def _broadcast(self, message: dict) -> None:
        for p in self._procs.values():
            self._command(p, message)

    def _command(self, proc: _Proc, message: dict) -> None:
        """Queue a JSON line on a worker's command pipe; what the pipe cannot take now is
        written when it drains (the poll loop watches it), in order."""
        if proc.cmd_fd is None:
            return
        pending = bool(proc.outbox)
        proc.outbox += json.dumps(message).encode() + b"\n"
        if not pending:
            self._flush_commands(proc)

    def _flush_commands(self, proc: _Proc, events: int = 0) -> None:
        fd = proc.cmd_fd
        if fd is None:
            proc.outbox.clear()
            return
        try:
            while proc.outbox:
                del proc.outbox[:os.write(fd, proc.outbox)]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            proc.outbox.clear()  # the worker is gone; its reaping closes the pipe
        watching = events != 0
        if proc.outbox and not watching:
            self._sel.register(fd, selectors.EVENT_WRITE,
                               lambda ev, p=proc: self._flush_commands(p, ev))
        elif not proc.outbox and watching:
            self._sel.unregister(fd)

    def _write_snapshot(self) -> None:
        # Workers reload from this exact, validated copy: the file may change again.
        tmp = self._snapshot.with_suffix(".tmp")
        tmp.write_bytes(canonical_json(self.config))
        os.replace(tmp, self._snapshot)


def _admin_binding(config: Config) -> tuple[str, int] | None:
    return None if config.admin is None else (config.admin.address, config.admin.port)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {-code}"


def _workers(n: int) -> str:
    return f"{n} worker{'' if n == 1 else 's'}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
