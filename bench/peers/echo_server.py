"""A bare grpc.aio server on uvloop that answers ModelInfer without running a model.

It is the Python transport ceiling: what the best plain grpc.aio + protobuf server does
per request with no model, no batching and no checks. Requests are parsed and responses
built with the protobuf library (the classes generated into tensorgate._proto), as
any straightforward Python server would.

Replies (--reply):
  output (default)  an OUTPUT0 tensor of the model's output shape and dtype, zeros,
                    batch taken from the request: the same bytes on the wire as the
                    real model's answer, so the echo and the servers compared to it
                    move the same tensors.
  echo              the request's inputs sent back as outputs (more bytes back than a
                    real model returns for the models here; kept for transport tests).

ServerLive/ServerReady/ServerMetadata/ModelReady/ModelMetadata/ModelConfig/
ModelStatistics answer for the one model from its config.pbtxt: perf_analyzer calls
ModelMetadata and ModelConfig before it measures, and statistics at every step.

    python bench/peers/echo_server.py --model-repository DIR --model NAME [--port 0]

prints ``ready grpc=127.0.0.1:PORT`` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from pathlib import Path

import grpc
import uvloop
from google.protobuf import text_format

from tensorgate._proto.inference import grpc_service_pb2 as pb
from tensorgate._proto.inference import grpc_service_pb2_grpc as pb_grpc
from tensorgate._proto.inference import model_config_pb2 as mc

# Bytes per element of the fixed-size v2 datatypes (BYTES has no fixed size).
_ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
             "BF16": 2, "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8,
             "FP64": 8}


def _v2_datatype(data_type: int) -> str:
    name = mc.DataType.Name(data_type)[len("TYPE_"):]
    return "BYTES" if name == "STRING" else name


def load_config(repo: Path, model: str) -> mc.ModelConfig:
    config = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
    config.name = config.name or model
    return config


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, config: mc.ModelConfig, reply: str) -> None:
        self._config = config
        self._name = config.name
        self._reply = reply
        batched = config.max_batch_size > 0
        lead = [-1] if batched else []
        self._metadata = pb.ModelMetadataResponse(
            name=self._name, versions=["1"], platform=config.platform,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=_v2_datatype(t.data_type), shape=lead + list(t.dims))
                for t in config.input],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=_v2_datatype(t.data_type), shape=lead + list(t.dims))
                for t in config.output],
        )
        out = config.output[0]
        self._out_name = out.name
        self._out_datatype = _v2_datatype(out.data_type)
        self._out_dims = list(out.dims)
        self._out_row_bytes = math.prod(out.dims) * _ITEMSIZE[self._out_datatype]
        self._batched = batched
        self._zeros: dict[int, bytes] = {}  # batch size -> reply bytes, built once

    async def ModelInfer(self, request, context):
        response = pb.ModelInferResponse(
            model_name=self._name, model_version="1", id=request.id)
        if self._reply == "echo":
            for tensor in request.inputs:
                response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                     shape=tensor.shape, contents=tensor.contents)
            response.raw_output_contents.extend(request.raw_input_contents)
            return response
        batch = request.inputs[0].shape[0] if self._batched and request.inputs else 1
        data = self._zeros.get(batch)
        if data is None:
            data = self._zeros[batch] = bytes(batch * self._out_row_bytes)
        shape = [batch, *self._out_dims] if self._batched else self._out_dims
        response.outputs.add(name=self._out_name, datatype=self._out_datatype, shape=shape)
        response.raw_output_contents.append(data)
        return response

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="echo", version="0", extensions=[])

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self._name)

    async def ModelMetadata(self, request, context):
        await self._check_name(request.name, context)
        return self._metadata

    async def ModelConfig(self, request, context):
        await self._check_name(request.name, context)
        return pb.ModelConfigResponse(config=self._config)

    async def ModelStatistics(self, request, context):
        # perf_analyzer asks at every step; it has nothing server-side to learn here.
        return pb.ModelStatisticsResponse(model_stats=[
            pb.ModelStatistics(name=self._name, version="1")])

    async def _check_name(self, name: str, context) -> None:
        if name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}")


async def serve(repo: Path, model: str, port: int, reply: str) -> None:
    server = grpc.aio.server(options=[
        # Batch-64 convnet requests are 3 MiB; leave room above gRPC's 4 MiB default.
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        EchoServicer(load_config(repo, model), reply), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready grpc=127.0.0.1:{bound} model={model} reply={reply}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--reply", choices=("output", "echo"), default="output")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.model_repository, args.model, args.port, args.reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
