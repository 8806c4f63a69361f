"""KServe 0.21's Python ModelServer from its own virtualenv (kserve_server.py).

A ``kserve.Model`` subclass runs the ONNX model through onnxruntime with one intra-op
and one inter-op thread, like every server here. KServe has no server-side batching, so
config.pbtxt's batch settings do not apply: each request is one model call. It serves
v2 over REST (uvicorn + FastAPI, the one it is mostly deployed with) and gRPC, both on
loopback (kserve_server.py redirects its 0.0.0.0 / [::] binds). No ModelConfig RPC, so
perf_analyzer cannot drive it; no statistics either.
"""

from __future__ import annotations

from pathlib import Path

from bench.peers.base import LOOPBACK, VENVS, PeerServer, free_port, probe_venv, read_model_spec

VENV = VENVS / "kserve"
SCRIPT = Path(__file__).resolve().parent / "kserve_server.py"


def _arg(name: str, datatype: str, shape: list[int]) -> str:
    return f"{name}:{datatype}:{','.join(str(d) for d in shape)}"


class KServePeer(PeerServer):
    name = "kserve"
    supports_perf_analyzer = False  # no ModelConfig RPC

    def available(self) -> str | None:
        return probe_venv(VENV, "setup_kserve.sh",
                          "import kserve, onnxruntime\n"
                          "from importlib.metadata import version\n"
                          "assert version('kserve').startswith('0.21.'), version('kserve')\n")

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        spec = read_model_spec(repo, model)
        grpc_port, http_port = free_port(), free_port()
        argv = [str(VENV / "bin" / "python"), self._script(SCRIPT),
                "--model", model,
                "--onnx", str(repo / model / "1" / "model.onnx"),
                "--intra-op-threads", str(spec.intra_op_threads),
                "--http-port", str(http_port),
                "--grpc-port", str(grpc_port)]
        for n, d, s in spec.inputs:
            argv += ["--input", _arg(n, d, s)]
        for n, d, s in spec.outputs:
            argv += ["--output", _arg(n, d, s)]
        self._spawn(argv)
        self._wait_for_line(r"ready http=", deadline)
        self.http_address = f"{LOOPBACK}:{http_port}"
        return f"{LOOPBACK}:{grpc_port}"
