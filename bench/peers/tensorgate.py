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

    def available(self) -> str | None:
        python = _python()
        probe = subprocess.run([python, "-c", "import tensorgate.cli, tensorgate.app"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return (f"tensorgate is not importable by {python} (set {PYTHON_ENV}): "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
        return None

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        # The whole repository loads (TensorGate has no per-model selection); the
        # bench repository holds only the bench models. Port 0: the server picks and
        # prints it; no metrics server, so nothing else listens.
        self._spawn([
            _python(), "-m", "tensorgate", "serve",
            "--model-repository", str(repo),
            "--grpc-port", "0",
            "--metrics-port", "-1",
            "--host", "127.0.0.1",
            *shlex.split(os.environ.get(ARGS_ENV, "")),
        ])
        match = self._wait_for_line(r"ready grpc=(\S+):(\d+)", deadline)
        return f"{match.group(1)}:{match.group(2)}"

