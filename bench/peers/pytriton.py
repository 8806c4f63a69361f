"""PyTriton 0.7.0 (bundling Triton server 2.51) from its own virtualenv.

The ONNX model runs through onnxruntime in PyTriton's Python callable (pytriton_server.py)
with Triton's dynamic batcher: max_batch_size and max_queue_delay_microseconds from
config.pbtxt (64, 1 ms), one model instance, one onnxruntime intra-op thread. Three
processes do the work: the callable's Python process, tritonserver and its Python
backend stub; group_pids() lists them for CPU/RSS accounting.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.peers.base import LOOPBACK, VENVS, PeerServer, free_port, probe_venv, read_model_spec

VENV = VENVS / "pytriton"
SCRIPT = Path(__file__).resolve().parent / "pytriton_server.py"

# PyTriton protects statistics, model-repository, ... with an access token, random by
# default. A fixed one lets any client send it; loopback only, so nothing to guard.
ACCESS_TOKEN = "tensorgate-bench"
TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
HTTP_TOKEN_HEADER = "triton-access-token"  # the same token over HTTP (stats, ...)


def _dims(shape: list[int]) -> str:
    return ",".join(str(d) for d in shape[1:])  # drop the -1 batch dimension


class PyTritonPeer(PeerServer):
    name = "pytriton"
    grpc_headers = {TOKEN_HEADER: ACCESS_TOKEN}
    http_headers = {HTTP_TOKEN_HEADER: ACCESS_TOKEN}
    ready_timeout_s = 120.0  # tritonserver start plus the Python backend stub: ~10 s+
    stop_timeout_s = 40.0  # a clean stop unloads the model (~4 s; Triton waits up to 30)

    def available(self) -> str | None:
        return probe_venv(VENV, "setup_pytriton.sh",
                          "import pytriton.triton, onnxruntime\n"
                          "from importlib.metadata import version\n"
                          "assert version('nvidia-pytriton') == '0.7.0', version('nvidia-pytriton')\n")

    def _libdir(self) -> str:
        # The Python backend stub links libpython from the system, not the virtualenv's
        # interpreter, and then fails to load models ("'_thread.RLock' object has no
        # attribute '_recursion_count'"): put the venv interpreter's LIBDIR first.
        out = subprocess.run(
            [str(VENV / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        spec = read_model_spec(repo, model)
        grpc_port, http_port = free_port(), free_port()
        argv = [
            str(VENV / "bin" / "python"), self._script(SCRIPT),
            "--model", model,
            "--onnx", str(repo / model / "1" / "model.onnx"),
            "--max-batch-size", str(spec.max_batch_size),
            "--max-queue-delay-us", str(spec.max_queue_delay_us),
            "--intra-op-threads", str(spec.intra_op_threads),
            "--grpc-port", str(grpc_port),
            "--http-port", str(http_port),
            "--access-token", ACCESS_TOKEN,
            "--workspace", str(self._workdir / "workspace"),
        ]
        for n, d, s in spec.inputs:
            argv += ["--input", f"{n}:{d}:{_dims(s)}"]
        for n, d, s in spec.outputs:
            argv += ["--output", f"{n}:{d}:{_dims(s)}"]
        ld_path = ":".join(p for p in (self._libdir(), os.environ.get("LD_LIBRARY_PATH")) if p)
        self._spawn(argv, env={"LD_LIBRARY_PATH": ld_path})
        self._wait_for_line(r"ready grpc=", deadline)
        self.http_address = f"{LOOPBACK}:{http_port}"  # Triton's C++ HTTP server
        return f"{LOOPBACK}:{grpc_port}"
