"""Build for TensorGate: generated protobuf code and the Cython extensions.

Both are produced by every build (wheel, sdist install, ``pip install -e .``); an
install that cannot produce them fails loudly instead of falling back to slower code.

The native gRPC front end (ext/frontend.pyx over ext/native/, C++) links grpc++ as
found by pkg-config (Debian: libgrpc++-dev). Where grpc++ is missing it is left out with
a warning and the server runs on its grpc.aio front end alone (``--frontend``).

Switches (environment variables, as in asyncpg's and uvloop's setup.py):
  TENSORGATE_CYTHON_ANNOTATE=1   write ext/*.html annotation reports
  TENSORGATE_DEBUG=1             keep Cython's bounds checks and asserts on (debug build)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
GENERATED = ROOT / "server" / "tensorgate" / "_proto"


def generate_protos() -> None:
    """Compile proto/ into tensorgate._proto, registered in its private descriptor pool
    (proto/protogen.py says why; the Python client's build uses the same helper)."""
    sys.path.insert(0, str(PROTO_ROOT))
    import protogen

    protogen.generate(PROTO_ROOT, GENERATED, "tensorgate._proto")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


def extensions() -> list:
    from Cython.Build import cythonize  # build requirement
    import numpy

    debug = os.environ.get("TENSORGATE_DEBUG") == "1"
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "embedsignature": True,
    }
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if debug:
        macros.append(("TENSORGATE_DEBUG", "1"))
    compile_args = ["-O3"] if not debug else ["-O0", "-g"]
    exts = [
        Extension(
            f"tensorgate._ext.{name}",
            sources=[f"ext/{name}.pyx"],
            include_dirs=[numpy.get_include(), "ext"],
            define_macros=macros,
            extra_compile_args=compile_args,
        )
        for name in ("codec", "batcher", "jsondata", "rowstats", "rowpack")
    ]
    native = native_frontend(macros, compile_args)
    if native is not None:
        exts.append(native)
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=os.environ.get("TENSORGATE_CYTHON_ANNOTATE") == "1",
        force=True,
    )


def native_frontend(macros: list, compile_args: list):
    """The grpc++ front end's extension, or None (with a warning) without grpc++."""
    import shlex
    import subprocess

    try:
        flags = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "grpc++"],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(
            "WARNING: grpc++ not found by pkg-config (Debian: apt-get install "
            "libgrpc++-dev pkg-config); building without the native front end",
            file=sys.stderr,
        )
        return None
    words = shlex.split(flags)
    return Extension(
        "tensorgate._ext.frontend",
        sources=["ext/frontend.pyx", "ext/native/frontend.cpp"],
        include_dirs=["ext"] + [w[2:] for w in words if w.startswith("-I")],
        define_macros=macros + [
            tuple((w[2:].split("=", 1) + [None])[:2]) for w in words if w.startswith("-D")
        ],
        library_dirs=[w[2:] for w in words if w.startswith("-L")],
        libraries=[w[2:] for w in words if w.startswith("-l")],
        extra_link_args=[w for w in words if w.startswith("-Wl,")],
        extra_compile_args=compile_args + ["-std=c++17"],
        language="c++",
    )


# Generate eagerly as well: editable installs import straight from server/tensorgate/, and the
# generated modules must exist there whichever setuptools command runs first.
if not {"--help", "--version", "clean"} & set(sys.argv[1:]):
    generate_protos()

setup(
    # server/tensorgate/ is the package: its folder carries its import name.
    package_dir={"": "server"},
    packages=find_packages(where="server"),
    package_data={
        "tensorgate": [
            "demo_repository/README.md",
            "demo_repository/*/config.pbtxt",
            "demo_repository/*/*/*.onnx",
        ],
        "tensorgate._proto": ["**/*.pyi"],
        "tensorgate._ext": ["*.pyi"],
    },
    include_package_data=False,
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProtos},
    zip_safe=False,
)
