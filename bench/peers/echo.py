"""The transport ceiling: echo_server.py (grpc.aio on uvloop, no model) as a peer."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.peers.base import PeerServer
from bench.peers.tensorgate import _python

SCRIPT = Path(__file__).resolve().parent / "echo_server.py"


class EchoServer(PeerServer):
    name = "echo"
    no_http = "the echo server speaks gRPC only (it is the grpc.aio transport ceiling)"

    def __init__(self, reply: str = "output") -> None:
        super().__init__()
        # "output": zeros of the model's output shape (same bytes as the real answer);
        # "echo": the inputs sent back. See echo_server.py.
        self.reply = reply

    def available(self) -> str | None:
        # Same interpreter as TensorGate: it needs grpcio, uvloop and tensorgate._proto,
        # and the comparison is fair only on the same grpcio/protobuf/uvloop builds.
        python = _python()
        probe = subprocess.run(
            [python, "-c", "import grpc, uvloop, tensorgate._proto.inference.grpc_service_pb2"],
            capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return f"{python} lacks grpcio/uvloop/tensorgate: {probe.stderr.strip()[-300:]}"
        return None

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        self._spawn([_python(), self._script(SCRIPT), "--model-repository", str(repo),
                     "--model", model, "--port", "0", "--reply", self.reply])
        match = self._wait_for_line(r"ready grpc=(\S+):(\d+)", deadline)
        return f"{match.group(1)}:{match.group(2)}"
