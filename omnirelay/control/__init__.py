"""OmniRelay's control-plane client: MeshKit's watch stream, signed snapshots, the LKG."""
from .client import Backoff, ControlClient
from .lkg import Lkg, LkgError, load_lkg, save_lkg

__all__ = ["Backoff", "ControlClient", "Lkg", "LkgError", "load_lkg", "save_lkg"]
