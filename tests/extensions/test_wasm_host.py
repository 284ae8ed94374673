"""The Wasm host without the proxy: the ABI's serialization, config checks, host-function
statuses (abi_checks.wat), load errors, the start watchdog, fork safety, and the shared
state classes."""
from __future__ import annotations

import gc
import logging
import os
import struct
import time

import pytest

from omnirelay._core import HeaderMap
from omnirelay.extensions.wasm import abi, parse_plugin_config, runtime, shared
from omnirelay.extensions.wasm.errors import GuestFailure, WasmLoadError
from omnirelay.extensions.wasm.plugin import WasmPlugin, get_plugin
from omnirelay.extensions.wasm.vm import supported_imports

MINIMAL = """(module (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  %s)"""


def plugin(path: str, **cfg) -> WasmPlugin:
    return get_plugin(parse_plugin_config({"path": path, **cfg}))


class FakeListener:
    scheme = b"http"


class FakeStream:
    """The part of the core's HttpStream the host reads."""

    def __init__(self, target: bytes = b"/p?q1", headers=(("host", "h.test"),)) -> None:
        self.request_headers = HeaderMap.from_items(headers)
        self.response_headers = HeaderMap()
        self.request_trailers = self.response_trailers = None
        self.target = target
        self.method = b"GET"
        self.listener = FakeListener()
        self.peer = "127.0.0.1"
        self.status = 0
        self.stream_id = 0
        self.http_minor = 1
        self.request_id = b"rid"
        self.route_name = "r"
        self.cluster_name = "c"
        self.start_time = time.monotonic()
        self.resp_body_bytes = 0
        self.done = False


def failed_check(vm) -> int:
    return vm.instance.exports(vm.store)["failed"].value(vm.store)


# ----------------------------------------------------------------------------- abi


def test_map_serialization_matches_the_spec_example():
    data = abi.serialize_map([(b"a", b"1"), (b"b", b"22")])
    assert data == (struct.pack("<IIIII", 2, 1, 1, 1, 2) + b"a\x001\x00b\x0022\x00")
    assert abi.deserialize_map(data) == [(b"a", b"1"), (b"b", b"22")]
    assert abi.serialize_map([]) == b""
    assert abi.deserialize_map(b"") == abi.deserialize_map(b"\0") == []
    with pytest.raises(abi.SerializationError):
        abi.deserialize_map(struct.pack("<III", 1, 5, 5) + b"ab")


def test_property_paths():
    assert abi.property_path(b"request\0path") == ("request", "path")
    assert abi.property_path(b"request.path") == ("request", "path")
    assert abi.property_path(b"plugin_name\0") == ("plugin_name",)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("cfg", "message"), [
    ({}, "path is required"),
    ({"path": "x.wasm", "bogus": 1}, "unknown keys ['bogus']"),
    ({"path": "x.wasm", "failure_policy": "panic"}, "failure_policy must be one of"),
    ({"path": "x.wasm", "reload_fallback": "reload"}, "reload_fallback must be one of"),
    ({"path": "x.wasm", "memory_limit": "1KiB"}, "memory_limit must be at least 65536"),
    ({"path": "x.wasm", "callback_deadline": "0s"}, "callback_deadline must be greater than 0"),
    ({"path": "x.wasm", "callback_deadline": "soon"}, "callback_deadline: invalid duration"),
    ({"path": "x.wasm", "sha256": "abc"}, "sha256 must be 64 lowercase hex digits"),
    ({"path": "x.wasm", "configuration": 5}, "configuration must be a string"),
    ({"path": "x.wasm", "environment": {"A": 1}}, "environment.A: must be a string"),
])
def test_config_errors_name_the_key(cfg, message):
    with pytest.raises((TypeError, ValueError)) as e:
        parse_plugin_config(cfg)
    assert message in str(e.value)


def test_config_defaults_and_payloads():
    c = parse_plugin_config({"path": "/x/auth.wasm", "configuration": {"b": [1], "a": "x"},
                             "failure_policy": "reload", "reload_fallback": "fail_open",
                             "memory_limit": "8MiB", "callback_deadline": "20ms"})
    assert c.name == "auth"
    assert c.configuration == b'{"a":"x","b":[1]}'
    assert c.fallback == "fail_open"
    assert c.memory_limit == 8 << 20 and c.callback_deadline == 0.02
    assert parse_plugin_config({"path": "a.wat", "failure_policy": "fail_open"}).fallback \
        == "fail_open"
    assert parse_plugin_config({"path": "a.wat", "configuration": b"\x00\x01"}).configuration \
        == b"\x00\x01"


# ----------------------------------------------------------------------------- host functions


def test_host_function_statuses(wasm_module, caplog):
    caplog.set_level(logging.INFO, logger="omnirelay.wasm")
    p = plugin(wasm_module("abi_checks.wat"), name="checks", configuration="cfg!",
               environment={"A": "1", "BB": "22"})
    vm = p.vm
    assert failed_check(vm) == 0, f"root-context check {failed_check(vm)} failed"
    assert any(r.getMessage() == "wasm checks: hello" for r in caplog.records)

    stream = FakeStream()
    ctx = vm.create_context(stream, owner=None)
    assert vm.request_headers(ctx, True) == abi.ACTION_PAUSE
    assert failed_check(vm) == 0, f"stream-context check {failed_check(vm)} failed"
    # set_header_map_pairs replaced every header
    assert stream.request_headers.items() == [("x-a", "1"), ("x-b", "22")]
    assert ctx.props == {("my", "prop"): b"val"}
    vm.finish(ctx)
    assert ctx.id not in vm.contexts


def test_every_spec_function_is_provided():
    names = set(supported_imports())
    for fn in ("proxy_log", "proxy_get_header_map_pairs", "proxy_set_header_map_pairs",
               "proxy_get_buffer_bytes", "proxy_set_buffer_bytes", "proxy_send_local_response",
               "proxy_http_call", "proxy_grpc_call", "proxy_set_shared_data",
               "proxy_dequeue_shared_queue", "proxy_define_metric", "proxy_get_property",
               "proxy_continue_stream", "proxy_done", "proxy_call_foreign_function"):
        assert f"env.{fn}" in names
    for fn in ("fd_write", "clock_time_get", "random_get", "environ_get", "environ_sizes_get",
               "proc_exit", "args_get", "args_sizes_get"):
        assert f"wasi_snapshot_preview1.{fn}" in names


# ----------------------------------------------------------------------------- load errors


def test_unknown_imports_are_named(write_wat):
    path = write_wat("unknown", """(module
      (import "env" "proxy_frobnicate" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_open" (func (param i32) (result i32)))
      (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))""")
    with pytest.raises(WasmLoadError) as e:
        plugin(path)
    assert str(e.value) == ("module imports functions this host does not provide: "
                            "env.proxy_frobnicate, wasi_snapshot_preview1.path_open")


def test_import_with_a_wrong_signature(write_wat):
    path = write_wat("badsig", """(module
      (import "env" "proxy_log" (func (param i32) (result i32)))
      (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))""")
    with pytest.raises(WasmLoadError, match="cannot instantiate: .*proxy_log"):
        plugin(path)


@pytest.mark.parametrize(("body", "message"), [
    ('(memory (export "memory") 1)', "does not export a Proxy-Wasm ABI version marker"),
    ('(func (export "proxy_abi_version_0_2_1"))', "does not export its linear memory"),
    (('(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")) '
     '(func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 0)'),
     "proxy_on_vm_start returned false"),
    (('(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")) '
     '(func (export "proxy_on_configure") (param i32 i32) (result i32) unreachable)'),
     "plugin failed to start: trap: wasm trap: wasm `unreachable` instruction executed"),
])
def test_modules_that_cannot_start(write_wat, body, message):
    with pytest.raises(WasmLoadError) as e:
        plugin(write_wat("bad", f"(module {body})"))
    assert message in str(e.value)


def test_unreadable_and_invalid_files(tmp_path, write_wat):
    with pytest.raises(WasmLoadError, match="cannot read .*missing.wasm"):
        plugin(str(tmp_path / "missing.wasm"))
    with pytest.raises(WasmLoadError, match="neither a Wasm binary nor valid WebAssembly text"):
        plugin(write_wat("junk", "(module (func $f (result i32) i32.add))x"))
    (tmp_path / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0\x99")
    with pytest.raises(WasmLoadError, match="invalid Wasm module"):
        plugin(str(tmp_path / "bad.wasm"))


def test_sha256_pin(write_wat):
    path = write_wat("pinned", MINIMAL % "")
    import hashlib
    digest = hashlib.sha256(runtime.load_bytes(path)).hexdigest()
    assert plugin(path, sha256=digest).digest == digest
    with pytest.raises(WasmLoadError, match="the config pins 0000"):
        plugin(path, sha256="0" * 64)


def test_initial_memory_over_the_limit(write_wat):
    path = write_wat("big", """(module (memory (export "memory") 100)
      (func (export "proxy_abi_version_0_2_1")))""")
    with pytest.raises(WasmLoadError, match=r"cannot instantiate: .*\(memory_limit is 1048576"):
        plugin(path, memory_limit="1MiB")


def test_start_that_never_returns_is_stopped(write_wat):
    path = write_wat("spin-start", MINIMAL % """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (loop $l (br $l)) i32.const 1)""")
    t0 = time.monotonic()
    with pytest.raises(WasmLoadError, match="plugin failed to start: deadline"):
        plugin(path, start_deadline="100ms")
    assert time.monotonic() - t0 < 1.0


def test_command_module_exiting_zero_from_start_loads(write_wat):
    path = write_wat("command", """(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
      (func (export "_start") (call $exit (i32.const 0)))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $exit (i32.const 3)) i32.const 0))""")
    p = plugin(path)
    vm = p.vm
    ctx = vm.create_context(FakeStream(), None)
    with pytest.raises(GuestFailure) as e:
        vm.request_headers(ctx, True)
    assert (e.value.kind, e.value.message) == ("exit", "proc_exit(3)")
    assert vm.dead
    with pytest.raises(GuestFailure, match="dead"):
        vm.request_headers(vm.create_context(FakeStream(), None), True)


def test_guest_pointer_out_of_bounds_is_a_status_not_a_crash(write_wat):
    # proxy_get_header_map_value told to write its result past the end of memory
    path = write_wat("oob", """(module
      (import "env" "proxy_get_header_map_value"
        (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "host")
      (global $st (export "status") (mut i32) (i32.const -1))
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (global.set $st (call $get (i32.const 0) (i32.const 16) (i32.const 4)
                                   (i32.const 65534) (i32.const 4)))
        i32.const 0))""")
    p = plugin(path)
    vm = p.vm
    vm.request_headers(vm.create_context(FakeStream(), None), True)
    assert vm.instance.exports(vm.store)["status"].value(vm.store) == abi.INVALID_MEMORY_ACCESS


# ----------------------------------------------------------------------------- process


def test_epoch_ticker_stops_when_no_vm_is_left(write_wat):
    rt = runtime.process_runtime()
    p = plugin(write_wat("ticker", MINIMAL % ""))
    assert rt._ticker is not None and rt._ticker.is_alive()
    p.close()
    del p
    gc.collect()
    deadline = time.monotonic() + 2
    while rt._ticker is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rt._ticker is None


def test_plugin_works_in_a_forked_child(wasm_module):
    path = wasm_module("trap.wat")
    parent = plugin(path)
    assert parent.vm is not None
    pid = os.fork()
    if pid == 0:  # child: a new engine, the module from the serialized artifact
        code = 1
        try:
            child = plugin(path)
            stream = FakeStream()
            vm = child.vm
            vm.request_headers(vm.create_context(stream, None), True)
            if (runtime.process_runtime().pid == os.getpid()
                    and stream.request_headers.get("x-trap-filter") == "ok"):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ----------------------------------------------------------------------------- shared state


def test_shared_data_cas():
    d = shared.SharedData()
    assert d.get("vm", b"k") is None
    assert d.set("vm", b"k", b"1", 0) == abi.OK
    value, cas = d.get("vm", b"k")
    assert value == b"1" and cas
    assert d.set("vm", b"k", b"2", cas + 1) == abi.CAS_MISMATCH
    assert d.set("vm", b"k", b"2", cas) == abi.OK
    assert d.set("vm", b"k", b"3", cas) == abi.CAS_MISMATCH
    assert d.get("other", b"k") is None


def test_metrics_registry():
    m = shared.Metrics()
    c = m.define(abi.METRIC_COUNTER, "c")
    assert m.define(abi.METRIC_COUNTER, "c") == c
    g = m.define(abi.METRIC_GAUGE, "g")
    h = m.define(abi.METRIC_HISTOGRAM, "h")
    assert m.define(9, "x") is None
    assert m.increment(c, 2) == abi.OK and m.increment(c, -1) == abi.BAD_ARGUMENT
    assert m.record(c, 1) == abi.BAD_ARGUMENT and m.record(c, 10) == abi.OK
    assert m.increment(g, -5) == abi.OK
    for v in (0, 1, 3, 1000):
        assert m.record(h, v) == abi.OK
    assert m.get(h) == (abi.BAD_ARGUMENT, 0)
    snap = {s["name"]: s for s in m.snapshot()}
    assert snap["c"] == {"name": "c", "type": "counter", "value": 10}
    assert snap["g"]["value"] == -5
    hist = snap["h"]
    assert (hist["count"], hist["sum"]) == (4, 1004)
    assert hist["buckets"][0] == 1 and hist["buckets"][1] == 1 and hist["buckets"][2] == 1
    assert hist["buckets"][10] == 1
