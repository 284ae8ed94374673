"""`EtcdStore`: desired state, audit log and CA records in etcd (the v3 API over gRPC), so that
several MeshKit replicas share one store; meshkit/leader.py elects the one that publishes.

Keys under the prefix P (`meshkit serve --store etcd://HOST:PORT[,HOST:PORT...]/P`):

- `P/desired/<scope>`: the scope's current document and metadata (JSON). The scope's revision
  is the key's mod_revision, so etcd's own history is the history of every scope.
- `P/audit/<time>-<random>`: one audit entry (JSON), created once and never rewritten (every
  put of one compares create_revision == 0). Its id is the etcd revision that created it.
- `P/ca/<kind>/<name>`: CA records (meshkit/ca).
- `P/endpoints/<cluster>`: the cluster's endpoint list of the discovery feed (JSON); its
  mod_revision is the list's revision and discovery generation. Deleting the list leaves a
  tombstone, the key with an empty value (its mod_revision the deletion's revision), so that a
  watch catching up after a compaction still learns of the deletion; a tombstone is no list
  (not current, `expected_revision` 0 replaces it).
- `P/leader`: the elected publisher, bound to its lease (meshkit/leader.py).

A compare-and-swap write is one txn: compare the scope key's mod_revision with the expected
revision (0 = absent; with an election also the leader key's create_revision, the fence), then
put the document and its audit entry; the txn's revision is the new revision. The store
revision is etcd's, which audit entries and CA records advance too: a scope's revisions
increase but are not consecutive. etcd's message types and stubs come from the `aetcd`
package (its generated `aetcd.rpc` module); the client code here is MeshKit's own.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from .base import (
    AuditEntry,
    NotFound,
    NotLeader,
    RevisionConflict,
    Store,
    StoredConfig,
    StoredEndpoints,
    StoreError,
)

DEFAULT_PREFIX = "/meshkit"
RPC_TIMEOUT = 5.0
_AUDIT_PAGE = 500


def parse_etcd_url(url: str) -> tuple[tuple[str, ...], str]:
    """`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` -> (endpoints, prefix); ValueError says why."""
    parts = urlsplit(url)
    if parts.scheme != "etcd":
        raise ValueError(f"store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {url!r}: no query or fragment is allowed")
    endpoints = []
    for item in parts.netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"store URL {url!r}: endpoint {item!r} is not HOST:PORT")
        endpoints.append(item)
    prefix = parts.path.rstrip("/") or DEFAULT_PREFIX
    return tuple(endpoints), prefix


def grpc_target(endpoints: tuple[str, ...]) -> str:
    """One gRPC target for the endpoints: several are only possible as IP addresses (gRPC's
    ipv4:/ipv6: lists, which fail over between them)."""
    if len(endpoints) == 1:
        return endpoints[0]
    families = set()
    for endpoint in endpoints:
        host = endpoint.rpartition(":")[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"etcd endpoint {endpoint!r}: several endpoints must be IP addresses "
                "(or give one DNS name that resolves to every member)"
            ) from None
    if len(families) != 1:
        raise ValueError("etcd endpoints: do not mix IPv4 and IPv6 addresses")
    return f"ipv{families.pop()}:" + ",".join(endpoints)


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """TLS to etcd: the CA that signed etcd's server certificate (None: the system's roots)
    and, when etcd requires client certificates, this client's certificate and key (PEM)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(cls, ca: str | None, cert: str | None, key: str | None) -> EtcdTLS:
        """From PEM files; ValueError naming the file and the reason."""
        if (cert is None) != (key is None):
            raise ValueError("etcd TLS: give both a client certificate and its key, or neither")

        def read(path: str | None, marker: bytes) -> bytes | None:
            if path is None:
                return None
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
            if b"-----BEGIN " not in data or marker not in data:
                raise ValueError(f"{path}: not a PEM {marker.decode().strip()}")
            return data

        return cls(read(ca, b"CERTIFICATE"), read(cert, b"CERTIFICATE"),
                   read(key, b"PRIVATE KEY"))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


@dataclass(frozen=True, slots=True)
class EtcdAuth:
    """etcd's user/password authentication: the client trades them for a token
    (Auth.Authenticate) that every call then carries (metadata `token`)."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def load(cls, user: str, password_file: str) -> EtcdAuth:
        """The password is the file's first line; ValueError naming the file and the reason."""
        if not user:
            raise ValueError("etcd user: empty")
        try:
            lines = Path(password_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{password_file}: cannot read: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not lines or not lines[0]:
            raise ValueError(f"{password_file}: empty (the password is its first line)")
        return cls(user, lines[0])


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class EtcdStore(Store):
    kind = "etcd"

    def __init__(
        self,
        endpoints: tuple[str, ...] | list[str],
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = RPC_TIMEOUT,
        clock: Callable[[], float] = time.time,
        tls: EtcdTLS | None = None,
        auth: EtcdAuth | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: at least one endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.target = grpc_target(self.endpoints)
        self.prefix = prefix.rstrip("/").encode() + b"/"
        self.timeout = timeout
        self._clock = clock
        self.tls = tls
        self.auth = auth
        self._token: str | None = None  # with `auth`: the current etcd token
        self._authenticating: asyncio.Lock | None = None
        self._desired = self.prefix + b"desired/"
        self._audit = self.prefix + b"audit/"
        self._ca = self.prefix + b"ca/"
        self._endpoints = self.prefix + b"endpoints/"
        self.leader_key = self.prefix + b"leader"
        # Set by an election (meshkit/leader.py): writes of desired state then also require the
        # leader key to have this create_revision (-1: not the leader, nothing matches).
        self.fence: int | None = None
        self._channel: grpc.aio.Channel | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> EtcdStore:
        endpoints, prefix = parse_etcd_url(url)
        return cls(endpoints, prefix, **kw)

    @property
    def where(self) -> str:
        return f"etcd {','.join(self.endpoints)} prefix {self.prefix.decode()}"

    # -- gRPC plumbing ----------------------------------------------------------------------

    def channel(self) -> grpc.aio.Channel:
        """The channel, created on first use in the running loop (gRPC binds it to a loop)."""
        if self._closed:
            raise StoreError("the store is closed")
        if self._channel is None:
            options = [
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # Back within seconds of etcd's return, however long it was away.
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ]
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self.tls.credentials(),
                                                        options=options)
        return self._channel

    def error(self, exc: grpc.aio.AioRpcError) -> StoreError:
        return StoreError(f"{self.where}: {exc.code().name}: {exc.details()}")

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries: with `auth`, the token (authenticating first if
        there is none yet)."""
        if self.auth is None:
            return ()
        token = self._token or await self._authenticate(None)
        return (("token", token),)

    async def _authenticate(self, stale: str | None) -> str:
        """A token for `auth`: a new one unless another call already replaced `stale`."""
        assert self.auth is not None
        if self._authenticating is None:
            self._authenticating = asyncio.Lock()
        async with self._authenticating:
            if self._token is not None and self._token != stale:
                return self._token
            stub = rpc.AuthStub(self.channel())
            request = rpc.AuthenticateRequest(name=self.auth.user, password=self.auth.password)
            try:
                reply = await stub.Authenticate(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise StoreError(f"{self.where}: authentication as etcd user "
                                 f"{self.auth.user!r} failed: {exc.code().name}: "
                                 f"{exc.details()}") from None
            self._token = reply.token
            return reply.token

    @staticmethod
    def _token_refused(exc: grpc.aio.AioRpcError) -> bool:
        """etcd refused the token: expired or invalidated (UNAUTHENTICATED), or issued before
        users or roles changed ("revision of auth store is old")."""
        return (exc.code() == grpc.StatusCode.UNAUTHENTICATED
                or "auth store is old" in (exc.details() or ""))

    async def call(self, service: str, method: str, request: Any) -> Any:
        """One unary call (KV.Range, KV.Txn, Lease.LeaseGrant, ...) with the RPC timeout; with
        `auth`, a refused token is renewed and the call made once more."""
        stub = getattr(rpc, f"{service}Stub")(self.channel())
        for attempt in (1, 2):
            metadata = await self.metadata()
            try:
                return await getattr(stub, method)(request, timeout=self.timeout,
                                                   metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and metadata and self._token_refused(exc):
                    await self._authenticate(metadata[0][1])
                    continue
                raise self.error(exc) from None
        raise AssertionError("unreachable")

    async def check(self) -> int:
        """Reach etcd (StoreError with the reason if not); returns its current revision."""
        reply = await self.call("KV", "Range", rpc.RangeRequest(key=self.leader_key))
        return reply.header.revision

    async def range(self, key: bytes, range_end: bytes = b"", **kw: Any) -> Any:
        return await self.call("KV", "Range", rpc.RangeRequest(key=key, range_end=range_end, **kw))

    async def txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> Any:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self.call("KV", "Txn", request)

    async def events(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> AsyncIterator[Any]:
        """etcd events (rpc.Event) on [key, range_end) from `start_revision` on, forever.
        StoreError if the stream fails; Compacted if that history is gone."""
        metadata = await self.metadata()
        call = rpc.WatchStub(self.channel()).Watch(metadata=metadata)
        try:
            await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision)))
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise StoreError(f"{self.where}: the watch stream ended")
                if reply.compact_revision:
                    raise Compacted(reply.compact_revision)
                if reply.canceled:
                    if metadata:  # etcd refuses a stale token so: the next watch gets a new one
                        await self._authenticate(metadata[0][1])
                    raise StoreError(f"{self.where}: watch canceled: {reply.cancel_reason}")
                for event in reply.events:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise self.error(exc) from None
        except (grpc.aio.UsageError, asyncio.InvalidStateError):  # written after it failed
            raise StoreError(f"{self.where}: watch: {(await call.code()).name}: "
                             f"{await call.details()}") from None
        finally:
            call.cancel()

    # -- encoding ---------------------------------------------------------------------------

    def _stored(self, kv: Any) -> StoredConfig:
        scope = kv.key[len(self._desired):].decode()
        try:
            value = json.loads(kv.value)
            return StoredConfig(
                scope, kv.mod_revision, base64.b64decode(value["document"]), value["sha256"],
                value["version"], int(value["epoch"]), value["actor"], float(value["updated_at"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self.where}: key {kv.key.decode(errors='replace')!r} at revision "
                f"{kv.mod_revision} is not a MeshKit document: {exc}"
            ) from None

    def _audit_op(
        self, actor: str, action: str, scope: str, revision: int | None, detail: str
    ) -> tuple[Any, Any, float]:
        """(compare, put) appending one audit entry, and its time. revision None: the entry
        records the revision of its own txn (the write it audits)."""
        now = self._clock()
        key = self._audit + f"{time.time_ns():020d}-{os.urandom(6).hex()}".encode()
        value = json.dumps({"timestamp": now, "actor": actor, "action": action, "scope": scope,
                            "revision": revision, "detail": detail}).encode()
        compare = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                              create_revision=0)
        return compare, rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value)), now

    @staticmethod
    def _entry(kv: Any) -> AuditEntry:
        value = json.loads(kv.value)
        revision = value["revision"]
        return AuditEntry(kv.create_revision, float(value["timestamp"]), value["actor"],
                          value["action"], value["scope"],
                          kv.create_revision if revision is None else int(revision),
                          value["detail"])

    # -- Store ------------------------------------------------------------------------------

    async def get(
        self, scope: str, *, actor: str, action: str = "read", detail: str = ""
    ) -> StoredConfig | None:
        reply = await self.range(self._desired + scope.encode())
        stored = self._stored(reply.kvs[0]) if reply.kvs else None
        await self.append_audit(actor=actor, action=action, scope=scope,
                                revision=stored.revision if stored else 0, detail=detail)
        return stored

    async def current(self, *, actor: str) -> tuple[list[StoredConfig], int]:
        reply = await self.range(self._desired, prefix_end(self._desired))
        states = [self._stored(kv) for kv in reply.kvs]  # by key, so by scope
        revision = reply.header.revision
        await self.append_audit(actor=actor, action="read-all", revision=revision,
                                detail=f"{len(states)} scopes")
        return states, revision

    async def put(
        self,
        scope: str,
        document: bytes,
        *,
        expected_revision: int,
        actor: str,
        version: str,
        epoch: int,
        sha256: str,
        detail: str = "",
    ) -> StoredConfig:
        document = bytes(document)
        key = self._desired + scope.encode()
        now = self._clock()
        value = json.dumps({"document": _b64(document), "sha256": sha256, "version": version,
                            "epoch": epoch, "actor": actor, "updated_at": now}).encode()
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        revision = await self._fenced_txn(key, put, expected_revision, actor=actor,
                                          action="write", scope=scope, detail=detail)
        return StoredConfig(scope, revision, document, sha256, version, epoch, actor, now)

    async def _fenced_txn(self, key: bytes, op: Any, expected_revision: int | None, *,
                          actor: str, action: str, scope: str, detail: str,
                          must_exist: bool = False) -> int:
        """Run `op` (a put of `key`) with its audit entry in one txn if the key's
        mod_revision is `expected_revision` (None: whatever it is), with `must_exist` if the
        key holds a value (not missing, not a tombstone), and, with an election, if this
        replica holds the leader key (the fence); the txn's revision. NotFound,
        RevisionConflict or NotLeader (all audited) otherwise."""
        audit_compare, audit_put, _ = self._audit_op(actor, action, scope, None, detail)
        compare = [audit_compare]
        if expected_revision is not None:
            compare.append(rpc.Compare(key=key, target=rpc.Compare.MOD,
                                       result=rpc.Compare.EQUAL, mod_revision=expected_revision))
        if must_exist:  # etcd fails a value compare on a missing key: present, no tombstone
            compare.append(rpc.Compare(key=key, target=rpc.Compare.VALUE,
                                       result=rpc.Compare.NOT_EQUAL, value=b""))
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]
        fence = self.fence
        if fence is not None:
            compare.append(rpc.Compare(key=self.leader_key, target=rpc.Compare.CREATE,
                                       result=rpc.Compare.EQUAL, create_revision=fence))
        reply = await self.txn(compare, [op, audit_put], failure)
        if reply.succeeded:
            return reply.header.revision
        kvs = reply.responses[0].response_range.kvs
        found = kvs[0].mod_revision if kvs else 0
        actual = found if kvs and kvs[0].value else 0  # a tombstone is no document
        if must_exist and actual == 0:
            await self.append_audit(actor=actor, action="not-found", scope=scope, revision=0,
                                    detail="nothing to delete")
            raise NotFound(scope)
        if expected_revision is None or found == expected_revision:  # so the fence failed
            if fence is None:  # no fence: 48 random bits and a nanosecond clock collided
                raise StoreError(f"{self.where}: audit key collision; retry")
            await self.append_audit(actor=actor, action="refused", scope=scope, revision=actual,
                                    detail="this replica is not the leader")
            raise NotLeader("this MeshKit replica is no longer the leader; publish through the "
                            "current leader")
        await self.append_audit(actor=actor, action="conflict", scope=scope, revision=actual,
                                detail=f"expected revision {expected_revision}")
        raise RevisionConflict(scope, expected_revision, actual)

    def watch(self, after_revision: int = 0) -> AsyncIterator[StoredConfig]:
        return self._follow(self._desired, self._stored, after_revision)

    async def _follow(self, prefix: bytes, decode: Callable[[Any], Any],
                      after_revision: int) -> AsyncIterator[Any]:
        """Every put under `prefix` above `after_revision`, decoded, in revision order."""
        last = after_revision
        while True:
            try:
                async for event in self.events(prefix, prefix_end(prefix), last + 1):
                    if event.type == rpc.Event.PUT:
                        item = decode(event.kv)
                        last = item.revision
                        yield item
            except Compacted:
                # The writes since `last` are compacted away: catch up with each key's
                # current value instead (only the latest one matters to the followers; an
                # endpoint list's tombstone carries its deletion).
                reply = await self.range(prefix, prefix_end(prefix))
                newer = [item for item in map(decode, reply.kvs) if item.revision > last]
                for item in sorted(newer, key=lambda item: item.revision):
                    yield item
                last = reply.header.revision

    # -- endpoint lists ---------------------------------------------------------------------

    def _stored_endpoints(self, kv: Any) -> StoredEndpoints:
        cluster = kv.key[len(self._endpoints):].decode()
        if not kv.value:  # a tombstone: the list was deleted at this revision
            return StoredEndpoints(cluster, kv.mod_revision, b"", "", 0.0, deleted=True)
        try:
            value = json.loads(kv.value)
            return StoredEndpoints(cluster, kv.mod_revision, value["endpoints"].encode(),
                                   value["actor"], float(value["updated_at"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"{self.where}: key {kv.key.decode(errors='replace')!r} at revision "
                f"{kv.mod_revision} is not a MeshKit endpoint list: {exc}"
            ) from None

    async def put_endpoints(
        self, cluster: str, endpoints: bytes, *, expected_revision: int | None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        endpoints = bytes(endpoints)
        now = self._clock()
        value = json.dumps({"endpoints": endpoints.decode(), "actor": actor,
                            "updated_at": now}).encode()
        key = self._endpoints + cluster.encode()
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
        if expected_revision == 0:  # no list: no key, or a tombstone (at its revision)
            reply = await self.range(key)
            if reply.kvs and not reply.kvs[0].value:
                expected_revision = reply.kvs[0].mod_revision
        revision = await self._fenced_txn(key, put, expected_revision, actor=actor,
                                          action="set-endpoints", scope=f"cluster/{cluster}",
                                          detail=detail)
        return StoredEndpoints(cluster, revision, endpoints, actor, now)

    async def delete_endpoints(
        self, cluster: str, *, expected_revision: int | None = None, actor: str,
        detail: str = "",
    ) -> StoredEndpoints:
        key = self._endpoints + cluster.encode()
        now = self._clock()
        tombstone = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b""))
        revision = await self._fenced_txn(key, tombstone, expected_revision, actor=actor,
                                          action="delete-endpoints", scope=f"cluster/{cluster}",
                                          detail=detail, must_exist=True)
        return StoredEndpoints(cluster, revision, b"", actor, now, deleted=True)

    async def current_endpoints(self) -> tuple[list[StoredEndpoints], int]:
        reply = await self.range(self._endpoints, prefix_end(self._endpoints))
        return ([self._stored_endpoints(kv) for kv in reply.kvs if kv.value],
                reply.header.revision)

    def watch_endpoints(self, after_revision: int = 0) -> AsyncIterator[StoredEndpoints]:
        return self._follow(self._endpoints, self._stored_endpoints, after_revision)

    async def revision(self) -> int:
        reply = await self.range(self._desired, prefix_end(self._desired), limit=1,
                                  sort_target=rpc.RangeRequest.MOD,
                                  sort_order=rpc.RangeRequest.DESCEND)
        return reply.kvs[0].mod_revision if reply.kvs else 0

    async def append_audit(
        self, *, actor: str, action: str, scope: str = "", revision: int = 0, detail: str = ""
    ) -> AuditEntry:
        compare, put, now = self._audit_op(actor, action, scope, revision, detail)
        reply = await self.txn([compare], [put], [])
        if not reply.succeeded:  # 48 random bits and a nanosecond clock collided
            raise StoreError(f"{self.where}: audit key collision; retry")
        return AuditEntry(reply.header.revision, now, actor, action, scope, revision, detail)

    async def audit_log(
        self,
        *,
        since: float | None = None,
        after_id: int = 0,
        scope: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        # Newest first, a page at a time, until `limit` entries match or the log is read.
        found: list[AuditEntry] = []
        below = 0  # max_create_revision of the next page; 0 = no bound
        while limit is None or len(found) < limit:
            reply = await self.range(
                self._audit, prefix_end(self._audit), limit=_AUDIT_PAGE,
                sort_target=rpc.RangeRequest.CREATE, sort_order=rpc.RangeRequest.DESCEND,
                min_create_revision=after_id + 1, max_create_revision=below,
            )
            for kv in reply.kvs:
                entry = self._entry(kv)
                if (since is None or entry.timestamp >= since) and (
                        scope is None or entry.scope == scope):
                    found.append(entry)
            if not reply.more or not reply.kvs:
                break
            below = reply.kvs[-1].create_revision - 1
        return list(reversed(found[:limit]))

    # -- CA records -------------------------------------------------------------------------

    def _ca_key(self, kind: str, name: str = "") -> bytes:
        return self._ca + f"{kind}/{name}".encode()

    async def ca_get(self, kind: str, name: str) -> bytes | None:
        reply = await self.range(self._ca_key(kind, name))
        return bytes(reply.kvs[0].value) if reply.kvs else None

    async def ca_put(self, kind: str, name: str, value: bytes, *, actor: str,
                     detail: str = "") -> None:
        compare, audit_put, _ = self._audit_op(actor, f"ca-{kind}", f"ca/{kind}/{name}", 0,
                                               detail)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=self._ca_key(kind, name),
                                                       value=bytes(value)))
        reply = await self.txn([compare], [put, audit_put], [])
        if not reply.succeeded:
            raise StoreError(f"{self.where}: audit key collision; retry")

    async def ca_create(self, kind: str, name: str, value: bytes, *, actor: str,
                        detail: str = "") -> bool:
        key = self._ca_key(kind, name)
        compare, audit_put, _ = self._audit_op(actor, f"ca-{kind}", f"ca/{kind}/{name}", 0,
                                               detail)
        absent = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                             create_revision=0)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=bytes(value)))
        reply = await self.txn([absent, compare], [put, audit_put], [])
        if reply.succeeded:
            return True
        if await self.ca_get(kind, name) is None:  # it was the audit key that collided
            raise StoreError(f"{self.where}: audit key collision; retry")
        return False

    async def ca_delete(self, kind: str, name: str, *, actor: str, detail: str = "") -> bool:
        key = self._ca_key(kind, name)
        compare, audit_put, _ = self._audit_op(actor, f"ca-{kind}-deleted", f"ca/{kind}/{name}",
                                               0, detail)
        present = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.GREATER,
                              create_revision=0)
        delete = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        reply = await self.txn([present, compare], [delete, audit_put], [])
        return bool(reply.succeeded)

    async def ca_list(self, kind: str) -> list[tuple[str, bytes]]:
        start = self._ca_key(kind)
        reply = await self.range(start, prefix_end(start))
        return [(kv.key[len(start):].decode(), bytes(kv.value)) for kv in reply.kvs]

    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


class Compacted(StoreError):
    """The history a watch asked for is compacted away."""

    def __init__(self, revision: int) -> None:
        self.revision = revision
        super().__init__(f"etcd history before revision {revision} is compacted")
