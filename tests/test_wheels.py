"""The release wheels (wheels/build.sh) installed as a user would install them, per architecture.

Slow (minutes: the aarch64 wheel runs under qemu-user, and one test rebuilds the sdist), so
excluded from the default run; `make wheel-test` builds the artefacts if needed and runs
`pytest -m slow tests/test_wheels.py`. Expects $OMNIRELAY_WHEEL_DIST (default dist/) to hold
the sdist and both manylinux wheels of the checkout's version.

x86_64: a fresh venv, `pip install` of the wheel, wheels/smoke.py, the console scripts.
aarch64: the same inside an arm64 Debian root (wheels/arm64-root.sh) run by
qemu-aarch64-static; with no binfmt_misc here every aarch64 process is started through qemu.
"""
from __future__ import annotations

import configparser
import email.parser
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
VERSION = runpy.run_path(str(ROOT / "omnirelay" / "_version.py"))["__version__"]
DIST = Path(os.environ.get("OMNIRELAY_WHEEL_DIST", ROOT / "dist"))
CACHE = ROOT / "build" / "wheel-test"  # arm64 root and dependency wheels, kept across runs
ARCHES = ["x86_64", "aarch64"]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # e_machine: EM_X86_64, EM_AARCH64
ENTRY_POINTS = {"omnirelay", "omnirctl", "meshkit"}
SCRIPT_TIMEOUT = 600


def wheel_of(arch: str) -> Path:
    found = sorted(DIST.glob(f"omnirelay-{VERSION}-cp311-cp311-*manylinux*_{arch}.whl"))
    if not found:
        pytest.fail(f"no manylinux {arch} wheel of omnirelay {VERSION} in {DIST}: "
                    "run `make wheel` (or `make wheel-test`, which builds when needed)")
    return found[-1]


def sdist() -> Path:
    path = DIST / f"omnirelay-{VERSION}.tar.gz"
    if not path.is_file():
        pytest.fail(f"{path} missing: run `make wheel`")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
                          check=False, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def wheel_metadata(whl: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The wheel's file names; its Requires-Dist, tags and console scripts."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        info = f"omnirelay-{VERSION}.dist-info"
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        wheel = email.parser.Parser().parsestr(z.read(f"{info}/WHEEL").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(f"{info}/entry_points.txt").decode())
    return names, {"requires": meta.get_all("Requires-Dist") or [],
                   "tags": wheel.get_all("Tag") or [],
                   "scripts": sorted(entry_points["console_scripts"])}


def package_files(names: list[str]) -> set[str]:
    """A wheel's own files: no dist-info, no grafted libraries, no directory entries (which
    auditwheel's rewrite adds)."""
    return {n for n in names if not n.endswith("/")
            and not n.startswith((f"omnirelay-{VERSION}.dist-info/", "omnirelay.libs/"))}


def sdist_sources() -> list[str]:
    with tarfile.open(sdist()) as tar:
        return [str(PurePosixPath(*PurePosixPath(m.name).parts[1:]))
                for m in tar.getmembers() if m.isfile()]


@pytest.mark.parametrize("arch", ARCHES)
def test_wheel_carries_the_core_protos_header_and_entry_points(arch):
    whl = wheel_of(arch)
    names, meta = wheel_metadata(whl)
    suffix = f".cpython-311-{arch}-linux-gnu.so"
    sources = sdist_sources()
    pyx = sorted(s for s in sources if s.startswith("omnirelay_core/") and s.endswith(".pyx"))
    assert pyx, "the sdist carries no Cython sources"
    for src in pyx:
        assert src[:-4] + suffix in names, f"{whl.name} lacks the compiled {src}"
    # every Python module of the sdist, plus the protos generated at build time
    modules = {s for s in sources if s.endswith(".py") and s.split("/")[0] in
               ("omnirelay", "omnirelay_core", "meshkit")}
    assert modules <= set(names), sorted(modules - set(names))
    protos = [p.rsplit("/", 1)[1][:-6] for p in sources if p.startswith("protos/")
              and p.endswith(".proto")]
    assert protos
    for name in protos:
        for generated in (f"{name}_pb2.py", f"{name}_pb2.pyi", f"{name}_pb2_grpc.py"):
            assert f"omnirelay/config/protos/{generated}" in names
    for data in ("omnirelay_core/include/omnirelay_plugin.h", "omnirelay/py.typed",
                 "omnirelay_core/py.typed"):
        assert data in names
    assert not [n for n in names if n.endswith((".c", ".html"))], "generated C in the wheel"
    assert ENTRY_POINTS <= set(meta["scripts"]), meta["scripts"]
    # libnghttp2 grafted by auditwheel, so nothing is needed from the system at run time
    assert [n for n in names if n.startswith("omnirelay.libs/libnghttp2")]
    assert all("manylinux" in tag and tag.endswith(arch) for tag in meta["tags"]), meta["tags"]
    with zipfile.ZipFile(whl) as z:
        for so in (n for n in names if n.endswith(".so") or ".so." in n):
            head = z.read(so)[:20]
            assert head[:4] == b"\x7fELF"
            assert int.from_bytes(head[18:20], "little") == ELF_MACHINE[arch], f"{so}: not {arch}"


@pytest.mark.parametrize("arch", ARCHES)
def test_auditwheel_reports_a_manylinux_tag(arch):
    auditwheel = ROOT / "build" / "wheels" / "venv" / "bin" / "auditwheel"
    if not auditwheel.exists():
        pytest.fail(f"{auditwheel} missing: run `make wheel` (it creates the build venv)")
    out = run([str(auditwheel), "show", str(wheel_of(arch))]).stdout
    assert f'is consistent with the following platform tag: "manylinux_2_17_{arch}"' in \
        " ".join(out.split()), out
    assert "external shared libraries are required" not in out, out


def dependency_wheels(arch: str) -> Path:
    """The wheel's dependencies (and pip) for `arch`, downloaded once by this machine's pip;
    the install then needs no index, and under qemu no resolver round trips."""
    _, meta = wheel_metadata(wheel_of(arch))
    wanted = sorted(meta["requires"])
    target = CACHE / f"deps-{arch}"
    stamp = target / ".requirements"
    key = "\n".join(wanted + ["pip"])
    if stamp.is_file() and stamp.read_text() == key:
        return target
    shutil.rmtree(target, ignore_errors=True)
    platforms = [arg for v in range(17, 37) for arg in ("--platform", f"manylinux_2_{v}_{arch}")]
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--only-binary=:all:", *platforms, "--platform", f"manylinux2014_{arch}",
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
         "-d", str(target), *[r for r in wanted if "extra ==" not in r], "pip"])
    stamp.write_text(key)
    return target


def pip_wheel(deps: Path) -> Path:
    (whl,) = deps.glob("pip-*.whl")
    return whl


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.fail("qemu-aarch64-static missing: run `make wheel` (WHEEL_APT_PACKAGES)")
    root = CACHE / "arm64-root"
    run(["bash", str(ROOT / "wheels" / "arm64-root.sh"), str(root)])
    return root


def install_and_smoke(arch: str, prefix: list[str], python: str, venv: Path) -> None:
    """Create `venv` with `python`, pip-install the wheel offline, run the smoke test and the
    console scripts; `prefix` runs an aarch64 program (qemu) or is empty."""
    deps = dependency_wheels(arch)
    run([*prefix, python, "-m", "venv", "--without-pip", str(venv)])
    vpy = str(venv / "bin" / "python")
    # pip runs from its own wheel (pip supports that), so the venv needs no ensurepip
    run([*prefix, vpy, str(pip_wheel(deps) / "pip"), "install", "-q", "--no-compile",
         "--disable-pip-version-check", "--no-index", "--find-links", str(deps),
         str(wheel_of(arch))])
    # Run from a directory outside the checkout so nothing imports from it.
    smoke = run([*prefix, vpy, str(ROOT / "wheels" / "smoke.py")], cwd=venv).stdout
    assert "smoke: ok" in smoke, smoke
    assert f"on {arch}" in smoke, smoke
    for script in ("omnirctl", "omnirelay"):
        cmd = [str(venv / "bin" / script), "--version"]
        said = run([*prefix, vpy, *cmd] if prefix else cmd, cwd=venv).stdout.strip()
        assert said == f"{script} {VERSION}"


def test_x86_64_wheel_installs_and_proxies(tmp_path):
    if os.uname().machine != "x86_64":
        pytest.skip("the x86_64 wheel runs natively only on an x86_64 machine")
    install_and_smoke("x86_64", [], sys._base_executable, tmp_path / "venv")


def test_aarch64_wheel_installs_and_proxies_under_qemu(arm64_root, tmp_path):
    prefix = ["qemu-aarch64-static", "-L", str(arm64_root)]
    install_and_smoke("aarch64", prefix, str(arm64_root / "usr" / "bin" / "python3.11"),
                      tmp_path / "venv")


def test_wheel_from_the_sdist_by_pip_has_the_same_files(tmp_path):
    """A user's `pip install omnirelay-X.tar.gz`: pip's isolated build (requirements from
    pyproject, fetched from PyPI) against the system libnghttp2 gives the release wheel's files
    (the release wheel adds only the grafted libnghttp2 and its manylinux tag)."""
    if os.uname().machine != "x86_64":
        pytest.skip("compares with the x86_64 release wheel")
    out = tmp_path / "out"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "--no-deps", "-w", str(out), str(sdist())], cwd=tmp_path)
    (built,) = out.glob("omnirelay-*.whl")
    assert built.name == f"omnirelay-{VERSION}-cp311-cp311-linux_x86_64.whl"
    release, _ = wheel_metadata(wheel_of("x86_64"))
    rebuilt, _ = wheel_metadata(built)
    assert package_files(rebuilt) == package_files(release)
