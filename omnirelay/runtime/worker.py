"""A worker process of `omnirelay run`: its own event loop running one Relay.

The supervisor forks a worker with its signals blocked, so nothing reaches the
supervisor's handlers inherited across fork; `run` installs the worker's own and
unblocks. A worker reports to the supervisor with JSON lines on its status pipe:
{"ready": {listener: [host, port]}}, {"failed": reason}, {"reloaded": version} or
{"reload_failed": reason}.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from omnirelay.config import Config, load_config
from omnirelay.relay import Relay

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
        loop.close()


class _Worker:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.relay: Relay | None = None
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_reader(self.spec.lifeline_fd, self._on_lifeline)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
        relay = Relay(self.spec.config, reuse_port=True, ports=self.spec.ports)
        try:
            await relay.start()
        except OSError as e:
            log.error("cannot open listeners: %s", e)
            self.report(failed=f"cannot open listeners: {e}")
            return 1
        self.relay = relay
        self.started.set()
        self.report(ready={name: list(addr) for name, addr in relay.addresses.items()})
        await self.stopping.wait()
        log.info("draining (deadline %gs)", self.spec.drain_timeout)
        await relay.stop(self.spec.drain_timeout)
        return 0

    def report(self, **message) -> None:
        try:
            os.write(self.spec.status_fd, json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the supervisor is gone; the lifeline tells us to stop

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
                self.report(reloaded=config.metadata.version)
