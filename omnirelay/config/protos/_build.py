"""Generate the Python modules of this package from the repository's `protos/*.proto`.

Run by `make protos` (as a script, so nothing else is imported) and, from this package's
`__init__`, whenever the generated modules are missing or older than their sources; stdlib
and grpcio-tools only. Output goes into this directory as `<name>_pb2.py`, `<name>_pb2.pyi`
and `<name>_pb2_grpc.py`, plus `_sources.sha256`: a digest of the sources and the grpcio-tools
version they were built with (a tools upgrade rebuilds them; without grpcio-tools installed,
matching sources are enough). Nothing here is committed: the build produces it (see
docs/meshkit.md, "Generated code").

Each `.proto` is compiled under the virtual path `omnirelay/config/protos/<name>.proto`
(protoc's `-I<virtual>=<dir>`), so generated imports read `from omnirelay.config.protos import
mesh_pb2` rather than a bare `import mesh_pb2`, and both planes import one module.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "omnirelay.config.protos"
VIRTUAL_DIR = PACKAGE.replace(".", "/")
STAMP = PACKAGE_DIR / "_sources.sha256"
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtoBuildError(ImportError):
    """The generated modules are missing or stale and cannot be (re)built here."""


def source_dir() -> Path | None:
    """The checkout's `protos/` directory, or None in an installed wheel (no sources)."""
    root = PACKAGE_DIR.parents[2]
    protos = root / "protos"
    if (root / "pyproject.toml").is_file() and protos.is_dir():
        return protos
    return None


def sources(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.proto"))


def outputs(protos: list[Path]) -> list[Path]:
    return [PACKAGE_DIR / f"{p.stem}{suffix}" for p in protos for suffix in _SUFFIXES]


def generator_version() -> str:
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return ""


def digest(protos: list[Path]) -> str:
    h = hashlib.sha256()
    for path in protos:
        h.update(f"{path.name}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return h.hexdigest()


def stamp_text(protos: list[Path], tool_version: str) -> str:
    return f"{digest(protos)} grpcio-tools=={tool_version}\n"


def is_current(protos: list[Path]) -> bool:
    """Generated from these sources, by the installed grpcio-tools if there is one."""
    try:
        sources_digest, _, tool = STAMP.read_text().strip().partition(" grpcio-tools==")
    except OSError:
        return False
    installed = generator_version()
    return (
        sources_digest == digest(protos)
        and (not installed or tool == installed)
        and all(p.is_file() for p in outputs(protos))
    )


def ensure() -> None:
    """Build the generated modules if they are missing or stale; a no-op when current.

    In an installed wheel (no `protos/` beside the package) the shipped modules are used as they
    are. Raises ProtoBuildError when they must be built and grpcio-tools is not installed.
    """
    directory = source_dir()
    if directory is None:
        return
    protos = sources(directory)
    if not protos or is_current(protos):
        return
    try:
        with _locked():
            if not is_current(protos):  # another process may have built them meanwhile
                generate(directory)
    except OSError as exc:
        raise ProtoBuildError(
            f"{PACKAGE}: cannot write the generated modules into {PACKAGE_DIR}: {exc}; "
            "run `make protos` as the checkout's owner"
        ) from None


def generate(directory: Path) -> list[Path]:
    """Compile every `directory/*.proto` into this package; returns the files written.

    protoc writes into a temporary directory first and each module is then renamed into place,
    so a concurrent importer never sees a half-written file; the stamp is written last.
    """
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ProtoBuildError(
            f"{PACKAGE}: the generated modules are missing or older than {directory}/*.proto, "
            "and grpcio-tools is not installed to build them: run `make protos` after "
            "`pip install grpcio-tools` (or `make setup`)"
        ) from None
    protos = sources(directory)
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory(dir=PACKAGE_DIR, prefix=".build-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{VIRTUAL_DIR}={directory}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p) for p in protos),
        ]
        status = protoc.main(args)
        if status != 0:
            raise ProtoBuildError(f"{PACKAGE}: protoc failed (exit status {status}) on {directory}")
        built = Path(tmp, VIRTUAL_DIR)
        written = []
        for target in outputs(protos):
            os.replace(built / target.name, target)
            written.append(target)
    stale = {p for p in PACKAGE_DIR.iterdir() if p.name.endswith(_SUFFIXES)} - set(written)
    for path in stale:  # modules of a .proto that no longer exists
        path.unlink(missing_ok=True)
    _write_atomically(STAMP, stamp_text(protos, generator_version()))
    return written


def clean() -> None:
    for path in PACKAGE_DIR.iterdir():
        if path.name.endswith(_SUFFIXES) or path == STAMP:
            path.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked():
    """An exclusive lock between processes importing the package at once (a test run starting
    several servers); a no-op where the directory is read-only."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds just race; renames keep files whole
        yield
        return
    try:
        fd = os.open(PACKAGE_DIR / ".build.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--clean"]:
        clean()
        return 0
    directory = source_dir()
    if directory is None:
        print(f"protos: no protos/ directory beside {PACKAGE_DIR}", file=sys.stderr)
        return 1
    if not sources(directory):
        print("protos: no protos/*.proto; nothing to generate")
        return 0
    force = "--force" in argv[1:]
    if not force and is_current(sources(directory)):
        print(f"protos: {PACKAGE} is up to date")
        return 0
    with _locked():
        written = generate(directory)
    print(f"protos: generated {len(written)} modules in {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except ProtoBuildError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
