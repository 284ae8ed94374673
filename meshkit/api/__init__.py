"""MeshKit's northbound API (gRPC `omnirelay.mesh.v1.MeshAdmin`) and its bearer tokens."""
