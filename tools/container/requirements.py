"""Print pip requirement lines from pyproject.toml for the container build.

    python requirements.py pyproject.toml runtime --onnxruntime onnxruntime
    python requirements.py pyproject.toml build

``runtime``: the project's dependencies with its ONNX Runtime requirement replaced by
``--onnxruntime``. pyproject.toml asks for onnxruntime-gpu on Linux x86_64 (it runs on
the CPU where CUDA is absent), but the CPU image wants plain ``onnxruntime`` (about a
tenth of the size), and the two distributions install the same ``onnxruntime`` module,
so they cannot sit side by side. The Dockerfile installs these lines, then the wheel
with ``--no-deps``. A replacement without a version specifier takes the one
pyproject.toml gives (``onnxruntime`` becomes ``onnxruntime>=1.20``).

``build``: ``[build-system].requires``, for building the wheel without build isolation
in a cached layer.

Only the standard library (tomllib: Python 3.11+), so it runs in a bare base image.
"""

from __future__ import annotations

import argparse
import re
import sys

import tomllib

ONNXRUNTIME_NAMES = {"onnxruntime", "onnxruntime-gpu"}
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    """A requirement's project name, normalized as PEP 503 does."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _specifier(requirement: str) -> str:
    """The version specifier of a requirement (markers and extras dropped)."""
    body = requirement.split(";", 1)[0]
    body = body[_NAME.match(body).end():].strip()
    if body.startswith("["):
        body = body[body.index("]") + 1:].strip()
    return body


def runtime(dependencies: list[str], onnxruntime: str) -> list[str]:
    """``dependencies`` with every ONNX Runtime line replaced by one ``onnxruntime`` line."""
    runtimes = [dep for dep in dependencies if _name(dep) in ONNXRUNTIME_NAMES]
    if not runtimes:
        raise ValueError("pyproject.toml names no onnxruntime dependency")
    if _name(onnxruntime) not in ONNXRUNTIME_NAMES:
        raise ValueError(f"--onnxruntime must be onnxruntime or onnxruntime-gpu: {onnxruntime!r}")
    chosen = onnxruntime.strip()
    if not _specifier(chosen):
        chosen += _specifier(runtimes[0])
    return [dep for dep in dependencies if dep not in runtimes] + [chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pyproject")
    parser.add_argument("what", choices=("runtime", "build"))
    parser.add_argument("--onnxruntime", default="onnxruntime")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)
    if args.what == "build":
        lines = list(project["build-system"]["requires"])
    else:
        try:
            lines = runtime(list(project["project"]["dependencies"]), args.onnxruntime)
        except ValueError as exc:
            print(f"requirements.py: {exc}", file=sys.stderr)
            return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
