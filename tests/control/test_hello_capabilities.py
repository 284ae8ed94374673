"""The node hello carries this build's capability set (the same as the admin's
/capabilities): protocols, extension runtimes, the extension ABIs and host features signed
packages may require. Checked on a real gRPC stream to a ConfigWatch server in the test."""
from __future__ import annotations

import queue
from concurrent import futures

import grpc

from omnirelay.admin.capabilities import capabilities
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc
from omnirelay.config.signing import Keyring, Signer
from omnirelay.control import ControlClient
from omnirelay.control.node import ControlOptions, node_message


class HelloRecorder(mesh_pb2_grpc.ConfigWatchServicer):
    def __init__(self) -> None:
        self.hellos: queue.Queue[mesh_pb2.Hello] = queue.Queue()

    def Watch(self, request_iterator, context):
        first = next(request_iterator)
        self.hellos.put(first.hello)
        yield mesh_pb2.WatchResponse(error=mesh_pb2.StreamError(
            code="shutting_down", message="test done", retryable=True))


def test_hello_sends_the_capability_set():
    caps = capabilities()
    recorder = HelloRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    mesh_pb2_grpc.add_ConfigWatchServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    node = node_message(ControlOptions(endpoints=[f"127.0.0.1:{port}"], node_id="edge-7",
                                       trust_keys=[], capabilities=caps,
                                       build_version=caps["omnirelay"]))
    client = ControlClient([f"127.0.0.1:{port}"], node,
                           Keyring([Signer.generate().trusted_key()]),
                           activate=lambda config: None, build_check=lambda config: config)
    client.start()
    try:
        hello = recorder.hellos.get(timeout=20)
    finally:
        client.stop()
        server.stop(0)
    assert hello.node.id == "edge-7"
    got = hello.node.capabilities
    assert "omnirelay.mesh.v1" in got.api_versions
    features = set(got.features)
    assert {"http1", "h2", "packages", "abi:proxy_wasm/0.2.1"} <= features
    assert "wasm" in features and "wasm.shared_data" in features
    assert list(got.wasm_runtimes) == ["wasmtime"]
    # Every ABI and feature /capabilities lists reaches the control plane.
    assert {f"abi:{a}" for a in caps["extension_abis"]} <= features
    assert set(caps["features"]) <= features
