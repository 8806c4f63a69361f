"""The protocol-neutral request path: resolve, validate, batch, run, encode.

The gRPC servicer is a thin layer over this, so another front (REST, in-process calls)
reuses the same path.
"""

from __future__ import annotations

import time

from tensorgate._ext.codec import encode_infer_response
from tensorgate.errors import DeadlineExceeded, InvalidArgument
from tensorgate.observability import logs as _logs
from tensorgate.observability import tracing as _tracing
from tensorgate.observability.tracing import Tracing
from tensorgate.repository.manager import ModelRepository
from tensorgate.tensors import (
    DEFAULT_LIMITS,
    Limits,
    request_inputs,
    requested_outputs,
    response_tensor,
)

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
    def __init__(self, repository: ModelRepository, limits: Limits = DEFAULT_LIMITS) -> None:
        self.repository = repository
        self.limits = limits

    async def infer(self, request, deadline: float, span=None) -> bytes:
        """Run one decoded ModelInferRequest; returns the encoded ModelInferResponse.

        ``deadline`` is a time.monotonic() value, 0 for none. ``span``: the request's
        server span when it is traced (observability.tracing), else None.
        """
        model = self.repository.resolve(request.model_name, request.model_version)
        if span is not None:
            Tracing.describe(span, model, request.id)
        started = _perf_ns()
        now = time.monotonic()
        model.enter(now)
        try:
            arrays, rows, shape_key = request_inputs(
                request, model.inputs, model.max_batch_size, model.name, self.limits
            )
            chosen = requested_outputs(request, model.outputs, model.name)
            params = request.parameters
            priority = timeout_us = 0
            if params:
                priority = _int_parameter(params, "priority", 0, (1 << 64) - 1)
                if priority > model.priority_levels:
                    priority = 0  # as Triton: out-of-range priorities get the default level
                timeout_us = _int_parameter(params, "timeout", 0, 1 << 62)
            alone = model.alone(now)
            if alone and model.inline and model.inflight == 1 and not priority:
                # Idle model, run shorter than a thread hand-off: run it here.
                if deadline and time.monotonic() > deadline:
                    raise DeadlineExceeded(f"model {model.label}: the deadline passed")
                if span is None:
                    outputs = model.run_inline(arrays, rows)
                else:
                    t0 = _perf_ns()
                    outputs = model.run_inline(arrays, rows)
                    _tracing.ACTIVE.record_inline(model, span, rows, t0, _perf_ns())
            else:
                pending = await model.batcher.submit(
                    arrays, rows, shape_key, priority, timeout_us, deadline, alone, span
                )
                outputs = pending.outputs
            tensors = [response_tensor(s, outputs[s.name]) for s in (chosen or model.output_specs)]
            body = encode_infer_response(model.name, model.version_str, request.id, tensors)
        except BaseException as exc:  # errors and cancellation both count as failures
            ns = _perf_ns() - started
            code = model.stats.record_failure(ns, exc)
            if _logs.REQUEST_LOG_RATIO:
                _logs.maybe_log_request(model, request.id, ns, code)
            raise
        finally:
            model.leave()
        ns = _perf_ns() - started
        model.stats.record_success(ns)
        if _logs.REQUEST_LOG_RATIO:
            _logs.maybe_log_request(model, request.id, ns, "OK")
        return body
