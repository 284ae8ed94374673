"""What MeshKit knows about each node: its hello, what was sent, ACKed and NACKed, its last
status report, and whether it drifts from the desired config. In memory; nodes re-announce
themselves on every (re)connect.

Drift repair: when a connected node NACKs its snapshot or reports running something other than
its desired config, the watch stream re-sends the desired snapshot (fresh nonce) after a
backoff, a bounded number of times per desired document (`RepushPolicy`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from omnirelay.config.protos import mesh_pb2
from omnirelay.config.requirements import flatten

from ..cache import Snapshot
from ..gating import Target


@dataclass(frozen=True, slots=True)
class RepushPolicy:
    """Re-sends of the desired snapshot to a drifting node: `base * 2^n` seconds apart (capped
    at `maximum`), at most `attempts` times per desired document; 0 attempts disables it."""

    base: float = 1.0
    maximum: float = 30.0
    attempts: int = 5

    def delay(self, attempt: int) -> float | None:
        if attempt >= self.attempts:
            return None
        return min(self.maximum, self.base * 2 ** min(attempt, 30))


@dataclass(slots=True)
class NodeState:
    id: str
    tenant: str = ""
    region: str = ""
    locality: str = ""
    capabilities: tuple[str, ...] = ()
    build_version: str = ""
    peer: str = ""
    connected: bool = False
    connected_at: float = 0.0
    session: int = 0  # the current stream; a newer stream for the same id supersedes it
    scope: str = ""
    sent: Snapshot | None = None
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_epoch: int = 0
    acked_sha256: str = ""
    acked_at: float = 0.0
    nack_version: str = ""
    nack_code: str = ""
    nack_message: str = ""
    nack_at: float = 0.0
    report: mesh_pb2.StatusReport | None = None
    reported_at: float = 0.0
    last_seen: float = 0.0
    # Drift repair: re-sends of the desired snapshot (sha256 `repush_sha256`) so far, the one
    # scheduled (if any), and the event that wakes the node's watch stream to re-send.
    repushes: int = 0
    repush_attempts: int = 0
    repush_sha256: str = ""
    repush_timer: asyncio.TimerHandle | None = None
    resend: asyncio.Event | None = None
    extra: dict[str, str] = field(default_factory=dict)


def locality_text(locality: mesh_pb2.Locality) -> str:
    return "/".join(p for p in (locality.region, locality.zone, locality.subzone) if p)


class NodeRegistry:
    def __init__(self, clock: Callable[[], float] = time.time,
                 repush: RepushPolicy | None = None) -> None:
        self._nodes: dict[str, NodeState] = {}
        self._sessions = 0
        self._clock = clock
        self.repush = repush or RepushPolicy()

    def __iter__(self) -> Iterator[NodeState]:
        return iter(sorted(self._nodes.values(), key=lambda n: n.id))

    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def _state(self, node: mesh_pb2.Node) -> NodeState:
        state = self._nodes.get(node.id)
        if state is None:
            state = self._nodes[node.id] = NodeState(node.id)
        state.tenant = node.tenant
        state.region = node.locality.region
        state.locality = locality_text(node.locality)
        state.capabilities = flatten(node.capabilities)
        state.build_version = node.build_version
        return state

    def connect(self, node: mesh_pb2.Node, peer: str) -> tuple[NodeState, int]:
        """Register a watch stream; returns the node's state and the stream's session id."""
        state = self._state(node)
        self._sessions += 1
        state.session = self._sessions
        state.connected = True
        state.connected_at = state.last_seen = self._clock()
        state.peer = peer
        self._cancel_repush(state)
        state.resend = asyncio.Event()
        return state, state.session

    def disconnect(self, state: NodeState, session: int) -> None:
        if state.session == session:
            state.connected = False
            state.resend = None
            self._cancel_repush(state)

    def is_current(self, state: NodeState, session: int) -> bool:
        return state.session == session

    def sent(self, state: NodeState, snapshot: Snapshot, nonce: str) -> None:
        state.sent = snapshot
        state.sent_nonce = nonce
        state.sent_at = self._clock()
        state.scope = snapshot.scope
        if snapshot.sha256 != state.repush_sha256:  # a new desired document: a fresh budget
            state.repush_sha256 = snapshot.sha256
            state.repush_attempts = 0

    def ack(self, state: NodeState, ack: mesh_pb2.Ack) -> bool:
        """Record an ACK of the latest snapshot sent; False (ignored) for any other nonce."""
        if not ack.nonce or ack.nonce != state.sent_nonce:
            return False
        state.acked_version = ack.version
        state.acked_epoch = ack.epoch
        state.acked_sha256 = state.sent.sha256 if state.sent is not None else ack.sha256
        state.acked_at = state.last_seen = self._clock()
        state.nack_version = state.nack_code = state.nack_message = ""
        state.nack_at = 0.0
        return True

    def nack(self, state: NodeState, nack: mesh_pb2.Nack) -> bool:
        if not nack.nonce or nack.nonce != state.sent_nonce:
            return False
        state.nack_version = nack.version
        state.nack_code = nack.error.code
        state.nack_message = nack.error.message
        state.nack_at = state.last_seen = self._clock()
        return True

    def report(self, report: mesh_pb2.StatusReport) -> NodeState:
        state = self._state(report.node)
        state.report = report
        state.reported_at = state.last_seen = self._clock()
        return state

    def schedule_repush(self, state: NodeState) -> float | None:
        """Wake the node's stream to re-send its desired snapshot after the policy's backoff;
        the delay, or None when one is pending, the budget is spent or no stream is open."""
        if state.resend is None or state.repush_timer is not None:
            return None
        delay = self.repush.delay(state.repush_attempts)
        if delay is None:
            return None
        state.repush_attempts += 1
        resend = state.resend

        def fire() -> None:
            state.repush_timer = None
            resend.set()

        state.repush_timer = asyncio.get_running_loop().call_later(delay, fire)
        return delay

    @staticmethod
    def _cancel_repush(state: NodeState) -> None:
        if state.repush_timer is not None:
            state.repush_timer.cancel()
            state.repush_timer = None

    def targets(self) -> Iterator[Target]:
        """Connected nodes, for capability gating (lazily: most documents need nothing)."""
        return (Target(n.id, n.tenant, n.region, frozenset(n.capabilities))
                for n in list(self._nodes.values()) if n.connected)

    def watching(self, scope: str) -> int:
        """Connected nodes currently served from `scope`."""
        return sum(1 for n in self._nodes.values() if n.connected and n.scope == scope)


def applied(state: NodeState) -> tuple[str, int, str]:
    """(version, epoch, sha256) the node runs, per the newer of its last status report and its
    last ACK; empty when it has told nothing."""
    running = ("", 0, "")
    report = state.report
    if report is not None and report.config_sha256:
        running = (report.config_version, report.config_epoch, report.config_sha256)
    if state.acked_sha256 and state.acked_at >= state.reported_at:
        running = (state.acked_version, state.acked_epoch, state.acked_sha256)
    return running


def drifts(state: NodeState, desired: Snapshot | None) -> bool:
    """The node runs something other than desired."""
    if desired is None:
        return False
    running = applied(state)[2]
    if running:
        return running != desired.sha256
    return state.connected  # connected, yet nothing applied
