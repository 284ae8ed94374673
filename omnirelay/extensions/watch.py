"""Hot reload of extension packages: poll the package files a config uses and rebuild the
config when one holds something new.

A Relay runs one ``PackageWatcher``. Every ``extensions.watch_interval`` it stats each
``package:`` file named by a filter of the active config; when a file's identity, size or
mtime changed (or its mtime is too recent to trust), it hashes the content. New content is
verified first (``packages.precheck``): a refused file never triggers a reload. A verified
one makes the Relay reload the same config, which loads the new package like any config
build: bindings whose package did not change keep their running instance; if the new
version fails to load (it does not compile, its start fails), the reload fails as a whole
and the running version keeps serving. Either failure is logged, counted
(``omnirelay_extension_failures_total``, ``omnirelay_extension_reloads_total``) and shown by
/extensions; the file is not retried until it changes again.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

from omnirelay.config import Config

from .packages import REGISTRY, precheck
from .status import RELOADS

log = logging.getLogger("omnirelay.extensions")

DEFAULT_INTERVAL = 1.0
# A write landing in the same mtime tick as our read changes neither size nor mtime; while a
# file's mtime is this recent it is hashed on every poll.
RACY_WINDOW = 2.0

Reload = Callable[[], Awaitable[None]]


def package_paths(config: Config) -> list[str]:
    """Every `package:` file named by a filter config (listeners' and routes'), in order."""
    seen: dict[str, None] = {}
    specs = [f for lst in config.spec.listeners for f in lst.filters]
    specs += [f for r in config.spec.routes for f in r.filters]
    for spec in specs:
        for path in _packages_in(spec.config):
            seen.setdefault(path, None)
    return list(seen)


def _packages_in(value: object) -> Iterator[str]:
    if isinstance(value, Mapping):
        package = value.get("package")
        if isinstance(package, str) and package:
            yield package
        for key, item in value.items():
            if key != "package":
                yield from _packages_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _packages_in(item)


class _File:
    __slots__ = ("digest", "signature")

    def __init__(self) -> None:
        self.signature: tuple[int, int, int] | None = None
        self.digest: str | None = None


class PackageWatcher:
    """Polls package files for a Relay; `reload()` rebuilds the Relay's active config."""

    def __init__(self, reload: Reload) -> None:
        self._reload = reload
        self._files: dict[str, _File] = {}
        self._trusted_keys: tuple[str, ...] = ()
        self.interval = DEFAULT_INTERVAL
        self._task: asyncio.Task[None] | None = None

    def sync(self, config: Config) -> None:
        """Watch the packages of `config` (just built and active). A file already watched
        keeps its state."""
        ext = config.extensions
        self.interval = ext.watch_interval if ext is not None else DEFAULT_INTERVAL
        self._trusted_keys = tuple(ext.trusted_keys) if ext is not None else ()
        files = {}
        for path in package_paths(config):
            state = self._files.get(path)
            if state is None:
                state = _File()
                # The version the build loaded; a file changed since is reloaded at the
                # first poll.
                state.digest = REGISTRY.active_digest(path)
            files[path] = state
        self._files = files
        running = self._task is not None and not self._task.done()
        if files and self.interval > 0 and not running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="extension package watcher")
        elif (not files or self.interval <= 0) and running:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._files = {}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # a bug here must not stop the watching
                log.exception("extension package watcher: poll failed")

    async def poll(self) -> bool:
        """Check every file once; reload if one changed. True if a reload was applied."""
        changed = [p for p, state in list(self._files.items()) if self._check(p, state)]
        for path in list(changed):
            refusal = precheck(path, self._trusted_keys)
            if refusal is not None:  # recorded and logged by precheck
                RELOADS["failed"] += 1
                log.error("extension package %s changed, but the new version is refused; "
                          "the running version keeps serving", path)
                changed.remove(path)
        if not changed:
            return False
        what = ", ".join(changed)
        log.info("extension package %s changed: reloading", what)
        try:
            await self._reload()
        except Exception as e:  # noqa: BLE001 - the running version keeps serving
            RELOADS["failed"] += 1
            log.error("extension package %s changed, but the new version did not load; "
                      "the running version keeps serving: %s", what, e)
            return False
        RELOADS["applied"] += 1
        log.info("extension package %s: new version active", what)
        return True

    @staticmethod
    def _check(path: str, state: _File) -> bool:
        """Whether `path` holds other content than when last checked (a file that vanished
        or cannot be read counts as unchanged: the running version stays)."""
        try:
            st = Path(path).stat()
        except OSError:
            return False
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        racy = time.time() - st.st_mtime < RACY_WINDOW
        if signature == state.signature and not racy:
            return False
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return False
        state.signature = signature
        first = state.digest is None
        changed = digest != state.digest
        state.digest = digest
        return changed and not first
