"""omnirelay.filters.http.fault through a real Relay and a real upstream: aborts, delays,
header control and config validation. Percentages are 0 or 100, so nothing is random."""
from __future__ import annotations

import asyncio
import time

import pytest
from harness import Client, Origin, assert_quiescent, get, make_config, one_shot

import omnirelay
from omnirelay.filters import FilterConfigError

FAULT = "omnirelay.filters.http.fault"


def fault_config(port: int, config: dict) -> dict:
    return make_config(port, route={"filters": [{"name": FAULT, "config": config}]})


async def timed(addr, data: bytes):
    t0 = time.monotonic()
    resp = await one_shot(addr, data)
    return resp, time.monotonic() - t0


async def test_abort_100_percent_answers_locally_and_upstream_sees_nothing():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"abort": {"status": 503, "percentage": 100}})
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/a"))
            assert r.status == 503, r.start_line
            assert r.headers.get("x-omnirelay-reason") == "fault_abort"
            assert r.body == b"fault filter abort\n"
            r = await one_shot(relay.address(), get("/b"))
            assert r.status == 503
            assert relay.stats()["listeners"]["edge"]["downstream_rq_local_reply"] == 2
        assert origin.seen == []


async def test_abort_custom_body_and_status():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"abort": {"status": 418, "body": "teapot fault\n"}})
        async with omnirelay.Relay(cfg) as relay:
            r = await one_shot(relay.address(), get("/"))
            assert r.status == 418 and r.body == b"teapot fault\n"
            assert r.headers.get("x-omnirelay-reason") == "fault_abort"
        assert origin.seen == []


async def test_abort_0_percent_passes_through():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"abort": {"status": 503, "percentage": 0},
                                         "delay": {"fixed": "5s", "percentage": 0}})
        async with omnirelay.Relay(cfg) as relay:
            for _ in range(5):
                r, elapsed = await timed(relay.address(), get("/ok"))
                assert r.status == 200, r.start_line
                assert "x-omnirelay-reason" not in r.headers
                assert elapsed < 2
        assert [s.path for s in origin.seen] == ["/ok"] * 5


async def test_delay_100_percent_delays_then_forwards():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"delay": {"fixed": "200ms", "percentage": 100}})
        async with omnirelay.Relay(cfg) as relay:
            r, elapsed = await timed(relay.address(), get("/slow"))
            assert r.status == 200, r.start_line
            assert r.json()["path"] == "/slow"
            assert 0.2 <= elapsed < 2, elapsed
        assert [s.path for s in origin.seen] == ["/slow"]


async def test_delay_in_seconds_as_number():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"delay": {"fixed": 0.2}})   # percentage defaults to 100
        async with omnirelay.Relay(cfg) as relay:
            r, elapsed = await timed(relay.address(), get("/"))
            assert r.status == 200 and 0.2 <= elapsed < 2, (r.start_line, elapsed)


async def test_abort_is_applied_after_the_delay():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"delay": {"fixed": "200ms", "percentage": 100},
                                         "abort": {"status": 504, "percentage": 100}})
        async with omnirelay.Relay(cfg) as relay:
            r, elapsed = await timed(relay.address(), get("/"))
            assert r.status == 504 and r.headers.get("x-omnirelay-reason") == "fault_abort"
            assert 0.2 <= elapsed < 2, elapsed
            # The connection stays usable after a delayed abort.
            async with await Client.open(relay.address()) as c:
                assert (await c.request(get("/1"))).status == 504
                assert (await c.request(get("/2"))).status == 504
        assert origin.seen == []


async def test_client_gone_during_delay_is_harmless():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"delay": {"fixed": "300ms"}})
        async with omnirelay.Relay(cfg) as relay:
            c = await Client.open(relay.address())
            await c.send(get("/abandoned"))
            await asyncio.sleep(0.05)
            await c.close()
            await assert_quiescent(relay)     # within 2 s, so past the delay
            r = await one_shot(relay.address(), get("/next"))
            assert r.status == 200
        assert origin.seen[-1].path == "/next"


async def test_client_gone_during_delay_is_not_forwarded():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"delay": {"fixed": "300ms"}})
        async with omnirelay.Relay(cfg) as relay:
            c = await Client.open(relay.address())
            await c.send(get("/abandoned"))
            await asyncio.sleep(0.05)
            await c.close()
            await assert_quiescent(relay)
            await asyncio.sleep(0.4)          # past the delay: nothing is sent upstream
        assert origin.seen == []


async def test_header_control_on_forces_faults_and_strips_headers():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"header_control": True})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            r = await one_shot(addr, get("/abort", headers=(
                "x-omnirelay-fault-abort-request: 502\r\n")))
            assert r.status == 502 and r.headers.get("x-omnirelay-reason") == "fault_abort"

            r, elapsed = await timed(addr, get("/delay", headers=(
                "x-omnirelay-fault-delay-request: 200\r\n")))
            assert r.status == 200 and 0.2 <= elapsed < 2, (r.start_line, elapsed)

            r, elapsed = await timed(addr, get("/both", headers=(
                "x-omnirelay-fault-delay-request: 200\r\n"
                "x-omnirelay-fault-abort-request: 503\r\n")))
            assert r.status == 503 and 0.2 <= elapsed < 2, (r.start_line, elapsed)

            # Invalid values force nothing, and are still not forwarded.
            r = await one_shot(addr, get("/invalid", headers=(
                "x-omnirelay-fault-abort-request: 200\r\n"
                "x-omnirelay-fault-delay-request: soon\r\n")))
            assert r.status == 200

            r = await one_shot(addr, get("/plain"))
            assert r.status == 200
        assert [s.path for s in origin.seen] == ["/delay", "/invalid", "/plain"]
        for s in origin.seen:
            assert "x-omnirelay-fault-delay-request" not in s.headers, s.headers
            assert "x-omnirelay-fault-abort-request" not in s.headers, s.headers


async def test_header_control_off_ignores_and_forwards_headers():
    async with Origin() as origin:
        cfg = fault_config(origin.port, {"abort": {"status": 503, "percentage": 0}})
        async with omnirelay.Relay(cfg) as relay:
            r, elapsed = await timed(relay.address(), get("/x", headers=(
                "x-omnirelay-fault-abort-request: 503\r\n"
                "x-omnirelay-fault-delay-request: 1500\r\n")))
            assert r.status == 200, r.start_line
            assert elapsed < 1.0, elapsed
        (seen,) = origin.seen
        assert seen.headers.get("x-omnirelay-fault-abort-request") == "503"
        assert seen.headers.get("x-omnirelay-fault-delay-request") == "1500"


async def test_registered_as_builtin():
    assert FAULT in omnirelay.filters.registry.known_filters()


@pytest.mark.parametrize(("config", "named"), [
    ({"bogus": 1}, "bogus"),
    ({"delay": {"fixed": "soon"}}, "delay.fixed"),
    ({"delay": {"fixed": -1}}, "delay.fixed"),
    ({"delay": {"percentage": 50}}, "delay.fixed"),
    ({"delay": {"fixed": "1s", "percentage": 150}}, "delay.percentage"),
    ({"delay": {"fixed": "1s", "percentage": "half"}}, "delay.percentage"),
    ({"delay": {"fixed": "1s", "jitter": 1}}, "jitter"),
    ({"delay": "1s"}, "delay"),
    ({"abort": {"status": 200}}, "abort.status"),
    ({"abort": {"status": "503"}}, "abort.status"),
    ({"abort": {"percentage": 10}}, "abort.status"),
    ({"abort": {"status": 503, "percentage": -1}}, "abort.percentage"),
    ({"abort": {"status": 503, "body": 5}}, "abort.body"),
    ({"abort": {"status": 503, "grpc_status": 5}}, "grpc_status"),
    ({"header_control": "yes"}, "header_control"),
])
def test_invalid_config_is_rejected_naming_the_key(config, named):
    with pytest.raises(FilterConfigError) as err:
        omnirelay.Relay(fault_config(1, config))
    msg = str(err.value)
    assert named in msg, msg
    assert "spec.routes[0].filters[0].config" in msg, msg
