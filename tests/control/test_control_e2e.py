"""`omnirelay run --control-plane` against a real MeshKit, with real HTTP through the proxy:
publish -> routed per the new config (ACKed); a badly signed snapshot is NACKed and the old
config keeps serving; MeshKit gone -> a restarted proxy serves from its LKG; a tampered LKG is
refused and the proxy exits non-zero."""
from __future__ import annotations

import base64
import json
import signal

from runtime_harness import RelayProcess, body_or_status, free_port, poll, request

from omnirelay.config.signing import Keyring, Signer, TrustedKey


def _doc(version: str, cluster: str, port: int, upstreams: dict[str, int]) -> dict:
    return {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": port}],
            "routes": [{"name": "all", "match": {}, "cluster": cluster}],
            "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}]}
                         for n, p in upstreams.items()],
        },
        "admin": {"address": "127.0.0.1", "port": 0},
    }


def _lkg_in_use(proxy: RelayProcess) -> str:
    admin = proxy.wait_for(r"omnirelay: admin on (\S+)", stream="stdout").group(1)
    metrics = request(admin, "/metrics")[1]
    return next(line.split()[1] for line in metrics.splitlines()
                if line.startswith("omnirelay_config_lkg_in_use "))



def _proxy(endpoints: str, trust: str, lkg: str) -> RelayProcess:
    return RelayProcess("run", "--control-plane", endpoints, "--node-id", "edge-1",
                        "--trust-key", trust, "--lkg-dir", lkg, "--bootstrap-timeout", "20s",
                        "--drain-timeout", "1s")


def test_publish_nack_lkg_and_tampered_lkg(tmp_path, meshkit, upstreams):
    port = free_port()
    rogue = Signer.generate()  # MeshKit is switched to it: the node trusts a *different* key
    trust = tmp_path / "trust.json"  # under its id, so its signatures are bad_signature
    Keyring([meshkit.signer.trusted_key(),
             TrustedKey(rogue.key_id, Signer.generate().public_key)]).save(trust)
    lkg_dir = tmp_path / "lkg"
    dead = f"127.0.0.1:{free_port()}"
    endpoints = f"{dead},{meshkit.address}"  # fails over from a dead endpoint

    meshkit.publish(_doc("v1", "a", port, upstreams))
    proxy = _proxy(endpoints, str(trust), str(lkg_dir))
    try:
        url = proxy.listeners(timeout=30)["edge"]
        assert body_or_status(url) == "A"
        poll(lambda: meshkit.nodes()["edge-1"].acked_version == "v1", what="ACK of v1")
        assert _lkg_in_use(proxy) == "0.0"

        meshkit.publish(_doc("v2", "b", port, upstreams))
        poll(lambda: body_or_status(url) == "B", what="routing per v2")
        poll(lambda: meshkit.nodes()["edge-1"].acked_version == "v2", what="ACK of v2")
        record = meshkit.nodes()["edge-1"]
        assert {"api:omnirelay.mesh.v1", "feature:http1"} <= set(record.capabilities)

        # MeshKit re-signs with a key the node does not accept: NACKed, v2 keeps serving.
        meshkit.key_path.write_bytes(rogue.private_pem())
        meshkit.signal(signal.SIGHUP)
        poll(lambda: meshkit.nodes()["edge-1"].nack_code == "bad_signature", what="NACK")
        meshkit.publish(_doc("v3", "a", port, upstreams))
        poll(lambda: meshkit.nodes()["edge-1"].nack_version == "v3", what="NACK of v3")
        node = meshkit.nodes()["edge-1"]
        assert node.nack_code == "bad_signature" and node.acked_version == "v2"
        assert any(e.action == "nack" and "bad_signature" in e.detail
                   for e in meshkit.audit())
        assert all(body_or_status(url) == "B" for _ in range(5))
    finally:
        assert proxy.stop() == 0, proxy.output()
    meshkit.stop()

    saved = json.loads((lkg_dir / "lkg.json").read_bytes())
    assert saved["version"] == "v2"

    # The control plane is gone: a restarted proxy serves its LKG.
    proxy = _proxy(endpoints, str(trust), str(lkg_dir))
    try:
        url = proxy.listeners(timeout=30)["edge"]
        assert body_or_status(url) == "B"
        proxy.wait_for("starting from the LKG")
        assert _lkg_in_use(proxy) == "1.0"
    finally:
        assert proxy.stop() == 0, proxy.output()

    # A tampered LKG (route to cluster a) is refused; nothing else to run: exit non-zero.
    document = base64.b64decode(saved["document"]).replace(b'"cluster":"b"', b'"cluster":"a"')
    assert document != base64.b64decode(saved["document"])
    saved["document"] = base64.b64encode(document).decode()
    (lkg_dir / "lkg.json").write_text(json.dumps(saved))
    proxy = _proxy(endpoints, str(trust), str(lkg_dir))
    try:
        assert proxy.wait(30) != 0
        proxy.wait_for(r"LKG refused.*integrity digest mismatch")
        proxy.wait_for(r"no usable config.*exiting")
        assert "listener" not in proxy.output()
    finally:
        if proxy.proc.poll() is None:
            proxy.kill()


def test_no_config_and_no_control_plane_exits(tmp_path):
    trust = tmp_path / "trust.json"
    Keyring([Signer.generate().trusted_key()]).save(trust)
    proxy = RelayProcess("run", "--control-plane", f"127.0.0.1:{free_port()}", "--node-id",
                         "edge-2", "--trust-key", str(trust), "--lkg-dir", str(tmp_path / "lkg"),
                         "--bootstrap-timeout", "1s")
    try:
        assert proxy.wait(30) == 1
        proxy.wait_for(r"control plane (unreachable|sent no config within 1s) and no usable config")
        assert "listener" not in proxy.output()
    finally:
        if proxy.proc.poll() is None:
            proxy.kill()


def test_publish_reaches_every_node(tmp_path, meshkit, upstreams):
    """Two real proxies, each watching its own node scope: every publish is applied by both,
    which then route per the new config, and both ACK it."""
    trust = tmp_path / "trust.json"
    Keyring([meshkit.signer.trusted_key()]).save(trust)
    ports = {"edge-1": free_port(), "edge-2": free_port()}
    for node, port in ports.items():
        meshkit.publish(_doc("v1", "a", port, upstreams), scope=f"node/{node}")
    proxies = {node: RelayProcess("run", "--control-plane", meshkit.address, "--node-id", node,
                                  "--trust-key", str(trust), "--bootstrap-timeout", "20s",
                                  "--drain-timeout", "1s")
               for node in ports}
    try:
        urls = {node: p.listeners(timeout=30)["edge"] for node, p in proxies.items()}
        assert [body_or_status(u) for u in urls.values()] == ["A", "A"]
        for node, port in ports.items():
            meshkit.publish(_doc("v2", "b", port, upstreams), scope=f"node/{node}")
        poll(lambda: all(body_or_status(u) == "B" for u in urls.values()), what="both on v2")
        poll(lambda: all(meshkit.nodes()[n].acked_version == "v2" for n in ports),
             what="both ACKs of v2")
    finally:
        for p in proxies.values():
            assert p.stop() == 0, p.output()
