"""The admin's /capabilities and /extensions over a real embedded Relay: the extension
hosts and ABIs this build offers; every binding's state, failures, watchdog trips and
policy, and the package it was loaded from (version, sha256, signer); the failure metrics.
Refused packages at config load name the binding and the reason. The supervisor's merge of
its workers' reports is checked on the report plumbing itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime
from harness import Origin, get, make_config, one_shot
from prometheus_client.parser import text_string_to_metric_families

import omnirelay
from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions.packages import build_package, write_package
from omnirelay.extensions.status import merge_extensions
from omnirelay.filters import FilterConfigError
from omnirelay.telemetry import Aggregate
from omnirelay.telemetry.samples import Reporter

WASM = "omnirelay.filters.http.wasm"
WASM_DIR = Path(__file__).resolve().parents[1] / "extensions" / "wasm"


async def admin_json(relay: omnirelay.Relay, path: str) -> dict:
    r = await one_shot(relay.admin_address, get(path, headers="Connection: close\r\n"))
    assert r.status == 200, r.body
    return json.loads(r.body)


async def samples(relay: omnirelay.Relay) -> dict[tuple, float]:
    r = await one_shot(relay.admin_address, get("/metrics", headers="Connection: close\r\n"))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.body.decode()) for s in fam.samples}


@pytest.fixture
def signed(tmp_path):
    """(trust bundle path, signer)."""
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    return str(trust), signer


async def test_capabilities_list_hosts_abis_and_features():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port),
                                                   admin={"port": 0}) as relay:
        caps = await admin_json(relay, "/capabilities")
    assert caps["runtimes"]["wasm"] == {**caps["runtimes"]["wasm"], "available": True,
                                        "abi": "proxy_wasm/0.2.1"}
    assert caps["abi"]["proxy_wasm"] == "0.2.1"
    assert "proxy_wasm/0.2.1" in caps["extension_abis"]
    for kind in ("wasm", "native", "dsl"):
        rt = caps["runtimes"][kind]
        assert rt["available"] == (rt["abi"] is not None)
        assert (rt["abi"] in caps["extension_abis"]) == rt["available"]
        assert (kind in caps["packages"]["kinds"]) == rt["available"]
    assert caps["packages"]["signature"] == "ed25519"
    assert {"wasm.shared_data", "wasm.headers", "packages"} <= set(caps["features"])
    assert "wasm.network_filters" not in caps["features"]  # no TCP (network) filters


async def test_extensions_show_bindings_packages_failures_and_metrics(tmp_path, signed):
    trust, signer = signed
    pkg = tmp_path / "trapper.orpkg"
    write_package(pkg, build_package(
        wasmtime.wat2wasm((WASM_DIR / "trap.wat").read_text()), name="trapper",
        version="3.1.4", kind="wasm", signer=signer))
    cfg = make_config(routes=[
        {"name": "trap", "match": {"path": {"prefix": "/trap"}}, "cluster": "c",
         "filters": [{"name": WASM, "config": {"package": str(pkg),
                                               "failure_policy": "fail_open"}}]},
        {"name": "loop", "match": {"path": {"prefix": "/loop"}}, "cluster": "c",
         "filters": [{"name": WASM, "config": {"path": str(WASM_DIR / "loop.wat"),
                                               "name": "spinner", "callback_deadline": "20ms",
                                               "failure_policy": "fail_closed"}}]}])
    cfg["extensions"] = {"trusted_keys": [trust]}
    async with Origin() as origin:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = origin.port
        async with omnirelay.Relay(cfg, admin={"port": 0}) as relay:
            addr = relay.address()
            r = await one_shot(addr, get("/trap", headers="X-Trap: 1\r\n"))
            assert r.status == 200  # fail_open: the trap skips the filter
            r = await one_shot(addr, get("/loop"))
            assert r.status == 503  # fail_closed: the deadline watchdog stopped it
            ext = await admin_json(relay, "/extensions")
            metrics = await samples(relay)
    by_name = {b["name"]: b for b in ext["bindings"]}
    trap, spin = by_name["trapper"], by_name["spinner"]
    assert trap["kind"] == "wasm" and trap["worker"] == "0"
    assert trap["binding"] == "spec.routes[0].filters[0]"
    assert trap["state"] == "failed" and trap["failure_policy"] == "fail_open"
    assert trap["failures_by_kind"] == {"trap": 1} and trap["watchdog_trips"] == {}
    assert trap["package"]["version"] == "3.1.4" and trap["package"]["key_id"] == signer.key_id
    assert trap["package"]["sha256"] == trap["sha256"]  # the payload the VM runs
    assert spin["watchdog_trips"] == {"deadline": 1} and spin["package"] is None
    assert spin["failure_policy"] == "fail_closed" and spin["fallback"] == "fail_closed"
    (entry,) = [p for p in ext["packages"] if p["path"] == str(pkg)]
    assert entry["active"]["name"] == "trapper" and entry["last_failure"] is None
    assert ext["hosts"]["wasm"] == "proxy_wasm/0.2.1"

    def value(name, **labels):
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("omnirelay_extension_failures_total", kind="wasm", extension="trapper",
                 reason="trap") == 1
    assert value("omnirelay_extension_failures_total", kind="wasm", extension="spinner",
                 reason="deadline") == 1
    assert value("omnirelay_extension_watchdog_trips_total", kind="wasm",
                 extension="spinner", watchdog="deadline") == 1


@pytest.mark.parametrize("trusted, reason", [
    ([], "unknown_key"),
    (["/nonexistent/trust.json"], "no_trust"),
])
def test_refused_package_is_a_config_error_at_its_binding(tmp_path, signed, trusted, reason):
    _, signer = signed
    pkg = tmp_path / "p.orpkg"
    write_package(pkg, build_package(wasmtime.wat2wasm((WASM_DIR / "loop.wat").read_text()),
                                     name="p", version="1", kind="wasm", signer=signer))
    cfg = make_config(1, route={"filters": [{"name": WASM, "config": {"package": str(pkg)}}]})
    cfg["extensions"] = {"trusted_keys": trusted}
    with pytest.raises(FilterConfigError) as e:
        omnirelay.Relay(cfg)
    text = str(e.value)
    assert text.startswith("spec.routes[0].filters[0].config: ")
    assert f"{pkg} refused: {reason}" in text


def test_supervisor_merges_worker_reports():
    worker = {"bindings": [{"kind": "wasm", "name": "a", "binding": "b0", "state": "running"}],
              "packages": [{"path": "/p.orpkg", "active": {"version": "2"}}],
              "recent_failures": [{"reason": "unsigned", "at": 2.0}],
              "reloads": {"applied": 1, "failed": 1}}
    aggregate = Aggregate()
    reporter = Reporter()
    snap = {"series": [], "clusters": {}, "extensions": worker}
    aggregate.update(101, reporter.delta(snap))
    assert "extensions" not in reporter.delta(snap)  # sent again only when it changes
    aggregate.update(102, Reporter().delta(snap | {"extensions": worker | {
        "recent_failures": [{"reason": "hash_mismatch", "at": 1.0}]}}))
    merged = merge_extensions({"0": aggregate.sources[101].extensions,
                               "1": aggregate.sources[102].extensions},
                              local={"packages": [], "recent_failures": []})
    assert [b["worker"] for b in merged["bindings"]] == ["0", "1"]
    assert [f["reason"] for f in merged["recent_failures"]] == ["hash_mismatch", "unsigned"]
    assert merged["reloads"] == {"applied": 2, "failed": 2}
    assert merged["supervisor"] == {"packages": [], "recent_failures": []}
