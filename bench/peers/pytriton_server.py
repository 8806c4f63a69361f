"""PyTriton 0.7.0 serving one ONNX model through onnxruntime, with dynamic batching.

Runs in PyTriton's virtualenv (bench/.venvs/pytriton), started by pytriton.py, which
reads config.pbtxt and passes the same batch settings every server gets. Prints
``ready grpc=127.0.0.1:PORT`` once the model is bound, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
          "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def _tensors(specs: list[str]) -> list[Tensor]:
    # NAME:DATATYPE:D1,D2 (shapes without the batch dimension)
    tensors = []
    for spec in specs:
        name, datatype, dims = spec.split(":")
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        tensors.append(Tensor(name=name, dtype=_NUMPY[datatype], shape=shape))
    return tensors


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--input", action="append", required=True, help="NAME:DTYPE:DIMS")
    parser.add_argument("--output", action="append", required=True, help="NAME:DTYPE:DIMS")
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--max-queue-delay-us", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--access-token", required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    args = parser.parse_args(argv)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    @batch  # Triton's dynamic batcher merges requests; this gets the stacked arrays
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(output_names, inputs)))

    config = TritonConfig(
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        # PyTriton manages models through Triton's HTTP endpoint: keep it, on loopback.
        http_address="127.0.0.1", http_port=args.http_port,
        allow_metrics=False,
    )
    # A fixed token instead of PyTriton's random one, so clients (perf_analyzer asks for
    # statistics, a protected endpoint) can send it as a header.
    security = TritonSecurityConfig(access_token=args.access_token)
    with Triton(config=config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(
            model_name=args.model,
            infer_func=infer,  # one function: one model instance
            inputs=_tensors(args.input),
            outputs=_tensors(args.output),
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        print(f"ready grpc=127.0.0.1:{args.grpc_port} model={args.model}", flush=True)
        # serve() shuts down cleanly (tritonserver, stub, shared memory, workspace) only
        # on KeyboardInterrupt; SIGTERM's default would kill this process alone and
        # leave tritonserver and its /dev/shm segments behind.
        signal.signal(signal.SIGTERM, _interrupt)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
