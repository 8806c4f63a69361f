"""Tracing: span structure, traceparent propagation, sampling and batch links, checked
with the SDK's in-memory exporter (in process: the real servicer, data plane, batcher and
ONNX Runtime over the demo repository)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tensorgate._proto.inference import grpc_service_pb2 as pb
from tensorgate.app import demo_repository
from tensorgate.batching.batcher import BatchTimings
from tensorgate.dataplane import DataPlane
from tensorgate.grpc.inference import InferenceService
from tensorgate.observability import tracing
from tensorgate.observability.tracing import Tracing, sample_ratio
from tensorgate.repository.manager import ModelRepository

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata=()) -> None:
        self._metadata = tuple(metadata)
        self.code = None

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return None

    def peer(self):
        return "ipv4:127.0.0.1:5555"

    async def abort(self, code, details):
        self.code = code
        raise Aborted(details)


def _traceparent(sampled: bool = True) -> tuple:
    return (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{'01' if sampled else '00'}"),
            ("tracestate", "vendor=x"))


@pytest.fixture
def exporter():
    spans = InMemorySpanExporter()
    tracing.ACTIVE = Tracing(SimpleSpanProcessor(spans), ratio=1.0)
    yield spans
    tracing.uninstall()


def _request(request_id: str, model: str = "simple_mlp", rows: int = 1) -> bytes:
    x = np.ones((rows, 16), np.float32)
    return pb.ModelInferRequest(
        model_name=model, id=request_id,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                      shape=[rows, 16])],
        raw_input_contents=[x.tobytes()],
    ).SerializeToString()


def _serve(calls, inline: bool = False) -> None:
    """Run ``calls(service)`` (a coroutine function) against the demo repository;
    ``inline=False``: every request goes through the batcher's queue and workers."""

    async def main():
        repo = ModelRepository(demo_repository(), 4, 5.0)
        await repo.load_all(asyncio.get_running_loop())
        for model in repo.models():
            model.inline = model.inline and inline
        state = SimpleNamespace(accepting=True, live=True, ready=True)
        service = InferenceService(repo, DataPlane(repo), state)
        try:
            await calls(service)
        finally:
            await repo.unload_all()

    asyncio.run(main())


def _by_name(spans, name):
    return [s for s in spans if s.name == name]


def test_request_span_continues_the_callers_trace(exporter):
    async def calls(service):
        await service.model_infer(_request("req-1"), FakeContext(_traceparent()))

    _serve(calls)
    spans = exporter.get_finished_spans()
    (server,) = _by_name(spans, "ModelInfer")
    (queue,) = _by_name(spans, "queue")
    (batch,) = _by_name(spans, "batch")
    assert server.kind == SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert server.attributes["tensorgate.model"] == "simple_mlp"
    assert server.attributes["tensorgate.version"] == "1"
    assert server.attributes["tensorgate.request_id"] == "req-1"
    assert server.attributes["tensorgate.status"] == "OK"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert queue.parent.span_id == server.context.span_id
    assert batch.parent.span_id == server.context.span_id
    assert batch.attributes["tensorgate.batch.size"] == 1
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert [link.context.span_id for link in server.links] == [batch.context.span_id]
    # Timestamps: the queue wait ends where the batch starts; both inside the request.
    assert server.start_time <= queue.start_time <= queue.end_time <= batch.start_time
    assert batch.end_time <= server.end_time


def test_inline_run_gets_an_execution_span_and_no_queue_span(exporter):
    async def calls(service):
        (model,) = [m for m in service.repository.models() if m.name == "simple_mlp"]
        model.inline = True
        await service.model_infer(_request("in"), FakeContext(_traceparent()))

    _serve(calls, inline=True)
    spans = exporter.get_finished_spans()
    (server,) = _by_name(spans, "ModelInfer")
    (batch,) = _by_name(spans, "batch")
    assert not _by_name(spans, "queue")
    assert batch.attributes["tensorgate.batch.inline"] is True
    assert batch.parent.span_id == server.context.span_id
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]


def test_without_traceparent_a_new_trace_starts(exporter):
    async def calls(service):
        await service.model_infer(_request("a"), FakeContext())
        await service.model_infer(_request("b"), FakeContext())

    _serve(calls)
    servers = _by_name(exporter.get_finished_spans(), "ModelInfer")
    assert len(servers) == 2
    assert all(s.parent is None for s in servers)
    assert servers[0].context.trace_id != servers[1].context.trace_id


def test_unsampled_parent_and_ratio_zero_create_no_spans(exporter):
    async def calls(service):
        await service.model_infer(_request("a"), FakeContext(_traceparent(sampled=False)))
        tracing.ACTIVE.ratio = 0.0
        await service.model_infer(_request("b"), FakeContext())
        # A sampled caller still wins over the ratio (parent-based).
        await service.model_infer(_request("c"), FakeContext(_traceparent()))

    _serve(calls)
    servers = _by_name(exporter.get_finished_spans(), "ModelInfer")
    assert [s.attributes["tensorgate.request_id"] for s in servers] == ["c"]


def test_failed_request_span_has_error_status(exporter):
    async def calls(service):
        ctx = FakeContext(_traceparent())
        bad = pb.ModelInferRequest(model_name="simple_mlp", id="bad").SerializeToString()
        with pytest.raises(Aborted):
            await service.model_infer(bad, ctx)
        with pytest.raises(Aborted):
            await service.model_infer(_request("nf", model="nope"), ctx)

    _serve(calls)
    servers = _by_name(exporter.get_finished_spans(), "ModelInfer")
    assert [s.attributes["tensorgate.status"] for s in servers] == [
        "INVALID_ARGUMENT", "NOT_FOUND"
    ]
    assert all(s.status.status_code == StatusCode.ERROR for s in servers)
    assert servers[0].attributes["rpc.grpc.status_code"] == 3


def test_concurrent_requests_every_request_linked_to_its_batch(exporter):
    async def calls(service):
        await asyncio.gather(*(
            service.model_infer(_request(f"r{i}"), FakeContext()) for i in range(8)
        ))

    _serve(calls)
    spans = exporter.get_finished_spans()
    servers = _by_name(spans, "ModelInfer")
    batches = _by_name(spans, "batch")
    assert len(servers) == 8 and len(_by_name(spans, "queue")) == 8
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {s.context.span_id for s in servers}
    assert sum(b.attributes["tensorgate.batch.requests"] for b in batches) == 8


def test_one_batch_span_links_every_request_span():
    """record_batch on its own: three traced requests and one untraced in one batch."""
    spans = InMemorySpanExporter()
    t = Tracing(SimpleSpanProcessor(spans), ratio=1.0)
    requests = [t.start("ModelInfer", (None, None)) for _ in range(3)]
    batch = [
        SimpleNamespace(span=s, enqueued_ns=1_000 * i, queue_ns=5_000 - 1_000 * i, rows=2,
                        error=None)
        for i, s in enumerate(requests)
    ] + [SimpleNamespace(span=None, enqueued_ns=0, queue_ns=5_000, rows=1, error=None)]
    model = SimpleNamespace(name="m", version_str="3")
    t.record_batch(model, batch, BatchTimings(7, 100, 2_000, 100))
    for s in requests:
        Tracing.finish(s)
    finished = spans.get_finished_spans()
    (b,) = _by_name(finished, "batch")
    assert b.attributes["tensorgate.batch.size"] == 7
    assert b.attributes["tensorgate.batch.requests"] == 4
    assert b.attributes["tensorgate.version"] == "3"
    assert [link.context.span_id for link in b.links] == [
        s.get_span_context().span_id for s in requests
    ]
    assert b.end_time - b.start_time == 2_200
    queues = _by_name(finished, "queue")
    assert {q.parent.span_id for q in queues} == {s.get_span_context().span_id for s in requests}
    t.shutdown()


def test_stream_messages_get_one_span_each(exporter):
    async def calls(service):
        async def messages():
            for i in range(3):
                yield _request(f"s{i}")

        out = [m async for m in service.model_stream_infer(messages(), FakeContext(_traceparent()))]
        assert len(out) == 3

    _serve(calls)
    servers = _by_name(exporter.get_finished_spans(), "ModelStreamInfer")
    assert len(servers) == 3
    assert {format(s.context.trace_id, "032x") for s in servers} == {TRACE_ID}


def test_tracing_off_is_none_and_sample_ratio_sources():
    assert tracing.install("none", None) is None and tracing.ACTIVE is None
    assert sample_ratio(0.25, {"OTEL_TRACES_SAMPLER_ARG": "0.5"}) == 0.25
    assert sample_ratio(None, {"OTEL_TRACES_SAMPLER_ARG": "0.5"}) == 0.5
    assert sample_ratio(None, {"OTEL_TRACES_SAMPLER_ARG": "bogus"}) == 1.0
    assert sample_ratio(None, {}) == 1.0
