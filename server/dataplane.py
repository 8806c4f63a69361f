"""The protocol-neutral request path: resolve, validate, batch, run, encode.

The gRPC servicer is a thin layer over this, so another front (REST, in-process calls)
reuses the same path.
"""

from __future__ import annotations

import time

from tensorgate._ext.codec import encode_infer_response
from tensorgate.errors import InvalidArgument
from tensorgate.repository.manager import ModelRepository
from tensorgate.tensors import request_inputs, requested_outputs, response_tensor

_perf_ns = time.perf_counter_ns


def _int_parameter(params: dict, key: str, low: int, high: int) -> int:
    value = params.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter '{key}': expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"parameter '{key}': {value} is not in {low}..{high}")
    return value


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def infer(self, request, deadline: float) -> bytes:
        """Run one decoded ModelInferRequest; returns the encoded ModelInferResponse.

        ``deadline`` is a time.monotonic() value, 0 for none.
        """
        model = self.repository.resolve(request.model_name, request.model_version)
        started = _perf_ns()
        now = time.monotonic()
        model.enter(now)
        try:
            arrays, rows, shape_key = request_inputs(
                request, model.inputs, model.max_batch_size, model.name
            )
            chosen = requested_outputs(request, model.outputs, model.name)
            params = request.parameters
            priority = timeout_us = 0
            if params:
                priority = _int_parameter(params, "priority", 0, (1 << 64) - 1)
                if priority > model.priority_levels:
                    priority = 0  # as Triton: out-of-range priorities get the default level
                timeout_us = _int_parameter(params, "timeout", 0, 1 << 62)
            pending = await model.batcher.submit(
                arrays, rows, shape_key, priority, timeout_us, deadline, model.alone(now)
            )
            outputs = pending.outputs
            tensors = [response_tensor(s, outputs[s.name]) for s in (chosen or model.output_specs)]
            body = encode_infer_response(model.name, model.version_str, request.id, tensors)
        except BaseException:  # errors and cancellation both count as failures
            model.stats.fail.add(_perf_ns() - started)
            raise
        finally:
            model.leave()
        model.stats.success.add(_perf_ns() - started)
        return body
