"""Build the Cython core.

llhttp is compiled into the HTTP/1 codec extension from the C sources shipped in the
PyPI `llhttp` sdist, fetched at build time (never vendored). Point OMNIRELAY_LLHTTP_SDIST
at a local copy of the sdist tarball to build offline.
"""
import glob
import os
import subprocess
import sys
import tarfile

from setuptools import Extension, setup

LLHTTP_VERSION = "9.3.0.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEPS = os.path.join(HERE, "build", "_deps")


def llhttp_dir():
    src = os.path.join(DEPS, f"llhttp-{LLHTTP_VERSION}", "lib")
    if os.path.exists(os.path.join(src, "llhttp.h")):
        return src
    os.makedirs(DEPS, exist_ok=True)
    sdist = os.environ.get("OMNIRELAY_LLHTTP_SDIST")
    if not sdist:
        # pip's isolated build env hides pip itself behind PYTHONPATH; drop it.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
        subprocess.check_call([
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--no-binary", ":all:", "-d", DEPS,
            f"llhttp=={LLHTTP_VERSION}",
        ], env=env)
        sdist = os.path.join(DEPS, f"llhttp-{LLHTTP_VERSION}.tar.gz")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/lib/" in m.name]
        tar.extractall(DEPS, members=members, filter="data")
    return src


def extensions():
    from Cython.Build import cythonize

    lldir = llhttp_dir()
    llsrc = sorted(glob.glob(os.path.join(lldir, "*.c")))
    debug = os.environ.get("OMNIRELAY_DEBUG") == "1"
    cflags = ["-O0", "-g"] if debug else ["-O2"]
    exts = []
    for pyx in sorted(glob.glob(os.path.join("omnirelay_core", "*.pyx"))):
        name = "omnirelay_core." + os.path.basename(pyx)[:-4]
        sources = [pyx]
        if name == "omnirelay_core.http1":
            sources += [os.path.relpath(p, HERE) for p in llsrc]
        exts.append(Extension(
            name, sources,
            include_dirs=[lldir, "omnirelay_core"],
            extra_compile_args=cflags,
        ))
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False, "wraparound": False, "cdivision": True,
            "embedsignature": True, "initializedcheck": False,
        },
        annotate=os.environ.get("OMNIRELAY_ANNOTATE") == "1",
    )


setup(ext_modules=extensions())
