"""A worker process of `omnirelay run`: its own event loop running one Relay.

The supervisor forks a worker with its signals blocked, so nothing reaches the
supervisor's handlers inherited across fork; `run` installs the worker's own and
unblocks. A worker reports to the supervisor with JSON lines on its status pipe:
{"ready": {listener: [host, port]}}, {"failed": reason}, {"reloaded": version},
{"reload_failed": reason} or, every `report_interval` and once more after its drain,
{"stats": what changed in its counters (telemetry.samples.Reporter)} and, while an admin tap
runs, {"tap": id, "record": a matching request's head}. The supervisor sends JSON lines on
the command pipe: {"log_level": level, "logger": name}, {"endpoints": {...}},
{"tap_start": {id, filter, count, seconds}} and {"tap_stop": id} (telemetry.tap).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from omnirelay.config import Config, ConfigError, load_config
from omnirelay.relay import Relay
from omnirelay.telemetry.samples import Reporter
from omnirelay.telemetry.tap import Tap, TapError

log = logging.getLogger("omnirelay.worker")

# Blocked by the supervisor around fork; a worker handles them once its loop runs.
FORK_BLOCKED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


@dataclass(frozen=True)
class WorkerSpec:
    config: Config
    ports: dict[str, int]  # listener name -> port reserved by the supervisor
    drain_timeout: float
    snapshot: Path  # the supervisor's validated copy of the current config, read on SIGHUP
    status_fd: int  # write end of this worker's status pipe
    lifeline_fd: int  # read end of a pipe the supervisor never writes: EOF means it died
    command_fd: int | None = None  # read end of this worker's command pipe
    report_interval: float | None = None  # seconds between stats reports; None: no reports


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(spec: WorkerSpec) -> int:
    """The worker's whole life, in the forked child; returns its exit code."""
    signal.set_wakeup_fd(-1)
    # Ctrl-C reaches the whole process group; the supervisor turns it into SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    worker = _Worker(spec)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(worker.main())
    except Exception as e:
        log.exception("worker failed")
        worker.report(failed=f"{type(e).__name__}: {e}")
        return 1
    finally:
        worker.status.close()
        loop.close()


class _Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.relay: Relay | None = None
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.status = StatusWriter(spec.status_fd)
        self.reporter = Reporter()
        self.commands = b""
        # Endpoint lists from the control plane's discovery feed (via the supervisor): kept so
        # those received before the Relay exists apply once it does.
        self.discovered: dict[str, list] = {}
        # The supervisor's taps running here by id, and those sent before the Relay existed.
        self.taps: dict[str, Tap] = {}
        self.tap_commands: dict[str, dict] = {}

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_reader(self.spec.lifeline_fd, self._on_lifeline)
        if self.spec.command_fd is not None:
            os.set_blocking(self.spec.command_fd, False)
            loop.add_reader(self.spec.command_fd, self._on_command)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
        relay = Relay(self.spec.config, reuse_port=True, ports=self.spec.ports, admin=False)
        try:
            await relay.start()
        except OSError as e:
            log.error("cannot open listeners: %s", e)
            self.report(failed=f"cannot open listeners: {e}")
            return 1
        if self.spec.command_fd is not None:
            self._on_command()  # what the supervisor queued at fork: discovered endpoints
        self.relay = relay
        for cluster, endpoints in self.discovered.items():
            self._set_endpoints(cluster, endpoints)
        for command in self.tap_commands.values():
            self._start_tap(command)
        self.tap_commands.clear()
        self.started.set()
        self.report(ready={name: list(addr) for name, addr in relay.addresses.items()})
        reporter = None
        if self.spec.report_interval is not None:
            reporter = loop.create_task(self._report_stats(self.spec.report_interval))
        await self.stopping.wait()
        log.info("draining (deadline %gs)", self.spec.drain_timeout)
        await relay.stop(self.spec.drain_timeout)
        if reporter is not None:
            reporter.cancel()
            self.report(stats=self.reporter.delta(relay.telemetry_snapshot()))  # final counts
        self.status.close()
        return 0

    def report(self, **message) -> None:
        self.status.send(json.dumps(message).encode() + b"\n")

    async def _report_stats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.status.idle():  # a report still queued: skip one rather than pile up
                self.report(stats=self.reporter.delta(self.relay.telemetry_snapshot()))

    def _on_command(self) -> None:
        try:
            data = os.read(self.spec.command_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.spec.command_fd)
            return
        self.commands += data
        while b"\n" in self.commands:
            line, _, self.commands = self.commands.partition(b"\n")
            try:
                msg = json.loads(line)
            except ValueError:
                log.error("ignoring a malformed supervisor command: %r", line[:200])
                continue
            if "endpoints" in msg:
                update = msg["endpoints"]
                self.discovered[update["cluster"]] = update["list"]
                if self.relay is not None:
                    self._set_endpoints(update["cluster"], update["list"])
            if "tap_start" in msg:
                self._start_tap(msg["tap_start"])
            if "tap_stop" in msg:
                self._stop_tap(msg["tap_stop"])
            if "log_level" in msg:
                name = msg.get("logger") or ""
                logging.getLogger(name or None).setLevel(msg["log_level"].upper())
                log.info("log level of %s set to %s", name or "the root logger",
                         msg["log_level"])

    def _start_tap(self, command: dict) -> None:
        tap_id = command["id"]
        if self.relay is None:  # sent at fork: starts once the Relay listens
            self.tap_commands[tap_id] = command
            return
        pid = os.getpid()

        def forward(record: dict) -> None:
            self.report(tap=tap_id, record={**record, "worker": pid})
        try:
            self.taps[tap_id] = self.relay.taps.start_command(command, forward)
        except (TapError, KeyError, TypeError, ValueError) as e:  # never expected
            log.error("tap %s not started: %s", tap_id, e)
        else:
            log.info("tap %s started", tap_id)

    def _stop_tap(self, tap_id: str) -> None:
        self.tap_commands.pop(tap_id, None)
        tap = self.taps.pop(tap_id, None)
        if tap is not None:
            tap.hub.remove(tap)
            log.info("tap %s stopped", tap_id)

    def _set_endpoints(self, cluster: str, endpoints: list) -> None:
        assert self.relay is not None
        try:
            self.relay.set_endpoints(cluster, endpoints)
        except (KeyError, ValueError) as e:  # not an api-discovery cluster of this config
            log.debug("discovery: endpoints of cluster %s not applied: %s", cluster, e)
        except ConfigError as e:  # checked by the client already; never expected
            log.error("discovery: endpoints of cluster %s refused: %s", cluster, e)

    def _on_lifeline(self) -> None:
        if os.read(self.spec.lifeline_fd, 1) == b"":
            asyncio.get_running_loop().remove_reader(self.spec.lifeline_fd)
            log.warning("supervisor is gone; draining")
            self.stopping.set()

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reload(self) -> None:
        await self.started.wait()  # a SIGHUP right after fork applies once listening
        async with self.reload_lock:
            if self.stopping.is_set():
                return
            try:
                config = load_config(self.spec.snapshot)
                await self.relay.reload(config)
            # The supervisor validated this config; whatever still fails (a user filter
            # whose import now breaks, say), this worker keeps serving what it has.
            except Exception as e:  # noqa: BLE001
                log.error("reload failed, keeping config %s: %s", self.relay.config_version, e)
                self.report(reload_failed=str(e))
            else:
                # A cluster the new config turns to api discovery gets its list at once.
                for cluster, endpoints in self.discovered.items():
                    self._set_endpoints(cluster, endpoints)
                self.report(reloaded=config.metadata.version)


class StatusWriter:
    """Lines to the supervisor on a non-blocking pipe: a slow supervisor never blocks the
    event loop; what the pipe does not take waits in a buffer flushed when it is writable
    (or, at `close()`, with blocking writes)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.waiting = False
        self.broken = False
        os.set_blocking(fd, False)

    def idle(self) -> bool:
        return not self.buf

    def send(self, line: bytes) -> None:
        if self.broken:
            return
        self.buf += line
        self._flush()

    def _flush(self) -> None:
        while self.buf:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                break
            except OSError:  # the supervisor is gone; the lifeline tells us to stop
                self.broken = True
                self.buf.clear()
                break
            del self.buf[:n]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.buf and not self.waiting:
            loop.add_writer(self.fd, self._flush)
            self.waiting = True
        elif not self.buf and self.waiting:
            loop.remove_writer(self.fd)
            self.waiting = False

    def close(self) -> None:
        """Write what is left, blocking (the worker is about to exit)."""
        if self.waiting:
            try:
                asyncio.get_running_loop().remove_writer(self.fd)
            except RuntimeError:
                pass
            self.waiting = False
        if self.buf and not self.broken:
            os.set_blocking(self.fd, True)
            try:
                while self.buf:
                    del self.buf[:os.write(self.fd, self.buf)]
            except OSError:
                self.buf.clear()
