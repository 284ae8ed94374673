"""MeshKit: OmniRelay's control plane (signed config snapshots over gRPC watch
streams, identity, rollout). It arrives with its own issue; the package exists so
the layering rules can be enforced from day one."""
