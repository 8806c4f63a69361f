"""The protocol-neutral request path: resolve, route, validate, run, record.

Every front end (grpc.aio, the native gRPC front end, HTTP) decodes its wire format
into the codec's request object, builds one ``RequestContext`` for the call and calls
``DataPlane.infer``; it gets back an ``InferResult`` and encodes that itself. Nothing
here knows a protocol or a call object. Shadow traffic runs through the same ``run``
as live traffic.

What happens around a request hangs on ``observers`` (request logs; later drift
monitors): each gets one ``Outcome`` per request that reached a model version.
A feature that is off is not on the list and costs nothing.

The response cache (tensorgate.cache) sits between validation and the run: a version
with ``response_cache { enable: true }`` answers a request it has answered before
without running the model. Whether a version caches is decided once, on its first
request (the ``response_cache`` attribute it then carries: None for every version when
the server has no cache); after that a version without it pays one attribute read.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from tensorgate.cache import ResponseCache, request_key
from tensorgate.context import INTERNAL, RequestContext
from tensorgate.cuda_shared_memory import CudaSharedMemory
from tensorgate.errors import InvalidArgument
from tensorgate.observability.tracing import Tracing
from tensorgate.repository.manager import ModelRepository
from tensorgate.shared_memory import SystemSharedMemory, write_output
from tensorgate.tensors import (
    DEFAULT_LIMITS,
    Limits,
    classes_tensor,
    request_inputs,
    requested_outputs,
    response_tensor,
)

_perf_ns = time.perf_counter_ns
_monotonic = time.monotonic

# Where a request carries its route key (the Python client sends both).
ROUTE_KEY_PARAMETER = "route_key"
ROUTE_KEY_HEADER = "x-tensorgate-route-key"
# Failures a rollout blames on its candidate (not the caller's malformed requests).
_CANDIDATE_FAULTS = frozenset(("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN"))


class InferResult(NamedTuple):
    """What a front end encodes: each tensor is (name, datatype, shape, data) as the
    codec's encoders take it (data: an ndarray, or the v2 BYTES encoding)."""

    model_name: str
    model_version: str
    id: str
    tensors: list


class Outcome:
    """One request that reached a model version, as observers see it."""

    __slots__ = ("model", "request_id", "ns", "status", "arrays", "outputs", "shadow",
                 "ctx", "span", "route", "variant")

    def __init__(self, model, request_id, ns, status, arrays, outputs, shadow,
                 ctx=None, span=None, route=None, variant=None) -> None:
        self.model = model
        self.request_id = request_id
        self.ns = ns  # from validation to the answer (or the failure)
        self.status = status  # "OK" or the failure's status name
        self.arrays = arrays  # validated inputs by name (None when validation failed)
        self.outputs = outputs  # outputs by name (None on failure)
        self.shadow = shadow  # a mirrored run (its answer is discarded)
        self.ctx = ctx  # the caller's RequestContext (read it on the loop only)
        self.span = span  # the request's server span when it is traced, else None
        self.route = route  # the route's name when one picked the version, else None
        self.variant = variant  # the route's target label ("model:version"), else None


def _int_parameter(params: dict, key: str, low: int, high: int) -> int:
    value = params.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter '{key}': expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"parameter '{key}': {value} is not in {low}..{high}")
    return value


def _answer(model, outputs: dict, chosen) -> list:
    """The response tensors of a run: every output, or those ``chosen`` (with the
    classification extension, and written into shared memory where asked)."""
    if chosen is None:
        return [response_tensor(s, outputs[s.name]) for s in model.output_specs]
    tensors = []
    for s, k, region in chosen:
        entry = (response_tensor(s, outputs[s.name]) if not k
                 else classes_tensor(s, outputs[s.name], k, model))
        tensors.append(entry if region is None else write_output(entry, region))
    return tensors


class DataPlane:
    def __init__(
        self, repository: ModelRepository, limits: Limits = DEFAULT_LIMITS, routes=None,
        shared_memory: SystemSharedMemory | None = None, cache: ResponseCache | None = None,
    ) -> None:
        self.repository = repository
        self.cache = cache  # the response cache (--cache-size), or None
        self.limits = limits
        self.routes = routes  # a routing.manager.RouteManager, or None
        # Regions clients registered (off: a registry that refuses to register any).
        self.shared_memory = shared_memory or SystemSharedMemory(allowed=False)
        # CUDA regions (same switch, one namespace); tensors find either kind through it.
        self.cuda_shared_memory = CudaSharedMemory(self.shared_memory)
        self.observers: list = []  # each has observe(outcome: Outcome)

    async def infer(self, request, ctx: RequestContext, span=None) -> InferResult:
        """Run one decoded ModelInferRequest for a caller. ``span``: the request's
        server span when it is traced (observability.tracing), else None."""
        routes = self.routes
        if routes is not None:
            table = routes.table.routes
            if table:
                route = table.get(request.model_name)  # the one lookup routing costs
                if route is not None:
                    return await self._routed(route, request, ctx, span)
        model = self.repository.resolve(request.model_name, request.model_version)
        return await self.run(model, request, ctx, span)

    async def _routed(self, route, request, ctx: RequestContext, span) -> InferResult:
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
                key = ctx.header(ROUTE_KEY_HEADER)
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
        return await self.run(model, request, ctx, span, route, index)

    async def run(
        self, model, request, ctx: RequestContext, span=None, route=None, index: int = 0
    ) -> InferResult:
        """Run one decoded request on one model version (validated here, so that a bad
        request counts as the version's failure, as in Triton) and record it."""
        tensors, _ = await self._run(model, request, ctx, span, route, index, None)
        return InferResult(model.name, model.version_str, request.id, tensors)

    async def run_prepared(
        self, model, arrays, rows: int, shape_key, deadline: float = 0.0
    ) -> dict:
        """Run inputs already validated for another version (a shadow of a routed
        request, a pipeline's step) and record it like any request; its outputs by
        name. Never inline on the event loop, never mirrored again."""
        _, outputs = await self._run(
            model, None, INTERNAL, None, None, 0, (arrays, rows, shape_key, deadline)
        )
        return outputs

    async def _run(self, model, request, ctx, span, route, index, prepared):
        """The one path every request takes on a model version: enter, validate (live
        traffic), run, leave; then the version's statistics, the route's variant
        (``route``, ``index``), a mirror to the route's shadow, and every observer."""
        started = _perf_ns()
        now = _monotonic()
        model.enter(now)
        arrays = outputs = tensors = None
        try:
            if prepared is None:
                shm = self.cuda_shared_memory  # system and CUDA regions
                arrays, rows, shape_key = request_inputs(
                    request, model.inputs, model.max_batch_size, model.name, self.limits, shm
                )
                chosen = requested_outputs(request, model.outputs, model.name, shm)
                params = request.parameters
                priority = timeout_us = 0
                if params:
                    priority = _int_parameter(params, "priority", 0, (1 << 64) - 1)
                    if priority > model.priority_levels:
                        priority = 0  # as Triton: out-of-range priorities get the default level
                    timeout_us = _int_parameter(params, "timeout", 0, 1 << 62)
                if span is not None:
                    Tracing.describe(span, model, request.id)
                try:
                    cache = model.response_cache
                except AttributeError:  # the version's first request decides
                    cache = self._cache_of(model)
                if cache is None:
                    outputs = await model.run(
                        arrays, rows, shape_key, priority, timeout_us, ctx.deadline, span, now
                    )
                    tensors = _answer(model, outputs, chosen)
                else:
                    tensors, outputs = await self._cached(
                        cache, model, request, arrays, chosen, span,
                        (arrays, rows, shape_key, priority, timeout_us, ctx.deadline, span, now),
                    )
            else:
                arrays, rows, shape_key, deadline = prepared
                outputs = await model.run(
                    arrays, rows, shape_key, 0, 0, deadline, None, now, False
                )
        except BaseException as exc:  # errors and cancellation both count as failures
            ns = _perf_ns() - started
            status = model.stats.record_failure(ns, exc)
            if route is not None:
                self._route_failure(route, index, ns, status)
            if self.observers:
                self._observe(model, request, ns, status, arrays, None, prepared,
                              ctx, span, route, index)
            raise
        finally:
            model.leave()
        ns = _perf_ns() - started
        model.stats.record_success(ns)
        if route is not None:
            route.stats[index].latency.observe(ns)
            if route.shadow is not None:
                self.routes.shadows.maybe_mirror(route, arrays, rows, shape_key, outputs, self)
        if self.observers:
            self._observe(model, request, ns, "OK", arrays, outputs, prepared,
                          ctx, span, route, index)
        return tensors, outputs

    def _cache_of(self, model):
        """Whether ``model`` caches answers, decided once (``model.response_cache``)."""
        if self.cache is None:
            model.response_cache = None
            return None
        return self.cache.attach(model)

    @staticmethod
    async def _cached(cache, model, request, arrays, chosen, span, run_args):
        """The answer from the version's cache, else from the model (then kept); as
        (tensors, outputs by name). Shared-memory requests bypass the cache."""
        started = _perf_ns()  # the lookup's time includes hashing the request
        digest = request_key(request, arrays, chosen)
        if digest is None:
            outputs = await model.run(*run_args)
            return _answer(model, outputs, chosen), outputs
        entry = cache.get(digest)
        if entry is None and cache.remote is not None:
            entry = await cache.fetch(digest)
        if entry is not None:
            cache.hit(_perf_ns() - started)
            if span is not None:
                span.set_attribute("tensorgate.cache_hit", True)
            return entry.tensors, entry.outputs
        cache.miss(_perf_ns() - started)
        outputs = await model.run(*run_args)
        tensors = _answer(model, outputs, chosen)
        cache.put(digest, tensors, outputs)
        return tensors, outputs

    @staticmethod
    def _route_failure(route, index: int, ns: int, status: str) -> None:
        variant = route.stats[index]
        variant.failures += 1
        variant.latency.observe(ns)
        if index == route.candidate and status in _CANDIDATE_FAULTS:
            route.rollout.on_failure()

    def _observe(self, model, request, ns, status, arrays, outputs, prepared,
                 ctx, span, route, index) -> None:
        # Observers read inputs after the answer went out (drift, prediction logs): those
        # read from a client's shared-memory region are the server's own copies (pread),
        # so a client reusing its region cannot change them.
        outcome = Outcome(
            model, "" if request is None else request.id, ns, status, arrays, outputs,
            prepared is not None, ctx, span,
            None if route is None else route.name,
            None if route is None else route.targets[index].label,
        )
        for observer in self.observers:
            observer.observe(outcome)
