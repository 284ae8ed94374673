#!/usr/bin/env python3
"""CA issuance latency: sequential `CertificateAuthority.Sign` calls (bootstrap token, one
ECDSA P-256 CSR each) against a real `meshkit serve --ca-dir` process on 127.0.0.1 (SQLite
store, plaintext port). Each call authenticates the node, checks the CSR, signs and records
the certificate (a fsynced write with its audit entry).

Prints p50 / p95 / max and the rate on stderr and one JSON object on stdout.

    .venv/bin/python bench/meshkit/ca_sign.py [--calls 200]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from meshkit.api.auth import add_token
from omnirelay.config.protos import ca_pb2, ca_pb2_grpc
from omnirelay.config.signing import Signer

SID = "spiffe://example.org/bench/node"


def csr(key) -> bytes:
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SID)]),
                           critical=True)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        Signer.generate().save(work / "signing.pem")
        admin = add_token(work / "tokens.json", "ops", "mutate")
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshkit", "serve", "--db", str(work / "mk.db"),
             "--signing-key", str(work / "signing.pem"), "--tokens-file",
             str(work / "tokens.json"), "--listen", "127.0.0.1:0", "--ca-dir",
             str(work / "ca"), "--trust-domain", "example.org", "--log-level", "warning"],
            stdout=subprocess.PIPE, cwd=ROOT, text=True)
        try:
            address = proc.stdout.readline().split("listening on ", 1)[1].split()[0]
            channel = grpc.insecure_channel(address)
            meta = [("authorization", f"Bearer {admin}")]
            ca_admin = ca_pb2_grpc.CaAdminStub(channel)
            ca_admin.Init(ca_pb2.CaInitRequest(), metadata=meta, timeout=10)
            token = ca_admin.RegisterNode(ca_pb2.RegisterNodeRequest(
                node_id="bench", spiffe_id=SID), metadata=meta, timeout=10).bootstrap_token
            requests = [ca_pb2.SignRequest(node_id="bench", csr_pem=csr(
                ec.generate_private_key(ec.SECP256R1()))) for _ in range(args.calls)]
            stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
            node_meta = [("authorization", f"Bearer {token}")]
            latencies = []
            for request in requests:
                start = time.perf_counter()
                stub.Sign(request, metadata=node_meta, timeout=10)
                latencies.append(time.perf_counter() - start)
            channel.close()
        finally:
            proc.terminate()
            proc.wait(10)
    latencies.sort()
    result = {"calls": args.calls,
              "p50_ms": round(statistics.median(latencies) * 1000, 2),
              "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
              "max_ms": round(latencies[-1] * 1000, 2),
              "per_second": round(len(latencies) / sum(latencies), 1)}
    print(f"Sign x{args.calls}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"max {result['max_ms']} ms, {result['per_second']}/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
