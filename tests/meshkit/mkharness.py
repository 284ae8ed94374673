"""MeshKit test harness: a real `meshkit serve` process on 127.0.0.1 and clients that speak
the wire protocol through the generated stubs (`omnirelay.config.protos`).

- ``MeshKitProcess``: keys, tokens and a SQLite file in a temp dir; starts the server with
  `python -m meshkit serve --listen 127.0.0.1:0` and waits for its `listening on` line.
- ``WatchClient``: a node's watch stream (sync gRPC, responses pumped into a queue so every
  read has a deadline), with ``ack`` / ``nack``.
- ``verify_snapshot``: what a node does before using a snapshot: digest, signature, schema.
- ``omnirctl``: runs the CLI in a subprocess.
"""
from __future__ import annotations

import copy
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from omnirelay.config import Config, load_config
from omnirelay.config.protos import admin_pb2, admin_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from omnirelay.config.signing import Keyring, Signer

HOST = "127.0.0.1"
START_TIMEOUT = 15.0
IO_TIMEOUT = 5.0
ROOT = Path(__file__).resolve().parents[2]


def document(version: str = "v1", routes: tuple[str, ...] = ("r",), cluster: str = "c",
             port: int = 9, epoch: int | None = None) -> dict[str, Any]:
    """A small valid config document: one listener, `routes` to one cluster."""
    metadata: dict[str, Any] = {"version": version}
    if epoch is not None:
        metadata["epoch"] = epoch
    return copy.deepcopy({
        "metadata": metadata,
        "spec": {
            "listeners": [{"name": "edge", "address": HOST, "port": 0}],
            "routes": [{"name": r, "match": {"path": {"prefix": f"/{r}"}}, "cluster": cluster}
                       for r in routes],
            "clusters": [{"name": cluster, "endpoints": [{"address": HOST, "port": port}]}],
        },
    })


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class MeshKitProcess:
    """One `meshkit serve` process with its own key, tokens and store in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key_path = workdir / "signing.pem"
        self.db_path = workdir / "meshkit.db"
        self.tokens_path = workdir / "tokens.json"
        self.log_path = workdir / "meshkit.log"
        self.signer = Signer.generate()
        self.signer.save(self.key_path)
        from meshkit.api.auth import add_token

        self.mutate_token = add_token(self.tokens_path, "ops", "mutate")
        self.read_token = add_token(self.tokens_path, "viewer", "read")
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.extra_args: list[str] = []  # more `meshkit serve` options
        self.http_address = ""  # with `--http-listen`: the JSON/HTTP API's HOST:PORT
        self._channel: grpc.Channel | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> MeshKitProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshkit", "serve", "--db", str(self.db_path),
                 "--signing-key", str(self.key_path), "--tokens-file", str(self.tokens_path),
                 "--listen", f"{HOST}:0", "--log-level", "debug", *self.extra_args],
                stdout=subprocess.PIPE, stderr=log, env=_env(), cwd=self.workdir,
            )
        line = _readline(self.proc, START_TIMEOUT)
        if "listening on" not in line:
            self.kill()
            raise AssertionError(f"meshkit did not start: {line!r}\n{self.log()}")
        self.address = line.split("listening on ", 1)[1].split()[0]
        if "--http-listen" in self.extra_args:
            line = _readline(self.proc, START_TIMEOUT)
            if "http api on" not in line:
                self.kill()
                raise AssertionError(f"meshkit did not serve HTTP: {line!r}\n{self.log()}")
            self.http_address = line.split("http api on ", 1)[1].split()[0]
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"meshkit ignored SIGTERM\n{self.log()}") from None
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # -- clients ----------------------------------------------------------------------------

    def keyring(self) -> Keyring:
        return Keyring([self.signer.trusted_key()])

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def admin(self, method: str, request, token: str | None = "mutate"):
        """Call the northbound API (token: "mutate", "read", None or a literal token)."""
        token = {"mutate": self.mutate_token, "read": self.read_token}.get(token, token)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        stub = admin_pb2_grpc.MeshAdminStub(self.channel)
        return getattr(stub, method)(request, timeout=IO_TIMEOUT, metadata=metadata)

    def publish(self, doc: dict[str, Any] | bytes, scope: str = "global", **kw):
        import json

        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        request = admin_pb2.SetConfigRequest(scope=scope, document=data, **kw)
        return self.admin("SetConfig", request)

    def nodes(self) -> dict[str, admin_pb2.NodeRecord]:
        reply = self.admin("ListNodes", admin_pb2.ListNodesRequest(), token="read")
        return {n.id: n for n in reply.nodes}

    def audit(self, **kw) -> list[admin_pb2.AuditEntry]:
        reply = self.admin("TailAudit", admin_pb2.TailAuditRequest(limit=1000, **kw), token="read")
        return list(reply.entries)

    def watch(self, node_id: str, **node: Any) -> WatchClient:
        return WatchClient(self.channel, mesh_pb2.Node(id=node_id, **node))


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].decode(errors="replace") if result else ""


class WatchClient:
    """A node's watch stream. Responses (or the final RpcError) are queued by a pump thread."""

    def __init__(self, channel: grpc.Channel, node: mesh_pb2.Node, *,
                 hello: mesh_pb2.WatchRequest | None = None) -> None:
        self.node = node
        self._requests: queue.Queue[mesh_pb2.WatchRequest | None] = queue.Queue()
        self._requests.put(hello or mesh_pb2.WatchRequest(hello=mesh_pb2.Hello(node=node)))
        self.responses: queue.Queue[Any] = queue.Queue()
        self.call = mesh_pb2_grpc.ConfigWatchStub(channel).Watch(self._outgoing())
        self._pump = threading.Thread(target=self._run, daemon=True)
        self._pump.start()
        self.error: grpc.RpcError | None = None

    def _outgoing(self):
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _run(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.responses.put(exc)
        else:
            self.responses.put(EOFError("stream ended"))

    def next(self, timeout: float = IO_TIMEOUT) -> mesh_pb2.WatchResponse:
        try:
            item = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch response within {timeout} s") from None
        if isinstance(item, BaseException):
            if isinstance(item, grpc.RpcError):
                self.error = item
            raise item
        return item

    def snapshot(self, timeout: float = IO_TIMEOUT) -> mesh_pb2.Snapshot:
        response = self.next(timeout)
        assert response.WhichOneof("kind") == "snapshot", response
        return response.snapshot

    def expect_quiet(self, seconds: float) -> None:
        try:
            item = self.responses.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected watch response: {item}")

    def send(self, request: mesh_pb2.WatchRequest) -> None:
        self._requests.put(request)

    def ack(self, snap: mesh_pb2.Snapshot, nonce: str | None = None) -> None:
        self.send(mesh_pb2.WatchRequest(ack=mesh_pb2.Ack(
            version=snap.version, nonce=snap.nonce if nonce is None else nonce,
            epoch=snap.epoch, sha256=snap.sha256)))

    def nack(self, snap: mesh_pb2.Snapshot, code: str, message: str) -> None:
        self.send(mesh_pb2.WatchRequest(nack=mesh_pb2.Nack(
            version=snap.version, nonce=snap.nonce, epoch=snap.epoch,
            error=mesh_pb2.ErrorDetail(code=code, message=message))))

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._pump.join(IO_TIMEOUT)


def verify_snapshot(snap: mesh_pb2.Snapshot, keyring: Keyring, now: float | None = None) -> Config:
    """A node's checks: digest and signature (VerificationError), then the schema."""
    keyring.verify(snap.document, snap.signature, snap.key_id, sha256=snap.sha256,
                   algorithm=snap.signature_algorithm, now=now)
    return load_config(snap.document)


def omnirctl(server: MeshKitProcess, *args: str, token: str | None = "mutate",
             stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    env["OMNIRCTL_SERVER"] = server.address
    token = {"mutate": server.mutate_token, "read": server.read_token}.get(token, token)
    env.pop("OMNIRCTL_TOKEN", None)
    if token:
        env["OMNIRCTL_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "meshkit.cli.omnirctl", *args],
        input=stdin.decode() if stdin is not None else None, capture_output=True, text=True,
        env=env, check=False, timeout=30, cwd=server.workdir,
    )


def wait_for(predicate, timeout: float = IO_TIMEOUT, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
