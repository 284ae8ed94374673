"""Hot reload of a signed Wasm extension package in a real Relay, observed from outside:
traffic sees v1; v2 dropped in place is serving within the watch interval without a restart
and without a failed request; a tampered v3, an unsigned v4, a v5 signed by an unknown key
and a signed v6 whose payload does not compile are refused with their reason while v2 keeps
serving, and /extensions and /metrics say so. A config that points to a new package file switches to it as an ordinary reload."""
from __future__ import annotations

import asyncio
import inspect
import json

from extension_packages import stamp_plugin, tampered
from harness import Origin, get, make_config, one_shot
from prometheus_client.parser import text_string_to_metric_families

import omnirelay
from omnirelay.config.signing import Keyring, Signer
from omnirelay.extensions.packages import build_package, write_package

WASM = "omnirelay.filters.http.wasm"
MAX_REQUESTS = 2000  # bound of the request loop that runs across the swap


def package(version: str, signer: Signer | None) -> bytes:
    return build_package(stamp_plugin(version), name="stamp", version=f"{version[1:]}.0.0",
                         kind="wasm", signer=signer, capabilities=["wasm.headers"])


def config(origin: int, pkg: str, trust: str) -> dict:
    cfg = make_config(origin, route={"filters": [{"name": WASM, "config": {
        "package": pkg, "failure_policy": "fail_closed"}}]})
    cfg["extensions"] = {"trusted_keys": [trust], "watch_interval": "50ms"}
    return cfg


async def version_seen(relay: omnirelay.Relay) -> tuple[int, str | None]:
    r = await one_shot(relay.address(), get("/", headers="Connection: close\r\n"))
    return r.status, r.headers.get("x-ext-version")


async def serves(relay: omnirelay.Relay, version: str) -> bool:
    return await version_seen(relay) == (200, version)


async def admin(relay: omnirelay.Relay, path: str):
    return await one_shot(relay.admin_address, get(path, headers="Connection: close\r\n"))


async def extensions(relay: omnirelay.Relay) -> dict:
    r = await admin(relay, "/extensions")
    assert r.status == 200
    return json.loads(r.body)


async def metric(relay: omnirelay.Relay, name: str, **labels: str) -> float:
    r = await admin(relay, "/metrics")
    total = 0.0
    for fam in text_string_to_metric_families(r.body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def until(check, what: str, timeout: float = 10.0):
    """Poll a condition, plain or async (there is no event for a file watcher's reload)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


def package_state(ext: dict, path: str) -> dict:
    (entry,) = [p for p in ext["packages"] if p["path"] == path]
    return entry


async def test_package_hot_reload_and_refusals(tmp_path):
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    pkg = tmp_path / "stamp.orpkg"
    write_package(pkg, package("v1", signer))
    async with Origin() as origin, omnirelay.Relay(
            config(origin.port, str(pkg), str(trust)), admin={"port": 0}) as relay:
        assert await version_seen(relay) == (200, "v1")
        failed0 = await metric(relay, "omnirelay_extension_reloads_total", result="failed")

        # v2 dropped in place while a bounded loop of requests runs: each one succeeds,
        # and once v2 answers, v1 never does again.
        seen: list[tuple[int, str | None]] = []

        async def traffic():
            while len(seen) < MAX_REQUESTS:
                seen.append(await version_seen(relay))
                if seen[-1][1] == "v2" and sum(v == "v2" for _, v in seen) >= 20:
                    return

        task = asyncio.create_task(traffic())
        await until(lambda: len(seen) >= 5, "first requests")
        write_package(pkg, package("v2", signer))
        await asyncio.wait_for(task, 15)
        assert all(status == 200 for status, _ in seen), seen
        versions = [v for _, v in seen]
        first_v2 = versions.index("v2")
        assert set(versions[:first_v2]) == {"v1"} and set(versions[first_v2:]) == {"v2"}
        ext = await extensions(relay)
        assert package_state(ext, str(pkg))["active"]["version"] == "2.0.0"
        assert ext["reloads"]["applied"] >= 1

        # Refused versions: v2 keeps serving, /extensions names the reason.
        other = Signer.generate()
        broken = build_package(b"\0asm\x01\0\0\0 not a module", name="stamp",
                               version="6.0.0", kind="wasm", signer=signer)
        for data, reason in ((tampered(package("v3", signer)), "hash_mismatch"),
                             (package("v4", None), "unsigned"),
                             (package("v5", other), "unknown_key"),
                             (broken, "load_failed")):
            write_package(pkg, data)

            async def refused(reason=reason):
                failure = package_state(await extensions(relay), str(pkg))["last_failure"]
                return failure is not None and failure["reason"] == reason

            await until(refused, f"refusal {reason}")
            assert await version_seen(relay) == (200, "v2")
        ext = await extensions(relay)
        state = package_state(ext, str(pkg))
        assert state["active"]["version"] == "2.0.0"
        assert state["active"]["key_id"] == signer.key_id
        assert "stamp" in state["last_failure"]["message"]
        (binding,) = [b for b in ext["bindings"] if b["kind"] == "wasm" and b["name"] == "stamp"]
        assert binding["state"] == "running" and binding["failure_policy"] == "fail_closed"
        assert binding["package"]["version"] == "2.0.0"
        assert binding["package"]["sha256"] == state["active"]["sha256"]
        reasons = [f["reason"] for f in ext["recent_failures"]]
        assert reasons[-4:] == ["hash_mismatch", "unsigned", "unknown_key", "load_failed"]
        assert await metric(relay, "omnirelay_extension_failures_total", kind="wasm",
                            extension="stamp", reason="hash_mismatch") >= 1
        assert await metric(relay, "omnirelay_extension_reloads_total",
                            result="failed") >= failed0 + 4
        assert relay.config_version == relay.config.metadata.version  # no restart happened


async def test_config_pointing_to_a_new_package_file(tmp_path):
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    first, second = tmp_path / "a.orpkg", tmp_path / "b.orpkg"
    write_package(first, package("v1", signer))
    write_package(second, package("v2", signer))
    async with Origin() as origin, omnirelay.Relay(
            config(origin.port, str(first), str(trust))) as relay:
        assert await version_seen(relay) == (200, "v1")
        await relay.reload(config(origin.port, str(second), str(trust)))
        assert await version_seen(relay) == (200, "v2")
        # The watcher follows the new file: a change to the old one does nothing.
        write_package(first, package("v3", signer))
        write_package(second, package("v4", signer))
        await until(lambda: serves(relay, "v4"), "v4 from the new file")
        assert relay.reloads["applied"] == 2


def rules(version: str, signer: Signer) -> bytes:
    text = f'when true {{ set response header "x-ext-version" = "{version}" }}'
    return build_package(text.encode(), name="rules", version=version[1:], kind="dsl",
                         signer=signer)


async def test_dsl_package_hot_reload(tmp_path):
    signer = Signer.generate()
    trust = tmp_path / "trust.json"
    Keyring([signer.trusted_key()]).save(trust)
    pkg = tmp_path / "rules.orpkg"
    write_package(pkg, rules("v1", signer))
    async with Origin() as origin:
        cfg = make_config(origin.port, route={"filters": [
            {"name": "omnirelay.filters.http.dsl", "config": {"package": str(pkg)}}]})
        cfg["extensions"] = {"trusted_keys": [str(trust)], "watch_interval": "50ms"}
        async with omnirelay.Relay(cfg, admin={"port": 0}) as relay:
            assert await version_seen(relay) == (200, "v1")
            write_package(pkg, rules("v2", signer))
            await until(lambda: serves(relay, "v2"), "DSL rules v2")
            # Signed rules that do not compile: load_failed, v2 keeps serving.
            write_package(pkg, build_package(b"when {", name="rules", version="3",
                                             kind="dsl", signer=signer))

            async def failed():
                state = package_state(await extensions(relay), str(pkg))
                return (state["last_failure"] or {}).get("reason") == "load_failed"

            await until(failed, "load_failed")
            assert await version_seen(relay) == (200, "v2")
            ext = await extensions(relay)
            (binding,) = [b for b in ext["bindings"] if b["kind"] == "dsl"
                          and b["binding"] == "spec.routes[0].filters[0]"]
            assert binding["package"]["version"] == "2" and binding["package"]["kind"] == "dsl"
