"""Build the Cython core.

llhttp is compiled into the HTTP/1 codec extension from the C sources shipped in the
PyPI `llhttp` sdist, fetched when the extensions are built (never vendored). Point
OMNIRELAY_LLHTTP_SDIST at a local copy of the sdist tarball to build offline.
"""
import glob
import os
import subprocess
import sys
import tarfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

LLHTTP_VERSION = "9.3.0.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEPS = os.path.join(HERE, "build", "_deps")
LLHTTP_DIR = os.path.join(DEPS, f"llhttp-{LLHTTP_VERSION}", "lib")
PROTOS_PKG = os.path.join("omnirelay", "config", "protos")


def fetch_llhttp():
    if os.path.exists(os.path.join(LLHTTP_DIR, "llhttp.h")):
        return
    os.makedirs(DEPS, exist_ok=True)
    sdist = os.environ.get("OMNIRELAY_LLHTTP_SDIST")
    if not sdist:
        # pip's isolated build env hides pip itself behind PYTHONPATH; drop it.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
        subprocess.check_call([
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--no-binary", ":all:", "-d", DEPS, f"llhttp=={LLHTTP_VERSION}",
        ], env=env)
        sdist = os.path.join(DEPS, f"llhttp-{LLHTTP_VERSION}.tar.gz")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/lib/" in m.name]
        tar.extractall(DEPS, members=members, filter="data")


class BuildCore(build_ext):
    """Fetch llhttp and cythonize only when extensions are really built: not when pip merely
    asks for build requirements or metadata, nor when an sdist lists its sources (the sdist
    carries the .pyx files, never generated C)."""

    def run(self):
        from Cython.Build import cythonize

        fetch_llhttp()
        llsrc = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(LLHTTP_DIR, "*.c")))
        for ext in self.extensions:
            if ext.name == "omnirelay_core.http1":
                ext.sources += [s for s in llsrc if s not in ext.sources]
        cythonized = cythonize(
            self.extensions,
            language_level=3,
            nthreads=os.cpu_count() or 1,
            compiler_directives={
                "boundscheck": False, "wraparound": False, "cdivision": True,
                "embedsignature": True, "initializedcheck": False,
            },
            annotate=os.environ.get("OMNIRELAY_ANNOTATE") == "1",
        )
        # Swap in the C sources on the extensions finalize_options already set up.
        by_name = {ext.name: ext for ext in cythonized}
        for ext in self.extensions:
            ext.sources = by_name[ext.name].sources
        super().run()


class BuildPy(build_py):
    """Generate omnirelay.config.protos from protos/*.proto into the package before it is
    copied, so every wheel carries them (they are never committed). An editable install
    skips this: importing the package builds them in the checkout."""

    def run(self):
        if not self.editable_mode:
            subprocess.check_call([sys.executable, os.path.join(PROTOS_PKG, "_build.py")], cwd=HERE)
        super().run()


def _libraries(pyx):
    if pyx.startswith("http2"):
        return ["nghttp2"]  # HTTP/2 framing comes from the system libnghttp2 (libnghttp2-dev)
    return []


def extensions():
    cflags = ["-O0", "-g"] if os.environ.get("OMNIRELAY_DEBUG") == "1" else ["-O2"]
    return [
        Extension("omnirelay_core." + os.path.basename(pyx)[:-4], [pyx],
                  include_dirs=[LLHTTP_DIR, "omnirelay_core"], extra_compile_args=cflags,
                  libraries=_libraries(os.path.basename(pyx)))
        for pyx in sorted(glob.glob(os.path.join("omnirelay_core", "*.pyx")))
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCore, "build_py": BuildPy})
