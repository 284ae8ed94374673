"""The config watch stream (`omnirelay.mesh.v1.ConfigWatch/Watch`).

Per stream: read the Hello, register the node, then send the snapshot of the node's most
specific scope now and after every change, each with a fresh nonce; ACKs and NACKs carrying the
latest nonce are recorded (NACKs also in the audit log), older ones ignored. The service only
reads the snapshot cache (go-control-plane's split): it never touches the store for config.

Deltas: a node that announces `config_delta/1` is sent a `Delta` (meshkit/delta.py) instead of
the snapshot when MeshKit knows the document the node runs (its Hello's `current_sha256`, then
each ACK) and the delta is smaller. A NACK of a delta makes the stream send the full snapshot at
once, and no delta until the node ACKs again; drift re-sends are always full snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from omnirelay.config.delta import FEATURE as DELTA_FEATURE
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc

from ..cache import Snapshot, SnapshotCache
from ..delta import Delta, DeltaCache
from ..scopes import valid_name
from ..store import Store
from .nodes import NodeRegistry, NodeState, drifts

log = logging.getLogger("meshkit.watch")


class ProtocolError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The reconnect advice sent with stream errors."""

    retry_after_ms: int = 250
    backoff_base_ms: int = 500
    backoff_max_ms: int = 30_000
    endpoints: tuple[str, ...] = field(default=())

    def hint(self) -> mesh_pb2.RetryHint:
        return mesh_pb2.RetryHint(
            retry_after_ms=self.retry_after_ms,
            backoff_base_ms=self.backoff_base_ms,
            backoff_max_ms=self.backoff_max_ms,
            endpoints=list(self.endpoints),
        )


DEFAULT_RETRY = RetryPolicy()


def snapshot_response(snapshot: Snapshot, nonce: str) -> bytes:
    """The serialized WatchResponse carrying `snapshot` with `nonce`: the snapshot's wire form
    made once per publish plus the nonce field (protobuf fields may come in any order)."""
    inner = snapshot.wire + _field(2, nonce.encode())  # Snapshot.nonce = 2
    return _field(1, inner)  # WatchResponse.snapshot = 1


def delta_response(delta: Delta, nonce: str) -> bytes:
    """The serialized WatchResponse carrying `delta` with `nonce`, made like
    `snapshot_response`."""
    inner = delta.wire + _field(2, nonce.encode())  # Delta.nonce = 2
    return _field(3, inner)  # WatchResponse.delta = 3


@dataclass(slots=True)
class _Deltas:
    """A stream's delta state: whether the node applies deltas, the SHA-256 of the document
    it runs as far as MeshKit knows (its Hello, then each ACK; "" after a NACKed delta), the
    nonce of the last delta sent, and whether a NACK of it asks for the full snapshot now."""

    enabled: bool
    base: str = ""
    nonce: str = ""
    fallback: bool = False


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    n = len(value)
    head = bytearray([number << 3 | 2])
    while n >= 0x80:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + value


def _serialize(response: mesh_pb2.WatchResponse | bytes) -> bytes:
    return response if type(response) is bytes else response.SerializeToString()


def add_to_server(service: ConfigWatchService, server: grpc.aio.Server) -> None:
    """Register the watch service as the generated code does, but with a serializer that
    passes pre-serialized responses through."""
    handlers = {
        "Watch": grpc.stream_stream_rpc_method_handler(
            service.Watch,
            request_deserializer=mesh_pb2.WatchRequest.FromString,
            response_serializer=_serialize,
        )
    }
    name = "omnirelay.mesh.v1.ConfigWatch"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def check_node(node: mesh_pb2.Node) -> str | None:
    """Why this node identity is unusable, or None."""
    if not node.id:
        return "node.id is required"
    if not valid_name(node.id):
        return f"node.id {node.id!r} must be 1-128 of A-Z a-z 0-9 . _ : - (starting alphanumeric)"
    for label, value in (("node.tenant", node.tenant), ("node.locality.region",
                                                          node.locality.region)):
        if value and not valid_name(value):
            return f"{label} {value!r} must be 1-128 of A-Z a-z 0-9 . _ : -"
    return None


async def end_stream(
    context: grpc.aio.ServicerContext,
    response_type: type,
    code: str,
    message: str,
    status: grpc.StatusCode,
    retry: RetryPolicy | None,
) -> None:
    """Send a StreamError (with retry advice if `retry`), then end the RPC with `status`."""
    error = mesh_pb2.StreamError(code=code, message=message, retryable=retry is not None)
    if retry is not None:
        error.retry.CopyFrom(retry.hint())
    try:
        await context.write(response_type(error=error))
    except Exception:  # noqa: BLE001 - the peer is gone already; abort below still ends the RPC
        log.debug("cannot send %s to %s", code, context.peer())
    metadata = (("omnirelay-error-code", code),)
    if retry is not None:
        metadata += (("omnirelay-retry-after-ms", str(retry.retry_after_ms)),)
    await context.abort(status, message, trailing_metadata=metadata)


class ConfigWatchService(mesh_pb2_grpc.ConfigWatchServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        registry: NodeRegistry,
        store: Store,
        stopping: asyncio.Event,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        hello_timeout: float = 10.0,
        deltas: DeltaCache | None = None,
    ) -> None:
        self.cache = cache
        self.deltas = deltas or DeltaCache()
        self.registry = registry
        self.store = store
        self.stopping = stopping
        self.retry = retry
        self.hello_timeout = hello_timeout
        self._kicks: dict[str, tuple[int, asyncio.Event]] = {}

    async def Watch(
        self,
        request_iterator: AsyncIterator[mesh_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            first = await asyncio.wait_for(anext(request_iterator), self.hello_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await end_stream(context, mesh_pb2.WatchResponse, "invalid_hello",
                             f"no Hello within {self.hello_timeout:g} s",
                             grpc.StatusCode.INVALID_ARGUMENT, self.retry)
            return
        if first.WhichOneof("kind") != "hello":
            await end_stream(context, mesh_pb2.WatchResponse, "invalid_hello",
                             "the first message of a watch stream must be a Hello",
                             grpc.StatusCode.INVALID_ARGUMENT, None)
            return
        node = first.hello.node
        problem = check_node(node)
        if problem:
            await end_stream(context, mesh_pb2.WatchResponse, "invalid_hello", problem,
                             grpc.StatusCode.INVALID_ARGUMENT, None)
            return

        state, session = self.registry.connect(node, context.peer())
        kick = asyncio.Event()
        previous = self._kicks.get(node.id)
        if previous is not None:
            previous[1].set()  # an older stream of this node ends: "superseded"
        self._kicks[node.id] = (session, kick)
        log.info("node %s connected from %s (tenant %r, locality %r, running %r)", node.id,
                 context.peer(), node.tenant, state.locality, first.hello.current_version)

        # One wake-up future per wait, poked by whichever comes first: the cache's next change
        # (one future shared by every stream), the reader ending, a kick, shutdown, a re-send.
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()

        def poke(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        deltas = _Deltas(enabled=f"feature:{DELTA_FEATURE}" in state.capabilities,
                         base=first.hello.current_sha256)
        reader = asyncio.ensure_future(self._read(request_iterator, state, session, deltas))
        resend = state.resend
        assert resend is not None  # set by connect() for the current session
        waits = {
            "stopping": asyncio.ensure_future(self.stopping.wait()),
            "kick": asyncio.ensure_future(kick.wait()),
            "resend": asyncio.ensure_future(resend.wait()),
        }
        for future in (reader, *waits.values()):
            future.add_done_callback(poke)
        sent: Snapshot | None = None
        try:
            while True:
                change = self.cache.next_change()
                change.add_done_callback(poke)
                snapshot = self.cache.resolve(node.id, node.tenant, node.locality.region)
                repush = waits["resend"].done()
                if repush:  # drift repair (nodes.py): re-send if the node still drifts
                    resend.clear()
                    waits["resend"] = asyncio.ensure_future(resend.wait())
                    waits["resend"].add_done_callback(poke)
                    fallback, deltas.fallback = deltas.fallback, False
                    repush = snapshot is not None and snapshot is sent and (
                        fallback or drifts(state, snapshot))
                    if repush and fallback:
                        log.info("node %s NACKed a delta; sending the full snapshot", node.id)
                    elif repush:
                        state.repushes += 1
                        log.info("node %s drifts from %s revision %d; re-sending it (attempt %d)",
                                 node.id, snapshot.scope, snapshot.revision,
                                 state.repush_attempts)
                if snapshot is not None and (snapshot is not sent or repush):
                    await self._send(context, state, snapshot, deltas, full=repush)
                    sent = snapshot
                await wake
                change.remove_done_callback(poke)
                wake = loop.create_future()
                if reader.done():
                    exc = reader.exception()
                    if isinstance(exc, ProtocolError):
                        await end_stream(context, mesh_pb2.WatchResponse, "invalid_request",
                                         str(exc), grpc.StatusCode.INVALID_ARGUMENT, None)
                    elif exc is not None:
                        raise exc
                    return  # the node closed its side
                if waits["kick"].done():
                    await end_stream(context, mesh_pb2.WatchResponse, "superseded",
                                     f"a newer watch stream of node {node.id!r} replaced this one",
                                     grpc.StatusCode.ABORTED, None)
                    return
                if waits["stopping"].done():
                    await end_stream(context, mesh_pb2.WatchResponse, "shutting_down",
                                     "MeshKit is shutting down", grpc.StatusCode.UNAVAILABLE,
                                     self.retry)
                    return
        finally:
            reader.cancel()
            for task in waits.values():
                task.cancel()
            if self._kicks.get(node.id, (None,))[0] == session:
                del self._kicks[node.id]
            self.registry.disconnect(state, session)
            log.info("node %s stream ended", node.id)

    async def _send(self, context: grpc.aio.ServicerContext, state: NodeState,
                     snapshot: Snapshot, deltas: _Deltas, *, full: bool) -> None:
        """Send `snapshot` with a fresh nonce: as a delta when the node takes one, MeshKit
        knows its base and the delta is worth it (unless `full`), else whole."""
        self.deltas.remember(snapshot)  # a document a node runs: a base for later deltas
        delta = None
        if deltas.enabled and not full and deltas.base:
            delta = await self.deltas.get(deltas.base, snapshot)
        nonce = secrets.token_hex(8)
        self.registry.sent(state, snapshot, nonce)
        if delta is not None:
            deltas.nonce = nonce
            await context.write(delta_response(delta, nonce))
        else:
            await context.write(snapshot_response(snapshot, nonce))
        log.debug("sent %s revision %d (%s) to %s as a %s, nonce %s", snapshot.scope,
                  snapshot.revision, snapshot.version, state.id,
                  "snapshot" if delta is None else f"delta from {deltas.base[:16]}", nonce)

    async def _read(
        self,
        requests: AsyncIterator[mesh_pb2.WatchRequest],
        state: NodeState,
        session: int,
        deltas: _Deltas,
    ) -> None:
        async for request in requests:
            kind = request.WhichOneof("kind")
            if not self.registry.is_current(state, session):
                return
            if kind == "ack":
                if self.registry.ack(state, request.ack):
                    deltas.base = state.acked_sha256
                else:
                    log.debug("ignored ACK from %s with stale nonce %r", state.id,
                              request.ack.nonce)
            elif kind == "nack":
                nack = request.nack
                if not self.registry.nack(state, nack):
                    log.debug("ignored NACK from %s with stale nonce %r", state.id, nack.nonce)
                    continue
                log.warning("node %s NACKed version %r: %s: %s", state.id, nack.version,
                            nack.error.code, nack.error.message)
                if deltas.nonce and nack.nonce == deltas.nonce:
                    # A delta the node could not use: its full snapshot now, deltas again
                    # once it ACKs something.
                    deltas.base = ""
                    deltas.fallback = True
                    if state.resend is not None:
                        state.resend.set()
                else:
                    delay = self.registry.schedule_repush(state)
                    if delay is not None:
                        log.info("re-sending to node %s in %.2f s", state.id, delay)
                revision = state.sent.revision if state.sent is not None else 0
                try:
                    await self.store.append_audit(
                        actor=f"node:{state.id}", action="nack", scope=state.scope,
                        revision=revision,
                        detail=f"version {nack.version!r} epoch {nack.epoch}: "
                               f"{nack.error.code}: {nack.error.message}",
                    )
                except Exception:
                    log.exception("cannot audit the NACK of node %s", state.id)
            elif kind == "hello":
                raise ProtocolError("Hello is only valid as the first message of a stream")
            else:
                raise ProtocolError("empty WatchRequest")
