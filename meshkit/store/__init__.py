"""Desired-state stores: the `Store` interface and its embedded SQLite default."""

from .base import AuditEntry, RevisionConflict, Store, StoredConfig, StoreError
from .sqlite import SqliteStore

__all__ = ["AuditEntry", "RevisionConflict", "SqliteStore", "Store", "StoreError", "StoredConfig"]
