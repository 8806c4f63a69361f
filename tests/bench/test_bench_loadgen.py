"""The load loop against a fake server: open-loop pacing, closed-loop concurrency,
and error accounting (counts by status must equal what the server did)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import uvloop

from bench.harness import histogram as hdr
from bench.harness.loadgen import WorkerSpec, drive, open_channel, poisson_schedule
from bench.harness.runner import merge_step, worker_specs
from bench.harness.scenario import Scenario, Step
from bench.harness.workers import WorkerPool
from bench_fakes import FakeServer

PAYLOADS = (b"\x0a\x01m",)  # ModelInferRequest(model_name="m"): the fake never parses it


def run_drive(spec: WorkerSpec, delay_s: float = 0.05):
    """drive() on its own uvloop loop, starting ``delay_s`` from now."""
    import time

    async def main():
        channel = open_channel(spec.url)
        try:
            await channel.channel_ready()
            return await drive(channel, spec, time.monotonic_ns() + int(delay_s * 1e9))
        finally:
            await channel.close()

    return uvloop.run(main())


def test_poisson_schedule_mean_rate_and_spread():
    rate, n = 1000.0, 50_000
    gen = poisson_schedule(rate, 0, np.random.default_rng(3))
    times = np.fromiter((next(gen) for _ in range(n)), np.int64, n)
    gaps = np.diff(times)
    assert (gaps >= 0).all()
    assert n / (times[-1] / 1e9) == pytest.approx(rate, rel=0.02)
    # Exponential gaps: standard deviation equals the mean (coefficient of variation 1).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


def test_open_loop_holds_its_rate_against_a_slow_server():
    # 20 ms per request at 1000/s: ~20 requests always outstanding. A generator that
    # waited for answers would fall to a few hundred/s; one that slept each gap in turn
    # instead of following the absolute schedule would lose the gaps shorter than the
    # 1 ms timer tick (to ~730/s), and any stall would push every later arrival back.
    rate, seconds = 1000.0, 1.5
    with FakeServer(delay_s=0.02) as server:
        result = run_drive(WorkerSpec(url=server.url, payloads=PAYLOADS, rate=rate,
                                      duration_s=seconds, seed=11))
        assert server.ok == result.ok + result.warmup_requests
    assert result.sent == result.ok
    assert result.errors == {}
    # Poisson count over 1.5 s at 1000/s: sd ~ 39 (2.6%); 12% is > 4 sd.
    assert result.ok == pytest.approx(rate * seconds, rel=0.12)
    assert result.elapsed_ns / 1e9 == pytest.approx(seconds, rel=0.02)
    assert result.ok / (result.elapsed_ns / 1e9) == pytest.approx(rate, rel=0.12)
    lag = hdr.merge([result.lag])
    assert lag.get_total_count() == result.sent
    # Most sends leave within a few timer ticks of their scheduled time (a single stall
    # of a busy machine may delay a few; the schedule catches up after it).
    assert lag.get_value_at_percentile(90) < 10_000, "sends fell behind the arrival schedule"
    assert server.max_in_flight > 5  # requests overlapped: the loop did not wait for answers
    # Latency covers the server's 20 ms wait (no upper bound: a busy machine adds to it).
    latency = hdr.summarize(hdr.merge([result.histogram]))
    assert latency["p50"] >= 19_900


def test_closed_loop_keeps_exactly_its_concurrency_in_flight():
    with FakeServer(delay_s=0.02) as server:
        result = run_drive(WorkerSpec(url=server.url, payloads=PAYLOADS, concurrency=8,
                                      warmup_s=0.1, duration_s=1.0))
        assert server.max_in_flight == 8
    # At most 8 slots x (1 s / 20 ms + the one in flight at the end); at least half of
    # that even on a busy machine.
    assert 200 <= result.ok <= 8 * (1.0 / 0.02 + 1)
    assert result.warmup_requests > 0  # warm-up requests are sent but not counted


def test_request_quota_and_errors_by_status_are_exact():
    # Every 3rd request the server answers RESOURCE_EXHAUSTED: of 300, exactly 100.
    with FakeServer(fail_every=3) as server:
        result = run_drive(WorkerSpec(url=server.url, payloads=PAYLOADS, concurrency=4,
                                      requests=300, duration_s=30))
        assert (server.calls, server.failed) == (300, 100)
    assert result.ok == 200
    assert result.errors == {"RESOURCE_EXHAUSTED": 100}
    assert hdr.merge([result.histogram]).get_total_count() == 200  # errors: no latency


def test_deadline_exceeded_is_counted_per_request():
    with FakeServer(delay_s=0.3) as server:
        result = run_drive(WorkerSpec(url=server.url, payloads=PAYLOADS, concurrency=2,
                                      requests=6, duration_s=10, timeout_s=0.05))
    assert result.ok == 0
    assert result.errors == {"DEADLINE_EXCEEDED": 6}


def test_worker_processes_split_the_load_and_merge_exactly():
    # Two spawned workers share 300 requests; the server fails every 3rd of those it
    # sees, whatever the interleaving: merged counts must be exactly 200 ok, 100 failed.
    scenario = Scenario(model="m", concurrency=(6,), requests=300, warmup_s=0, duration_s=30,
                        workers=2).validate()
    step = Step(concurrency=6)
    with FakeServer(fail_every=3, fail_code=grpc.StatusCode.UNAVAILABLE) as server:
        specs = worker_specs(server.url, step, scenario, list(PAYLOADS), {})
        assert [s.concurrency for s in specs] == [3, 3]
        assert [s.requests for s in specs] == [150, 150]
        seen = []
        with WorkerPool(2) as pool:
            results = pool.run_step(specs, lambda *totals: seen.append(totals))
        assert (server.calls, server.failed) == (300, 100)
    row = merge_step(step, scenario, results, None)
    assert row["ok"] == 200 and row["completed"] == 300
    assert row["errors"] == {"UNAVAILABLE": 100}
    assert row["latency_us"]["count"] == 200
    assert row["client"]["workers"] == 2
    assert row["client"]["cpu_cores"] is not None
    assert seen and seen[-1][:2] == (200, 100)  # progress ends at the final totals
