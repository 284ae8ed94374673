"""Where a JWT provider's verification keys come from: a local file (re-read when it changes)
or a URL served by one of the proxy's clusters (fetched asynchronously, cached, refreshed).

Both sources answer ``current(now)`` synchronously on the request path: the key set to use
now, or None when there is none yet (or the cached one is too stale). A request that gets
None, or a token whose key id is not in the set, may wait for ``wait_task(now)`` /
``refetch_task(now)``: a fetch shared by every request that waits (single flight), never
one per request.

Remote caching, per source (``now`` is ``time.monotonic()``):

- a fetched set is *fresh* for ``refresh_interval``; the first request after that starts a
  background refresh and keeps using the cached set;
- while refreshes fail the cached set stays usable for ``stale_ttl`` more (stale while
  revalidate), then it is dropped: requests fail closed (401) until a fetch succeeds;
- failed fetches back off exponentially (0.5 s, 1 s, 2 s ... up to 30 s, and never more
  than ``refresh_interval``) so a down key server is not hammered by traffic;
- a token with an unknown ``kid`` triggers a refetch at most every ``min_refetch_interval``
  (key rotation at the issuer is picked up before the next scheduled refresh).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from omnirelay.security.jwt import JwkError, KeySet, parse_jwks
from omnirelay.security.upstream import FetchError, HttpUri, fetch_from_cluster
from omnirelay.security.util import Counters

log = logging.getLogger("omnirelay.security.jwks")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True)
class LocalJwksConfig:
    file: str | None = None
    inline: str | None = None           # a JWK Set as JSON text
    check_interval: float = 1.0


@dataclass(frozen=True)
class RemoteJwksConfig:
    cluster: str
    uri: HttpUri
    timeout: float = 2.0
    refresh_interval: float = 600.0
    stale_ttl: float = 3600.0
    min_refetch_interval: float = 30.0


def _describe(ks: KeySet) -> str:
    kids = sorted({k.kid or "-" for k in ks.keys})
    return f"{len(ks)} keys (kid {', '.join(kids)})"


class LocalJwks:
    """Keys from ``inline`` text, or from ``file``, checked (one stat) at most every
    ``check_interval`` on the request path and re-read when its mtime, size or inode
    changes. A file that disappears or stops parsing keeps the last good keys (logged)."""

    def __init__(self, cfg: LocalJwksConfig, where: str) -> None:
        self.cfg = cfg
        self.where = where
        self._next_check = 0.0
        self._sig: tuple | None = None
        if cfg.inline is not None:
            try:
                self.keyset = parse_jwks(cfg.inline)
            except JwkError as e:
                raise ValueError(f"{where}.inline: {e}") from None
            return
        assert cfg.file is not None
        try:
            self.keyset = self._load()
        except (OSError, JwkError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ValueError(f"{where}.file: cannot use {cfg.file}: {detail}") from None
        self._next_check = time.monotonic() + cfg.check_interval

    def _load(self) -> KeySet:
        path = self.cfg.file
        assert path is not None
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise JwkError(f"larger than {MAX_JWKS_BYTES} bytes")
        self._sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        return parse_jwks(data)

    def current(self, now: float) -> KeySet:
        if self.cfg.file is not None and now >= self._next_check:
            self._next_check = now + self.cfg.check_interval
            try:
                st = os.stat(self.cfg.file)
                changed = (st.st_ino, st.st_size, st.st_mtime_ns) != self._sig
            except OSError as e:
                if self._sig is not None:
                    log.error("%s: %s: %s; keeping the last keys", self.where, self.cfg.file,
                              e.strerror or e)
                    self._sig = None
                changed = False
            if changed:
                try:
                    ks = self._load()
                except (OSError, JwkError) as e:
                    log.error("%s: cannot reload %s: %s; keeping the last keys", self.where,
                              self.cfg.file, e)
                else:
                    log.info("%s: reloaded %s: %s", self.where, self.cfg.file, _describe(ks))
                    self.keyset = ks
        return self.keyset

    def wait_task(self, now: float) -> asyncio.Task | None:
        return None

    def refetch_task(self, now: float) -> asyncio.Task | None:
        return None


class RemoteJwks:
    """Keys fetched from ``uri`` through ``cluster``; see the module docstring."""

    def __init__(self, cfg: RemoteJwksConfig, where: str, counters: Counters) -> None:
        self.cfg = cfg
        self.where = where
        self.counters = counters
        self.keyset: KeySet | None = None
        self.fetched_at = 0.0             # monotonic time of the last successful fetch
        self.last_attempt = float("-inf")
        self.next_attempt = 0.0           # no fetch before this (backoff after failures)
        self.failures = 0
        self.inflight: asyncio.Task | None = None

    # ---- request path (synchronous) ----
    def current(self, now: float) -> KeySet | None:
        ks = self.keyset
        if ks is None:
            return None
        age = now - self.fetched_at
        if age >= self.cfg.refresh_interval:
            self._start(now)
            if age >= self.cfg.refresh_interval + self.cfg.stale_ttl:
                return None
        return ks

    def wait_task(self, now: float) -> asyncio.Task | None:
        """The fetch to wait for when there are no usable keys (None: backing off)."""
        return self._start(now)

    def refetch_task(self, now: float) -> asyncio.Task | None:
        """A fetch for a token whose kid is unknown, if one may start (or is running)."""
        task = self._running()
        if task is not None:
            return task
        if now - self.last_attempt < self.cfg.min_refetch_interval:
            return None
        return self._start(now)

    # ---- fetching ----
    def _running(self) -> asyncio.Task | None:
        task = self.inflight
        if task is None or task.done():
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        # A task of another (closed) loop, e.g. the proxy was restarted embedded.
        return task if task.get_loop() is loop else None

    def _start(self, now: float) -> asyncio.Task | None:
        task = self._running()
        if task is not None:
            return task
        if now < self.next_attempt:
            return None
        self.last_attempt = now
        task = asyncio.get_running_loop().create_task(self._fetch())
        self.inflight = task
        return task

    async def _fetch(self) -> None:
        cfg = self.cfg
        self.counters.inc("jwks_fetch")
        try:
            body = await fetch_from_cluster(cfg.cluster, cfg.uri, timeout=cfg.timeout,
                                            limit=MAX_JWKS_BYTES)
            ks = parse_jwks(body)
        except (FetchError, JwkError) as e:
            self._failed(str(e))
        except Exception as e:
            log.exception("%s: JWKS fetch failed unexpectedly", self.where)
            self._failed(f"{type(e).__name__}: {e}")
        else:
            if self.keyset is None or self.keyset.keys != ks.keys:
                log.info("%s: fetched %s from cluster %s: %s", self.where, cfg.uri.target,
                         cfg.cluster, _describe(ks))
            for err in ks.errors:
                log.warning("%s: JWKS key ignored: %s", self.where, err)
            self.keyset = ks
            self.fetched_at = time.monotonic()
            self.failures = 0
            self.next_attempt = 0.0

    def _failed(self, reason: str) -> None:
        self.counters.inc("jwks_fetch_failed")
        self.failures += 1
        backoff = min(BACKOFF_BASE * 2 ** (self.failures - 1), BACKOFF_MAX,
                      max(self.cfg.refresh_interval, BACKOFF_BASE))
        self.next_attempt = time.monotonic() + backoff
        state = ("no keys cached" if self.keyset is None
                 else f"keeping keys fetched {time.monotonic() - self.fetched_at:.0f}s ago")
        log.warning("%s: JWKS fetch from cluster %s failed (%s); %s; next try in %.1fs",
                    self.where, self.cfg.cluster, reason, state, backoff)


KeySource = Any  # LocalJwks | RemoteJwks
