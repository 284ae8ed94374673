"""Endpoint discovery end to end: clusters fed by a polled file (`discovery: {type: file}`)
or by `Relay.set_endpoints` (`discovery: {type: api}`), with real origins on 127.0.0.1."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import HOST, Origin, eventually, get, make_config, one_shot

import omnirelay
from omnirelay.config import ConfigError, Endpoint

WAIT = 5.0


def write_endpoints(path: Path, text: str) -> None:
    """Write the whole file next to its target, then rename over it: pollers never see a
    half-written list."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def eps_yaml(*ports: int, priority: int | None = None) -> str:
    extra = "" if priority is None else f", priority: {priority}"
    return "".join(f"- {{address: {HOST}, port: {p}{extra}}}\n" for p in ports)


def file_cluster(path: Path, *static_ports: int, interval: str = "50ms") -> dict:
    return {"name": "c", "endpoints": [{"address": HOST, "port": p} for p in static_ports],
            "discovery": {"type": "file", "path": str(path), "interval": interval}}


async def served_by(relay: omnirelay.Relay, path: str = "/") -> str | int:
    """The origin that answered a request, or the status of a proxy-made reply."""
    resp = await one_shot(relay.address(), get(path, headers="Connection: close\r\n"))
    origin = resp.headers.get("x-origin")
    return origin if origin is not None else resp.status


def discovery(relay: omnirelay.Relay, cluster: str = "c") -> dict:
    return relay.stats()["discovery"][cluster]


async def test_file_discovery_follows_the_file_and_keeps_the_last_good_list(
        tmp_path: Path) -> None:
    eps = tmp_path / "endpoints.yaml"
    async with Origin("a") as a, Origin("b") as b:
        cfg = make_config(cluster=file_cluster(eps))
        async with omnirelay.Relay(cfg) as relay:
            # No file yet, no static endpoints: the cluster has nothing to send to.
            assert await served_by(relay) == 503
            st = discovery(relay)
            assert st["type"] == "file" and st["source"] == str(eps)
            assert st["endpoints"] is None and st["failing"] is True
            assert st["last_error"] == f"{eps}: no such file"

            write_endpoints(eps, eps_yaml(a.port))
            await eventually(lambda: discovery(relay)["updates"] == 1, WAIT, "first list")
            assert await served_by(relay) == "a"
            st = discovery(relay)
            assert st["endpoints"] == 1 and st["failing"] is False
            assert st["last_update"] is not None

            write_endpoints(eps, eps_yaml(b.port))
            await eventually(lambda: discovery(relay)["updates"] == 2, WAIT, "second list")
            assert await served_by(relay) == "b"
            assert [e["address"] for e in relay.stats()["clusters"]["c"]["endpoints"]] \
                == [f"{HOST}:{b.port}"]

            # Invalid content: B keeps serving, the problem shows in stats.
            write_endpoints(eps, f"- {{address: {HOST}, port: 0}}\n")
            await eventually(lambda: discovery(relay)["failing"], WAIT, "invalid file noticed")
            st = discovery(relay)
            assert st["last_error"] == (f"invalid endpoints: {eps}[0].port: must be between 1 "
                                        "and 65535, got 0")
            assert st["updates"] == 2 and st["endpoints"] == 1
            assert await served_by(relay) == "b"

            # Deleted: still B.
            eps.unlink()
            await eventually(lambda: discovery(relay)["last_error"] == f"{eps}: no such file",
                             WAIT, "missing file noticed")
            assert await served_by(relay) == "b"

            # A reload (static list pointing at A) keeps the discovered endpoints, whether the
            # feed is kept (same discovery) or restarted (another interval; file still gone).
            await relay.reload(make_config(cluster=file_cluster(eps, a.port)))
            assert await served_by(relay) == "b"
            await relay.reload(make_config(cluster=file_cluster(eps, a.port, interval="40ms")))
            assert await served_by(relay) == "b"
            assert [e["address"] for e in relay.stats()["clusters"]["c"]["endpoints"]] \
                == [f"{HOST}:{b.port}"]

            # The restarted feed still follows the file.
            write_endpoints(eps, eps_yaml(a.port))
            await eventually(lambda: discovery(relay)["updates"] == 1, WAIT, "list after reload")
            assert await served_by(relay) == "a"

        assert relay.stats()["discovery"] == {}  # feeds stopped with the relay


async def test_file_discovery_static_endpoints_serve_until_the_first_list(
        tmp_path: Path) -> None:
    eps = tmp_path / "endpoints.json"
    async with Origin("a") as a, Origin("b") as b:
        cfg = make_config(cluster=file_cluster(eps, a.port))
        async with omnirelay.Relay(cfg) as relay:
            assert await served_by(relay) == "a"
            write_endpoints(eps, f'[{{"address": "{HOST}", "port": {b.port}}}]')
            await eventually(lambda: discovery(relay)["updates"] == 1, WAIT, "first list")
            assert await served_by(relay) == "b"


async def test_file_discovery_passes_priority_through(tmp_path: Path) -> None:
    eps = tmp_path / "endpoints.yaml"
    async with Origin("a") as a, Origin("b") as b:
        write_endpoints(eps, eps_yaml(a.port) + eps_yaml(b.port, priority=1))
        async with omnirelay.Relay(make_config(cluster=file_cluster(eps))) as relay:
            # The first read happens on start: no waiting needed.
            assert discovery(relay)["endpoints"] == 2
            entries = {e["address"]: e for e in relay.stats()["clusters"]["c"]["endpoints"]}
            assert set(entries) == {f"{HOST}:{a.port}", f"{HOST}:{b.port}"}
            assert entries[f"{HOST}:{a.port}"]["priority"] == 0
            assert entries[f"{HOST}:{b.port}"]["priority"] == 1
            # Priority 0 is healthy: all traffic stays there.
            for _ in range(4):
                assert await served_by(relay) == "a"


API_CLUSTERS = [
    {"name": "api", "endpoints": [], "discovery": {"type": "api"}},
    {"name": "static", "endpoints": [{"address": HOST, "port": 1}]},
]
API_ROUTES = [
    {"name": "static", "match": {"path": {"prefix": "/static"}}, "cluster": "static"},
    {"name": "api", "match": {"path": {"prefix": "/"}}, "cluster": "api"},
]


def api_config(static_port: int, *, api_static: list[dict] | None = None) -> dict:
    clusters = [dict(c) for c in API_CLUSTERS]
    clusters[1]["endpoints"] = [{"address": HOST, "port": static_port}]
    if api_static is not None:
        clusters[0]["endpoints"] = api_static
    return make_config(routes=API_ROUTES, clusters=clusters)


async def test_set_endpoints_moves_traffic_of_an_api_cluster() -> None:
    async with Origin("a") as a, Origin("b") as b, omnirelay.Relay(api_config(a.port)) as relay:
        assert await served_by(relay) == 503
        assert relay.stats()["discovery"]["api"]["source"] == "api"

        relay.set_endpoints("api", [{"address": HOST, "port": a.port}])
        assert await served_by(relay) == "a"
        relay.set_endpoints("api", [Endpoint(HOST, b.port)])
        assert await served_by(relay) == "b"
        st = discovery(relay, "api")
        assert st["updates"] == 2 and st["endpoints"] == 1 and st["last_error"] is None

        # Survives a reload, which would otherwise bring back the (empty) static list.
        await relay.reload(api_config(a.port))
        assert await served_by(relay) == "b"
        assert discovery(relay, "api")["updates"] == 2

        relay.set_endpoints("api", ())
        assert await served_by(relay) == 503


async def test_set_endpoints_before_start() -> None:
    async with Origin("a") as a:
        relay = omnirelay.Relay(api_config(a.port))
        relay.set_endpoints("api", [{"address": HOST, "port": a.port}])
        async with relay:
            assert await served_by(relay) == "a"
            assert discovery(relay, "api")["updates"] == 1


async def test_set_endpoints_is_only_for_api_clusters(tmp_path: Path) -> None:
    clusters = [*API_CLUSTERS, file_cluster(tmp_path / "eps.yaml", 1)]
    async with omnirelay.Relay(make_config(routes=API_ROUTES, clusters=clusters)) as relay:
        new = [{"address": HOST, "port": 2}]
        with pytest.raises(ValueError, match="cluster 'static' has static endpoints; "
                                             "set_endpoints needs discovery type 'api'"):
            relay.set_endpoints("static", new)
        with pytest.raises(ValueError, match="cluster 'c' has file discovery"):
            relay.set_endpoints("c", new)
        with pytest.raises(KeyError):
            relay.set_endpoints("nowhere", new)
        assert [e["address"] for e in relay.stats()["clusters"]["static"]["endpoints"]] \
            == [f"{HOST}:1"]
        assert [e["address"] for e in relay.stats()["clusters"]["c"]["endpoints"]] \
            == [f"{HOST}:1"]


async def test_invalid_set_endpoints_changes_nothing() -> None:
    async with Origin("a") as a, omnirelay.Relay(api_config(a.port)) as relay:
        relay.set_endpoints("api", [{"address": HOST, "port": a.port}])
        before = relay.stats()

        with pytest.raises(ConfigError) as caught:
            relay.set_endpoints("api", [{"address": HOST, "port": a.port},
                                        {"address": HOST, "port": 0},
                                        {"address": HOST, "port": 80, "wieght": 2}])
        assert [str(i) for i in caught.value.issues] == [
            "endpoints[1].port: must be between 1 and 65535, got 0",
            "endpoints[2].wieght: unknown field (did you mean 'weight'?)",
        ]
        with pytest.raises(ConfigError, match=r"endpoints\[1\]: duplicate endpoint"):
            relay.set_endpoints("api", [Endpoint(HOST, a.port), Endpoint(HOST, a.port)])
        with pytest.raises(ConfigError, match="endpoints: expected list, got mapping"):
            relay.set_endpoints("api", {"address": HOST, "port": a.port})  # type: ignore[arg-type]

        after = relay.stats()
        assert after["discovery"] == before["discovery"]
        assert [e["address"] for e in after["clusters"]["api"]["endpoints"]] \
                == [f"{HOST}:{a.port}"]
        assert await served_by(relay) == "a"


async def test_health_checking_follows_discovered_endpoints() -> None:
    async with Origin("a") as a, Origin("b") as b:
        cfg = api_config(a.port, api_static=[{"address": HOST, "port": a.port}])
        cfg["spec"]["clusters"][0]["health_check"] = {
            "path": "/hc", "interval": "50ms", "timeout": "40ms"}
        async with omnirelay.Relay(cfg) as relay:
            a_key, b_key = f"{HOST}:{a.port}", f"{HOST}:{b.port}"
            assert set(relay.stats()["health"]["api"]) == {a_key}
            relay.set_endpoints("api", [{"address": HOST, "port": b.port}])
            assert set(relay.stats()["health"]["api"]) == {b_key}
            await eventually(
                lambda: relay.stats()["health"]["api"][b_key]["checks"] > 0, WAIT, "b checked")
            assert any(s.path == "/hc" for s in b.seen)
