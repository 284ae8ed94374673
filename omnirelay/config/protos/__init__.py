"""Generated protobuf and gRPC modules of the control-plane wire protocol (`protos/*.proto`).

    from omnirelay.config.protos import mesh_pb2, mesh_pb2_grpc, admin_pb2, admin_pb2_grpc

Shared by both planes, which is why it lives beside the shared schema: MeshKit may import
`omnirelay.config` and nothing else from omnirelay. The modules are produced by the build
(`make protos`); in a checkout, importing this package also (re)builds them when they are
missing or older than their sources (`_build.ensure`, a stat and a hash when current).
"""

from . import _build

_build.ensure()
