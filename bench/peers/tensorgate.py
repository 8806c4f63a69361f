"""TensorGate itself, run as ``tensorgate serve`` in a subprocess like every peer."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from bench.peers.base import PeerServer

# The interpreter of the environment TensorGate is installed in; the harness may run
# elsewhere (e.g. to compare an installed release against a checkout).
PYTHON_ENV = "TENSORGATE_PYTHON"
# Extra `tensorgate serve` flags, e.g. TENSORGATE_ARGS="--gc-freeze false", to compare
# TensorGate against itself with one setting changed.
ARGS_ENV = "TENSORGATE_ARGS"


def _python() -> str:
    return os.environ.get(PYTHON_ENV) or sys.executable


class TensorGatePeer(PeerServer):
    name = "tensorgate"

    def __init__(self) -> None:
        super().__init__()
        self._has_http: bool | None = None  # known after available()

    def available(self) -> str | None:
        python = _python()
        # Builds with the tensorgate.http package have --http-port; older ones (gRPC
        # only) refuse the flag, and are still measured over gRPC.
        probe = subprocess.run(
            [python, "-c", "import importlib.util, tensorgate.cli, tensorgate.app; "
                           "print(importlib.util.find_spec('tensorgate.http') is not None)"],
            capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return (f"tensorgate is not importable by {python} (set {PYTHON_ENV}): "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
        self._has_http = probe.stdout.strip().endswith("True")
        self.no_http = None if self._has_http else f"this build ({python}) has no HTTP front end"
        return None

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        # The whole repository loads (TensorGate has no per-model selection); the
        # bench repository holds only the bench models. Port 0: the server picks and
        # prints it (`ready grpc=H:P http=H:P metrics=off`); no metrics server.
        self._spawn([
            _python(), "-m", "tensorgate", "serve",
            "--model-repository", str(repo),
            "--grpc-port", "0",
            *(["--http-port", "0"] if self._has_http else []),
            "--metrics-port", "-1",
            "--host", "127.0.0.1",
            *shlex.split(os.environ.get(ARGS_ENV, "")),
        ])
        match = self._wait_for_line(r"ready grpc=(\S+):(\d+)(?: http=(\S+))?", deadline)
        http = match.group(3)
        self.http_address = http if http and http != "off" else None
        return f"{match.group(1)}:{match.group(2)}"

