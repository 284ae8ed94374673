"""A plugin binding: one filter entry of the loaded config, in this process.

It owns the compiled module, the current VM (one Store + Instance), the tick timer, the
failure policy and the binding's status:

- ``acquire()`` gives the VM for a new stream, or None while the plugin cannot run (the
  caller applies ``cfg.fallback``: fail_open skips the filter, fail_closed answers 503).
- ``fail(vm, failure)`` records a trap / deadline / memory-limit failure, kills the VM
  and, with ``failure_policy: reload``, instantiates a new one (at once the first time,
  then with a doubling back-off up to ``MAX_RELOAD_BACKOFF`` while failures repeat).

Bindings are shared per process by (config, place in the config, module sha256), like the
local rate limiter's buckets: a reload that leaves the entry unchanged keeps the VM and its
state; a binding whose VM failed for good is rebuilt by the next config load.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Callable

from omnirelay.extensions.packages import loading
from omnirelay.extensions.wasm import runtime
from omnirelay.extensions.wasm.config import PluginConfig
from omnirelay.extensions.wasm.errors import GuestFailure, WasmLoadError
from omnirelay.extensions.wasm.shared import BindingStatus, register_status
from omnirelay.extensions.wasm.vm import WasmVM
from omnirelay.security.upstream import FetchError, call_cluster, find_cluster

log = logging.getLogger("omnirelay.wasm")

MAX_RELOAD_BACKOFF = 30.0
FIRST_BACKOFF = 0.1
STABLE_AFTER = 10.0  # a VM that lived this long resets the back-off
MAX_CALLOUT_BODY = 1 << 20  # a callout response body larger than this is a failed call

_PLUGINS: weakref.WeakValueDictionary[tuple, WasmPlugin] = weakref.WeakValueDictionary()


def get_plugin(cfg: PluginConfig, binding: str = "") -> WasmPlugin:
    """The binding for this config entry: shared with an unchanged entry of a previous
    config load, new otherwise. Raises WasmLoadError or PackageError (ValueErrors).

    With ``package:`` the module is the payload of a signed extension package, verified
    first (omnirelay.extensions.packages); a payload that fails to load is recorded as the
    package's failure."""
    if cfg.package is not None:
        with loading(cfg.package, "wasm", binding=binding) as pkg:
            return _plugin(cfg, pkg.payload, binding)
    return _plugin(cfg, runtime.load_bytes(cfg.path), binding)


def _plugin(cfg: PluginConfig, wasm: bytes, binding: str) -> WasmPlugin:
    digest = hashlib.sha256(wasm).hexdigest()
    if cfg.sha256 is not None and cfg.sha256 != digest:
        raise WasmLoadError(f"{cfg.path}: sha256 is {digest}, the config pins {cfg.sha256}")
    if cfg.package is not None and not wasm.startswith(b"\0asm"):
        raise WasmLoadError(f"{cfg.path}: the payload is not a Wasm binary")
    if binding:
        key = (cfg, binding, digest)
        plugin = _PLUGINS.get(key)
        if plugin is not None and plugin.status.state in ("running", "reloading"):
            return plugin
        plugin = WasmPlugin(cfg, wasm, binding)
        _PLUGINS[key] = plugin
        return plugin
    return WasmPlugin(cfg, wasm, binding)


class WasmPlugin:
    def __init__(self, cfg: PluginConfig, wasm: bytes, binding: str = "") -> None:
        self.cfg = cfg
        self.binding = binding
        self.module, self.digest = runtime.compile_module(wasm)
        self.status = BindingStatus(binding=binding, plugin=cfg.name, root_id=cfg.root_id,
                                    vm_id=cfg.vm_id, sha256=self.digest,
                                    failure_policy=cfg.failure_policy, fallback=cfg.fallback)
        self.fallback_open = cfg.fallback == "fail_open"
        self.vm: WasmVM | None = None
        self._events = _Events(weakref.ref(self))
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_loop: asyncio.AbstractEventLoop | None = None
        self._tick_pending = False
        self._reload_handle: asyncio.TimerHandle | None = None
        self._streak = 0
        self._vm_started = 0.0
        self._calls: set[asyncio.Task] = set()
        self.vm = self._new_vm()
        self.exports = self.vm.exports
        self.status.state = "running"
        register_status(self.status)
        self._arm_tick()

    def _new_vm(self) -> WasmVM:
        vm = WasmVM(self.cfg, self.module, self._events)
        self._vm_started = time.monotonic()
        return vm

    def __repr__(self) -> str:
        return f"<WasmPlugin {self.cfg.name} {self.binding} {self.status.state}>"

    # ------------------------------------------------------------------ streams

    def acquire(self) -> WasmVM | None:
        vm = self.vm
        if vm is not None and not vm.dead:
            self.status.requests += 1
            if self._tick_pending or (self._tick_loop is not None and self._tick_loop.is_closed()):
                self._arm_tick()
            return vm
        self.status.fallback_requests += 1
        return None

    def fail(self, vm: WasmVM, failure: GuestFailure) -> None:
        """A callback of ``vm`` failed: the VM is dead; apply the failure policy. Streams
        the plugin had paused get the fallback (their owners' ``vm_failed``)."""
        vm.close()
        for owner in vm.take_orphans():
            notify = getattr(owner, "vm_failed", None)
            if notify is not None:
                self.defer(notify)
        if vm is not self.vm:
            return  # a VM already replaced; its streams apply the fallback
        self.vm = None
        self._cancel_tick()
        self.status.record_failure(failure.kind, failure.message)
        log.error("wasm plugin %s (%s) failed: %s; policy %s", self.cfg.name,
                  self.binding or "unbound", failure, self.cfg.failure_policy)
        if self.cfg.failure_policy != "reload":
            self.status.state = "failed"
            return
        self.status.state = "reloading"
        if time.monotonic() - self._vm_started >= STABLE_AFTER:
            self._streak = 0
        self._streak += 1
        self._schedule_reload()

    def _schedule_reload(self) -> None:
        delay = 0.0 if self._streak <= 1 else min(MAX_RELOAD_BACKOFF,
                                                  FIRST_BACKOFF * 2 ** (self._streak - 2))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._reload()
            return
        ref = weakref.ref(self)
        self._reload_handle = loop.call_later(delay, _call_if_alive, ref, "_reload")

    def _reload(self) -> None:
        self._reload_handle = None
        if self.vm is not None:
            return
        try:
            vm = self._new_vm()
        except WasmLoadError as e:
            self.status.record_failure("load", str(e))
            log.error("wasm plugin %s: reload failed: %s", self.cfg.name, e)
            self._streak += 1
            self._schedule_reload()
            return
        self.vm = vm
        self.status.reloads += 1
        self.status.state = "running"
        log.warning("wasm plugin %s (%s): VM reloaded", self.cfg.name, self.binding or "unbound")
        self._arm_tick()

    def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        self._cancel_tick()
        if self._reload_handle is not None:
            self._reload_handle.cancel()
            self._reload_handle = None
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        self.status.state = "closed"

    # ------------------------------------------------------------------ ticks, queues

    def _cancel_tick(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _arm_tick(self) -> None:
        self._cancel_tick()
        self._tick_pending = False
        vm = self.vm
        if vm is None or vm.dead or not vm.tick_period_ms:
            self._tick_loop = None
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._tick_pending = True  # armed by the first stream on an event loop
            return
        self._tick_loop = loop
        self._tick_handle = loop.call_later(vm.tick_period_ms / 1000, _call_if_alive,
                                            weakref.ref(self), "_on_tick")

    def _on_tick(self) -> None:
        self._tick_handle = None
        vm = self.vm
        if vm is None or vm.dead:
            return
        try:
            vm.tick()
        except GuestFailure as e:
            self.fail(vm, e)
            return
        if self._tick_handle is None and self.vm is vm and vm.tick_period_ms:
            self._tick_handle = self._tick_loop.call_later(
                vm.tick_period_ms / 1000, _call_if_alive, weakref.ref(self), "_on_tick")

    def tick_period_changed(self, vm: WasmVM) -> None:
        if vm is self.vm:
            self._arm_tick()

    def queue_ready(self, vm: WasmVM, qid: int) -> None:
        self.defer(lambda: vm.queue_ready(qid) if vm is self.vm else None)

    def http_call(self, vm: WasmVM, token: int, cluster: str, method: str, path: str,
                  headers: list[tuple[str, str]], body: bytes, timeout: float) -> bool:
        """Start a callout (from the VM's host function); False when it cannot be made."""
        if find_cluster(cluster) is None:
            log.warning("wasm plugin %s: HTTP callout to unknown cluster %r", self.cfg.name,
                        cluster)
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(self._callout(vm, token, cluster, method, path, headers, body,
                                              timeout))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return True

    async def _callout(self, vm: WasmVM, token: int, cluster: str, method: str, path: str,
                       headers: list[tuple[str, str]], body: bytes, timeout: float) -> None:
        self.status.callouts += 1
        try:
            status, rheaders, rbody = await call_cluster(cluster, method, path, headers, body,
                                                         timeout=timeout,
                                                         limit=MAX_CALLOUT_BODY)
        except FetchError as e:
            self.status.callout_failures += 1
            log.warning("wasm plugin %s: HTTP callout to %s failed: %s", self.cfg.name,
                        cluster, e)
            status, rheaders, rbody = 0, [], b""
        if vm is self.vm and not vm.dead:
            self._run_deferred(lambda: vm.http_call_response(token, status, rheaders, rbody))

    def defer(self, fn: Callable[[], object]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (config validation): nothing asynchronous happens
        loop.call_soon(_call_if_alive, weakref.ref(self), "_run_deferred", fn)

    def _run_deferred(self, fn: Callable[[], object]) -> None:
        vm = self.vm
        try:
            fn()
        except GuestFailure as e:
            if vm is not None:
                self.fail(vm, e)


class _Events:
    """What a VM calls back into its binding, held weakly (VM <-> binding is a cycle)."""

    __slots__ = ("_ref",)

    def __init__(self, ref: weakref.ref) -> None:
        self._ref = ref

    def tick_period_changed(self, vm: WasmVM) -> None:
        p = self._ref()
        if p is not None:
            p.tick_period_changed(vm)

    def queue_ready(self, vm: WasmVM, qid: int) -> None:
        p = self._ref()
        if p is not None:
            p.queue_ready(vm, qid)

    def defer(self, fn: Callable[[], object]) -> None:
        p = self._ref()
        if p is not None:
            p.defer(fn)

    def http_call(self, vm: WasmVM, *args) -> bool:
        p = self._ref()
        return p is not None and p.http_call(vm, *args)


def _call_if_alive(ref: weakref.ref, method: str, *args) -> None:
    obj = ref()
    if obj is not None:
        getattr(obj, method)(*args)
