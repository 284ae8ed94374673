"""Desired-state stores: the `Store` interface and its embedded SQLite default (the etcd
backend, meshkit.store.etcd, is imported only when used)."""

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
from .sqlite import SqliteStore

__all__ = [
    "AuditEntry", "NotFound", "NotLeader", "RevisionConflict", "SqliteStore", "Store", "StoreError",
    "StoredConfig", "StoredEndpoints",
]
