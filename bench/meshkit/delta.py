#!/usr/bin/env python3
"""Signed config deltas against whole snapshots: bytes on the wire and the time to apply.

A config of --routes routes (10,000) is normalized and encoded as MeshKit stores it
(canonical JSON), signed as MeshKit signs it (`meshkit.cache.Snapshot.build`), then one route
is changed (its cluster) and signed again. Measured, median of --repeat runs:

- wire: the serialized WatchResponse MeshKit writes for that publish, a Snapshot
  (`snapshot_response`) or a Delta (`delta_response`), as the watch stream sends them (gRPC adds
  5 bytes and HTTP/2 its frame headers to either);
- MeshKit: making the delta (`build_delta`: patch, check that it reproduces the target bytes,
  serialize), once per publish and base, shared by every node on that base;
- node: what OmniRelay's client does before it can parse the config. Snapshot: SHA-256 and
  Ed25519 verification. Delta: parse the running document, apply the patch, canonical JSON,
  SHA-256, then the same verification. And the whole `ControlClient.handle` /
  `handle_delta` (including `load_config`, which both pay), with a no-op activation.

    .venv/bin/python bench/meshkit/delta.py                     # 10,000 routes
    .venv/bin/python bench/meshkit/delta.py --routes 1000 --repeat 9

Prints a table on stderr and one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meshkit.cache import Snapshot
from meshkit.delta import build_delta
from meshkit.server.watch import delta_response, snapshot_response
from meshkit.store import StoredConfig
from omnirelay.config import canonical_json, load_config
from omnirelay.config.delta import apply_patch
from omnirelay.config.protos import mesh_pb2
from omnirelay.config.signing import Keyring, Signer, document_digest
from omnirelay.control.client import ControlClient


def document(version: str, routes: int, changed: int | None) -> bytes:
    doc = {
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 8080}],
            "routes": [{"name": f"r{i}", "match": {"path": {"prefix": f"/r{i}"}},
                        "cluster": "d" if i == changed else "c"} for i in range(routes)],
            "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}]}
                         for n, p in (("c", 9001), ("d", 9002))],
        },
    }
    return canonical_json(load_config(json.dumps(doc).encode()))


def snapshot(signer: Signer, version: str, revision: int, doc: bytes) -> Snapshot:
    stored = StoredConfig(scope="global", revision=revision, version=version, epoch=revision,
                          document=doc, sha256=document_digest(doc), actor="bench",
                          updated_at=0.0)
    return Snapshot.build(stored, signer)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    args = parser.parse_args()
    if args.routes < 2 or args.repeat < 1:
        parser.error("--routes must be at least 2 and --repeat at least 1")

    signer = Signer.generate()
    keyring = Keyring([signer.trusted_key()])
    changed = args.routes // 2
    base = snapshot(signer, "v1", 1, document("v1", args.routes, None))
    target = snapshot(signer, "v2", 2, document("v2", args.routes, changed))

    build_s, delta = timed(lambda: build_delta(base.version, base.document, base.sha256,
                                               target), args.repeat)
    if delta is None:
        raise SystemExit("no delta: the patch is not smaller than half the snapshot")
    snapshot_wire = snapshot_response(target, "0" * 16)
    delta_wire = delta_response(delta, "0" * 16)
    snap_msg = mesh_pb2.WatchResponse.FromString(snapshot_wire).snapshot
    delta_msg = mesh_pb2.WatchResponse.FromString(delta_wire).delta

    def verify_snapshot():
        keyring.verify(snap_msg.document, snap_msg.signature, snap_msg.key_id,
                       sha256=snap_msg.sha256)

    def verify_delta():
        doc = apply_patch(base.document, delta_msg.patch, delta_msg.sha256).document
        keyring.verify(doc, delta_msg.signature, delta_msg.key_id, sha256=delta_msg.sha256)
        return doc

    verify_snapshot_s, _ = timed(verify_snapshot, args.repeat)
    verify_delta_s, rebuilt = timed(verify_delta, args.repeat)
    assert rebuilt == target.document

    client = ControlClient(["127.0.0.1:1"], mesh_pb2.Node(id="bench"), keyring,
                           activate=lambda config: None, build_check=lambda config: config)

    def on_base():  # the client runs v1 again
        client.version, client.epoch, client.sha256 = base.version, base.epoch, base.sha256
        client.document = base.document

    def handle(fn, message):
        def run():
            on_base()
            reply = fn(message)
            assert reply.WhichOneof("kind") == "ack", reply
        return run

    handle_snapshot_s, _ = timed(handle(client.handle, snap_msg), args.repeat)
    handle_delta_s, _ = timed(handle(client.handle_delta, delta_msg), args.repeat)

    result = {
        "benchmark": "meshkit-delta", "routes": args.routes, "repeat": args.repeat,
        "document_bytes": len(target.document),
        "snapshot_wire_bytes": len(snapshot_wire), "delta_wire_bytes": len(delta_wire),
        "patch": json.loads(delta.patch),
        "meshkit_build_delta_ms": round(build_s * 1000, 1),
        "node_verify_snapshot_ms": round(verify_snapshot_s * 1000, 1),
        "node_rebuild_verify_delta_ms": round(verify_delta_s * 1000, 1),
        "node_handle_snapshot_ms": round(handle_snapshot_s * 1000, 1),
        "node_handle_delta_ms": round(handle_delta_s * 1000, 1),
    }
    rows = [
        ("bytes on the wire (WatchResponse)", result["snapshot_wire_bytes"],
         result["delta_wire_bytes"]),
        ("MeshKit: make the delta, ms (once per publish and base)", "-",
         result["meshkit_build_delta_ms"]),
        ("node: verify (snapshot) / rebuild + verify (delta), ms",
         result["node_verify_snapshot_ms"], result["node_rebuild_verify_delta_ms"]),
        ("node: whole handle incl. load_config, ms", result["node_handle_snapshot_ms"],
         result["node_handle_delta_ms"]),
    ]
    print(f"{args.routes} routes, route r{changed} changed; document "
          f"{len(target.document)} bytes; median of {args.repeat}", file=sys.stderr)
    print(f"{'':<58} {'snapshot':>12} {'delta':>12}", file=sys.stderr)
    for name, snap, dlt in rows:
        print(f"{name:<58} {snap!s:>12} {dlt!s:>12}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
