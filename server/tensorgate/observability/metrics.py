"""Prometheus text on HTTP /metrics, read from the same counters as ModelStatistics.

Nothing is recorded per request for Prometheus: a collector reads the per-version
statistics (plain integers and bucket lists, see stats.py) at scrape time.

- Triton's names and labels (``model``, ``version``), so existing Triton dashboards and
  alerts work: ``nv_inference_request_success``, ``nv_inference_request_failure``
  (with Triton's ``reason`` label: REJECTED, CANCELED, BACKEND, OTHER),
  ``nv_inference_count``, ``nv_inference_exec_count``,
  ``nv_inference_pending_request_count``, and the cumulative ``nv_inference_*_duration_us``.
- TensorGate's own: latency histograms in seconds, batch size, failures by gRPC status
  code, queue depth and in-flight gauges, model load/unload events and load duration.
- Process metrics (CPU, resident memory, open files) from prometheus_client.

Routes: per route and variant families (``route``, ``variant`` labels) come from
route_metrics.py, registered beside these when routing is on.

Response cache (``--cache-size``): Triton's per-model families
(``nv_cache_num_hits_per_model``, ``nv_cache_num_misses_per_model``,
``nv_cache_hit_duration_per_model``, ``nv_cache_miss_duration_per_model``) for the
versions that cache, and, server-wide, Triton's ``nv_cache_num_entries``,
``nv_cache_util``, ``nv_cache_num_lookups``/``hits``/``misses``/``evictions``,
``nv_cache_lookup_duration``, ``nv_cache_insertion_duration`` (µs), with TensorGate's
byte gauges and Redis counters (CacheCollector).

Drift (versions with a profile.json, observability/drift): ``tensorgate_drift_psi`` and
``tensorgate_drift_ks`` per feature, ``tensorgate_drift_score`` per version (the last
closed window's values), rows monitored, samples dropped, windows, the drift thread's
CPU time (DriftCollector).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from tensorgate.observability.stats import FAILURE_REASONS, Buckets, ModelEvents

LABELS = ["model", "version"]
CONTENT_TYPE_PLAIN = "text/plain; version=0.0.4; charset=utf-8"

# (metric name, help, how to read it from VersionStats)
_COUNTERS: list[tuple[str, str, Callable]] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
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
    ("tensorgate_varlen_real_elements_total",
     "Variable-length batching: elements of padded inputs as requests sent them",
     lambda s: s.varlen_real_elements),
    ("tensorgate_varlen_padded_elements_total",
     "Variable-length batching: elements of padded inputs as run, padding included "
     "(padded / real - 1 is the padding overhead)", lambda s: s.varlen_padded_elements),
]

# Response cache, per version that caches (Triton's names; durations in µs).
_CACHE_COUNTERS: list[tuple[str, str, Callable]] = [
    ("nv_cache_num_hits_per_model", "Number of cache hits per model",
     lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model",
     lambda s: s.cache_miss.count),
    ("nv_cache_hit_duration_per_model",
     "Total cache hit duration per model, in microseconds", lambda s: s.cache_hit.ns // 1000),
    ("nv_cache_miss_duration_per_model",
     "Total cache miss (lookup and insertion) duration per model, in microseconds",
     lambda s: s.cache_miss.ns // 1000),
]

# (metric name, help, which Buckets, scale from stored units to exposed units)
_HISTOGRAMS: list[tuple[str, str, Callable, float]] = [
    ("tensorgate_request_duration_seconds",
     "Inference request latency inside the server (decode to encoded response), seconds",
     lambda s: s.request_hist, 1e-9),
    ("tensorgate_queue_duration_seconds",
     "Time a request waited in the batch queue before its batch started, seconds",
     lambda s: s.queue_hist, 1e-9),
    ("tensorgate_compute_duration_seconds",
     "Compute time (gather + run + scatter) of the batch that served a request, seconds",
     lambda s: s.compute_hist, 1e-9),
    ("tensorgate_batch_size",
     "Rows per model execution (batch size)", lambda s: s.batch_hist, 1),
]


def _labels(model) -> list[str]:
    return [model.name, model.version_str]


_LE: dict[tuple, list[str]] = {}


def histogram_buckets(hist: Buckets, scale: float) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs and the sum, as HistogramMetricFamily wants them."""
    les = _LE.get((hist.bounds, scale))
    if les is None:
        les = _LE[(hist.bounds, scale)] = [
            floatToGoString(round(b * scale, 12)) for b in hist.bounds
        ]
    counts = list(hist.counts)  # one snapshot: the loop thread keeps counting
    total = hist.total
    buckets = []
    running = 0
    for le, n in zip(les, counts):
        running += n
        buckets.append((le, running))
    buckets.append(("+Inf", running + counts[-1]))
    return buckets, total * scale


def _triton_counter(name: str, doc: str) -> Metric:
    """A counter exposed under Triton's exact name (no ``_total`` suffix)."""
    return Metric(name, doc, "counter")


class StatsCollector:
    """Yields every per-version family at scrape time."""

    def __init__(self, versions: Callable[[], Iterable], events: ModelEvents | None = None) -> None:
        self._versions = versions
        self._events = events

    @staticmethod
    def _counters(families, versions):
        for name, doc, read in families:
            metric = _triton_counter(name, doc)
            for model in versions:
                labels = {"model": model.name, "version": model.version_str}
                metric.add_sample(name, labels, read(model.stats))
            yield metric

    def collect(self):
        versions = list(self._versions())
        yield from self._counters(_COUNTERS, versions)
        failure = _triton_counter(
            "nv_inference_request_failure", "Number of failed inference requests, all batch sizes"
        )
        by_code = CounterMetricFamily(
            "tensorgate_request_failures",
            "Failed inference requests by gRPC status code",
            labels=LABELS + ["code"],
        )
        for model in versions:
            stats = model.stats
            for reason in FAILURE_REASONS:
                failure.add_sample(
                    "nv_inference_request_failure",
                    {"model": model.name, "reason": reason, "version": model.version_str},
                    stats.fail_reasons.get(reason, 0),
                )
            for code, n in list(stats.fail_codes.items()):
                by_code.add_metric(_labels(model) + [code], n)
        yield failure
        yield by_code
        for name, doc, read, scale in _HISTOGRAMS:
            metric = HistogramMetricFamily(name, doc, labels=LABELS)
            for model in versions:
                buckets, total = histogram_buckets(read(model.stats), scale)
                metric.add_metric(_labels(model), buckets, total)
            yield metric
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=LABELS,
        )
        depth = GaugeMetricFamily(
            "tensorgate_queue_depth", "Requests waiting in the batch queue", labels=LABELS
        )
        inflight = GaugeMetricFamily(
            "tensorgate_inflight_requests", "Requests being served", labels=LABELS
        )
        for model in versions:
            batcher = model.batcher
            queued = batcher.queued if batcher else 0
            pending.add_metric(_labels(model), queued)
            depth.add_metric(_labels(model), queued)
            inflight.add_metric(_labels(model), model.inflight)
        yield pending
        yield depth
        yield inflight
        # Versions that cache carry their VersionCache (tensorgate.cache) from load on.
        cached = [m for m in versions if getattr(m, "response_cache", None) is not None]
        if cached:
            yield from self._counters(_CACHE_COUNTERS, cached)
        if self._events is not None:
            yield from self._model_events()

    def _model_events(self):
        events = CounterMetricFamily(
            "tensorgate_model_events",
            "Model lifecycle events (load, load_failed, unload)",
            labels=["model", "event"],
        )
        for (model, event), n in list(self._events.events.items()):
            events.add_metric([model, event], n)
        yield events
        load = HistogramMetricFamily(
            "tensorgate_model_load_duration_seconds",
            "Time to load a model version (read, build sessions, complete config), seconds",
            labels=["model"],
        )
        for model, hist in list(self._events.load_seconds.items()):
            buckets, total = histogram_buckets(hist, 1)
            load.add_metric([model], buckets, total)
        yield load


class CacheCollector:
    """The response cache as a whole (tensorgate.cache.ResponseCache)."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def collect(self):
        cache = self.cache
        lru = cache.lru
        entries, used, capacity = len(lru), lru.bytes, lru.capacity
        yield GaugeMetricFamily("nv_cache_num_entries", "Number of responses stored in the "
                                "response cache", value=entries)
        yield GaugeMetricFamily("nv_cache_util", "Cache utilization [0.0 - 1.0]",
                                value=used / capacity if capacity else 0.0)
        yield GaugeMetricFamily("tensorgate_cache_bytes", "Bytes the response cache holds "
                                "(tensor data plus a fixed allowance per entry)", value=used)
        yield GaugeMetricFamily("tensorgate_cache_capacity_bytes",
                                "Response cache size (--cache-size)", value=capacity)
        for name, doc, value in (
            ("nv_cache_num_lookups", "Number of response cache lookups", cache.lookups),
            ("nv_cache_num_hits", "Number of response cache hits", cache.hits),
            ("nv_cache_num_misses", "Number of response cache misses", cache.misses),
            ("nv_cache_num_evictions", "Number of response cache evictions", lru.evictions),
            ("nv_cache_lookup_duration",
             "Total cache lookup duration (hit and miss), in microseconds",
             cache.lookup_ns // 1000),
            ("nv_cache_insertion_duration", "Total cache insertion duration, in microseconds",
             cache.insertion_ns // 1000),
        ):
            metric = _triton_counter(name, doc)
            metric.add_sample(name, {}, value)
            yield metric
        remote = cache.remote
        if remote is not None:
            redis = CounterMetricFamily(
                "tensorgate_cache_redis_operations",
                "Response cache calls to Redis by outcome: get_hit, get_miss, get_error, "
                "set_ok, set_error, skipped (Redis resting after a failure, or too many "
                "calls in flight), corrupt (a value that did not decode)",
                labels=["outcome"],
            )
            for outcome, value in (
                ("get_hit", remote.hits), ("get_miss", remote.misses),
                ("get_error", remote.errors), ("set_ok", remote.stored),
                ("set_error", remote.store_errors), ("skipped", remote.skipped),
                ("corrupt", remote.corrupt),
            ):
                redis.add_metric([outcome], value)
            yield redis


class DriftCollector:
    """Drift monitoring, for the serving versions that carry a monitor
    (``drift_monitor``, observability/drift): the last closed window's PSI and KS per
    feature and score per version, and counters. Nothing for versions without one."""

    def __init__(self, versions: Callable[[], Iterable]) -> None:
        self._versions = versions

    def collect(self):
        monitors = [m for m in (getattr(v, "drift_monitor", None) for v in self._versions())
                    if m is not None]
        if not monitors:
            return
        feature = LABELS + ["feature"]
        psi = GaugeMetricFamily(
            "tensorgate_drift_psi", "Population stability index of a feature in the last "
            "closed drift window against the version's profile", labels=feature)
        ks = GaugeMetricFamily(
            "tensorgate_drift_ks", "Kolmogorov-Smirnov statistic of a numeric feature in "
            "the last closed drift window against the profile's sample", labels=feature)
        score = GaugeMetricFamily(
            "tensorgate_drift_score", "The largest feature PSI of the last closed drift "
            "window", labels=LABELS)
        window_rows = GaugeMetricFamily(
            "tensorgate_drift_window_rows", "Rows in the last closed drift window",
            labels=LABELS)
        rows = CounterMetricFamily(
            "tensorgate_drift_rows", "Rows summarised for drift monitoring", labels=LABELS)
        dropped = CounterMetricFamily(
            "tensorgate_drift_dropped", "Sampled requests not summarised because the drift "
            "queue was full", labels=LABELS)
        windows = CounterMetricFamily(
            "tensorgate_drift_windows", "Drift windows closed", labels=LABELS)
        cpu = CounterMetricFamily(
            "tensorgate_drift_cpu_seconds", "CPU time drift monitoring spent on a version "
            "(features on its worker threads and the drift thread, windows, statistics)",
            labels=LABELS)
        for m in monitors:
            labels = [m.name, m.version]
            rows.add_metric(labels, m.rows_total)
            dropped.add_metric(labels, m.dropped)
            windows.add_metric(labels, m.windows)
            cpu.add_metric(labels, m.cpu_seconds)
            last = m.last  # one read: the drift thread replaces it whole
            if last is None:
                continue
            score.add_metric(labels, last.score)
            window_rows.add_metric(labels, last.rows)
            for name, value in last.psi.items():
                psi.add_metric(labels + [name], value)
            for name, value in last.ks.items():
                ks.add_metric(labels + [name], value)
        yield from (psi, ks, score, window_rows, rows, dropped, windows, cpu)


# prometheus_client writes "# TYPE x_total counter" for every counter, but Triton's
# counters have no _total suffix, and their samples don't either: name the metadata as
# the samples are named (as Triton's own /metrics does), so Prometheus types them.
_TRITON_COUNTER_META = re.compile(rb"^# (HELP|TYPE) (nv_(?:inference|cache|energy)_\w+)_total ", re.M)


def exposition(registry: CollectorRegistry) -> bytes:
    return _TRITON_COUNTER_META.sub(rb"# \1 \2 ", generate_latest(registry))


class TransportCollector:
    """grpc core's own call counters for this process's gRPC server, from channelz.

    Calls that grpc core sheds before the event loop accepts them (its backlog of
    unaccepted calls is full; the client sees CANCELLED) never reach the per-model
    statistics above: here they are calls started that neither succeeded nor failed
    and are no longer in progress (issue #8).
    """

    def collect(self):
        started = succeeded = failed = 0
        try:
            from grpc._cython import cygrpc  # channelz has no public Python API

            for server in json.loads(cygrpc.channelz_get_servers(0)).get("server", ()):
                data = server.get("data", {})
                started += int(data.get("callsStarted", 0))
                succeeded += int(data.get("callsSucceeded", 0))
                failed += int(data.get("callsFailed", 0))
        except Exception:  # channelz off or its JSON changed: no transport families
            return
        for name, doc, value in (
            ("tensorgate_grpc_calls_started", "Calls grpc core received, every RPC", started),
            ("tensorgate_grpc_calls_succeeded", "Calls that ended with status OK", succeeded),
            ("tensorgate_grpc_calls_failed",
             "Calls that ended with a status other than OK sent by the server", failed),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "tensorgate_grpc_calls_unfinished",
            "Calls started that neither succeeded nor failed: in progress, or shed by grpc "
            "core before the server accepted them (clients see CANCELLED)",
            value=started - succeeded - failed,
        )


class NativeFrontendCollector:
    """The native front end's own counters (grpc++ owns the port; grpc core's counters
    above then count only the calls it relays to grpc.aio)."""

    def __init__(self, frontend) -> None:
        self.frontend = frontend

    def collect(self):
        s = self.frontend.stats()
        for name, doc, value in (
            ("tensorgate_native_infer_calls", "ModelInfer calls the native front end read",
             s["infer_started"]),
            ("tensorgate_native_stream_messages",
             "ModelStreamInfer request messages the native front end read",
             s["stream_messages"]),
            ("tensorgate_native_infer_shed",
             "ModelInfer calls (and stream messages, answered with an error_message) shed "
             "at once because too many waited for the event loop (--max-pending-calls)",
             s["infer_shed"]),
            ("tensorgate_native_relayed_calls",
             "Calls of every other RPC relayed to the grpc.aio server", s["relayed_started"]),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "tensorgate_native_infer_waiting",
            "ModelInfer calls and stream messages read by grpc++ and waiting for the event "
            "loop",
            value=s["infer_waiting"],
        )
        yield GaugeMetricFamily(
            "tensorgate_native_infer_in_python",
            "ModelInfer calls and stream messages the event loop holds and has not "
            "answered yet",
            value=s["infer_with_python"] + s["stream_messages_with_python"],
        )


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - no access log per scrape
        pass


def serve_metrics(
    host: str, port: int, versions: Callable[[], Iterable], events: ModelEvents | None = None,
    routes=None, frontend=None, cache=None, collectors: Iterable = (),
):
    """Start the /metrics HTTP server in a thread; returns (server, bound port).
    ``routes``: a RouteManager whose route and variant families are exposed too;
    ``frontend``: the native front end, whose counters are exposed too; ``cache``: the
    response cache, likewise; ``collectors``: more prometheus_client collectors (e.g.
    the prediction log's)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(StatsCollector(versions, events))
    registry.register(TransportCollector())
    registry.register(DriftCollector(versions))
    if frontend is not None:
        registry.register(NativeFrontendCollector(frontend))
    if cache is not None:
        registry.register(CacheCollector(cache))
    for collector in collectors:
        registry.register(collector)
    if routes is not None:
        from tensorgate.observability.route_metrics import RouteCollector

        registry.register(RouteCollector(routes))

    def app(environ, start_response):
        # /metrics only: a probe pointed here (e.g. Triton's GET :8002/v2/health/ready)
        # must fail, not read metrics text as "ready".
        if environ.get("PATH_INFO") != "/metrics":
            body = b"Not Found: this port serves /metrics only\n"
            start_response("404 Not Found", [("Content-Type", "text/plain"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        body = exposition(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN),
                                  ("Content-Length", str(len(body)))])
        return [body]

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        daemon_threads = True

    server = make_server(host, port, app, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, server.server_port
