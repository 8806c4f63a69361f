"""Percentiles of merged per-worker histograms against numpy on the raw samples."""

from __future__ import annotations

import numpy as np
import pytest

from bench.harness import histogram as hdr


def _samples(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "lognormal":  # a latency-like long tail, ~400 µs median
        return np.rint(rng.lognormal(6.0, 0.8, n)).astype(np.int64) + 1
    if kind == "bimodal":  # fast path and slow path: percentiles jump between modes
        fast = rng.normal(300, 20, n * 9 // 10)
        slow = rng.normal(25_000, 3_000, n - len(fast))
        return np.clip(np.rint(np.concatenate([fast, slow])), 1, None).astype(np.int64)
    if kind == "wide":  # 1 µs .. 10 s, every decade
        return np.rint(10 ** rng.uniform(0, 7, n)).astype(np.int64)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "wide"])
@pytest.mark.parametrize("workers", [1, 4])
def test_merged_percentiles_match_numpy_within_hdr_bound(kind, workers):
    rng = np.random.default_rng(7)
    # n = 40,001: q% x n is never a whole number for our q, so HDR's rank (q% x n rounded)
    # and numpy's inverted_cdf rank (rounded up) are the same sample; with n = 40,000,
    # float fuzz in 99.9% x n alone can pick neighbouring ranks.
    samples = _samples(kind, 40_001, rng)
    rng.shuffle(samples)
    encoded = []
    for part in np.array_split(samples, workers):  # one histogram per "worker process"
        h = hdr.new_histogram()
        for us in part:
            hdr.record_ns(h, int(us) * 1000)
        encoded.append(hdr.encode(h))
    merged = hdr.merge(encoded)
    summary = hdr.summarize(merged, exact_max_us=int(samples.max()))
    assert summary["count"] == len(samples)
    assert summary["max"] == samples.max()
    for key, q in hdr.PERCENTILES.items():
        expected = float(np.percentile(samples, q, method="inverted_cdf"))
        bound = expected * hdr.RELATIVE_ERROR + 1  # +1: whole-µs recording
        assert abs(summary[key] - expected) <= bound, (key, summary[key], expected)
    assert summary["mean"] == pytest.approx(samples.mean(), rel=2 * hdr.RELATIVE_ERROR)


def test_merge_counts_every_worker():
    a, b = hdr.new_histogram(), hdr.new_histogram()
    for _ in range(300):
        hdr.record_ns(a, 100_000)  # 100 µs
    for _ in range(100):
        hdr.record_ns(b, 10_000_000)  # 10 ms
    merged = hdr.merge([hdr.encode(a), b"", hdr.encode(b)])  # b"": a worker with no samples
    assert merged.get_total_count() == 400
    assert merged.get_value_at_percentile(75) == pytest.approx(100, rel=hdr.RELATIVE_ERROR)
    assert merged.get_value_at_percentile(76) == pytest.approx(10_000, rel=hdr.RELATIVE_ERROR)


def test_record_rounds_to_microseconds_and_clamps():
    h = hdr.new_histogram()
    assert hdr.record_ns(h, 1_499) == 1
    assert hdr.record_ns(h, 1_500) == 2
    assert hdr.record_ns(h, 0) == hdr.LOWEST_US  # sub-µs loopback answer
    assert hdr.record_ns(h, 10**15) == hdr.HIGHEST_US  # beyond 10 min: clamped, no raise
    assert h.get_total_count() == 4


def test_empty_summary_has_no_numbers():
    summary = hdr.summarize(hdr.new_histogram())
    assert summary["count"] == 0
    assert all(summary[k] is None for k in (*hdr.PERCENTILES, "max", "mean"))


def test_percentiles_never_exceed_the_exact_max():
    h = hdr.new_histogram()
    for us in (4_370, 4_371, 4_378):  # one HDR bucket (4 µs wide here) holds them all
        hdr.record_ns(h, us * 1000)
    summary = hdr.summarize(h, exact_max_us=4_378)
    assert h.get_value_at_percentile(99.9) > 4_378  # the bucket's top, above the max
    assert summary["p99.9"] == summary["max"] == 4_378
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99.9"]
