"""MeshKit's gRPC server: the southbound watch, discovery and status services (nodes) and the
northbound admin API (operators), over one snapshot cache fed by the store's watch."""

from .app import MeshKit

__all__ = ["MeshKit"]
