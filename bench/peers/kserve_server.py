"""KServe 0.21's Python ModelServer serving one ONNX model through onnxruntime.

Runs in KServe's virtualenv (bench/.venvs/kserve), started by kserve.py, which reads
config.pbtxt and passes the same thread settings every server gets. KServe has no
server-side batching: each request runs the model on its own, inline on the event
loop (6 µs for the tiny MLP, ~50 µs for the convnet). Serves the v2 protocol on REST
(`/v2/models/<m>/infer`, uvicorn + FastAPI) and gRPC. Prints
``ready http=127.0.0.1:PORT grpc=127.0.0.1:PORT`` once the model has loaded (the ports
bind just after), then serves until SIGTERM.

Loopback only: KServe 0.21 binds REST to 0.0.0.0 and gRPC to [::] with no setting to
change it, so both bind calls are redirected to 127.0.0.1 here, in this process, before
the server starts (nothing in site-packages is edited).
"""

from __future__ import annotations

import argparse
import logging
import sys

LOOPBACK = "127.0.0.1"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--input", action="append", required=True,
                        help="NAME:DTYPE:D1,D2 (-1: the batch dimension)")
    parser.add_argument("--output", action="append", required=True,
                        help="NAME:DTYPE:D1,D2 (-1: the batch dimension)")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    return parser.parse_args(argv)


def _tensor_types(specs: list[str]) -> list[dict]:
    out = []
    for spec in specs:
        name, datatype, dims = spec.split(":")
        out.append({"name": name, "datatype": datatype,
                    "shape": [int(d) for d in dims.split(",")] if dims else []})
    return out


def _bind_loopback() -> None:
    """REST and gRPC on 127.0.0.1 instead of 0.0.0.0 / [::] (PEERS.md).

    KServe builds ``uvicorn.Config(host="0.0.0.0", ...)`` and calls
    ``grpc.aio.server(...).add_insecure_port("[::]:PORT")``; both names are replaced,
    in this server process only, by versions that keep the port and bind loopback.
    """
    import grpc.aio
    import uvicorn

    class LoopbackConfig(uvicorn.Config):
        def __init__(self, *args, **kwargs):
            kwargs["host"] = LOOPBACK
            super().__init__(*args, **kwargs)

    make_server = grpc.aio.server

    def loopback_server(*args, **kwargs):
        server = make_server(*args, **kwargs)
        add_port = server.add_insecure_port

        def add_insecure_port(address: str) -> int:
            return add_port(f"{LOOPBACK}:{address.rsplit(':', 1)[1]}")

        server.add_insecure_port = add_insecure_port
        return server

    uvicorn.Config = LoopbackConfig
    grpc.aio.server = loopback_server


def main(argv: list[str]) -> int:
    args = _parse(argv)
    # kserve.model_server parses sys.argv when imported (its own flags, with prefix
    # matching): give it none of ours.
    sys.argv = sys.argv[:1]

    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.utils.numpy_codec import from_np_dtype
    from kserve.utils.utils import generate_uuid  # as KServe's own get_predict_response

    inputs, outputs = _tensor_types(args.input), _tensor_types(args.output)

    class OnnxModel(Model):
        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.intra_op_threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(args.onnx, options,
                                                providers=["CPUExecutionProvider"])
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True
            return True

        def get_input_types(self) -> list[dict]:
            return inputs

        def get_output_types(self) -> list[dict]:
            return outputs

        async def predict(self, payload: InferRequest, headers=None, response_headers=None):
            # async: KServe awaits it on the event loop (a plain def would be called there
            # too); the model call is short enough to run inline, as in TensorGate.
            feeds = {i.name: i.as_numpy() for i in payload.inputs}
            results = self.session.run(self.output_names, feeds)
            return InferResponse(
                response_id=payload.id or generate_uuid(), model_name=self.name,
                infer_outputs=[InferOutput(name, list(v.shape), _datatype(v), data=v)
                               for name, v in zip(self.output_names, results)])

    def _datatype(value: np.ndarray) -> str:
        return from_np_dtype(value.dtype)

    _bind_loopback()
    model = OnnxModel(args.model)
    model.load()
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                         enable_grpc=True, enable_docs_url=False,
                         enable_latency_logging=False)
    # Per-request log lines would be measured too. KServe's timing middleware logs two
    # lines per request on "kserve.trace" (its log config can raise that level, as here);
    # uvicorn's access log likewise; per-request latency logging is a ModelServer flag.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    print(f"ready http={LOOPBACK}:{args.http_port} grpc={LOOPBACK}:{args.grpc_port} "
          f"model={args.model}", flush=True)
    server.start([model])  # returns on SIGTERM (KServe's own handler stops it)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
