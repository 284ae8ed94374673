#!/usr/bin/env python3
"""Config propagation latency: publish -> applied (ACK) for 1, 100 and 1,000 watching nodes.

Starts a real `meshkit serve` process (its own key, tokens and SQLite store in a temp dir, gRPC
on 127.0.0.1, a free port) and N lightweight nodes: grpc.aio watch streams spread over
--procs worker processes (one HTTP/2 connection per --per-connection streams, 100). Each node
sends a Hello, and for every snapshot checks its SHA-256 and Ed25519 signature against the trust
bundle (`Keyring.verify`, as OmniRelay's client does; the signature once per worker process
unless --verify-each, see `Verifier`), sends the ACK and records when. With --delta the nodes
announce `config_delta/1` and MeshKit sends each publish after the first as a signed Delta: a
node patches the document it runs, checks the result's SHA-256, then verifies the signature as
above (the patch, too, is applied once per worker process and base unless --verify-each).

Per node count: connect every node and wait until each has ACKed the current snapshot, publish
one unmeasured warm-up version, then --rounds versions one after the other. The latency of a
node in a round is from just before `SetConfig` is called (validate, compare-and-swap write with
fsync, audit, sign, push) to the moment that node has sent its ACK; every round waits for all
N ACKs and then checks that MeshKit recorded them (GetStatus: N connected, 0 drifting). The
clock is CLOCK_MONOTONIC, shared by the processes of one machine.

Prints a table (p50, p99, max over nodes x rounds) on stderr and one JSON object on stdout.

    .venv/bin/python bench/meshkit/propagation.py                     # 1, 100, 1000 nodes
    .venv/bin/python bench/meshkit/propagation.py --nodes 1000 --rounds 10 --procs 2
    .venv/bin/python bench/meshkit/propagation.py --nodes 1000 --rounds 6 --delta
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc

from omnirelay.config.delta import FEATURE as DELTA_FEATURE
from omnirelay.config.delta import apply_patch
from omnirelay.config.protos import admin_pb2, admin_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from omnirelay.config.signing import Keyring, Signer, TrustedKey, document_digest

TIMEOUT = 60.0  # any single wait of the benchmark


def document(version: str) -> bytes:
    return json.dumps({
        "metadata": {"version": version},
        "spec": {
            "listeners": [{"name": "edge", "address": "127.0.0.1", "port": 0}],
            "routes": [{"name": f"r{i}", "match": {"path": {"prefix": f"/r{i}"}},
                        "cluster": "c"} for i in range(20)],
            "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        },
    }).encode()


# ---------------------------------------------------------------------------- worker process
class Verifier:
    """`Keyring.verify` for the nodes of one worker process. On a fleet every node verifies
    on its own machine, in parallel; here a thousand nodes share two cores with MeshKit, so by
    default a worker verifies each distinct (key id, signature, document) once and every other
    node checks that its bytes are those verified ones (SHA-256 and a byte comparison).
    `each=True` verifies the signature in every node."""

    def __init__(self, keyring: Keyring, each: bool) -> None:
        self.keyring = keyring
        self.each = each
        self.verified: dict[tuple[str, bytes], bytes] = {}
        self.patched: dict[tuple[str, bytes], bytes] = {}

    def delta(self, delta, base: bytes):
        """The snapshot `delta` stands for, rebuilt from `base` (the document the node runs)
        and verified."""
        key = (delta.base_sha256, delta.patch)
        document = None if self.each else self.patched.get(key)
        if document is None:
            if document_digest(base) != delta.base_sha256:
                raise AssertionError("a delta for a base this node does not run")
            document = self.patched[key] = apply_patch(base, delta.patch, delta.sha256).document
        snap = mesh_pb2.Snapshot(
            version=delta.version, nonce=delta.nonce, epoch=delta.epoch, sha256=delta.sha256,
            document=document, key_id=delta.key_id, signature=delta.signature,
            signature_algorithm=delta.signature_algorithm)
        self(snap)
        return snap

    def __call__(self, snap) -> None:
        known = None if self.each else self.verified.get((snap.key_id, snap.signature))
        if known is not None and known == snap.document and \
                document_digest(snap.document) == snap.sha256:
            return
        self.keyring.verify(snap.document, snap.signature, snap.key_id, sha256=snap.sha256,
                            algorithm=snap.signature_algorithm)
        self.verified[(snap.key_id, snap.signature)] = snap.document


async def _node(stub, node_id: str, verify: Verifier, acked, delta: bool) -> None:
    call = stub.Watch()
    features = ["http1", DELTA_FEATURE] if delta else ["http1"]
    await call.write(mesh_pb2.WatchRequest(hello=mesh_pb2.Hello(node=mesh_pb2.Node(
        id=node_id, capabilities=mesh_pb2.Capabilities(
            api_versions=["omnirelay.mesh.v1", "omnirelay.config.v1"], features=features)))))
    document = b""
    while True:
        response = await call.read()
        kind = None if response is grpc.aio.EOF else response.WhichOneof("kind")
        if kind == "snapshot":
            snap = response.snapshot
            verify(snap)
        elif kind == "delta":
            snap = verify.delta(response.delta, document)
        else:
            return
        document = snap.document
        await call.write(mesh_pb2.WatchRequest(ack=mesh_pb2.Ack(
            version=snap.version, nonce=snap.nonce, epoch=snap.epoch, sha256=snap.sha256)))
        acked(snap.version, time.monotonic(), kind == "delta")


async def _worker_main(address: str, trusted: dict, node_ids: list[str], per_channel: int,
                       verify_each: bool, delta: bool, out, stop) -> None:
    verify = Verifier(Keyring([TrustedKey.from_dict(trusted)]), verify_each)
    pending: dict[str, list[float]] = {}
    deltas: dict[str, int] = {}

    def acked(version: str, when: float, was_delta: bool) -> None:
        times = pending.setdefault(version, [])
        times.append(when)
        deltas[version] = deltas.get(version, 0) + was_delta
        if len(times) == len(node_ids):
            out.put(("acked", version, pending.pop(version), deltas.pop(version)))

    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(0, len(node_ids), per_channel)]
    tasks = [asyncio.ensure_future(_node(
        mesh_pb2_grpc.ConfigWatchStub(channels[i // per_channel]), node_id, verify,
        acked, delta)) for i, node_id in enumerate(node_ids)]
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def worker(address: str, trusted: dict, node_ids: list[str], per_channel: int,
           verify_each: bool, delta: bool, out, stop) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_worker_main(address, trusted, node_ids, per_channel, verify_each, delta, out,
                             stop))


# ---------------------------------------------------------------------------- the server
class MeshKitServer:
    def __init__(self, workdir: Path, profile: str | None = None) -> None:
        from meshkit.api.auth import add_token

        self.signer = Signer.generate()
        key = workdir / "signing.pem"
        self.signer.save(key)
        tokens = workdir / "tokens.json"
        self.token = add_token(tokens, "bench", "mutate")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = open(workdir / "meshkit.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []),
             "-m", "meshkit", "serve", "--db", str(workdir / "meshkit.db"),
             "--signing-key", str(key), "--tokens-file", str(tokens),
             "--listen", "127.0.0.1:0", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=workdir)
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.stop()
            raise SystemExit(f"meshkit did not start: {line!r}; see {workdir}/meshkit.log")
        self.address = line.split("listening on ", 1)[1].split()[0]
        self.channel = grpc.insecure_channel(self.address)
        self.admin = admin_pb2_grpc.MeshAdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {self.token}")]

    def publish(self, version: str) -> None:
        self.admin.SetConfig(admin_pb2.SetConfigRequest(document=document(version)),
                             metadata=self.metadata, timeout=TIMEOUT)

    def status(self) -> admin_pb2.GetStatusResponse:
        return self.admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=self.metadata,
                                    timeout=TIMEOUT)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        self.log.close()


# ---------------------------------------------------------------------------- one node count
def cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _wait_acks(out, version: str, workers: int) -> tuple[list[float], int]:
    """Every node's ACK time of `version`, and how many nodes got it as a delta."""
    times: list[float] = []
    deltas = 0
    deadline = time.monotonic() + TIMEOUT
    done = 0
    while done < workers:
        kind, got, values, as_delta = out.get(timeout=max(0.1, deadline - time.monotonic()))
        if kind == "acked" and got == version:
            times.extend(values)
            deltas += as_delta
            done += 1
    return times, deltas


def measure(server: MeshKitServer, nodes: int, rounds: int, procs: int, per_channel: int,
            verify_each: bool, tag: str, delta: bool = False) -> dict:
    ctx = mp.get_context("spawn")  # no fork: grpc's threads are not fork-safe
    out, stop = ctx.Queue(), ctx.Event()
    ids = [f"{tag}-{i}" for i in range(nodes)]
    shares = [ids[i::procs] for i in range(procs) if ids[i::procs]]
    trusted = server.signer.trusted_key().to_dict()
    workers = [ctx.Process(target=worker,
                           args=(server.address, trusted, share, per_channel, verify_each,
                                 delta, out, stop),
                           daemon=True) for share in shares]
    for w in workers:
        w.start()
    try:
        version = f"{tag}-warmup"
        _settle(server, nodes, tag)
        server.publish(version)
        _wait_acks(out, version, len(workers))
        samples: list[float] = []
        slowest: list[float] = []  # per round: its last ACK
        deltas = 0  # node updates that came as deltas
        cpu = nodes_cpu = 0.0  # CPU time of MeshKit and the nodes from publish to last ACK
        for r in range(rounds):
            version = f"{tag}-round-{r}"
            cpu -= server.cpu_seconds()
            nodes_cpu -= sum(cpu_seconds(w.pid) for w in workers)
            start = time.monotonic()
            server.publish(version)
            times, as_delta = _wait_acks(out, version, len(workers))
            latencies = [t - start for t in times]
            deltas += as_delta
            samples.extend(latencies)
            slowest.append(max(latencies))
            cpu += server.cpu_seconds()
            nodes_cpu += sum(cpu_seconds(w.pid) for w in workers)
            _check(server, nodes, tag, version)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.terminate()
    ms = [s * 1000 for s in samples]
    return {"nodes": nodes, "rounds": rounds, "samples": len(ms),
            "p50_ms": round(_percentile(ms, 0.50), 1), "p99_ms": round(_percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1),
            "max_ms_per_round": [round(s * 1000, 1) for s in slowest], "deltas": deltas,
            "server_cpu_ms_per_publish": round(cpu * 1000 / rounds, 1),
            "nodes_cpu_ms_per_publish": round(nodes_cpu * 1000 / rounds, 1)}


def _settle(server: MeshKitServer, nodes: int, tag: str) -> None:
    """Wait until MeshKit has every node of this count connected."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        connected = sum(1 for n in server.status().nodes if n.connected and n.id.startswith(tag))
        if connected == nodes:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {connected} of {nodes} nodes connected")
        time.sleep(0.05)


def _check(server: MeshKitServer, nodes: int, tag: str, version: str) -> None:
    """MeshKit recorded every ACK: the nodes run `version` and none drifts."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        mine = [n for n in server.status().nodes if n.connected and n.id.startswith(tag)]
        if len(mine) == nodes and all(n.applied_version == version and not n.drift
                                      for n in mine):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"MeshKit does not show {nodes} nodes on {version}")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,100,1000", help="node counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="measured publishes per count")
    parser.add_argument("--procs", type=int, default=2, help="processes running the nodes")
    parser.add_argument("--per-connection", type=int, default=100,
                        help="watch streams sharing one HTTP/2 connection")
    parser.add_argument("--verify-each", action="store_true",
                        help="every node verifies the Ed25519 signature itself (about 150 us "
                             "of CPU each here) instead of once per worker process")
    parser.add_argument("--delta", action="store_true",
                        help="nodes announce config_delta/1 and apply the deltas MeshKit sends")
    parser.add_argument("--profile-server", metavar="FILE",
                        help="run MeshKit under cProfile, writing its stats to FILE")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as tmp:
        server = MeshKitServer(Path(tmp), args.profile_server)
        try:
            server.publish("initial")
            for i, count in enumerate(counts):
                print(f"{count} nodes ...", file=sys.stderr, flush=True)
                results.append(measure(server, count, args.rounds, args.procs,
                                       args.per_connection, args.verify_each, f"n{i}",
                                       args.delta))
        finally:
            server.stop()
    print(f"{'nodes':>6} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
          file=sys.stderr)
    for r in results:
        print(f"{r['nodes']:>6} {r['samples']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
              f"{r['max_ms']:>8}", file=sys.stderr)
    print(json.dumps({"benchmark": "meshkit-propagation", "procs": args.procs,
                      "verify_each": args.verify_each, "delta": args.delta,
                      "per_connection": args.per_connection,
                      "cpus": os.cpu_count(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
