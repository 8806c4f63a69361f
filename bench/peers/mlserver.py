"""MLServer 1.7.1 from its own virtualenv, serving the ONNX model via mlserver_runtime.py.

Settings match the other servers: adaptive batching with max_batch_size and
max_batch_time from config.pbtxt (64, 1 ms), one onnxruntime intra-op thread, and
parallel_workers 0 (inference in the server process: about 1.5x faster than one worker
process on this 2-core machine, PEERS.md). MLServer has no ModelConfig RPC, so
perf_analyzer cannot drive it; the harness's own load generator does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.peers.base import LOOPBACK, VENVS, PeerServer, free_port, probe_venv, read_model_spec

VENV = VENVS / "mlserver"
RUNTIME = Path(__file__).resolve().parent / "mlserver_runtime.py"


class MLServerPeer(PeerServer):
    name = "mlserver"
    supports_perf_analyzer = False  # no ModelConfig RPC

    def available(self) -> str | None:
        return probe_venv(
            VENV, "setup_mlserver.sh",
            "import mlserver, onnxruntime, uvloop\n"
            "assert mlserver.__version__ == '1.7.1', mlserver.__version__\n"
            # uvloop >= 0.22 kills every inference worker (PEERS.md).
            "assert tuple(map(int, uvloop.__version__.split('.')[:2])) < (0, 22), uvloop.__version__\n")

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        spec = read_model_spec(repo, model)
        grpc_port, http_port = free_port(), free_port()
        # The workdir is MLServer's cwd and repository: it leaves .envs/ and .metrics/
        # there, and stop() deletes it.
        (self._workdir / "settings.json").write_text(json.dumps({
            "host": LOOPBACK,
            "grpc_port": grpc_port,
            "http_port": http_port,  # v2 REST (FastAPI on uvicorn), on loopback
            "metrics_endpoint": None,  # no metrics server
            "parallel_workers": 0,
            "debug": False,
            "model_repository_root": str(self._workdir / "models"),
        }, indent=2))
        model_dir = self._workdir / "models" / model
        model_dir.mkdir(parents=True)
        shutil.copy(RUNTIME, model_dir / RUNTIME.name)
        (model_dir / "model-settings.json").write_text(json.dumps({
            "name": model,
            "implementation": "mlserver_runtime.OnnxRuntimeModel",
            "max_batch_size": spec.max_batch_size,
            "max_batch_time": spec.max_queue_delay_us / 1e6,
            "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in spec.inputs],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in spec.outputs],
            "parameters": {
                "uri": str(repo / model / "1" / "model.onnx"),
                "extra": {"intra_op_threads": spec.intra_op_threads},
            },
        }, indent=2))
        self._spawn([str(VENV / "bin" / "mlserver"), "start", str(self._workdir)])
        self.http_address = f"{LOOPBACK}:{http_port}"
        return f"{LOOPBACK}:{grpc_port}"
