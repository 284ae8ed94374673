"""An embedded Relay's admin listener: readiness, Prometheus metrics counted by the core
(per listener, per route and cluster, latency histograms), reloads, drain with a token."""
from __future__ import annotations

import asyncio
import json

import pytest
from harness import HOST, Origin, RawServer, get, make_config, one_shot, raw_response, read_request
from prometheus_client.parser import text_string_to_metric_families

import omnirelay
from omnirelay.config import Admin, ConfigError

TOKEN = "embedded-admin-token-123"


async def admin_get(relay: omnirelay.Relay, path: str):
    return await one_shot(relay.admin_address, get(path))


async def admin_post(relay: omnirelay.Relay, path: str, token: str | None = None):
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    data = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{auth}\r\n".encode()
    return await one_shot(relay.admin_address, data, method="POST")


async def scrape(relay: omnirelay.Relay) -> dict[tuple[str, tuple], float]:
    resp = await admin_get(relay, "/metrics")
    assert resp.status == 200
    assert resp.headers.get("content-type").startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics, name, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def flaky_once():
    """Answers 503 to its first request, 200 after."""
    async def handler(reader, writer, srv):
        while True:
            srv.requests.append(await read_request(reader))
            status = 503 if len(srv.requests) == 1 else 200
            writer.write(raw_response(status, b"x", reason="X"))
            await writer.drain()
    return handler


async def hang(reader, writer, srv):
    srv.requests.append(await read_request(reader))
    await reader.read()


def three_routes(origin: int, flaky: int, slow: int) -> dict:
    return make_config(
        routes=[
            {"name": "ok", "match": {"path": {"prefix": "/ok"}}, "cluster": "origin"},
            {"name": "flaky", "match": {"path": {"prefix": "/flaky"}}, "cluster": "flaky",
             "retry_policy": {"retry_on": ["5xx"], "num_retries": 1, "base_interval": "1ms"}},
            {"name": "slow", "match": {"path": {"prefix": "/slow"}}, "cluster": "slow",
             "timeout": "100ms"},
        ],
        clusters=[{"name": n, "endpoints": [{"address": HOST, "port": p}]}
                  for n, p in (("origin", origin), ("flaky", flaky), ("slow", slow))],
        metadata={"version": "v1", "epoch": 4})


async def test_metrics_count_what_the_core_saw():
    async with Origin() as origin, RawServer(flaky_once()) as flaky, RawServer(hang) as slow:
        cfg = three_routes(origin.port, flaky.port, slow.port)
        async with omnirelay.Relay(cfg, admin={"port": 0, "token": TOKEN}) as relay:
            assert (await admin_get(relay, "/ready")).status == 200
            addr = relay.address()
            for _ in range(3):
                assert (await one_shot(addr, get("/ok"))).status == 200
            assert (await one_shot(addr, get("/flaky"))).status == 200  # after one retry
            assert (await one_shot(addr, get("/slow"))).status == 504
            m = await scrape(relay)

            req = "omnirelay_downstream_requests_total"
            assert sample(m, req, listener="edge", code_class="2xx") == 4
            assert sample(m, req, listener="edge", code_class="5xx") == 1
            assert sample(m, "omnirelay_downstream_connections_total", listener="edge") == 5
            assert sample(m, "omnirelay_downstream_local_replies_total", listener="edge") == 1
            up = "omnirelay_upstream_requests_total"
            assert sample(m, up, cluster="origin", route="ok") == 3
            assert sample(m, up, cluster="flaky", route="flaky") == 2
            assert sample(m, up, cluster="slow", route="slow") == 1
            resp = "omnirelay_upstream_responses_total"
            assert sample(m, resp, cluster="flaky", route="flaky", code_class="5xx") == 1
            assert sample(m, resp, cluster="flaky", route="flaky", code_class="2xx") == 1
            assert sample(m, "omnirelay_upstream_retries_total", cluster="flaky",
                          route="flaky") == 1
            assert sample(m, "omnirelay_upstream_timeouts_total", cluster="slow",
                          route="slow") == 1
            # Latency: completed attempts only (the retried 503 and the timeout are not).
            hist = "omnirelay_upstream_request_duration_seconds"
            assert sample(m, f"{hist}_count", cluster="origin", route="ok") == 3
            assert sample(m, f"{hist}_count", cluster="flaky", route="flaky") == 1
            assert sample(m, f"{hist}_count", cluster="slow", route="slow") == 0
            assert sample(m, f"{hist}_bucket", cluster="origin", route="ok", le="60.0") == 3
            assert 0 < sample(m, f"{hist}_sum", cluster="origin", route="ok") < 3
            assert sample(m, "omnirelay_config_info", version="v1", epoch="4") == 1
            assert sample(m, "omnirelay_workers") == 1

            # A reload keeps every counter (the route and cluster stay).
            cfg["metadata"] = {"version": "v2", "epoch": 5}
            await relay.reload(cfg)
            assert (await one_shot(addr, get("/ok"))).status == 200
            m = await scrape(relay)
            assert sample(m, up, cluster="origin", route="ok") == 4
            assert sample(m, f"{hist}_count", cluster="origin", route="ok") == 4
            assert sample(m, "omnirelay_config_info", version="v2", epoch="5") == 1
            assert sample(m, "omnirelay_config_info", version="v1", epoch="4") == 0
            assert sample(m, "omnirelay_config_reloads_total", result="applied") == 1

            dump = json.loads((await admin_get(relay, "/config_dump")).body)
            assert dump["active"]["version"] == "v2" and dump["active"]["epoch"] == 5
            assert len(dump["active"]["sha256"]) == 64 and dump["last_known_good"] is None
            clusters = json.loads((await admin_get(relay, "/clusters")).body)["clusters"]
            (ep,) = clusters["origin"]["endpoints"]
            assert ep["address"] == f"{HOST}:{origin.port}" and ep["healthy_workers"] == 1
            assert ep["workers"]["0"]["idle"] >= 1
            stats = json.loads((await admin_get(relay, "/stats")).body)
            assert stats["mode"] == "embedded" and stats["workers"][0]["requests_total"] == 6


async def test_weighted_clusters_count_per_cluster():
    async with Origin("a") as a, Origin("b") as b:
        cfg = make_config(
            routes=[{"name": "split", "match": {},
                     "weighted_clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}],
            clusters=[{"name": n, "endpoints": [{"address": HOST, "port": o.port}]}
                      for n, o in (("a", a), ("b", b))])
        async with omnirelay.Relay(cfg, admin=Admin(port=0)) as relay:
            for _ in range(40):
                assert (await one_shot(relay.address(), get("/"))).status == 200
            m = await scrape(relay)
            up = "omnirelay_upstream_requests_total"
            per = {c: sample(m, up, cluster=c, route="split") for c in ("a", "b")}
            assert per == {"a": len(a.seen), "b": len(b.seen)}
            assert sum(per.values()) == 40 and min(per.values()) > 0


async def test_drain_needs_the_token_and_stops_the_relay():
    async with Origin() as origin:
        relay = omnirelay.Relay(make_config(origin.port), admin={"port": 0, "token": TOKEN})
        assert relay.admin_address is None
        await relay.start()
        try:
            assert (await admin_post(relay, "/drain")).status == 401
            assert (await admin_post(relay, "/drain", "x" * 20)).status == 403
            assert relay.ready
            resp = await admin_post(relay, "/drain", TOKEN)
            assert resp.status == 202 and json.loads(resp.body)["draining"] is True
            async with asyncio.timeout(5):
                while relay.admin_address is not None:
                    await asyncio.sleep(0.01)
            assert not relay.ready
        finally:
            await relay.stop()


async def test_admin_from_the_config_or_not_at_all():
    async with Origin() as origin:
        cfg = make_config(origin.port)
        cfg["admin"] = {"port": 0}
        async with omnirelay.Relay(cfg) as relay:
            assert relay.admin_url().startswith(f"http://{HOST}:")
            assert (await admin_get(relay, "/healthz")).body == b"ok\n"
            # Mutations are refused without a configured token.
            assert (await admin_post(relay, "/log_level?level=debug", TOKEN)).status == 403
        async with omnirelay.Relay(cfg, admin=False) as relay:
            assert relay.admin_address is None and relay.admin_url() is None


def test_admin_settings_are_checked():
    cfg = make_config(1)
    with pytest.raises(ConfigError) as caught:
        omnirelay.Relay(cfg, admin={"port": 0, "token": "short"})
    assert [str(i) for i in caught.value.issues] == [
        "admin.token: token must be 16 to 1024 characters long, got 5"]
    with pytest.raises(TypeError):
        omnirelay.Relay(cfg, admin=9901)
