"""Per model version counters: the one source for ModelStatistics and /metrics.

Updated on the event loop thread only (workers hand batches back to the loop first),
so plain integers need no locks. Durations are nanoseconds, as ModelStatistics wants.
Histograms are plain integer lists too (``Buckets``): one ``bisect`` and two additions
per observation, read by the Prometheus collector at scrape time; no prometheus_client
object is touched per request.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

from tensorgate.errors import status_of

# Bucket upper bounds. Latencies: 25 µs .. 10 s, roughly 1-2.5-5 per decade, in ns.
LATENCY_BOUNDS_S = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
LATENCY_BOUNDS_NS = tuple(round(b * 1e9) for b in LATENCY_BOUNDS_S)
BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BOUNDS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Triton's failure reasons (nv_inference_request_failure{reason=...}), from the gRPC code.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_REASON_BY_CODE = {
    "RESOURCE_EXHAUSTED": "REJECTED",  # queue full / over a limit
    "DEADLINE_EXCEEDED": "REJECTED",  # queue timeout or deadline passed before it ran
    "CANCELLED": "CANCELED",
    "INTERNAL": "BACKEND",  # the runtime failed on a valid request
}


def status_name(exc: BaseException) -> str:
    """The status name (as gRPC spells it) an exception reaches the wire with."""
    return status_of(exc).name


class Buckets:
    """A histogram as plain integers: counts[i] holds observations <= bounds[i] (and
    > bounds[i-1]); the last slot is +Inf. Not cumulative; the collector sums."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0

    def observe(self, value) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


def _latency() -> Buckets:
    return Buckets(LATENCY_BOUNDS_NS)


@dataclass
class VersionStats:
    last_inference_ms: int = 0
    inference_count: int = 0  # rows inferred (a batch-4 request counts 4)
    execution_count: int = 0  # model executions (batches)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # Response cache (tensorgate.cache): hits (lookup time) and misses (lookup and
    # insertion time), as Triton's InferStatistics cache_hit / cache_miss.
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)
    # gRPC status name -> failed requests; Triton reason -> failed requests
    fail_codes: dict[str, int] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    # Histograms (ns, rows): request = whole request, queue and compute per request,
    # batch_size per execution.
    request_hist: Buckets = field(default_factory=_latency)
    queue_hist: Buckets = field(default_factory=_latency)
    compute_hist: Buckets = field(default_factory=_latency)
    batch_hist: Buckets = field(default_factory=lambda: Buckets(BATCH_SIZE_BOUNDS))
    # Variable-length batching: elements of padded inputs as sent, and as run (padded);
    # padded / real - 1 is the padding overhead.
    varlen_real_elements: int = 0
    varlen_padded_elements: int = 0

    def record_success(self, ns: int) -> None:
        self.success.count += 1
        self.success.ns += ns
        self.request_hist.observe(ns)

    def record_failure(self, ns: int, exc: BaseException) -> str:
        """Count a failed request; returns its gRPC status name."""
        self.fail.count += 1
        self.fail.ns += ns
        self.request_hist.observe(ns)
        code = status_name(exc)
        self.fail_codes[code] = self.fail_codes.get(code, 0) + 1
        self.fail_reasons[_REASON_BY_CODE.get(code, "OTHER")] += 1
        return code

    def record_batch(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        per = self.batches.get(rows)
        if per is None:
            per = self.batches[rows] = BatchSizeStats()
        per.compute_input.add(input_ns)
        per.compute_infer.add(infer_ns)
        per.compute_output.add(output_ns)
        self.batch_hist.observe(rows)

    def record_request(self, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self.queue_hist.observe(queue_ns)
        self.compute_hist.observe(input_ns + infer_ns + output_ns)


@dataclass
class ModelEvents:
    """Load/unload events and load durations, by model (they outlive the versions).

    Updated on the event loop thread (the repository's change hooks)."""

    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, event) -> n
    load_seconds: dict[str, Buckets] = field(default_factory=dict)

    def count(self, model: str, event: str) -> None:
        key = (model, event)
        self.events[key] = self.events.get(key, 0) + 1

    def loaded(self, model: str, seconds: float) -> None:
        hist = self.load_seconds.get(model)
        if hist is None:
            hist = self.load_seconds[model] = Buckets(LOAD_BOUNDS_S)
        hist.observe(seconds)
