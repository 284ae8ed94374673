"""The publish pipeline: validate -> dry-run diff -> compare-and-swap write -> audit -> sign ->
push to every watching node.

- Validate: `omnirelay.config.load_config`, the same schema and graph checks every node runs.
- Diff: against the scope's current revision (read and audited); a document equal to the
  current one apart from the epoch is reported `unchanged` and not written.
- Capability gating (gating.py): connected nodes the document would reach that lack a
  capability it needs are reported; a write with such gaps is refused (CapabilityError, audited
  `refused`) unless forced.
- Epoch: MeshKit owns it. The published epoch is the document's, raised to one above the
  scope's current epoch when it is not already higher, so nodes always see it increase.
- Write: compare-and-swap on the revision the diff was made against (or the caller's
  `expected_revision`), atomically with its audit row; a lost race is a RevisionConflict.
- Sign and push: the write reaches the snapshot cache through the store's watch (the path
  every write takes, whoever made it); the publish waits until the cache has signed and
  served it, then audits the push with the key id and the number of nodes on that scope.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omnirelay.config import Config, ConfigError, canonical_json, load_config
from omnirelay.config.signing import document_digest

from .cache import Snapshot, SnapshotCache
from .diff import ConfigDiff, diff_configs
from .gating import Gap, Target, describe, gaps
from .scopes import check_scope
from .store import NotLeader, Store, StoredConfig

PUSH_TIMEOUT = 10.0


class PublishError(Exception):
    pass


class CapabilityError(Exception):
    """Connected nodes the document targets cannot run it."""

    def __init__(self, scope: str, found: list[Gap]) -> None:
        super().__init__(
            f"refusing to publish scope {scope!r}: {len(found)} connected nodes cannot run "
            f"it (publish with force to override):\n{describe(found)}"
        )
        self.gaps = found


@dataclass(frozen=True, slots=True)
class Validated:
    """A document that passed validation, normalized, with the epoch it would be published at."""

    config: Config
    document: bytes  # canonical JSON
    sha256: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    scope: str
    revision: int
    version: str
    epoch: int
    sha256: str
    diff: ConfigDiff
    dry_run: bool
    unchanged: bool
    snapshot: Snapshot | None = None
    watchers: int = 0
    gaps: tuple[Gap, ...] = ()


def validate(source: bytes | str | Mapping[str, Any]) -> Validated:
    """Validate a document (YAML/JSON bytes or text, or parsed data); ConfigError if invalid."""
    if isinstance(source, str):
        source = source.encode()  # load_config reads a one-line str ending in .yaml as a path
    elif isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    config = load_config(source)
    document = canonical_json(config)
    return Validated(config, document, document_digest(document))


def stored_config(stored: StoredConfig) -> Config | None:
    """The config held by a stored document, None if it no longer validates (a schema change);
    the diff then shows everything as added."""
    try:
        return load_config(stored.document)
    except ConfigError:
        return None


def with_epoch(config: Config, epoch: int) -> Config:
    return dataclasses.replace(config, metadata=dataclasses.replace(config.metadata, epoch=epoch))


class Publisher:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        watchers: Callable[[str], int] = lambda scope: 0,
        *,
        nodes: Callable[[], Iterable[Target]] = lambda: (),
        push_timeout: float = PUSH_TIMEOUT,
        may_publish: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.cache = cache
        self._watchers = watchers
        self._nodes = nodes
        self.push_timeout = push_timeout
        # With replicas on etcd only the elected leader writes (meshkit/leader.py): this says
        # why this replica may not publish now (None: it may).
        self.may_publish = may_publish

    async def diff(
        self, scope: str, validated: Validated, *, actor: str, action: str
    ) -> tuple[StoredConfig | None, Config, ConfigDiff, bool]:
        """(current, config with its publish epoch, diff, unchanged) for `validated` on `scope`."""
        current = await self.store.get(scope, actor=actor, action=action)
        old = stored_config(current) if current is not None else None
        config = validated.config
        floor = current.epoch + 1 if current is not None else 1
        epoch = max(config.metadata.epoch, floor)
        unchanged = old is not None and with_epoch(old, 0) == with_epoch(config, 0)
        config = with_epoch(config, current.epoch if unchanged and current else epoch)
        return current, config, diff_configs(old, config), unchanged

    def gaps(self, scope: str, config: Config) -> list[Gap]:
        """Connected nodes that publishing `config` on `scope` would reach and that cannot run
        it."""
        return gaps(scope, config, self._nodes(), lambda s: self.cache.get(s) is not None)

    async def publish(
        self,
        scope: str,
        source: bytes | str | Mapping[str, Any],
        *,
        actor: str,
        expected_revision: int | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> PublishResult:
        """Run the pipeline; ConfigError (invalid), ScopeError, CapabilityError,
        RevisionConflict, PublishError."""
        scope = check_scope(scope)
        validated = validate(source)
        refusal = None if dry_run else self.may_publish()
        if refusal is not None:
            raise PublishError(refusal)
        current, config, diff, unchanged = await self.diff(
            scope, validated, actor=actor, action="dry-run" if dry_run else "diff"
        )
        current_revision = current.revision if current is not None else 0
        found = self.gaps(scope, config)
        if found and not (dry_run or unchanged or force):
            error = CapabilityError(scope, found)
            await self.store.append_audit(actor=actor, action="refused", scope=scope,
                                          revision=current_revision, detail=str(error))
            raise error
        if dry_run or unchanged:
            document = canonical_json(config)
            return PublishResult(
                scope=scope,
                revision=current_revision,
                version=config.metadata.version,
                epoch=config.metadata.epoch,
                sha256=document_digest(document),
                diff=diff,
                dry_run=dry_run,
                unchanged=unchanged,
                gaps=tuple(found),
            )
        expected = current_revision if expected_revision is None else expected_revision
        document = canonical_json(config)
        sha256 = document_digest(document)
        try:
            stored = await self.store.put(
                scope,
                document,
                expected_revision=expected,
                actor=actor,
                version=config.metadata.version,
                epoch=config.metadata.epoch,
                sha256=sha256,
                detail=diff.summary(),
            )
        except NotLeader as exc:  # leadership lost since the check above
            raise PublishError(self.may_publish() or str(exc)) from None
        if not await self.cache.wait_for_revision(stored.revision, self.push_timeout):
            raise PublishError(
                f"scope {scope!r} revision {stored.revision} was written but not served within "
                f"{self.push_timeout:g} s; the watch server will push it when it catches up"
            )
        snapshot = self.cache.get(scope)
        if snapshot is None or snapshot.revision < stored.revision:
            raise PublishError(
                f"scope {scope!r} revision {stored.revision} was written but cannot be served "
                "(see the MeshKit log); nodes keep the previous snapshot"
            )
        watchers = self._watchers(scope)
        if snapshot.revision == stored.revision:  # not already superseded by a newer write
            await self.store.append_audit(
                actor=actor, action="push", scope=scope, revision=stored.revision,
                detail=f"signed by {snapshot.key_id}; {watchers} watching nodes"
                + (f"; forced past capability gaps:\n{describe(found)}" if found else ""),
            )
        return PublishResult(
            scope=scope,
            revision=stored.revision,
            version=stored.version,
            epoch=stored.epoch,
            sha256=sha256,
            diff=diff,
            dry_run=False,
            unchanged=False,
            snapshot=snapshot,
            watchers=watchers,
            gaps=tuple(found),
        )
