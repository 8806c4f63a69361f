"""What each RPC sends and what the caller gets back, for both clients.

A ``Call`` is protocol-neutral: the service and method, the request message, and how
to turn the response into the value a client method returns. ``Client`` and
``AsyncClient`` only add the I/O, so the two cannot disagree. The control plane
(routes: proto/tensorgate/v1, a later issue) plugs in the same way: its stub joins
``ClientBase._stubs`` under its service name, its calls go here with that ``service``,
and each client gets one thin method per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from tensorgate_client import messages
from tensorgate_client._proto.inference import grpc_service_pb2 as pb


INFERENCE = "inference.GRPCInferenceService"


class Call(NamedTuple):
    method: str  # the RPC, as the generated stub names it
    request: Any
    result: Callable[[Any], Any]
    route_key: str | None = None  # sent as the x-tensorgate-route-key header
    service: str = INFERENCE  # which stub of ClientBase._stubs serves it


def _same(response):
    return response


def server_live() -> Call:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)


def server_ready() -> Call:
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)


def model_ready(model: str, version: str | None) -> Call:
    request = pb.ModelReadyRequest(name=model, version=version or "")
    return Call("ModelReady", request, lambda r: r.ready)


def server_metadata() -> Call:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), _same)


def model_metadata(model: str, version: str | None) -> Call:
    return Call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version or ""), _same)


def model_config(model: str, version: str | None) -> Call:
    request = pb.ModelConfigRequest(name=model, version=version or "")
    return Call("ModelConfig", request, lambda r: r.config)


def model_statistics(model: str | None, version: str | None) -> Call:
    request = pb.ModelStatisticsRequest(name=model or "", version=version or "")
    return Call("ModelStatistics", request, lambda r: list(r.model_stats))


def repository_index(ready_only: bool) -> Call:
    request = pb.RepositoryIndexRequest(ready=ready_only)
    return Call("RepositoryIndex", request, lambda r: list(r.models))


def load_model(model: str) -> Call:
    return Call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model), lambda r: None)


def unload_model(model: str) -> Call:
    request = pb.RepositoryModelUnloadRequest(model_name=model)
    return Call("RepositoryModelUnload", request, lambda r: None)


def infer(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Iterable[str] | None,
    version: str | None,
    route_key: str | None,
    request_id: str | None,
    parameters: Mapping[str, messages.ParameterValue] | None,
) -> Call:
    request = messages.infer_request(
        model, inputs, outputs, version, route_key, request_id, parameters
    )
    return Call("ModelInfer", request, messages.infer_outputs, route_key)


def stream_request(model: str, outputs, version: str | None, route_key: str | None):
    """(position, inputs) -> the stream's request message; the id is the position."""
    outputs = list(outputs or ())

    def convert(position: int, inputs: Mapping[str, np.ndarray]):
        return messages.infer_request(model, inputs, outputs, version, route_key, str(position))

    return convert
