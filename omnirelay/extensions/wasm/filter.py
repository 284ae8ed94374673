"""omnirelay.filters.http.wasm: run a Proxy-Wasm (ABI 0.2.1) plugin on wasmtime.

It lives with the host and registers itself when the runtime imports it, so the filter
layer never imports the extension hosts (ARCHITECTURE.md layering).

config (see docs/extensions.md)::

    path: /etc/omnirelay/plugins/auth.wasm   # .wasm, or WebAssembly text (.wat)
    # package: /etc/omnirelay/ext/auth.orpkg  # or a signed extension package instead
    configuration: '{"header": "x-token"}'   # plugin configuration (proxy_on_configure)
    root_id: auth                             # optional
    vm_id: edge                               # optional; scopes shared data and queues
    failure_policy: fail_closed               # fail_open | fail_closed | reload
    reload_fallback: fail_closed              # with reload: while the VM restarts
    memory_limit: 64MiB                       # the VM's linear memory limit
    callback_deadline: 100ms                  # per callback (epoch deadline)

The adapter maps the guest's actions to the filter API: Continue -> CONTINUE; Pause ->
STOP on headers (the guest resumes with proxy_continue_stream) and "buffer" on bodies;
proxy_send_local_response -> a LocalReply. When the plugin cannot run (its VM trapped,
ran past its deadline, hit its memory limit, or is reloading) the binding's fallback
applies: fail_open skips the filter, fail_closed answers 503.
"""
from __future__ import annotations

from omnirelay.extensions.wasm import abi
from omnirelay.extensions.wasm.config import parse_plugin_config
from omnirelay.extensions.wasm.errors import GuestFailure as _GuestFailure
from omnirelay.filters.base import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import register

FAIL_CLOSED_STATUS = 503
FAIL_CLOSED_BODY = b"wasm plugin unavailable\n"
FAIL_CLOSED_REASON = "wasm_fail_closed"

_HOOKS = (
    ("on_request_headers", "proxy_on_request_headers"),
    ("on_request_body", "proxy_on_request_body"),
    ("on_request_trailers", "proxy_on_request_trailers"),
    ("on_response_headers", "proxy_on_response_headers"),
    ("on_response_body", "proxy_on_response_body"),
    ("on_response_trailers", "proxy_on_response_trailers"),
)

# Per-stream modes.
_ACTIVE, _OPEN, _CLOSED = 0, 1, 2


def _fail_closed_reply() -> LocalReply:
    return LocalReply(FAIL_CLOSED_STATUS, FAIL_CLOSED_BODY, reason=FAIL_CLOSED_REASON)


class WasmFilter(HttpFilter):
    """One stream's context in the plugin's VM, created at the stream's first hook."""

    __slots__ = ("ctx", "mode", "paused", "plugin", "stream", "vm")

    def __init__(self, plugin):
        self.plugin = plugin
        self.vm = None
        self.ctx = None
        self.stream = None
        self.mode = _ACTIVE
        self.paused = False  # a headers hook returned STOP; the guest resumes it

    # ------------------------------------------------------------------ plumbing

    def _enter(self, stream):
        vm = self.vm
        if vm is not None:
            if not vm.dead:
                return vm
        elif self.mode == _ACTIVE:
            vm = self.plugin.acquire()
            if vm is not None:
                self.stream = stream
                try:
                    self.ctx = vm.create_context(stream, self)
                except _GuestFailure as e:
                    self.plugin.fail(vm, e)
                else:
                    self.vm = vm
                    return vm
        if self.mode == _ACTIVE:
            self.mode = _OPEN if self.plugin.fallback_open else _CLOSED
        return None

    def _fallback(self):
        if self.mode == _OPEN:
            return CONTINUE
        self.mode = _OPEN  # one 503 per stream; later hooks pass
        return _fail_closed_reply()

    def _failed(self, vm, failure):
        self.plugin.fail(vm, failure)
        self.mode = _OPEN if self.plugin.fallback_open else _CLOSED
        return self._fallback()

    def _reply(self):
        ctx = self.ctx
        if ctx.local_reply is not None:
            status, body, headers, details = ctx.local_reply
            ctx.local_reply = None
            return LocalReply(status, body, headers, reason=details)
        if ctx.close_requested:
            ctx.close_requested = False
            return LocalReply(FAIL_CLOSED_STATUS, b"", reason="wasm_close_stream")
        return None

    # ------------------------------------------------------------------ hooks

    def _headers_result(self, action):
        r = self._reply()
        if r is not None:
            return r
        if action == abi.ACTION_PAUSE:
            self.paused = True
            return STOP
        return CONTINUE

    def on_request_headers(self, stream, end_stream):
        vm = self._enter(stream)
        if vm is None:
            return self._fallback()
        try:
            action = vm.request_headers(self.ctx, end_stream)
        except _GuestFailure as e:
            return self._failed(vm, e)
        return self._headers_result(action)

    def on_response_headers(self, stream, end_stream):
        vm = self._enter(stream)
        if vm is None:
            return self._fallback()
        try:
            action = vm.response_headers(self.ctx, end_stream)
        except _GuestFailure as e:
            return self._failed(vm, e)
        return self._headers_result(action)

    def _body(self, stream, data, end_stream, call):
        vm = self._enter(stream)
        if vm is None:
            return self._fallback()
        ctx = self.ctx
        try:
            action = call(vm, ctx, data, end_stream)
        except _GuestFailure as e:
            return self._failed(vm, e)
        r = self._reply()
        if r is not None:
            return r
        if action == abi.ACTION_PAUSE and not end_stream:
            return STOP  # the core buffers and calls again with everything so far
        if ctx.body_dirty:
            ctx.body_dirty = False
            return ctx.body
        return CONTINUE

    def on_request_body(self, stream, data, end_stream):
        return self._body(stream, data, end_stream, _request_body)

    def on_response_body(self, stream, data, end_stream):
        return self._body(stream, data, end_stream, _response_body)

    def _trailers(self, stream, trailers, call):
        vm = self._enter(stream)
        if vm is None:
            return self._fallback()
        try:
            call(vm, self.ctx, trailers)
        except _GuestFailure as e:
            return self._failed(vm, e)
        # Pause on trailers is taken as Continue: nothing follows them to wait for.
        return self._reply() or CONTINUE

    def on_request_trailers(self, stream, trailers):
        return self._trailers(stream, trailers, _request_trailers)

    def on_response_trailers(self, stream, trailers):
        return self._trailers(stream, trailers, _response_trailers)

    def on_log(self, stream):
        vm, ctx = self.vm, self.ctx
        self.stream = self.ctx = None  # the context refers back to this filter
        if vm is None or ctx is None:
            return
        try:
            vm.finish(ctx)
        except _GuestFailure as e:
            self.plugin.fail(vm, e)

    # ------------------------------------------------------------------ from the guest,
    # outside this stream's callbacks (a tick, a queue): run on the event loop

    def resume(self, stream_type):
        stream = self.stream
        self.paused = False
        if stream is not None and not stream.done:
            stream.resume()

    def vm_failed(self):
        """The VM failed while this stream waited for it: the fallback applies now."""
        if not self.paused:
            return
        self.paused = False
        stream = self.stream
        if stream is None or stream.done:
            return
        if self.plugin.fallback_open:
            self.mode = _OPEN
            stream.resume()
        else:
            self.mode = _OPEN
            stream.reply(FAIL_CLOSED_STATUS, FAIL_CLOSED_BODY, reason=FAIL_CLOSED_REASON)

    def reply(self, status, body, headers, details):
        stream = self.stream
        if stream is not None and not stream.done:
            stream.reply(status, body, headers, reason=details)

    def close(self, stream_type):
        stream = self.stream
        if stream is not None and not stream.done:
            stream.reply(FAIL_CLOSED_STATUS, b"", reason="wasm_close_stream")


def _request_body(vm, ctx, data, end_stream):
    return vm.request_body(ctx, data, end_stream)


def _response_body(vm, ctx, data, end_stream):
    return vm.response_body(ctx, data, end_stream)


def _request_trailers(vm, ctx, trailers):
    return vm.request_trailers(ctx, trailers)


def _response_trailers(vm, ctx, trailers):
    return vm.response_trailers(ctx, trailers)


@register("omnirelay.filters.http.wasm")
class WasmFilterFactory(FilterFactory):
    """Loads the module and starts its VM when the config is loaded: a module that does
    not compile, imports what the host lacks, or rejects its configuration is a filter
    config error."""

    filter_class = WasmFilter

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        # Imported here: wasmtime loads only when a config uses a Wasm filter.
        from omnirelay.extensions.wasm.plugin import get_plugin

        self.plugin = get_plugin(self.config, binding)
        exports = self.plugin.exports
        # Only hooks the module implements are called (a body hook makes the core
        # re-frame requests as chunked); on_log always runs, to release the context.
        self._hooks = frozenset([h for h, export in _HOOKS if export in exports] + ["on_log"])

    def parse_config(self, config):
        return parse_plugin_config(config)

    def create(self):
        return WasmFilter(self.plugin)

    def overridden_hooks(self):  # instance-level: depends on the module's exports
        return self._hooks
