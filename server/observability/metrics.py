"""Prometheus text on HTTP /metrics, read from the same counters as ModelStatistics.

Nothing is recorded per request for Prometheus: a collector reads the per-version
statistics at scrape time. Metric names and labels are Triton's, so existing Triton
dashboards and alerts work.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

# (metric name, help, how to read it from VersionStats)
_COUNTERS: list[tuple[str, str, Callable]] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (batches)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds", lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds", lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
]


class StatsCollector:
    """Yields Triton-named counters for every loaded model version."""

    def __init__(self, versions: Callable[[], Iterable]) -> None:
        self._versions = versions

    def collect(self):
        versions = list(self._versions())
        for name, doc, read in _COUNTERS:
            metric = Metric(name, doc, "counter")
            for model in versions:
                labels = {"model": model.name, "version": model.version_str}
                metric.add_sample(name, labels, read(model.stats))
            yield metric
        depth = Metric("tensorgate_queue_depth", "Requests waiting in the batch queue", "gauge")
        inflight = Metric("tensorgate_inflight_requests", "Requests being served", "gauge")
        for model in versions:
            labels = {"model": model.name, "version": model.version_str}
            batcher = model.batcher
            depth.add_sample("tensorgate_queue_depth", labels, batcher.queued if batcher else 0)
            inflight.add_sample("tensorgate_inflight_requests", labels, model.inflight)
        yield depth
        yield inflight


def serve_metrics(host: str, port: int, versions: Callable[[], Iterable]):
    """Start the /metrics HTTP server in a thread; returns (server, bound port)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(StatsCollector(versions))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
