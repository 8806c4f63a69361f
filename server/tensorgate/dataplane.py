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
    classes_tensor,
    Limits,
    request_inputs,
    requested_outputs,
    response_tensor,
)

_perf_ns = time.perf_counter_ns

# Where a request carries its route key (the Python client sends both).
ROUTE_KEY_PARAMETER = "route_key"
ROUTE_KEY_HEADER = "x-tensorgate-route-key"
# Failures a rollout blames on its candidate (not the caller's malformed requests).
_CANDIDATE_FAULTS = frozenset(("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN"))


def _int_parameter(params: dict, key: str, low: int, high: int) -> int:
    value = params.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter '{key}': expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"parameter '{key}': {value} is not in {low}..{high}")
    return value


def _header_key(context) -> str | None:
    """The route key from gRPC metadata (read only for sticky routes)."""
    if context is None:
        return None
    for item in context.invocation_metadata() or ():
        if item[0] == ROUTE_KEY_HEADER:
            value = item[1]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class DataPlane:
    def __init__(
        self, repository: ModelRepository, limits: Limits = DEFAULT_LIMITS, routes=None
    ) -> None:
        self.repository = repository
        self.limits = limits
        self.routes = routes  # a routing.manager.RouteManager, or None

    async def infer(self, request, deadline: float, span=None, context=None) -> bytes:
        """Run one decoded ModelInferRequest; returns the encoded ModelInferResponse.

        ``deadline`` is a time.monotonic() value, 0 for none. ``span``: the request's
        server span when it is traced (observability.tracing), else None. ``context``:
        the gRPC call, read only for a sticky route's key header.
        """
        routes = self.routes
        route = None
        if routes is not None:
            table = routes.table.routes
            if table:
                route = table.get(request.model_name)  # the one lookup routing costs
        if route is None:
            model = self.repository.resolve(request.model_name, request.model_version)
        else:
            if request.model_version:
                raise InvalidArgument(
                    f"'{request.model_name}' is a route: it picks the version itself; "
                    "leave model_version empty (or name a model to pin a version)"
                )
            key = None
            if route.sticky:
                params = request.parameters
                key = params.get(ROUTE_KEY_PARAMETER) if params else None
                if key is None:
                    key = _header_key(context)
                elif not isinstance(key, str):
                    key = str(key)
            index = route.pick(key)
            target = route.targets[index]
            variant = route.stats[index]
            variant.requests += 1
            try:
                model = self.repository.resolve(target.model, target.version)
            except BaseException:
                variant.failures += 1
                if index == route.candidate:
                    route.rollout.on_failure()
                raise
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
                    outputs = model.run_inline(arrays, rows, shape_key, now)
                else:
                    t0 = _perf_ns()
                    outputs = model.run_inline(arrays, rows, shape_key, now)
                    _tracing.ACTIVE.record_inline(model, span, rows, t0, _perf_ns())
            else:
                pending = await model.batcher.submit(
                    arrays, rows, shape_key, priority, timeout_us, deadline, alone, span
                )
                outputs = pending.outputs
            if chosen is None:
                tensors = [response_tensor(s, outputs[s.name]) for s in model.output_specs]
            else:
                tensors = [
                    response_tensor(s, outputs[s.name]) if not k
                    else classes_tensor(s, outputs[s.name], k, model)
                    for s, k in chosen
                ]
            body = encode_infer_response(model.name, model.version_str, request.id, tensors)
        except BaseException as exc:  # errors and cancellation both count as failures
            ns = _perf_ns() - started
            code = model.stats.record_failure(ns, exc)
            if route is not None:
                variant.failures += 1
                variant.latency.observe(ns)
                if index == route.candidate and code in _CANDIDATE_FAULTS:
                    route.rollout.on_failure()
            if _logs.REQUEST_LOG_RATIO:
                _logs.maybe_log_request(model, request.id, ns, code)
            raise
        finally:
            model.leave()
        ns = _perf_ns() - started
        model.stats.record_success(ns)
        if route is not None:
            variant.latency.observe(ns)
            if route.shadow is not None:
                routes.shadows.maybe_mirror(route, arrays, rows, shape_key, outputs)
        if _logs.REQUEST_LOG_RATIO:
            _logs.maybe_log_request(model, request.id, ns, "OK")
        return body
