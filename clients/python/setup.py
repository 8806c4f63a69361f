"""Build for tensorgate-client: the protobuf/gRPC code is generated from the
repository's proto/ (../../proto) by every build, so it cannot drift from the protocol.

Builds from a checkout of the repository (pip install ./clients/python, or -e); the
wheel it makes carries the generated code and installs anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
GENERATED = HERE / "tensorgate_client" / "_proto"


def generate() -> None:
    if not PROTO_ROOT.is_dir():
        raise SystemExit(f"tensorgate-client build: {PROTO_ROOT} not found (build from a checkout)")
    sys.path.insert(0, str(PROTO_ROOT))  # proto/protogen.py, shared with the server's build
    import protogen

    protogen.generate(PROTO_ROOT, GENERATED, "tensorgate_client._proto")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate()
        super().run()


# Generate eagerly as well: an editable install imports straight from this directory.
if not {"--help", "--version", "clean"} & set(sys.argv[1:]):
    generate()

setup(
    # After generate(): the generated subpackages (_proto/inference, ...) exist to be found.
    packages=find_packages(include=["tensorgate_client", "tensorgate_client.*"]),
    cmdclass={"build_py": BuildPyWithProtos},
)
