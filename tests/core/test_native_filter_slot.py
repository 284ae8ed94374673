"""The chain's native slot: a C function table called by the core without the
GIL. The plugin ABI (omnirelay_plugin.h, host API) builds on this slot; here a
small C filter compiled by the test proves the call path and the GIL release."""
from __future__ import annotations

import asyncio
import shutil
import subprocess

import cffi
import pytest
from harness import Origin, get, make_config, one_shot

import omnirelay

C_SOURCE = r"""
extern int PyGILState_Check(void);
static int calls = 0;
static int gil_held = -1;
int on_request_headers(void *config, void *stream, int end_stream) {
    calls++;
    gil_held = PyGILState_Check();
    return *(int *)config;
}
int calls_seen(void) { return calls; }
int gil_seen(void) { return gil_held; }
"""

CDEF = """
typedef int (*native_hook_t)(void *config, void *stream, int end_stream);
typedef struct { native_hook_t hooks[7]; void *config; } NativeFilterTable;
int on_request_headers(void *config, void *stream, int end_stream);
int calls_seen(void);
int gil_seen(void);
"""


@pytest.fixture(scope="module")
def native_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is part of make setup (build-essential)"
    d = tmp_path_factory.mktemp("native")
    (d / "f.c").write_text(C_SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(d / "libf.so"), str(d / "f.c")],
                   check=True)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(str(d / "libf.so"))


def _factory(ffi, lib, status: int):
    status_box = ffi.new("int *", status)
    table = ffi.new("NativeFilterTable *")
    table.hooks[0] = ffi.cast("native_hook_t", ffi.addressof(lib, "on_request_headers"))
    table.config = status_box

    class NativeFactory(omnirelay.FilterFactory):
        keep = (status_box, table)              # the table must outlive the chain
        native_table = int(ffi.cast("uintptr_t", table))

    return NativeFactory


def test_native_hook_runs_without_the_gil(native_lib):
    ffi, lib = native_lib
    omnirelay.register("tests.native_pass")(_factory(ffi, lib, 0))
    omnirelay.register("tests.native_deny")(_factory(ffi, lib, 403))

    async def scenario():
        async with Origin() as origin:
            cfg = make_config(origin.port, route={"filters": [{"name": "tests.native_pass"}]})
            async with omnirelay.Relay(cfg) as relay:
                ok = await one_shot(relay.address(), get("/n"))
            cfg = make_config(origin.port, route={"filters": [{"name": "tests.native_deny"}]})
            async with omnirelay.Relay(cfg) as relay:
                denied = await one_shot(relay.address(), get("/d"))
            return ok, denied, [s.path for s in origin.seen]

    before = lib.calls_seen()
    ok, denied, seen = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert ok.status == 200 and denied.status == 403
    assert denied.headers.get("x-omnirelay-reason") == "native_filter"
    assert seen == ["/n"]
    assert lib.calls_seen() - before == 2
    assert lib.gil_seen() == 0, "the core must release the GIL around native hooks"
