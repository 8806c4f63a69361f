"""Micro-benchmark: the Cython wire codec against the protobuf library (upb backend).

Requests: protobuf parse + field access (name, datatype, shape, the raw contents as a
numpy array) against decode_infer_request + the same access. Responses: build a
ModelInferResponse and serialize it against encode_infer_response. Prints the median
ns per operation of each, and the ratio.

    python bench/codec_micro.py [--samples 31] [--min-time 0.02]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from google.protobuf.internal import api_implementation

from tensorgate._ext import codec
from tensorgate._proto.inference import grpc_service_pb2 as pb


def request_bytes(shape: tuple[int, ...], raw: bool) -> bytes:
    msg = pb.ModelInferRequest(model_name="mlp", model_version="1", id="req-42")
    tensor = msg.inputs.add(name="input", datatype="FP32", shape=shape)
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if raw:
        msg.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.ravel().tolist())
    msg.outputs.add(name="output")
    return msg.SerializeToString()


def protobuf_decode(data: bytes) -> Callable[[], object]:
    parse = pb.ModelInferRequest.FromString

    def run():
        msg = parse(data)
        tensor = msg.inputs[0]
        meta = (msg.model_name, msg.id, tensor.name, tensor.datatype, tuple(tensor.shape),
                [o.name for o in msg.outputs])
        if msg.raw_input_contents:
            return meta, np.frombuffer(msg.raw_input_contents[0], np.float32)
        return meta, np.array(tensor.contents.fp32_contents, np.float32)
    return run


def codec_decode(data: bytes) -> Callable[[], object]:
    decode = codec.decode_infer_request

    def run():
        req = decode(data)
        tensor = req.inputs[0]
        meta = (req.model_name, req.id, tensor.name, tensor.datatype, tensor.shape,
                [o.name for o in req.outputs])
        if req.raw_input_contents:
            return meta, np.frombuffer(req.raw_input_contents[0], np.float32)
        return meta, tensor.contents["fp32_contents"]
    return run


def response_outputs(*shapes: tuple[int, ...]) -> list[tuple]:
    rng = np.random.default_rng(1)
    return [(f"output{i}", "FP32", shape, rng.standard_normal(shape).astype(np.float32))
            for i, shape in enumerate(shapes)]


def protobuf_encode(outputs: list[tuple]) -> Callable[[], bytes]:
    def run():
        msg = pb.ModelInferResponse(model_name="mlp", model_version="1", id="req-42")
        for name, datatype, shape, data in outputs:
            msg.outputs.add(name=name, datatype=datatype, shape=shape)
            msg.raw_output_contents.append(data.tobytes())
        return msg.SerializeToString()
    return run


def codec_encode(outputs: list[tuple]) -> Callable[[], bytes]:
    encode = codec.encode_infer_response
    return lambda: encode("mlp", "1", "req-42", outputs)


def median_ns(fn: Callable[[], object], samples: int, min_time: float) -> float:
    """Median over `samples` timed batches of the ns per call; batches last >= min_time."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= min_time:
            break
        loops *= 2
    per_call = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        per_call.append((time.perf_counter_ns() - start) / loops)
    return statistics.median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=31)
    parser.add_argument("--min-time", type=float, default=0.02)
    args = parser.parse_args()

    tiny, image = request_bytes((1, 16), raw=True), request_bytes((3, 64, 64), raw=True)
    typed = request_bytes((3, 64, 64), raw=False)
    small, both = response_outputs((1, 8)), response_outputs((1, 8), (64, 1000))
    cases = [
        ("decode request  [1,16] FP32 raw", protobuf_decode(tiny), codec_decode(tiny)),
        ("decode request  3x64x64 FP32 raw", protobuf_decode(image), codec_decode(image)),
        ("decode request  3x64x64 FP32 typed", protobuf_decode(typed), codec_decode(typed)),
        ("encode response [1,8] FP32", protobuf_encode(small), codec_encode(small)),
        ("encode response [1,8] + [64,1000] FP32", protobuf_encode(both), codec_encode(both)),
    ]
    assert codec_encode(both)() == protobuf_encode(both)()  # same bytes, or it is no race
    print(f"protobuf backend: {api_implementation.Type()}   "
          f"(median ns/op over {args.samples} samples)")
    print(f"{'case':42} {'protobuf':>12} {'codec':>12} {'speedup':>8}")
    for label, theirs, ours in cases:
        t_pb = median_ns(theirs, args.samples, args.min_time)
        t_ours = median_ns(ours, args.samples, args.min_time)
        print(f"{label:42} {t_pb:12,.0f} {t_ours:12,.0f} {t_pb / t_ours:7.1f}x")


if __name__ == "__main__":
    main()
