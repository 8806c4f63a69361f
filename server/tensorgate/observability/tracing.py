"""OpenTelemetry traces: a server span per request, its queue wait, and one span per
batch execution linked to every request span it served.

Cost rules (the event loop is the bottleneck):
- tracing off: ``ACTIVE`` is None and the hot path does one ``is None`` check;
- tracing on: gRPC metadata is read only then; the sampling decision (parent-based,
  then ratio) is made before any span object exists, so an unsampled request creates
  nothing;
- the queue-wait and batch spans are created after the fact on the loop thread, in
  ``record_batch``, with start and end times taken from the batcher's timings: worker
  threads never touch a span.

The batch span is a child of the first sampled request it served (so that trace shows
the execution inline) and links to every sampled request span of the batch; each of
those request spans links back to the batch span.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tensorgate.errors import TensorGateError
from tensorgate.observability.stats import status_name

log = logging.getLogger("tensorgate.tracing")

EXPORTERS = ("none", "console", "otlp")
GRPC_SERVICE = "inference.GRPCInferenceService"

# The one switch the hot path reads: None when tracing is off.
ACTIVE: "Tracing | None" = None
INSTALLED: "Tracing | None" = None  # the configured tracer, also while ACTIVE is off

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER = DefaultGetter()
_NO_PARENT = (None, None)


def resolve_exporter(configured: str, endpoint: str, environ=os.environ) -> tuple[str, str]:
    """(exporter, where that came from): --trace-exporter; else the standard
    OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER; else otlp when an OTLP endpoint is set
    (--otlp-endpoint, OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), as OpenTelemetry's SDKs
    export by default; else none."""
    if configured:
        return configured, "--trace-exporter"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none", "OTEL_SDK_DISABLED=true"
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if raw:
        for item in raw.lower().split(","):
            if item.strip() in EXPORTERS:
                return item.strip(), "OTEL_TRACES_EXPORTER"
        log.warning("OTEL_TRACES_EXPORTER=%r: TensorGate exports to otlp or console; "
                    "tracing stays off", raw)
        return "none", "OTEL_TRACES_EXPORTER"
    if endpoint:
        return "otlp", "--otlp-endpoint"
    for var in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(var):
            return "otlp", var
    return "none", "no --trace-exporter, OTEL_TRACES_EXPORTER or OTLP endpoint"


# OTEL_TRACES_SAMPLER values and the fixed ratio each means (None: take the argument).
# TensorGate's sampler is always parent-based: a caller's sampled flag decides for its
# own trace; these set the ratio for new traces.
_SAMPLERS = {
    "always_on": 1.0, "always_off": 0.0, "traceidratio": None,
    "parentbased_always_on": 1.0, "parentbased_always_off": 0.0,
    "parentbased_traceidratio": None,
}


def sample_ratio(configured: float | None, environ=os.environ) -> float:
    """--trace-sample-ratio, else OTEL_TRACES_SAMPLER (and its _ARG), else 1.0."""
    if configured is not None:
        return configured
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler:
        if sampler not in _SAMPLERS:
            log.warning("ignoring OTEL_TRACES_SAMPLER=%r: not one of %s", sampler,
                        ", ".join(_SAMPLERS))
        elif _SAMPLERS[sampler] is not None:
            return _SAMPLERS[sampler]
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            log.warning("ignoring OTEL_TRACES_SAMPLER_ARG=%r: not a number", raw)
        else:
            if 0.0 <= value <= 1.0:
                return value
            log.warning("ignoring OTEL_TRACES_SAMPLER_ARG=%r: not in 0..1", raw)
    return 1.0


def make_exporter(kind: str, endpoint: str = "") -> SpanExporter | None:
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter(out=sys.stdout)
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # No endpoint: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else
        # localhost:4317. Plain "host:port" or http:// means no TLS; https:// means TLS.
        if not endpoint:
            return OTLPSpanExporter()
        return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    raise ValueError(f"trace exporter must be one of {EXPORTERS}, got {kind!r}")


class Tracing:
    """Spans for the request path; one instance per server (``install``)."""

    def __init__(self, processor: SpanProcessor | None, ratio: float, resource=None) -> None:
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,  # the decision is ours, made before a span exists
            resource=resource or Resource.create({SERVICE_NAME: _service_name()}),
        )
        if processor is not None:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("tensorgate")
        self.ratio = ratio
        # perf_counter_ns (batcher timings) -> epoch ns (span timestamps)
        self._epoch_offset = time.time_ns() - time.perf_counter_ns()
        self._rpc_attributes = {
            rpc: {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": rpc}
            for rpc in ("ModelInfer", "ModelStreamInfer")
        }
        self._rpc_attributes["HTTP ModelInfer"] = {
            "http.request.method": "POST", "network.protocol.name": "http",
            "rpc.method": "ModelInfer",
        }

    # -- request spans (servicer) -------------------------------------------------

    def incoming(self, ctx) -> tuple[Any, bool | None]:
        """(parent context, its sampled flag) from a W3C traceparent in the call's
        metadata or headers (a RequestContext); (None, None) without one (or with a
        malformed one)."""
        carrier = None
        for key, value in ctx.metadata:
            if key == "traceparent" or key == "tracestate":
                if carrier is None:
                    carrier = {}
                carrier[key] = value
        if carrier is None or "traceparent" not in carrier:
            return _NO_PARENT
        parent = _PROPAGATOR.extract(carrier, getter=_GETTER)
        span_context = trace.get_current_span(parent).get_span_context()
        if not span_context.is_valid:
            return _NO_PARENT
        return parent, span_context.trace_flags.sampled

    def start(self, rpc: str, incoming: tuple[Any, bool | None]):
        """The request's server span, or None when it is not sampled (parent-based:
        follow the caller's flag; a new trace is sampled with probability ``ratio``)."""
        parent, sampled = incoming
        if sampled is None:
            if self.ratio < 1.0 and random.random() >= self.ratio:
                return None
        elif not sampled:
            return None
        return self.tracer.start_span(
            rpc, context=parent, kind=SpanKind.SERVER, attributes=self._rpc_attributes[rpc]
        )

    def request_span(self, rpc: str, ctx):
        return self.start(rpc, self.incoming(ctx))

    @staticmethod
    def describe(span, model, request_id: str) -> None:
        """Name the model version a request resolved to."""
        span.set_attribute("tensorgate.model", model.name)
        span.set_attribute("tensorgate.version", model.version_str)
        if request_id:
            span.set_attribute("tensorgate.request_id", request_id)

    @staticmethod
    def finish(span, code: str = "OK", message: str = "") -> None:
        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        span.set_attribute("tensorgate.status", code)
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))
        span.end()

    @classmethod
    def fail(cls, span, exc: BaseException) -> None:
        """End a request span with the status ``exc`` reaches the wire with."""
        message = exc.message if isinstance(exc, TensorGateError) else ""
        cls.finish(span, status_name(exc), message)

    # -- batch spans (loop thread, after the batch ran) ---------------------------

    def record_batch(self, model, batch: list, timings) -> None:
        traced = [p for p in batch if p.span is not None]
        if not traced:
            return
        offset = self._epoch_offset
        first = traced[0]
        started = first.enqueued_ns + first.queue_ns + offset
        ended = started + timings.input_ns + timings.infer_ns + timings.output_ns
        tracer = self.tracer
        for p in traced:
            ctx = trace.set_span_in_context(p.span)
            queued = p.enqueued_ns + offset
            q = tracer.start_span(
                "queue", context=ctx, start_time=queued,
                attributes={"tensorgate.queue_us": p.queue_ns // 1000},
            )
            q.end(end_time=queued + p.queue_ns)
        links = [
            Link(p.span.get_span_context(), {"tensorgate.request_rows": p.rows}) for p in traced
        ]
        failed = sum(1 for p in batch if p.error is not None)
        attributes = {
            "tensorgate.model": model.name,
            "tensorgate.version": model.version_str,
            "tensorgate.batch.size": timings.rows,
            "tensorgate.batch.requests": len(batch),
            "tensorgate.batch.compute_input_us": timings.input_ns // 1000,
            "tensorgate.batch.compute_infer_us": timings.infer_ns // 1000,
            "tensorgate.batch.compute_output_us": timings.output_ns // 1000,
        }
        span = tracer.start_span(
            "batch", context=trace.set_span_in_context(first.span), links=links,
            start_time=started, attributes=attributes,
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} request(s) of the batch failed"))
        span.end(end_time=ended)
        batch_context = span.get_span_context()
        for p in traced:
            p.span.add_link(batch_context, {"tensorgate.link": "batch"})

    def record_inline(self, model, span, rows: int, started_ns: int, ended_ns: int) -> None:
        """A request run on the loop thread (an idle model, see ModelVersion.run_inline):
        its execution span, with no queue wait."""
        offset = self._epoch_offset
        context = span.get_span_context()
        batch = self.tracer.start_span(
            "batch", context=trace.set_span_in_context(span),
            links=[Link(context, {"tensorgate.request_rows": rows})],
            start_time=started_ns + offset,
            attributes={
                "tensorgate.model": model.name,
                "tensorgate.version": model.version_str,
                "tensorgate.batch.size": rows,
                "tensorgate.batch.requests": 1,
                "tensorgate.batch.inline": True,
            },
        )
        batch.end(end_time=ended_ns + offset)
        span.add_link(batch.get_span_context(), {"tensorgate.link": "batch"})

    def shutdown(self) -> None:
        self.provider.shutdown()


_CODE_NUMBERS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def _service_name() -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or "tensorgate"


def install(exporter: str, ratio: float | None, endpoint: str = "") -> Tracing | None:
    """Turn tracing on for this process (``ACTIVE``) unless the exporter resolves to
    "none" (``resolve_exporter``). ``INSTALLED`` keeps the tracer while the trace
    settings API turns it off. The log says which, and why."""
    global ACTIVE, INSTALLED
    exporter, source = resolve_exporter(exporter, endpoint)
    span_exporter = make_exporter(exporter, endpoint)
    if span_exporter is None:
        ACTIVE = INSTALLED = None
        log.info("tracing off (%s)", source)
        return None
    ACTIVE = INSTALLED = Tracing(BatchSpanProcessor(span_exporter), sample_ratio(ratio))
    where = ""
    if exporter == "otlp":
        where = " to " + (endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                          or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                          or "localhost:4317 (the OTLP default)")
    log.info("tracing on: exporter %s%s (from %s), sample ratio %g (parent-based), "
             "service name %s", exporter, where, source, ACTIVE.ratio, _service_name())
    return ACTIVE


def uninstall() -> None:
    global ACTIVE, INSTALLED
    tracing, ACTIVE, INSTALLED = INSTALLED, None, None
    if tracing is not None:
        tracing.shutdown()
