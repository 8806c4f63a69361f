"""Observability against the real server: /metrics histograms and failures by code,
per-model health (Check and Watch) across unload/load, JSON logs, and traces exported
over OTLP/gRPC to a receiver running in this test (opentelemetry-proto's TraceService)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import re
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from e2e_support import infer_input, server_env, start_server, status_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def server(control_repo):
    with start_server(control_repo) as srv:
        yield srv


def _scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
        return response.read().decode()


def _value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", line)
        if m:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
    return total


# --------------------------------------------------------------------------- metrics


@pytest.mark.timeout(60)
def test_histograms_and_failures_by_code(client, server):
    before = _scrape(server)
    x = np.ones((1, 3), np.int32)
    for _ in range(4):
        client.infer("identity_int32", [infer_input("INPUT0", x)])
    for _ in range(2):  # the wrong datatype: INVALID_ARGUMENT, counted on the model
        with pytest.raises(InferenceServerException) as err:
            client.infer("identity_int32", [infer_input("INPUT0", x.astype(np.float32))])
        assert status_of(err.value) == "INVALID_ARGUMENT"
    after = _scrape(server)
    m = {"model": "identity_int32", "version": "1"}

    def delta(name, **labels):
        return _value(after, name, **m, **labels) - _value(before, name, **m, **labels)

    assert delta("nv_inference_request_success") == 4
    assert delta("nv_inference_request_failure", reason="OTHER") == 2
    assert delta("tensorgate_request_failures_total", code="INVALID_ARGUMENT") == 2
    assert delta("tensorgate_request_duration_seconds_count") == 6
    assert delta("tensorgate_request_duration_seconds_bucket", le="+Inf") == 6
    assert delta("tensorgate_request_duration_seconds_sum") > 0
    assert delta("tensorgate_queue_duration_seconds_count") == 4
    assert delta("tensorgate_compute_duration_seconds_count") == 4
    assert delta("tensorgate_batch_size_count") == 4  # sequential: one row per execution
    assert delta("tensorgate_batch_size_bucket", le="1.0") == 4
    # The queue window is 20 ms and held: the queue histogram sees it.
    assert delta("tensorgate_queue_duration_seconds_sum") >= 4 * 0.015
    assert "# TYPE nv_inference_request_success counter" in after
    assert "# TYPE tensorgate_request_duration_seconds histogram" in after
    assert re.search(r"^process_resident_memory_bytes \S+$", after, re.M)
    assert _value(after, "tensorgate_model_events_total", model="identity_int32",
                  event="load") >= 1
    assert _value(after, "tensorgate_model_load_duration_seconds_count",
                  model="identity_int32") >= 1


@pytest.mark.timeout(60)
def test_queue_full_is_rejected_and_counted(client, server):
    x = np.ones((1, 1), np.float32)
    before = _scrape(server)

    def one(_):
        try:
            client.infer("slow_queue", [infer_input("INPUT0", x)])
            return "OK"
        except InferenceServerException as exc:
            return status_of(exc)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(4)))
    rejected = codes.count("RESOURCE_EXHAUSTED")
    assert rejected >= 1, codes
    after = _scrape(server)
    m = {"model": "slow_queue", "version": "1"}
    assert (_value(after, "tensorgate_request_failures_total", code="RESOURCE_EXHAUSTED", **m)
            - _value(before, "tensorgate_request_failures_total",
                     code="RESOURCE_EXHAUSTED", **m)) == rejected
    assert (_value(after, "nv_inference_request_failure", reason="REJECTED", **m)
            - _value(before, "nv_inference_request_failure", reason="REJECTED", **m)) == rejected


# --------------------------------------------------------------------------- health


@pytest.mark.timeout(60)
def test_model_health_follows_unload_and_load_and_watch_sees_it(client, server):
    name = "identity_uint8"
    channel = grpc.insecure_channel(server.grpc_url)
    stub = health_pb2_grpc.HealthStub(channel)
    check = lambda: stub.Check(health_pb2.HealthCheckRequest(service=name)).status  # noqa: E731
    assert check() == SERVING
    assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING

    seen: queue.Queue = queue.Queue()
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=50)

    def read():
        try:
            for response in watch:
                seen.put(response.status)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.get(timeout=10) == SERVING
        client.unload_model(name)
        assert check() == NOT_SERVING
        assert seen.get(timeout=10) == NOT_SERVING
        client.load_model(name)
        assert check() == SERVING
        statuses = [seen.get(timeout=10)]
        while statuses[-1] != SERVING:
            statuses.append(seen.get(timeout=10))
        assert statuses[-1] == SERVING
    finally:
        watch.cancel()
        channel.close()
    # The overall service is untouched by one model.
    channel = grpc.insecure_channel(server.grpc_url)
    assert health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="")).status == SERVING
    channel.close()


# --------------------------------------------------------------------------- traces


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on loopback (grpc.aio, in a thread of its own)."""

    def __init__(self) -> None:
        self.spans: list = []  # (resource attributes, span)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def Export(self, request, context):  # noqa: N802 - the generated name
        for rs in request.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append((resource, span))
        return trace_service_pb2.ExportTraceServiceResponse()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def wait_for(self, predicate, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans never arrived; got {[s.name for _, s in self.spans]}")


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.mark.timeout(90)
def test_spans_reach_an_otlp_receiver_in_the_callers_trace(control_repo):
    import tritonclient.grpc as grpcclient

    with OtlpReceiver() as receiver:
        env = server_env(OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="tg-e2e")
        with start_server(
            control_repo, "--trace-exporter", "otlp",
            "--otlp-endpoint", f"http://127.0.0.1:{receiver.port}",
            "--log-format", "json", "--request-log-sample-ratio", "1", env=env,
        ) as srv:
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            x = np.ones((1, 3), np.float32)
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "k=v"}
            client.infer("identity_fp32", [infer_input("INPUT0", x)], headers=headers,
                         request_id="traced-1")
            client.close()

            def ours(spans):
                return [s for _, s in spans if s.trace_id.hex() == TRACE_ID]

            spans = ours(receiver.wait_for(lambda got: len(ours(got)) >= 3))
            log = srv.log
        by_name = {s.name: s for s in spans}
        assert {"ModelInfer", "queue", "batch"} <= set(by_name), list(by_name)
        request = by_name["ModelInfer"]
        assert request.parent_span_id.hex() == PARENT_ID
        assert request.kind == request.SPAN_KIND_SERVER
        attributes = {a.key: a.value for a in request.attributes}
        assert attributes["tensorgate.model"].string_value == "identity_fp32"
        assert attributes["tensorgate.request_id"].string_value == "traced-1"
        assert attributes["tensorgate.status"].string_value == "OK"
        assert by_name["queue"].parent_span_id == request.span_id
        batch = by_name["batch"]
        assert [link.span_id for link in batch.links] == [request.span_id]
        resources = {r.get("service.name") for r, _ in receiver.spans}
        assert resources == {"tg-e2e"}

    # --log-format json: every line is one JSON object; request logs and model events.
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records and len(records) == len([ln for ln in log.splitlines() if ln.strip()])
    assert any(r.get("event") == "request" and r.get("request_id") == "traced-1"
               for r in records)
    assert any(r.get("event") == "model" and r.get("action") == "loaded" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
