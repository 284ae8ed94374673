"""Per-tenant access-log limits on a real Relay, and the access-log counters on the
admin's Prometheus endpoint."""
from __future__ import annotations

import json
from pathlib import Path

from harness import HOST, Client, Origin, eventually, get, make_config, one_shot
from prometheus_client.parser import text_string_to_metric_families

import omnirelay


async def scrape(relay: omnirelay.Relay) -> dict[tuple[str, str], float]:
    resp = await one_shot(relay.admin_address, get("/metrics"))
    assert resp.status == 200
    out = {}
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            if s.name == "omnirelay_access_log_records_total":
                out[(s.labels["listener"], s.labels["result"])] = s.value
    return out


async def test_a_noisy_tenant_is_limited_alone_and_counted(tmp_path: Path):
    log_path = tmp_path / "access.log"
    async with Origin() as origin:
        cfg = make_config(origin.port, listener={"access_log": {
            "path": str(log_path), "tenant_header": "x-tenant", "tenant_max_per_second": 5}})
        async with omnirelay.Relay(cfg, admin={"address": HOST, "port": 0}) as relay:
            async with await Client.open(relay.address()) as c:
                for _ in range(60):
                    resp = await c.request(get("/n", headers="X-Tenant: noisy\r\n"))
                    assert resp.status == 200
                for _ in range(3):
                    resp = await c.request(get("/q", headers="X-Tenant: quiet\r\n"))
                    assert resp.status == 200
            lg = relay._builder.access_logs["edge"]
            await eventually(lambda: lg.written == lg.logged, 5, "records written")
            metrics = await scrape(relay)
    records = [json.loads(x) for x in log_path.read_text().splitlines()]
    paths = [r["path"] for r in records]
    assert paths.count("/q") == 3  # the quiet tenant lost nothing
    noisy = paths.count("/n")
    assert 5 <= noisy < 60
    assert lg.dropped_tenant_rate_limit == 60 - noisy
    assert metrics[("edge", "written")] == len(records)
    assert metrics[("edge", "tenant_rate_limited")] == 60 - noisy
    assert metrics[("edge", "sampled_out")] == 0
