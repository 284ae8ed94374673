"""`omnirctl` in a subprocess against a `meshkit serve` process started by the test."""
from __future__ import annotations

import json

import pytest
from mkharness import document, omnirctl, wait_for

from omnirelay.config import load_config


@pytest.fixture
def files(tmp_path):
    def write(name: str, doc) -> str:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return str(path)

    return write


def test_config_validate(meshkit, files):
    good = files("good.json", document("val"))
    r = omnirctl(meshkit, "config", "validate", good, token="read")
    assert r.returncode == 0, r.stderr
    assert "valid: version 'val'" in r.stdout

    bad = document()
    bad["spec"]["routes"][0]["cluster"] = "missing"
    bad["spec"]["clusters"][0]["endpoints"][0]["port"] = 70000
    bad_path = files("bad.yaml", json.dumps(bad))
    for args in ((), ("--local",)):
        r = omnirctl(meshkit, "config", "validate", bad_path, *args, token="read")
        assert r.returncode == 1, r
        assert "spec.routes[0].cluster" in r.stderr and "missing" in r.stderr
        assert "spec.clusters[0].endpoints[0].port" in r.stderr


def test_config_set_dry_run_get_and_conflict(meshkit, files):
    scope = "tenant/cli"
    v1 = files("v1.json", document("cli-1", routes=("a", "b")))
    r = omnirctl(meshkit, "config", "set", v1, "--scope", scope, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dry run: would publish scope tenant/cli (at revision 0)" in r.stdout
    assert "+ route a" in r.stdout and "+ cluster c" in r.stdout
    r = omnirctl(meshkit, "config", "get", "--scope", scope, token="read")
    assert r.returncode == 6 and "no config in scope 'tenant/cli'" in r.stderr  # nothing written

    r = omnirctl(meshkit, "config", "set", v1, "--scope", scope, "--expected-revision", "0")
    assert r.returncode == 0, r.stderr
    assert "published scope tenant/cli revision" in r.stdout
    assert meshkit.signer.key_id in r.stdout
    revision = int(r.stdout.split("revision ")[1].split(":")[0])

    r = omnirctl(meshkit, "config", "get", "--scope", scope, token="read")
    assert r.returncode == 0, r.stderr
    assert f"revision {revision} version 'cli-1' epoch 1" in r.stderr
    assert "by token:ops" in r.stderr
    config = load_config(r.stdout)
    assert [route.name for route in config.spec.routes] == ["a", "b"]
    raw = omnirctl(meshkit, "config", "get", "--scope", scope, "--raw", token="read")
    assert load_config(raw.stdout) == config

    v2 = document("cli-2", routes=("b", "c"))
    r = omnirctl(meshkit, "config", "set", "-", "--scope", scope, "--expected-revision",
                 str(revision - 1), stdin=json.dumps(v2).encode())
    assert r.returncode == 3, r
    assert "revision conflict" in r.stderr and f"is at revision {revision}" in r.stderr

    r = omnirctl(meshkit, "config", "validate", files("v2.json", v2), "--scope", scope,
                 token="read")
    assert r.returncode == 0, r.stderr
    assert "would publish as epoch 2" in r.stdout
    assert "+ route c" in r.stdout and "- route a" in r.stdout

    r = omnirctl(meshkit, "config", "set", files("v2.json", v2), "--scope", scope,
                 "--expected-revision", str(revision))
    assert r.returncode == 0, r.stderr
    r = omnirctl(meshkit, "config", "set", files("v2.json", v2), "--scope", scope)
    assert r.returncode == 0 and r.stdout.startswith("unchanged:")


def test_tokens_are_scoped(meshkit, files):
    path = files("t.json", document("tok"))
    r = omnirctl(meshkit, "config", "set", path, "--scope", "tenant/tok", token="read")
    assert r.returncode == 4 and "read-only" in r.stderr
    r = omnirctl(meshkit, "config", "set", path, "--scope", "tenant/tok", "--dry-run",
                 token="read")
    assert r.returncode == 0, r.stderr  # a dry run only reads
    r = omnirctl(meshkit, "nodes", token=None)
    assert r.returncode == 4 and "authorization" in r.stderr
    r = omnirctl(meshkit, "nodes", token="mk_not-a-token")
    assert r.returncode == 4 and "unknown bearer token" in r.stderr


def test_nodes_and_audit_tail(meshkit, files):
    assert omnirctl(meshkit, "config", "set", files("n.json", document("nodes-1")),
                    "--scope", "node/cli-node").returncode == 0
    node = meshkit.watch("cli-node", tenant="acme")
    try:
        snap = node.snapshot()
        node.nack(snap, "invalid_config", "listener edge: port in use")
        wait_for(lambda: meshkit.nodes()["cli-node"].nack_code)
        r = omnirctl(meshkit, "nodes", token="read")
        assert r.returncode == 0, r.stderr
        header, *rows = r.stdout.splitlines()
        assert header.split() == ["NODE", "TENANT", "LOCALITY", "SCOPE", "STREAM", "SENT",
                                  "ACKED", "NACK", "DRIFT"]
        (row,) = [line for line in rows if line.startswith("cli-node ")]
        assert "acme" in row and "node/cli-node" in row and " up " in row
        assert "nodes-1@1" in row and "invalid_config: listener edge: port in use" in row
        assert row.endswith("yes")
        r = omnirctl(meshkit, "nodes", "--json", "--connected", token="read")
        records = {json.loads(line)["id"]: json.loads(line) for line in r.stdout.splitlines()}
        assert records["cli-node"]["nack_code"] == "invalid_config"
    finally:
        node.close()

    r = omnirctl(meshkit, "audit", "tail", "--scope", "node/cli-node", "--json", token="read")
    assert r.returncode == 0, r.stderr
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("token:ops", "diff"), ("token:ops", "write"), ("token:ops", "push"),
        ("node:cli-node", "nack"),
    ]
    assert all(e["timestamp"].endswith("Z") and e["scope"] == "node/cli-node" for e in entries)
    assert "+ route r" in entries[1]["detail"]
    r = omnirctl(meshkit, "audit", "tail", "--since", "1h", "--limit", "2", token="read")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


def test_unreachable_meshkit_is_exit_5(meshkit, tmp_path):
    class Gone:
        address = "127.0.0.1:1"
        workdir = tmp_path
        mutate_token = read_token = "x"

    r = omnirctl(Gone(), "--timeout", "2", "nodes")
    assert r.returncode == 5 and "cannot reach MeshKit at 127.0.0.1:1" in r.stderr


def test_version_is_the_installed_package_version():
    import importlib.metadata

    from click.testing import CliRunner

    from meshkit.cli.omnirctl import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert importlib.metadata.version("omnirelay") in result.output
