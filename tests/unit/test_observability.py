"""Metrics (collector output, histograms from plain counters), JSON logs, request-log
sampling, settings and the repository hooks that drive per-model health."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from types import SimpleNamespace

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from tensorgate.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, RuntimeFailure
from tensorgate.observability import logs
from tensorgate.observability.hooks import ModelHooks
from tensorgate.observability.metrics import StatsCollector, exposition, histogram_buckets
from tensorgate.observability.stats import (
    LATENCY_BOUNDS_NS,
    Buckets,
    ModelEvents,
    VersionStats,
    status_name,
)
from tensorgate.settings import Settings


def _version(name="m", version="1", stats=None, queued=2, inflight=3):
    return SimpleNamespace(
        name=name, version_str=version, stats=stats or VersionStats(),
        batcher=SimpleNamespace(queued=queued), inflight=inflight,
    )


def _scrape(versions, events=None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(lambda: versions, events))
    return exposition(registry).decode()


def _value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    raise AssertionError(f"{name} {labels} not in:\n{text}")


def test_buckets_are_le_and_cumulative_at_scrape():
    b = Buckets((1, 2, 4))
    for v in (0, 1, 2, 3, 4, 5, 100):
        b.observe(v)
    assert b.counts == [2, 1, 2, 2] and b.count == 7 and b.total == 115
    buckets, total = histogram_buckets(b, 1)
    assert buckets == [("1.0", 2), ("2.0", 3), ("4.0", 5), ("+Inf", 7)]
    assert total == 115


def test_latency_buckets_span_microseconds_to_seconds():
    assert LATENCY_BOUNDS_NS[0] == 25_000 and LATENCY_BOUNDS_NS[-1] == 10_000_000_000
    buckets, _ = histogram_buckets(Buckets(LATENCY_BOUNDS_NS), 1e-9)
    assert [le for le, _ in buckets][:3] == ["2.5e-05", "5e-05", "0.0001"]


def test_status_names_and_triton_reasons():
    s = VersionStats()
    for exc in (ResourceExhausted("q"), DeadlineExceeded("d"), asyncio.CancelledError(),
                RuntimeFailure("ort"), InvalidArgument("x"), InvalidArgument("y"),
                KeyError("bug")):
        s.record_failure(1000, exc)
    assert s.fail_codes == {
        "RESOURCE_EXHAUSTED": 1, "DEADLINE_EXCEEDED": 1, "CANCELLED": 1, "INTERNAL": 2,
        "INVALID_ARGUMENT": 2,
    }
    assert s.fail_reasons == {"REJECTED": 2, "CANCELED": 1, "BACKEND": 2, "OTHER": 2}
    assert s.fail.count == 7 and s.request_hist.count == 7
    assert status_name(KeyError()) == "INTERNAL"


def test_collector_exposes_triton_and_tensorgate_families():
    stats = VersionStats()
    stats.record_success(40_000)  # 40 µs
    stats.record_success(3_000_000)  # 3 ms
    stats.record_failure(10_000, InvalidArgument("bad"))
    stats.record_batch(4, 1_000, 20_000, 1_000)
    stats.record_request(7_000, 1_000, 20_000, 1_000)
    events = ModelEvents()
    events.count("m", "load")
    events.loaded("m", 0.2)
    text = _scrape([_version(stats=stats)], events)
    # Triton's exact names (no _total suffix) and labels.
    assert _value(text, "nv_inference_request_success", model="m", version="1") == 2
    assert _value(text, "nv_inference_request_failure", model="m", version="1",
                  reason="OTHER") == 1
    assert _value(text, "nv_inference_request_failure", reason="REJECTED") == 0
    assert _value(text, "nv_inference_count", model="m") == 4
    assert _value(text, "nv_inference_exec_count", model="m") == 1
    assert _value(text, "nv_inference_request_duration_us", model="m") == 3050
    assert _value(text, "nv_inference_queue_duration_us", model="m") == 7
    assert _value(text, "nv_inference_compute_infer_duration_us", model="m") == 20
    assert _value(text, "nv_inference_pending_request_count", model="m") == 2
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_request_failure counter" in text
    # TensorGate's own.
    assert _value(text, "tensorgate_request_failures_total", model="m",
                  code="INVALID_ARGUMENT") == 1
    assert _value(text, "tensorgate_request_duration_seconds_bucket", le="5e-05") == 2
    assert _value(text, "tensorgate_request_duration_seconds_bucket", le="+Inf") == 3
    assert _value(text, "tensorgate_request_duration_seconds_count") == 3
    assert _value(text, "tensorgate_request_duration_seconds_sum") == pytest.approx(0.00305)
    assert _value(text, "tensorgate_queue_duration_seconds_bucket", le="2.5e-05") == 1
    assert _value(text, "tensorgate_compute_duration_seconds_sum") == pytest.approx(22e-6)
    assert _value(text, "tensorgate_batch_size_bucket", le="4.0") == 1
    assert _value(text, "tensorgate_batch_size_bucket", le="2.0") == 0
    assert _value(text, "tensorgate_queue_depth", model="m") == 2
    assert _value(text, "tensorgate_inflight_requests", model="m") == 3
    assert _value(text, "tensorgate_model_events_total", model="m", event="load") == 1
    assert _value(text, "tensorgate_model_load_duration_seconds_bucket", le="0.25") == 1


def test_json_log_lines_carry_event_fields():
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    try:
        logging.getLogger("tensorgate.test").info(
            "model %s loaded", "m", extra={"event": "model", "model": "m"}
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("tensorgate.test").exception("failed")
    finally:
        logs.configure("INFO", "text")
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["msg"] == "model m loaded" and first["level"] == "INFO"
    assert first["logger"] == "tensorgate.test" and first["event"] == "model"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["ts"])
    assert "ValueError: boom" in second["exc"]


def test_request_logs_are_sampled(caplog):
    from tensorgate.dataplane import Outcome

    def outcome(request_id, shadow=False):
        model = SimpleNamespace(name="m", version_str="1")
        return Outcome(model, request_id, 12_000, "OK", None, None, shadow)

    caplog.set_level(logging.INFO, logger="tensorgate.requests")
    logs.RequestLog(1.0).observe(outcome("id-1"))
    logs.RequestLog(1.0).observe(outcome("id-shadow", shadow=True))  # never logged
    rare = logs.RequestLog(1e-12)
    for _ in range(100):
        rare.observe(outcome("id-2"))
    (record,) = caplog.records
    assert record.request_id == "id-1" and record.duration_us == 12 and record.code == "OK"


def test_settings_validate_observability_fields():
    assert Settings().trace_exporter == "" and Settings().log_format == "text"
    for bad in ({"trace_exporter": "jaeger"}, {"log_format": "xml"},
                {"trace_sample_ratio": 1.5}, {"request_log_sample_ratio": -0.1}):
        with pytest.raises(ValueError):
            Settings(**bad)


class RecordingHealth:
    def __init__(self) -> None:
        self.calls = []

    async def set(self, service, status):
        self.calls.append((service, status))


def test_hooks_set_per_model_health_and_count_events():
    table = SimpleNamespace(default={})
    repo = SimpleNamespace(table=table)
    health = RecordingHealth()
    hooks = ModelHooks(repo, health)
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)

    async def run():
        await hooks("loading", "m")
        table.default["m"] = object()
        await hooks("loaded", "m", version=1, seconds=0.5)
        del table.default["m"]
        await hooks("unloading", "m")
        await hooks("unloaded", "m")
        await hooks("load_failed", "m", reason="bad")

    asyncio.run(run())
    assert health.calls == [("m", not_serving), ("m", serving), ("m", not_serving),
                            ("m", not_serving), ("m", not_serving)]
    assert hooks.events.events == {("m", "load"): 1, ("m", "unload"): 1,
                                   ("m", "load_failed"): 1}
    assert hooks.events.load_seconds["m"].count == 1


def test_grafana_dashboard_uses_only_metrics_we_expose():
    from pathlib import Path

    from prometheus_client.process_collector import ProcessCollector

    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tensorgate.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b((?:nv_inference|tensorgate|process)_\w+)", " ".join(exprs)))
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    events = ModelEvents()
    events.count("m", "load")
    events.loaded("m", 1.0)
    stats = VersionStats()
    stats.record_failure(1, InvalidArgument("x"))
    registry.register(StatsCollector(lambda: [_version(stats=stats)], events))
    from tensorgate.observability.metrics import DriftCollector

    window = SimpleNamespace(score=0.3, rows=10, psi={"X[0]": 0.3}, ks={"X[0]": 0.2})
    monitored = SimpleNamespace(drift_monitor=SimpleNamespace(
        name="m", version="1", rows_total=10, dropped=0, windows=1, cpu_seconds=0.0,
        last=window))
    registry.register(DriftCollector(lambda: [monitored]))
    exposed = set(re.findall(r"^(\w+)[{ ]", exposition(registry).decode(), re.M))
    assert used and used <= exposed, used - exposed


def test_energy_counter_metadata_has_no_total_suffix():
    """Triton's counter names carry no _total; prometheus_client adds it to the
    metadata lines, and exposition() takes it off again (nv_energy_consumption too)."""
    from prometheus_client.core import Metric

    from tensorgate.observability.metrics import exposition

    class Energy:
        def collect(self):
            m = Metric("nv_energy_consumption", "energy", "counter")
            m.add_sample("nv_energy_consumption", {"gpu_uuid": "GPU-1"}, 1.0)
            yield m

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Energy())
    text = exposition(registry)
    assert b"# TYPE nv_energy_consumption counter\n" in text
    assert b'nv_energy_consumption{gpu_uuid="GPU-1"} 1.0' in text
