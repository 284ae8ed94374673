"""wasmtime plumbing shared by every Wasm VM of this process (one worker).

- One ``Engine`` per process, with epoch interruption on. A ticker thread increments the
  engine's epoch every ``EPOCH_TICK`` seconds while at least one VM is alive; each
  callback into a guest sets its store's deadline a number of ticks ahead, so a guest
  that runs too long traps with an interrupt at its next loop back-edge or call.
  Calls into wasm release the GIL (wasmtime-py loads the library with ``ctypes.CDLL``),
  so the ticker runs while the event loop's thread is stuck in a guest.
- Compiled modules are cached by the sha256 of their bytes (a module compiled for one
  engine is serialized and deserialized into another: the supervisor validates a
  config, then forks workers that each build their own engine).
- Fast paths around wasmtime-py's generic API, which costs ~30 us per call: guest
  functions are called with ``wasmtime_func_call_unchecked`` and raw values, host
  functions are defined with ``wasmtime_linker_define_func_unchecked``.

Fork: the engine, its ticker and the module cache belong to the process that made them;
a child process (``os.fork``) starts with none and builds its own on first use.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable

import wasmtime
from wasmtime import _bindings as _b
from wasmtime import _ffi

from omnirelay.extensions.wasm.errors import GuestFailure, WasmLoadError

log = logging.getLogger("omnirelay.wasm")

EPOCH_TICK = 0.005  # seconds between epoch increments (the deadline's granularity)

_P = ctypes.c_void_p
_dll = _ffi.dll

# Prototypes that take plain integers (addresses): the cheapest conversions ctypes has.
_call_unchecked = ctypes.CFUNCTYPE(_P, _P, _P, _P, ctypes.c_size_t, _P)(
    ("wasmtime_func_call_unchecked", _dll))
_memory_data = ctypes.CFUNCTYPE(_P, _P, _P)(("wasmtime_memory_data", _dll))
_memory_data_size = ctypes.CFUNCTYPE(ctypes.c_size_t, _P, _P)(("wasmtime_memory_data_size", _dll))
_set_epoch_deadline = ctypes.CFUNCTYPE(None, _P, ctypes.c_uint64)(
    ("wasmtime_context_set_epoch_deadline", _dll))
_increment_epoch = ctypes.CFUNCTYPE(None, _P)(("wasmtime_engine_increment_epoch", _dll))
_trap_new = ctypes.CFUNCTYPE(_P, ctypes.c_char_p, ctypes.c_size_t)(("wasmtime_trap_new", _dll))
_error_new = ctypes.CFUNCTYPE(_P, ctypes.c_char_p)(("wasmtime_error_new", _dll))
# (context, data, *next_deadline_delta, *update_kind) -> wasmtime_error_t* or NULL
DeadlineCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, _P, _P, _P, _P)
_set_deadline_callback = ctypes.CFUNCTYPE(None, _P, DeadlineCallback, _P, _P)(
    ("wasmtime_store_epoch_deadline_callback", _dll))

# Host callbacks get the raw argument array's address as an int (no pointer objects).
HostCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, _P, _P, _P, ctypes.c_size_t)
_define_unchecked = ctypes.CFUNCTYPE(_P, _P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                     ctypes.c_size_t, _P, HostCallback, _P, _P)(
    ("wasmtime_linker_define_func_unchecked", _dll))

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()


# --------------------------------------------------------------------------- engine


class _ProcessRuntime:
    """The engine, its epoch ticker and the compiled-module cache of one process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        # No compiler thread pool: the supervisor compiles (to validate) and then forks.
        cfg.parallel_compilation = False
        # Linear memory never moves when it grows (it is reserved up front), so a VM can
        # keep its memory's base address for its whole life.
        cfg.memory_may_move = False
        self.engine = wasmtime.Engine(cfg)
        self.engine_addr = ctypes.cast(self.engine.ptr(), _P).value
        self.modules: dict[str, wasmtime.Module] = {}
        self.vms: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ticker: threading.Thread | None = None

    # The ticker runs only while some VM is alive (a validating supervisor stops it).
    def attach(self, vm: object) -> None:
        with self._lock:
            self.vms.add(vm)
            if self._ticker is None or not self._ticker.is_alive():
                self._ticker = threading.Thread(target=self._tick, name="omnirelay-wasm-epoch",
                                                daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        engine = self.engine_addr
        while True:
            self._wake.wait(EPOCH_TICK)
            if os.getpid() != self.pid:
                return
            _increment_epoch(engine)
            if not self.vms:
                with self._lock:
                    if not self.vms:
                        self._ticker = None
                        return

    def compile(self, wasm: bytes, digest: str) -> wasmtime.Module:
        module = self.modules.get(digest)
        if module is None:
            art = _ARTIFACTS.get(digest)
            if art is not None:
                module = wasmtime.Module.deserialize(self.engine, art)
            else:
                module = wasmtime.Module(self.engine, wasm)
                _ARTIFACTS[digest] = bytes(module.serialize())
            self.modules[digest] = module
        return module


# Compiled artifacts by sha256, kept across forks (they are plain bytes).
_ARTIFACTS: dict[str, bytes] = {}
_runtime: _ProcessRuntime | None = None
_runtime_lock = threading.Lock()
_abandoned: list[_ProcessRuntime] = []


def process_runtime() -> _ProcessRuntime:
    global _runtime
    rt = _runtime
    if rt is not None and rt.pid == os.getpid():
        return rt
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            if _runtime is not None:
                # The parent's engine: never freed here (its threads, if any, are gone).
                _abandoned.append(_runtime)
            _runtime = _ProcessRuntime()
        return _runtime


def _after_fork_in_child() -> None:
    global _runtime
    if _runtime is not None:
        _abandoned.append(_runtime)
        _runtime = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def load_bytes(path: str) -> bytes:
    """The module's bytes: a binary .wasm, or WebAssembly text (.wat) compiled here."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WasmLoadError(f"cannot read {path}: {e.strerror or e}") from None
    if not data.startswith(b"\0asm"):
        try:
            data = wasmtime.wat2wasm(data.decode("utf-8"))
        except (UnicodeDecodeError, wasmtime.WasmtimeError) as e:
            raise WasmLoadError(f"{path}: neither a Wasm binary nor valid WebAssembly text: "
                                f"{_first_line(e)}") from None
    return bytes(data)


def compile_module(wasm: bytes) -> tuple[wasmtime.Module, str]:
    digest = hashlib.sha256(wasm).hexdigest()
    try:
        return process_runtime().compile(wasm, digest), digest
    except wasmtime.WasmtimeError as e:
        raise WasmLoadError(f"invalid Wasm module: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- raw calls


def trap_from_host(message: str) -> int:
    """A new trap to return from a host callback (wasmtime takes ownership)."""
    data = message.encode()
    return _trap_new(data, len(data))


def decode_failure(err_addr: int | None, trap_addr: int) -> GuestFailure:
    """What went wrong in a call: the error or trap that wasmtime returned."""
    if trap_addr:
        trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_addr, ctypes.POINTER(_b.wasm_trap_t)))
        code = trap.trap_code
        message = trap.message
        if code == wasmtime.TrapCode.INTERRUPT:
            return GuestFailure("deadline", "callback deadline exceeded")
        return GuestFailure("trap", _trap_summary(message))
    err = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err_addr, ctypes.POINTER(_b.wasmtime_error_t)))
    if isinstance(err, wasmtime.ExitTrap):
        return GuestFailure("exit", f"proc_exit({err.code})")
    return GuestFailure("trap", _trap_summary(str(err)))


def _trap_summary(message: str) -> str:
    # wasmtime's message: "error while executing at wasm backtrace:\n ...\n\nCaused by:\n  ..."
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if "Caused by:" in lines:
        tail = lines[lines.index("Caused by:") + 1:]
        if tail:
            return " ".join(tail)
    for ln in lines:
        if ln.startswith("wasm trap:"):
            return ln
    return lines[0] if lines else "trap"


class RawFunc:
    """A guest export called with raw values; ``call`` returns the first result (an
    unsigned i32) or None, and raises GuestFailure. The ABI's callbacks take only i32
    parameters. Not re-entrant per function: one thread, and the ABI never calls an
    export from inside itself."""

    __slots__ = (
        "_addr",
        "_args",
        "_buf",
        "_ctx",
        "_func",
        "_func_addr",
        "_mv",
        "_nvals",
        "_trap",
        "_trap_ref",
        "name",
        "nparams",
        "nresults",
    )

    def __init__(self, ctx_addr: int, func: wasmtime.Func, name: str, ty: wasmtime.FuncType):
        self.name = name
        self._ctx = ctx_addr
        self._func = func  # keeps the wasmtime_func_t struct alive
        self._func_addr = ctypes.addressof(func._func)
        params, results = ty.params, ty.results
        if any(p != I32 for p in params) or any(r != I32 for r in results):
            raise WasmLoadError(f"export {name} has an unexpected signature")
        self.nparams, self.nresults = len(params), len(results)
        self._nvals = max(self.nparams, self.nresults, 1)
        self._buf = (ctypes.c_char * (16 * self._nvals))()
        self._addr = ctypes.addressof(self._buf)
        self._mv = memoryview(self._buf).cast("B")
        self._args = struct.Struct("<" + "I12x" * self.nparams)
        self._trap = ctypes.c_void_p()
        self._trap_ref = ctypes.addressof(self._trap)

    def call(self, *args: int):
        if args:
            self._args.pack_into(self._mv, 0, *args)
        err = _call_unchecked(self._ctx, self._func_addr, self._addr, self._nvals,
                              self._trap_ref)
        if err or self._trap.value:
            trap, self._trap.value = self._trap.value, None
            raise decode_failure(err, trap or 0)
        if self.nresults:
            return _U32.unpack_from(self._mv, 0)[0]
        return None


_U32 = struct.Struct("<I")


def host_signature(params: str, results: str) -> wasmtime.FuncType:
    """``"iiI"`` -> i32, i32, i64 (I = i64)."""
    def vt(c: str) -> wasmtime.ValType:
        return I64 if c == "I" else I32
    return wasmtime.FuncType([vt(c) for c in params], [vt(c) for c in results])


def arg_reader(params: str) -> Callable[[int], tuple]:
    """Reads a host call's raw arguments (16-byte slots) into unsigned ints."""
    fmt = "<" + "".join("Q8x" if c == "I" else "I12x" for c in params)
    st = struct.Struct(fmt)
    size = st.size
    string_at = ctypes.string_at
    unpack = st.unpack

    def read(addr: int) -> tuple:
        return unpack(string_at(addr, size))

    return read


class InvalidMemory(Exception):
    """A host function was given a pointer outside the guest's memory."""


def define_host_func(linker: wasmtime.Linker, module: str, name: str, params: str,
                     results: str, fn: Callable, keep: list,
                     on_error: Callable[[str, BaseException], None],
                     bad_memory: int) -> None:
    """Define ``module.name`` on the linker as an unchecked host function calling
    ``fn(*args)`` with unsigned ints; ``fn`` returns the i32 result (or None).
    InvalidMemory makes the call return ``bad_memory``; any other exception is reported
    to ``on_error`` and traps the guest."""
    ty = host_signature(params, results)
    read = arg_reader(params)
    has_result = bool(results)
    i32_at = ctypes.c_uint32.from_address

    def trampoline(env, caller, addr, nargs):
        try:
            try:
                r = fn(*read(addr)) if params else fn()
            except InvalidMemory:
                r = bad_memory
            if has_result:
                i32_at(addr).value = r & 0xFFFFFFFF
            return 0
        except BaseException as e:  # noqa: BLE001 - anything here must become a trap
            with contextlib.suppress(Exception):
                on_error(name, e)
            return trap_from_host(f"host function {name}: {type(e).__name__}: {e}")

    cb = HostCallback(trampoline)
    keep.append(cb)
    m, n = module.encode(), name.encode()
    err = _define_unchecked(ctypes.cast(linker.ptr(), _P).value, m, len(m), n, len(n),
                            ctypes.cast(ty.ptr(), _P).value, cb, None, None)
    if err:
        raise wasmtime.WasmtimeError._from_ptr(
            ctypes.cast(err, ctypes.POINTER(_b.wasmtime_error_t)))


def install_watchdog(store: wasmtime.Store, overdue: Callable[[], str | None]) -> object:
    """Check the store's running guest at every epoch tick.

    The store's deadline is one tick ahead; when wasm code runs past it, wasmtime calls
    back here (on the thread running the guest, which holds no GIL while in wasm).
    ``overdue()`` returns None to let the guest go on for another tick, or a message to
    stop it: the call then fails with a wasmtime error. Calls into the guest do not set
    a deadline each: the callback measures time since the callback started instead.
    Returns an object to keep alive as long as the store."""
    u64_at = ctypes.c_uint64.from_address
    u8_at = ctypes.c_uint8.from_address

    def check(context, data, delta_ptr, kind_ptr):
        try:
            message = overdue()
        except Exception as e:  # noqa: BLE001
            message = f"watchdog failed: {e}"
        if message is not None:
            return _error_new(message.encode()) or 0
        u64_at(delta_ptr).value = 1
        u8_at(kind_ptr).value = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
        return 0

    cb = DeadlineCallback(check)
    store_addr = ctypes.cast(store.ptr(), _P).value
    _set_deadline_callback(store_addr, cb, None, None)
    _set_epoch_deadline(ctypes.cast(store._context(), _P).value, 1)
    return cb


def memory_base(ctx_addr: int, memory: wasmtime.Memory) -> int:
    return _memory_data(ctx_addr, ctypes.addressof(memory._memory)) or 0


def memory_size(ctx_addr: int, memory: wasmtime.Memory) -> int:
    return _memory_data_size(ctx_addr, ctypes.addressof(memory._memory))
