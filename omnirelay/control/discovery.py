"""Endpoints from MeshKit's EndpointDiscovery feed, on a thread of its own.

One stream per node, not per worker: the client keeps a copy of every cluster's endpoint list
from the snapshot and the deltas after it, and hands each change to `deliver(cluster,
endpoints)`. Under `omnirelay run` that is the supervisor's fan-out to its workers
(`DiscoveryBridge`); an embedded Relay applies it on its loop (`attach`). Clusters are the
config's `discovery: {type: api}` clusters; lists for other clusters are ignored where they
are applied. A delta whose base is not the generation held is a gap: the client reconnects
asking for a full snapshot. Endpoint lists are checked like the config's `endpoints`; an
invalid one is logged and the cluster keeps its current list. Failover across the listed
control-plane endpoints and backoff work as in the config client.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc

from omnirelay.config import ConfigError, Endpoint
from omnirelay.config.endpoints import decode_endpoints
from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc

from .client import Backoff, _trailer_hint
from .wakeup import PipeService

log = logging.getLogger("omnirelay.discovery")

# (cluster, endpoints): a cluster's new list; an empty tuple when the feed dropped it.
Deliver = Callable[[str, tuple[Endpoint, ...]], None]
ChannelFactory = Callable[[str], grpc.Channel]


def endpoints_of(message: mesh_pb2.ClusterEndpoints) -> tuple[Endpoint, ...]:
    """The config Endpoints of a feed message; ConfigError (at `<cluster>[i].field`) if any
    is invalid. Unset weights mean the config default."""
    docs = []
    for e in message.endpoints:
        doc: dict[str, Any] = {"address": e.address, "port": e.port, "priority": e.priority}
        if e.weight:
            doc["weight"] = e.weight
        if e.locality:
            doc["locality"] = e.locality
        docs.append(doc)
    return decode_endpoints(docs, f"discovery[{message.cluster}]")


class DiscoveryClient:
    def __init__(self, endpoints: list[str], node: mesh_pb2.Node, deliver: Deliver, *,
                 clusters: tuple[str, ...] = (), backoff: Backoff | None = None,
                 channel: ChannelFactory = grpc.insecure_channel) -> None:
        if not endpoints:
            raise ValueError("at least one control-plane endpoint is required")
        self.endpoints = list(endpoints)
        self.node = node
        self.deliver = deliver
        self.clusters = tuple(clusters)  # followed; empty = every cluster the feed has
        self.backoff = backoff or Backoff()
        self.generation = 0  # of the lists held; 0 = none yet
        self.lists: dict[str, tuple[Endpoint, ...]] = {}
        self.updates = 0
        self.rejected = 0  # lists refused as invalid
        self.synced = threading.Event()  # a first snapshot has been applied
        self._channel = channel
        self._stop = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="omnirelay-discovery",
                                        daemon=True)

    def start(self) -> DiscoveryClient:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "clusters": sorted(self.lists),
                "updates": self.updates, "rejected": self.rejected}

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            endpoint = self.endpoints[index % len(self.endpoints)]
            try:
                responded, hint = self._stream(endpoint)
            except Exception:
                log.exception("control plane %s: discovery stream failed", endpoint)
                responded, hint = False, None
            if self._stop.is_set():
                return
            if responded:
                self.backoff.reset()
            else:
                index += 1  # fail over only when this endpoint gave nothing
            delay = self.backoff.next(hint)
            self._stop.wait(delay)

    def _stream(self, endpoint: str) -> tuple[bool, mesh_pb2.RetryHint | None]:
        request = mesh_pb2.DiscoveryRequest(node=self.node, clusters=list(self.clusters),
                                            known_generation=self.generation)
        responded = False
        hint: mesh_pb2.RetryHint | None = None
        channel = self._channel(endpoint)
        try:
            call = mesh_pb2_grpc.EndpointDiscoveryStub(channel).Watch(request)
            with self._lock:
                self._call = call
            if self._stop.is_set():
                call.cancel()
            try:
                for response in call:
                    responded = True
                    kind = response.WhichOneof("kind")
                    if kind == "error":
                        err = response.error
                        log.warning("control plane %s ended the discovery stream: %s: %s",
                                    endpoint, err.code, err.message)
                        if err.HasField("retry"):
                            hint = err.retry
                    elif not self._apply(response):
                        break  # a gap: reconnect for a full snapshot
            except grpc.RpcError as exc:
                if not self._stop.is_set():
                    log.warning("control plane %s: discovery: %s: %s", endpoint,
                                exc.code().name, exc.details())
                    hint = hint or _trailer_hint(exc)
            return responded, hint
        finally:
            with self._lock:
                self._call = None
            channel.close()

    def _apply(self, response: mesh_pb2.DiscoveryResponse) -> bool:
        """Apply one response; False when it does not follow the generation held."""
        if response.WhichOneof("kind") == "snapshot":
            fresh = {m.cluster: m for m in response.snapshot.clusters}
            for name in sorted(set(self.lists) - set(fresh)):
                self._set(name, None)
            for name in sorted(fresh):
                self._set(name, fresh[name])
            self.generation = response.generation
            self.synced.set()
            return True
        delta = response.delta
        if delta.base_generation != self.generation:
            log.warning("discovery: delta on top of generation %d but %d is held; asking for "
                        "a full snapshot", delta.base_generation, self.generation)
            self.generation = 0
            return False
        for message in delta.updated:
            self._set(message.cluster, message)
        for name in delta.removed:
            self._set(name, None)
        self.generation = response.generation
        return True

    def _set(self, name: str, message: mesh_pb2.ClusterEndpoints | None) -> None:
        if message is None:
            if self.lists.pop(name, None) is None:
                return
            endpoints: tuple[Endpoint, ...] = ()
        else:
            try:
                endpoints = endpoints_of(message)
            except ConfigError as exc:
                self.rejected += 1
                log.error("discovery: refused the endpoints of cluster %s: %s", name, exc)
                return
            if self.lists.get(name) == endpoints:
                return
            self.lists[name] = endpoints
        self.updates += 1
        try:
            self.deliver(name, endpoints)
        except Exception:
            log.exception("discovery: delivering the endpoints of cluster %s failed", name)


def endpoint_documents(endpoints: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    """Endpoints in the config's mapping shape (what Relay.set_endpoints and workers take)."""
    out = []
    for e in endpoints:
        doc: dict[str, Any] = {"address": e.address, "port": e.port, "weight": e.weight,
                               "priority": e.priority}
        if e.locality:
            doc["locality"] = e.locality
        out.append(doc)
    return out


class DiscoveryBridge(PipeService):
    """A supervisor service: hands the client thread's updates to the supervisor's poll loop
    (a byte on a pipe wakes it), which forwards them to every worker and remembers the last
    list of each cluster for workers started later."""

    def __init__(self, push: Callable[[str, list[dict[str, Any]]], None]) -> None:
        super().__init__()
        self.push = push
        self._queue: queue.SimpleQueue[tuple[str, tuple[Endpoint, ...]]] = queue.SimpleQueue()

    def deliver(self, cluster: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Called on the client's thread."""
        self._queue.put((cluster, endpoints))
        self._pipe.wake()

    def flush(self) -> None:
        """Hand over everything queued now (before the supervisor spawns its workers, so
        they start with the lists known by then)."""
        while True:
            try:
                cluster, endpoints = self._queue.get_nowait()
            except queue.Empty:
                return
            self.push(cluster, endpoint_documents(endpoints))

    def release(self) -> None:
        """Close the pipe, once the client thread has stopped."""
        self.forget()

    # ---- the supervisor's service protocol ----
    def timeout(self, now: float) -> float | None:
        return None

    def run_timers(self, now: float) -> None:
        return None

    def close(self) -> None:
        # The client thread may still write a wake-up byte: the pipe stays open until
        # `release` (after the client stopped).
        self.detach()

    def on_wake(self) -> None:
        self.flush()


def attach(relay: Any, endpoints: list[str], node: mesh_pb2.Node, *,
           channel: ChannelFactory = grpc.insecure_channel) -> DiscoveryClient:
    """Feed an embedded Relay's `discovery: {type: api}` clusters from MeshKit. Call on the
    Relay's loop; stop the returned client before stopping the Relay."""
    loop = asyncio.get_running_loop()

    def apply(cluster: str, eps: tuple[Endpoint, ...]) -> None:
        try:
            relay.set_endpoints(cluster, eps)
        except (KeyError, ValueError) as exc:  # not an api cluster of this config
            log.debug("discovery: cluster %s not applied here: %s", cluster, exc)

    return DiscoveryClient(
        endpoints, node, lambda c, e: loop.call_soon_threadsafe(apply, c, e),
        channel=channel).start()
