"""Native plugins (omnirelay_plugin.h) through the proxy: plugins compiled here with the
system C compiler, loaded by the ``omnirelay.filters.http.native`` filter, and real
requests between a real client, the relay and an aiohttp origin on loopback."""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Client, Origin, get, make_config, one_shot

import omnirelay
from omnirelay import CONTINUE, FilterFactory, HttpFilter
from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions import native
from omnirelay.extensions.native.filter import NativeFilterFactory, binding_statuses
from omnirelay.extensions.packages import build_package, write_package
from omnirelay.extensions.status import bindings as extension_bindings
from omnirelay.extensions.status import extension_series
from omnirelay.filters.registry import FilterConfigError

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent / "native"
EXAMPLE = ROOT / "examples" / "plugins" / "add_header" / "add_header.c"
FILTER = "omnirelay.filters.http.native"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Callable[..., str]:
    """``build(source, "-DX=1", ...)`` -> path of the shared library, compiled once."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is part of make setup (build-essential)"
    out = tmp_path_factory.mktemp("native-plugins")
    built: dict[tuple, str] = {}

    def compile_(source: Path, *defines: str) -> str:
        key = (str(source), defines)
        if key not in built:
            name = source.stem + "".join(re.sub(r"\W", "_", d) for d in defines)
            target = out / f"{name}.so"
            cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wno-unused-parameter",
                   "-fvisibility=hidden", "-I", native.include_dir(), *defines,
                   "-o", str(target), str(source)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            assert proc.returncode == 0, f"cc failed for {source.name}:\n{proc.stderr}"
            built[key] = str(target)
        return built[key]

    return compile_


@pytest.fixture(scope="module")
def test_plugin(build) -> str:
    return build(SRC / "test_plugin.c")


def native_filter(path: str, directives: str | dict = "", **extra) -> dict:
    return {"name": FILTER, "config": {"path": path, "config": directives, **extra}}


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {len(body)}\r\n"
            f"\r\n").encode() + body


# --------------------------------------------------------------------------- Python filters


class _AddOrder(HttpFilter):
    def on_request_headers(self, stream, end_stream):
        stream.request_headers.add("x-order", self.config["value"])
        return CONTINUE


@omnirelay.register("tests.native.add_order")
class _AddOrderFactory(FilterFactory):
    filter_class = _AddOrder


class _MetadataToHeader(HttpFilter):
    def on_request_headers(self, stream, end_stream):
        md = stream.metadata or {}
        stream.request_headers.set("x-from-metadata", md.get(self.config["key"], "absent"))
        return CONTINUE


@omnirelay.register("tests.native.metadata_to_header")
class _MetadataToHeaderFactory(FilterFactory):
    filter_class = _MetadataToHeader


class _SetMetadata(HttpFilter):
    def on_request_headers(self, stream, end_stream):
        stream.metadata = {"py.key": "from python ✓"}
        return CONTINUE


@omnirelay.register("tests.native.set_metadata")
class _SetMetadataFactory(FilterFactory):
    filter_class = _SetMetadata


async def _through(filters: list[dict], *requests: bytes) -> tuple[list, list, list]:
    """Send each request on its own connection through a relay with ``filters``;
    returns (responses, what the origin saw, binding statuses while the relay ran)."""
    async with Origin() as origin:
        async with omnirelay.Relay(make_config(origin.port, route={"filters": filters})) as relay:
            responses = [await one_shot(relay.address(), r,
                                        "POST" if r.startswith(b"POST") else "GET")
                         for r in requests]
            statuses = binding_statuses()
        return responses, origin.seen, statuses


# --------------------------------------------------------------------------- the example


async def test_example_plugin_adds_headers_and_denies_a_prefix(build):
    so = build(EXAMPLE)
    cfg = "deny_prefix /admin\nresponse_header x-served-by native"
    (ok, denied), seen, statuses = await _through([native_filter(so, cfg)], get("/api/items"),
                                                  get("/admin/users"))
    assert ok.status == 200
    assert ok.headers.get("x-served-by") == "native"
    assert [s.path for s in seen] == ["/api/items"]
    assert seen[0].headers.get("x-native-plugin") == "add_header"
    assert denied.status == 403 and denied.body == b"denied by add_header\n"
    assert denied.headers.get("x-omnirelay-reason") == "add_header_denied"
    (st,) = [s for s in statuses if s["plugin"] == "add_header"]
    assert st["plugin"] == "add_header" and st["abi"] == native.ABI_VERSION
    assert st["state"] == "running" and st["calls"] == 3 and st["trips"] == 0


async def test_example_plugin_rejects_a_bad_config_with_its_reason(build):
    cfg = make_config(1, route={"filters": [native_filter(build(EXAMPLE), "frobnicate yes")]})
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(cfg)
    assert "spec.routes[0].filters[0].config" in str(e.value)
    assert "plugin add_header rejected its config: unknown directive 'frobnicate'" in str(e.value)


# --------------------------------------------------------------------------- host API


async def test_header_edits_pseudo_headers_and_status_replies(test_plugin):
    cfg = ("copy_header user-agent x-copied-ua\n"
           "copy_header_direct x-big x-big-copy\n"
           "add_request x-multi two\n"
           "remove_request x-drop\n"
           "set_path /rewritten?q=1\n"
           "set_response x-resp yes\n"
           "remove_response x-origin")
    big = "b" * 6000  # copying it grows the map's arena, which moves the source value
    req = get("/orig", headers=f"User-Agent: tester/1\r\nX-Multi: one\r\nX-Drop: a\r\n"
                               f"X-Big: {big}\r\n")
    (resp,), seen, _ = await _through([native_filter(test_plugin, cfg)], req)
    assert resp.status == 200
    assert resp.headers.get("x-resp") == "yes" and "x-origin" not in resp.headers
    (s,) = seen
    assert s.path == "/rewritten?q=1"
    assert s.headers.get("x-copied-ua") == "tester/1"
    assert s.headers.get("x-big-copy") == big
    assert s.headers.getall("x-multi") == ["one", "two"]
    assert "x-drop" not in s.headers and s.headers.get("x-remove-rc") == "0"


async def test_host_api_misuse_gets_error_codes(test_plugin):
    (resp,), seen, _ = await _through([native_filter(test_plugin, "probe_errors")], get("/p"))
    assert resp.status == 200
    not_found, bad_argument, bad_state = -1, -2, -3
    assert seen[0].headers.get("x-probe") == ",".join(map(str, [
        bad_state,      # get_body outside a body hook
        bad_state,      # request trailers: the request has none
        bad_argument,   # no such map
        not_found,      # absent header
        bad_argument,   # name is not a token
        bad_argument,   # CR LF in a value
        bad_argument,   # status out of range
        bad_argument,   # reason with a newline
        bad_argument,   # metadata that is not UTF-8
        bad_state,      # set_body outside a body hook
    ]))


async def test_hooks_run_without_the_gil(test_plugin):
    (resp,), seen, _ = await _through([native_filter(test_plugin, "gil_check")], get("/g"))
    assert resp.status == 200 and seen[0].headers.get("x-gil") == "released"


async def test_local_replies(test_plugin):
    (status_only,), seen1, _ = await _through([native_filter(test_plugin, "deny 451")], get("/a"))
    (full,), seen2, _ = await _through([native_filter(test_plugin, "reply 418 short and stout")],
                                       get("/b"))
    assert seen1 == [] and seen2 == []
    assert status_only.status == 451
    assert status_only.headers.get("x-omnirelay-reason") == "native_filter"
    assert full.status == 418 and full.body == b"short and stout"
    assert full.headers.get("x-omnirelay-reason") == "test_reply"


async def test_request_and_response_bodies(test_plugin):
    cfg = "upper_request_body\nreplace_response_body replaced-by-the-plugin"
    body = b"hello native body " * 1000
    (resp,), seen, _ = await _through([native_filter(test_plugin, cfg)], post("/up", body))
    assert resp.status == 200 and resp.body == b"replaced-by-the-plugin"
    assert seen[0].body == body.upper()


async def test_buffered_request_body(test_plugin):
    body = os.urandom(100_000)
    (resp,), seen, _ = await _through([native_filter(test_plugin, "buffer_request_body")],
                                      post("/buf", body))
    assert resp.status == 200
    assert seen[0].body == f"[{len(body)} bytes]".encode()


async def test_metadata_is_shared_with_python_filters(test_plugin):
    filters = [
        {"name": "tests.native.set_metadata"},
        native_filter(test_plugin, "metadata native.key from native\n"
                                   "metadata_to_header py.key x-native-read"),
        {"name": "tests.native.metadata_to_header", "config": {"key": "native.key"}},
    ]
    (resp,), seen, _ = await _through(filters, get("/md"))
    assert resp.status == 200
    h = seen[0].headers
    # Header values travel as latin-1 on the wire: compare the UTF-8 bytes.
    assert h.get("x-native-read").encode("latin-1").decode() == "from python ✓"
    assert h.get("x-from-metadata") == "from native"


async def test_mixed_chain_keeps_order(test_plugin):
    filters = [{"name": "tests.native.add_order", "config": {"value": "py1"}},
               native_filter(test_plugin, "add_request x-order native"),
               {"name": "tests.native.add_order", "config": {"value": "py2"}}]
    (resp,), seen, _ = await _through(filters, get("/order"))
    assert resp.status == 200
    assert seen[0].headers.getall("x-order") == ["py1", "native", "py2"]


async def test_log_hook_and_host_log(test_plugin, caplog):
    logged = ctypes.CDLL(test_plugin).test_plugin_logged
    before = logged()
    with caplog.at_level(logging.WARNING, logger="omnirelay.extensions.native"):
        (resp,), _, _ = await _through([native_filter(test_plugin, "log hello from C")], get("/l"))
    assert resp.status == 200
    assert logged() - before == 1
    assert any(r.name == "omnirelay.extensions.native" and r.getMessage() == "hello from C"
               for r in caplog.records)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(("defines", "reason"), [
    (("-DABI_MAJOR=99",),
     f"plugin ABI 99.0 is not compatible with this host's ABI {native.ABI_VERSION}"),
    (("-DNO_INIT",), "does not export omnirelay_plugin_init"),
    (("-DREFUSE",), "omnirelay_plugin_init returned NULL"),
    (("-DUNDEFINED_SYMBOL",), "undefined symbol: omnirelay_test_missing_symbol"),
])
def test_incompatible_plugins_are_refused_with_the_reason(build, defines, reason):
    so = build(SRC / "test_plugin.c", *defines)
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(make_config(1, route={"filters": [native_filter(so)]}))
    assert "spec.routes[0].filters[0].config" in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize(("config", "reason"), [
    ({}, "path is required"),
    ({"path": "/nonexistent/p.so"}, "cannot read /nonexistent/p.so"),
    ({"path": "x.so", "failure_policy": "retry"}, "failure_policy must be one of"),
    ({"path": "x.so", "max_call_us": -1}, "max_call_us must be a number"),
    ({"path": "x.so", "max_trips": 0}, "max_trips must be an integer of at least 1"),
    ({"path": "x.so", "frob": 1}, "unknown keys ['frob']"),
    ({"path": "x.so", "sha256": "abc"}, "sha256 must be 64 lowercase hex digits"),
])
def test_config_errors(config, reason):
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(make_config(1, route={"filters": [{"name": FILTER, "config": config}]}))
    assert "spec.routes[0].filters[0].config" in str(e.value) and reason in str(e.value)


def test_sha256_pin_and_create_failure(test_plugin):
    wrong = "0" * 64
    with pytest.raises(FilterConfigError, match="sha256 is [0-9a-f]{64}, expected 0{64}"):
        omnirelay.Relay(make_config(1, route={"filters": [
            native_filter(test_plugin, sha256=wrong)]}))
    with pytest.raises(FilterConfigError, match="rejected its config: told to fail: now"):
        omnirelay.Relay(make_config(1, route={"filters": [
            native_filter(test_plugin, "fail_create now")]}))


def test_header_and_abi_version_ship_with_the_package():
    header = Path(native.include_dir()) / "omnirelay_plugin.h"
    text = header.read_text()
    major = re.search(r"#define OMNIRELAY_PLUGIN_ABI_VERSION_MAJOR (\d+)", text).group(1)
    minor = re.search(r"#define OMNIRELAY_PLUGIN_ABI_VERSION_MINOR (\d+)", text).group(1)
    assert native.ABI_VERSION == f"{major}.{minor}"


# --------------------------------------------------------------------------- watchdog


async def _watchdog_run(test_plugin, policy: dict, name: str) -> tuple[list, list, dict]:
    # The first call sleeps 30 ms, past max_call_us (1 ms): one trip disables the binding.
    f = native_filter(test_plugin, "sleep_us 30000\nset_request x-plugin ran",
                      max_call_us=1000, max_trips=1, name=name, **policy)
    async with Origin() as origin:
        async with omnirelay.Relay(make_config(origin.port, route={"filters": [f]})) as relay:
            async with await Client.open(relay.address()) as c:
                responses = [await c.request(get(f"/{i}")) for i in range(3)]
            (status,) = [s for s in binding_statuses() if s["plugin"] == name]
            series = [e for e in extension_series() if e[1][:2] == ("native", name)]
        status["series"] = series
        return responses, origin.seen, status


async def test_watchdog_trip_fail_closed(test_plugin):
    responses, seen, st = await _watchdog_run(test_plugin, {"failure_policy": "fail_closed"},
                                            "wd_closed")
    # The slow call completes (the origin gets the request); from then on every hook gets
    # the fallback, the tripping stream's response headers included (as with Wasm).
    assert len(seen) == 1 and seen[0].headers.get("x-plugin") == "ran"
    assert [r.status for r in responses] == [503, 503, 503]
    assert responses[1].headers.get("x-omnirelay-reason") == "native_fail_closed"
    assert responses[1].body == b"native plugin unavailable\n"
    assert st["state"] == "failed" and st["trips"] == 1 and st["calls"] == 1
    assert st["fallback_calls"] == 3 and st["last_error"].startswith("watchdog:")
    assert st["watchdog_trips"] == {"call_time": 1} and st["failures_by_kind"] == {"call_time": 1}
    assert set(st["series"]) == {  # what the metrics exporter publishes
        ("omnirelay_extension_watchdog_trips_total", ("native", "wd_closed", "call_time"), 1),
        ("omnirelay_extension_failures_total", ("native", "wd_closed", "call_time"), 1)}
    assert st["call_time_max_ns"] >= 30_000_000


async def test_watchdog_trip_fail_open(test_plugin):
    responses, seen, st = await _watchdog_run(test_plugin, {"failure_policy": "fail_open"},
                                            "wd_open")
    assert [r.status for r in responses] == [200, 200, 200]
    assert [s.headers.get("x-plugin") for s in seen] == ["ran", None, None]
    assert st["state"] == "failed" and st["fallback"] == "fail_open"


async def test_reload_policy_disables_and_applies_its_fallback(test_plugin):
    responses, seen, st = await _watchdog_run(
        test_plugin, {"failure_policy": "reload", "reload_fallback": "fail_open"}, "wd_reload")
    assert [r.status for r in responses] == [200, 200, 200] and len(seen) == 3
    assert st["failure_policy"] == "reload" and st["fallback"] == "fail_open"
    assert st["state"] == "failed"


async def test_invalid_result_is_a_failure(test_plugin, caplog):
    with caplog.at_level(logging.WARNING, logger="omnirelay.extensions.native"):
        (r1, r2), seen, statuses = await _through(
            [native_filter(test_plugin, "bad_result", name="bad")], get("/1"), get("/2"))
    assert (r1.status, r2.status) == (503, 503) and seen == []
    (st,) = [s for s in statuses if s["plugin"] == "bad"]
    assert st["failures"] == 1 and st["calls"] == 1 and st["fallback_calls"] == 2
    assert st["failures_by_kind"] == {"bad_result": 1} and st["watchdog_trips"] == {}
    assert st["last_error"] == "bad_result: on_request_headers returned 42"
    assert any("disabled" in r.getMessage() for r in caplog.records)


def test_contexts_are_destroyed_with_their_binding_and_can_be_disabled(test_plugin):
    live = ctypes.CDLL(test_plugin).test_plugin_live_contexts
    gc.collect()  # bindings of earlier tests' relays
    before = live()
    factories = [NativeFilterFactory({"path": test_plugin, "name": f"ctx{i}"}, binding=f"b{i}")
                 for i in range(3)]
    assert live() == before + 3
    factories[0].disable("maintenance")
    st = factories[0].stats()
    assert st["state"] == "failed" and st["last_error"] == "maintenance"
    assert factories[1].stats()["state"] == "running"
    del factories
    gc.collect()
    assert live() == before


# --------------------------------------------------------------------------- packages


async def test_signed_package_loads_and_shows_in_extension_status(build, tmp_path):
    so = Path(build(EXAMPLE))
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    pkg = tmp_path / "add_header.orpkg"
    write_package(pkg, build_package(so.read_bytes(), name="add-header", version="1.0.0",
                                     kind="native", signer=signer))
    cfg = make_config(1, route={"filters": [{"name": FILTER, "config": {
        "package": str(pkg), "name": "packaged", "config": "request_header x-from-package yes"}}]})
    cfg["extensions"] = {"trusted_keys": [str(trust)]}
    async with Origin() as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay:
            resp = await one_shot(relay.address(), get("/p"))
            entries = [b for b in extension_bindings() if b["kind"] == "native"
                       and b["name"] == "packaged"]
    assert resp.status == 200 and origin.seen[0].headers.get("x-from-package") == "yes"
    (entry,) = entries
    assert entry["state"] == "running" and entry["calls"] == 2
    assert entry["package"]["version"] == "1.0.0"
    assert entry["package"]["sha256"] == entry["sha256"]
    assert json.loads(json.dumps(entry))
