"""Cluster-level machinery that runs beside the core: active health checking."""

from .health import HealthChecker, HealthCheckers

__all__ = ["HealthChecker", "HealthCheckers"]
