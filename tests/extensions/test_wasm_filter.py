"""The Proxy-Wasm filter through a real Relay with an aiohttp origin, observed from outside:
header edits, properties, local replies, bodies, shared data / queues / ticks / metrics,
and the watchdogs with their failure policies."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from harness import Client, Origin, RawServer, eventually, get, keepalive_handler, make_config

import omnirelay
import omnirelay.extensions.wasm.filter
from omnirelay.extensions.wasm import binding_statuses, metrics_snapshot
from omnirelay.filters import FilterConfigError

WASM = "omnirelay.filters.http.wasm"


def wasm_config(port: int, **cfg) -> dict:
    return make_config(port, route={"filters": [{"name": WASM, "config": cfg}]})


def status_of(plugin: str) -> dict:
    matches = [s for s in binding_statuses() if s["plugin"] == plugin]
    assert matches, f"no binding status for {plugin}: {binding_statuses()}"
    return matches[-1]


def metric(name: str) -> dict:
    for m in metrics_snapshot():
        if m["name"] == name:
            return m
    raise AssertionError(f"no metric {name}")


# ----------------------------------------------------------------------------- headers


async def test_headers_plugin_edits_both_directions_and_reads_properties(wasm_module, caplog):
    caplog.set_level(logging.DEBUG, logger="omnirelay.wasm")
    cfg = wasm_config(0, path=wasm_module("headers.c"), configuration="blue",
                      name="hdr", root_id="root-1", environment={"PLUGIN_GREETING": "hi"})
    async with Origin("up1") as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r = await c.request(get("/a/b?q=1", headers="X-Replace-Me: old\r\n"
                                    "X-Remove-Me: bye\r\nX-Keep: 1\r\n"))
            assert r.status == 200
            seen = origin.seen[0].headers
            assert seen.get("x-wasm-tag") == "blue"
            assert seen.getall("x-replace-me") == ["replaced"]
            assert "x-remove-me" not in seen
            assert seen.get("x-keep") == "1"
            assert seen.get("x-prop-path") == "/a/b?q=1"
            assert seen.get("x-prop-url-path") == "/a/b"
            assert seen.get("x-prop-method") == "GET"
            assert seen.get("x-prop-source") == "127.0.0.1"
            assert seen.get("x-prop-plugin") == "hdr"
            assert seen.get("x-prop-root") == "root-1"
            assert seen.get("x-pseudo-path") == "/a/b?q=1"
            assert seen.get("x-pseudo-method") == "GET"
            assert seen.get("x-pseudo-authority") == "example.test"
            assert seen.get("x-env") == "hi"
            assert seen.get("x-clock") == "ok"
            assert seen.get("x-random") == "ok"
            # 4 pseudo-headers + host, x-replace-me, x-keep (x-remove-me gone) + the 13
            # headers the plugin added before it counted
            assert seen.get("x-header-count") == str(4 + 3 + 13)
            assert seen.get("x-num-headers") == str(4 + 4)  # host + 3 x- headers + pseudo
            # response side
            assert r.headers.get("x-wasm-response") == "1"
            assert r.headers.getall("x-origin") == ["wasm-up1"]
            assert "server" not in r.headers
            assert r.headers.get("x-status-seen") == "200"
            assert r.headers.get("x-response-code") == "200"
            assert r.json()["path"] == "/a/b?q=1"
            # keep-alive: a second request through the same VM
            r2 = await c.request(get("/again"))
            assert r2.status == 200 and origin.seen[1].headers.get("x-prop-path") == "/again"
    logs = [rec.getMessage() for rec in caplog.records if rec.name.startswith("omnirelay.wasm")]
    assert any("headers plugin: vm start (vm configuration 0 bytes)" in m for m in logs), logs
    assert any("headers plugin configured" in m for m in logs)
    assert any("headers plugin: stream done" in m for m in logs)
    st = status_of("hdr")
    assert st["state"] == "running" and st["failures"] == 0


async def test_local_reply_when_key_missing(wasm_module):
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(
            wasm_config(srv.port, path=wasm_module("deny.c"), configuration="s3cret")) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/private"))
            assert r.status == 403
            assert r.body == b"denied by wasm\n"
            assert r.headers.get("x-denied-by") == "deny.c"
            assert r.headers.get("x-omnirelay-reason") == "wasm_denied"
            r = await c.request(get("/private", headers="X-Api-Key: wrong\r\n"))
            assert r.status == 403
            assert srv.accepted == 0
            r = await c.request(get("/private", headers="X-Api-Key: s3cret\r\n"))
            assert r.status == 200
        assert srv.accepted == 1


async def test_plugin_rejecting_its_configuration_is_a_config_error(wasm_module):
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(wasm_config(1, path=wasm_module("deny.c")))  # no key configured
    assert "proxy_on_configure returned false" in str(e.value)
    assert "spec.routes[0].filters[0].config" in str(e.value)


# ----------------------------------------------------------------------------- bodies


async def test_body_plugin_buffers_inspects_and_rewrites(wasm_module):
    async with Origin() as origin, omnirelay.Relay(
            wasm_config(origin.port, path=wasm_module("body.c"), name="body")) as relay:
        async with await Client.open(relay.address()) as c:
            body = b"foo and more foo"
            r = await c.request(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert r.status == 200
            assert origin.seen[-1].body == b"bar and more bar|wasm"
            # chunked, several chunks: the plugin pauses until the end and sees it all
            chunks = [b"5\r\nhello\r\n", b"6\r\n forbi\r\n", b"5\r\ndden!\r\n", b"0\r\n\r\n"]
            await c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            for ch in chunks:
                await c.send(ch)
                await asyncio.sleep(0.01)
            r = await c.response()
            assert r.status == 400
            assert r.body == b"body rejected by wasm\n"
            assert r.headers.get("x-omnirelay-reason") == "wasm_body_rejected"
        assert len(origin.seen) == 1
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/size/20000"))
            assert r.status == 200 and len(r.body) == 20000
    assert metric("wasm_body.response_bytes")["value"] >= 20000
    assert metric("wasm_body.request_body_calls")["value"] >= 3


# ----------------------------------------------------------------------------- shared state


async def test_shared_data_tick_queue_metrics_and_resume_from_tick(wasm_module):
    async with Origin() as origin, omnirelay.Relay(
            wasm_config(origin.port, path=wasm_module("shared_tick.c"), name="ticker",
                        vm_id="tick-vm")) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/one"))
            assert r.status == 200
            await asyncio.sleep(0.15)  # several 20 ms ticks
            r = await c.request(get("/two"))
            assert r.status == 200
            # Paused by the plugin; its next tick adds a header and resumes the stream.
            t0 = time.monotonic()
            r = await c.request(get("/paused", headers="X-Pause: 1\r\n"))
            assert r.status == 200
            assert time.monotonic() - t0 < 1.0
        first, second, paused = (s.headers for s in origin.seen)
        assert int(second.get("x-ticks")) >= int(first.get("x-ticks")) + 2
        # the queue item of /one was dequeued in proxy_on_queue_ready before /two
        assert int(second.get("x-queued")) >= 1
        assert second.get("x-queue-resolves") == "yes"
        assert second.get("x-other-vm-queue") == "not-found"
        assert int(second.get("x-requests-metric")) == int(first.get("x-requests-metric")) + 1
        assert paused.get("x-resumed-by") == "tick"
        # The plugin's metrics are in the proxy's metric series, under fixed families.
        series = {(n, tuple(lb)): v for n, lb, v in relay.telemetry_snapshot()["series"]}
    assert metric("wasm_test.requests")["type"] == "counter"
    assert metric("wasm_test.requests")["value"] >= 3
    assert metric("wasm_test.ticks")["value"] >= 3
    hist = metric("wasm_test.path_len")
    assert hist["type"] == "histogram" and hist["count"] >= 3
    assert hist["sum"] >= len("/one") + len("/two") + len("/paused")
    assert series[("omnirelay_wasm_plugin_counter_total", ("wasm_test.requests",))] >= 3
    assert series[("omnirelay_wasm_plugin_histogram_observations_total",
                   ("wasm_test.path_len",))] >= 3
    assert series[("omnirelay_wasm_plugin_histogram_sum_total", ("wasm_test.path_len",))] >= 13


# ----------------------------------------------------------------------------- watchdogs


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_guest_looping_forever_is_stopped_by_the_deadline(wasm_module, policy):
    async with (
        Origin() as origin,
        omnirelay.Relay(wasm_config(origin.port, path=wasm_module("loop.wat"),
                                    name=f"loop-{policy}", callback_deadline="50ms",
                                    failure_policy=policy)) as relay,
        await Client.open(relay.address()) as c,
    ):
        t0 = time.monotonic()
        r = await c.request(get("/spin"))
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5, f"a looping guest held the request {elapsed:.3f}s"
        expected = 503 if policy == "fail_closed" else 200
        assert r.status == expected
        if policy == "fail_closed":
            assert r.headers.get("x-omnirelay-reason") == "wasm_fail_closed"
        # the VM is gone: later requests get the policy at once
        t0 = time.monotonic()
        r = await c.request(get("/again"))
        assert r.status == expected
        assert time.monotonic() - t0 < 0.2
    st = status_of(f"loop-{policy}")
    assert st["state"] == "failed"
    assert st["failures"] == 1
    assert st["last_error"] == "deadline: callback deadline exceeded"
    assert st["fallback_requests"] >= 1
    assert len(origin.seen) == (2 if policy == "fail_open" else 0)


async def test_trap_with_reload_policy_restarts_the_vm(wasm_module):
    async with (
        Origin() as origin,
        omnirelay.Relay(wasm_config(origin.port, path=wasm_module("trap.wat"), name="trapper",
                                    failure_policy="reload",
                                    reload_fallback="fail_closed")) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/fine"))
        assert r.status == 200
        assert origin.seen[-1].headers.get("x-trap-filter") == "ok"
        r = await c.request(get("/boom", headers="X-Trap: 1\r\n"))
        assert r.status == 503
        await eventually(lambda: status_of("trapper")["state"] == "running",
                         what="VM reloaded")
        r = await c.request(get("/fine-again"))
        assert r.status == 200
        assert origin.seen[-1].headers.get("x-trap-filter") == "ok"
    st = status_of("trapper")
    assert st["failures"] == 1 and st["reloads"] == 1
    assert st["last_error"].startswith("trap: ")
    assert "unreachable" in st["last_error"]


async def test_trap_with_fail_open_skips_the_filter(wasm_module):
    async with Origin() as origin, omnirelay.Relay(wasm_config(
            origin.port, path=wasm_module("trap.wat"), name="trap-open",
            failure_policy="fail_open")) as relay, await Client.open(relay.address()) as c:
        r = await c.request(get("/boom", headers="X-Trap: 1\r\n"))
        assert r.status == 200
        r = await c.request(get("/after"))
        assert r.status == 200
    assert "x-trap-filter" not in origin.seen[-1].headers  # the filter no longer runs
    assert status_of("trap-open")["state"] == "failed"


async def test_memory_growth_past_the_limit_applies_the_policy(wasm_module):
    async with (
        Origin() as origin,
        omnirelay.Relay(wasm_config(origin.port, path=wasm_module("grow.wat"), name="grower",
                                    memory_limit="4MiB", failure_policy="fail_closed")) as relay,
        await Client.open(relay.address()) as c,
    ):
        statuses = []
        for i in range(6):
            statuses.append((await c.request(get(f"/g{i}"))).status)
    # 64 KiB initial + 1 MiB per request: the 4th growth passes 4 MiB
    assert statuses == [200, 200, 200, 503, 503, 503]
    st = status_of("grower")
    assert st["failures"] == 1
    assert st["last_error"].startswith("memory: memory limit of 4194304 bytes reached")


async def test_deadline_failure_does_not_disturb_other_plugins(wasm_module):
    """A looping plugin on one route; a healthy one on another route keeps working."""
    routes = [
        {"name": "bad", "match": {"path": {"prefix": "/bad"}}, "cluster": "c",
         "filters": [{"name": WASM, "config": {"path": wasm_module("loop.wat"),
                                               "name": "loop-iso",
                                               "callback_deadline": "30ms"}}]},
        {"name": "good", "match": {"path": {"prefix": "/"}}, "cluster": "c",
         "filters": [{"name": WASM, "config": {"path": wasm_module("trap.wat"),
                                               "name": "trap-iso"}}]},
    ]
    async with Origin() as origin:
        cfg = make_config(origin.port, routes=routes)
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            assert (await c.request(get("/bad"))).status == 503
            r = await c.request(get("/good"))
            assert r.status == 200
            assert origin.seen[-1].headers.get("x-trap-filter") == "ok"
    assert status_of("trap-iso")["state"] == "running"


# ----------------------------------------------------------------------------- reloads


async def test_config_reload_keeps_an_unchanged_plugin_and_restarts_a_changed_one(
        wasm_module, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="omnirelay.wasm")

    def starts() -> int:
        return sum("headers plugin: vm start" in r.getMessage() for r in caplog.records)

    async with Origin() as origin:
        cfg = wasm_config(origin.port, path=wasm_module("headers.c"), configuration="blue",
                          name="reloading")
        async with omnirelay.Relay(cfg) as relay:
            assert starts() == 1
            await relay.reload(cfg)
            assert starts() == 1  # same entry, same module: the VM stays
            async with await Client.open(relay.address()) as c:
                assert (await c.request(get("/1"))).status == 200
            assert origin.seen[-1].headers.get("x-wasm-tag") == "blue"

            changed = wasm_config(origin.port, path=wasm_module("headers.c"),
                                  configuration="green", name="reloading")
            await relay.reload(changed)
            assert starts() == 2
            async with await Client.open(relay.address()) as c:
                assert (await c.request(get("/2"))).status == 200
            assert origin.seen[-1].headers.get("x-wasm-tag") == "green"

            broken = wasm_config(origin.port, path=str(tmp_path / "gone.wasm"))
            with pytest.raises(FilterConfigError, match="cannot read .*gone.wasm"):
                await relay.reload(broken)
            async with await Client.open(relay.address()) as c:
                assert (await c.request(get("/3"))).status == 200
            assert origin.seen[-1].headers.get("x-wasm-tag") == "green"


@pytest.mark.parametrize(("policy", "status"), [("fail_open", 200), ("fail_closed", 503)])
async def test_streams_paused_by_a_plugin_that_fails_get_the_policy(wasm_module, policy, status):
    async with (
        Origin() as origin,
        omnirelay.Relay(wasm_config(origin.port, path=wasm_module("pause_then_trap.wat"),
                                    name=f"pauser-{policy}", failure_policy=policy)) as relay,
        await Client.open(relay.address()) as c,
    ):
        t0 = time.monotonic()
        r = await c.request(get("/held"))
        assert r.status == status
        assert time.monotonic() - t0 < 1.0  # at the failing tick, not at the route timeout
    st = status_of(f"pauser-{policy}")
    assert st["state"] == "failed" and st["last_error"].startswith("trap: ")
    assert len(origin.seen) == (1 if policy == "fail_open" else 0)
