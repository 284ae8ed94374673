"""MeshKit: OmniRelay's control plane.

It validates config documents with the shared schema (`omnirelay.config`), keeps desired state
per scope in a store (SQLite by default: revisions, compare-and-swap, an append-only audit
log), signs snapshots (Ed25519, `omnirelay.config.signing`) and streams them to nodes over the
gRPC watch protocol (`protos/mesh.proto`); operators drive it with `omnirctl` over the
northbound API (`protos/admin.proto`). See docs/meshkit.md.

Layering (tests/test_layering.py): from omnirelay, MeshKit imports `omnirelay.config` (which
holds the generated protos) and nothing else; never `omnirelay_core`.
"""
