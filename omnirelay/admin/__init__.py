"""The admin API: a separate HTTP listener with health, readiness, metrics, stats, config
and cluster dumps, and token-protected mutations (docs/operations.md#admin-api)."""
from .app import AdminApp, AdminSource
from .server import AdminBindError, AsyncAdminServer, PolledAdminServer
from .sources import RelaySource, SupervisorSource

__all__ = ["AdminApp", "AdminBindError", "AdminSource", "AsyncAdminServer",
           "PolledAdminServer", "RelaySource", "SupervisorSource"]
