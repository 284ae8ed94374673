"""The wire protocol's generated modules: built from protos/*.proto by the build (make protos,
or on import when missing or stale), never committed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from omnirelay.config.protos import _build, admin_pb2, ca_pb2, mesh_pb2, mesh_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_are_current_and_shared():
    protos = _build.sources(ROOT / "protos")
    assert [p.name for p in protos] == ["admin.proto", "ca.proto", "mesh.proto"]
    assert _build.is_current(protos)
    assert mesh_pb2.DESCRIPTOR.name == "omnirelay/config/protos/mesh.proto"
    assert mesh_pb2.DESCRIPTOR.package == "omnirelay.mesh.v1"
    services = set(mesh_pb2.DESCRIPTOR.services_by_name) | set(admin_pb2.DESCRIPTOR.services_by_name)
    services |= set(ca_pb2.DESCRIPTOR.services_by_name)
    assert services == {"ConfigWatch", "EndpointDiscovery", "NodeStatus", "MeshAdmin",
                        "CertificateAuthority", "CaAdmin"}
    assert hasattr(mesh_pb2_grpc, "ConfigWatchStub")
    ignored = (ROOT / "omnirelay/config/protos/.gitignore").read_text()
    assert "*_pb2.py" in ignored and "*_pb2_grpc.py" in ignored


def test_build_script_generates_rebuilds_when_stale_and_uses_package_imports(tmp_path):
    pkg = tmp_path / "omnirelay/config/protos"
    pkg.mkdir(parents=True)
    for name in ("_build.py", "__init__.py"):
        shutil.copy(ROOT / "omnirelay/config/protos" / name, pkg / name)
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    (tmp_path / "pyproject.toml").write_text("")

    def build(*args: str) -> str:
        r = subprocess.run([sys.executable, str(pkg / "_build.py"), *args], capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "generated 9 modules" in build()
    grpc_module = (pkg / "mesh_pb2_grpc.py").read_text()
    assert "from omnirelay.config.protos import mesh_pb2" in grpc_module
    assert (pkg / "admin_pb2.pyi").is_file()
    assert "up to date" in build()
    with open(tmp_path / "protos/mesh.proto", "a") as f:
        f.write("\nmessage Extra { string x = 1; }\n")
    assert "generated 9 modules" in build()
    assert "Extra" in (pkg / "mesh_pb2.pyi").read_text()
    (tmp_path / "protos/admin.proto").unlink()
    build()
    assert not (pkg / "admin_pb2.py").exists()  # modules of a removed .proto go too
    build("--clean")
    assert not list(pkg.glob("*_pb2*"))
