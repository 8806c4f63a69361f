"""Converters between the client's Python values and the v2 protocol messages, all in
one place: requests from numpy arrays, numpy arrays from responses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from tensorgate_client import tensors
from tensorgate_client._proto.inference import grpc_service_pb2 as pb
from tensorgate_client.errors import TensorGateError

# Where a route key travels. TensorGate's routing (a later feature) reads either; a
# server without routing ignores both.
ROUTE_KEY_PARAMETER = "route_key"
ROUTE_KEY_HEADER = "x-tensorgate-route-key"

ParameterValue = bool | int | float | str


def set_parameter(parameter: pb.InferParameter, value: ParameterValue) -> None:
    # bool first: it is an int to Python.
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise TypeError(f"a request parameter is bool, int, float or str, not {type(value).__name__}")


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Iterable[str] | None = None,
    version: str | None = None,
    route_key: str | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw contents."""
    request = pb.ModelInferRequest(
        model_name=model, model_version=version or "", id=request_id or ""
    )
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype, raw = tensors.encode(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw)
    for name in outputs or ():
        request.outputs.add(name=name)
    for key, value in (parameters or {}).items():
        set_parameter(request.parameters[key], value)
    if route_key:
        request.parameters[ROUTE_KEY_PARAMETER].string_param = route_key
    return request


# InferTensorContents field per datatype (FP16 has none).
_TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def _typed_contents(output) -> np.ndarray:
    """An output sent in typed ``contents`` (other v2 servers do; TensorGate sends raw)."""
    datatype = output.datatype
    field = _TYPED_FIELD.get(datatype)
    if field is None:
        raise ValueError(f"{datatype} has no typed contents")
    values = getattr(output.contents, field)
    array = np.array(list(values) if datatype == "BYTES" else values, dtype=tensors.numpy_dtype(datatype))
    return array.reshape(tuple(output.shape))


def infer_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output name -> array, in the response's order."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise TensorGateError(
            grpc.StatusCode.INTERNAL,
            f"malformed response: {len(response.outputs)} outputs, {len(raw)} raw contents",
        )
    result: dict[str, np.ndarray] = {}
    for i, output in enumerate(response.outputs):
        try:
            if raw:
                result[output.name] = tensors.decode(output.datatype, output.shape, raw[i])
            else:
                result[output.name] = _typed_contents(output)
        except ValueError as exc:
            raise TensorGateError(
                grpc.StatusCode.INTERNAL, f"malformed response: output {output.name}: {exc}"
            ) from None
    return result


@dataclass(frozen=True)
class StreamResult:
    """One response of ``stream_infer``: the outputs of one request, or the server's
    error for one. ``id`` is the request's position in the stream, as a string (the
    client numbers them), when the server echoes it; a failed request's ``id`` may be
    empty."""

    id: str
    outputs: dict[str, np.ndarray] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def stream_result(response: pb.ModelStreamInferResponse) -> StreamResult:
    if response.error_message:
        return StreamResult(response.infer_response.id, None, response.error_message)
    return StreamResult(response.infer_response.id, infer_outputs(response.infer_response))
