"""Latency histograms: one HdrHistogram per worker process, merged in the parent.

Why HDR and not a list of samples: a histogram has a fixed size whatever the request
count, merges across processes by adding counts, and every value read back is within a
known relative error of a recorded one. Values are whole microseconds from 1 µs to
10 min at 3 significant digits, so a percentile is off by at most 1/1024 of its value
(HDR keeps 2048 sub-buckets per power of two for 3 digits): far below run-to-run noise.

Histograms cross process boundaries in HDR's own compressed encoding (a few hundred
bytes), not as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 min: longer than any step may last
SIGNIFICANT_DIGITS = 3
#: The most a reported percentile can differ from the sample it stands for, relative.
RELATIVE_ERROR = 1 / 1024
#: Percentiles every step reports; the keys of summarize()'s dict.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ns(histogram: HdrHistogram, nanoseconds: int) -> int:
    """Record a latency given in ns, as µs rounded to nearest; returns the µs recorded.

    Clamped into the trackable range: a sub-µs loopback answer counts as 1 µs, and
    record_value would raise on anything above HIGHEST_US.
    """
    micros = min(max((nanoseconds + 500) // 1000, LOWEST_US), HIGHEST_US)
    histogram.record_value(micros)
    return micros


def encode(histogram: HdrHistogram) -> bytes:
    return histogram.encode()


def merge(encoded: Iterable[bytes]) -> HdrHistogram:
    """One histogram holding the counts of every encoded histogram given."""
    merged = new_histogram()
    for blob in encoded:
        if blob:
            merged.decode_and_add(blob)
    return merged


def summarize(histogram: HdrHistogram, exact_max_us: int | None = None) -> dict:
    """{"count", "mean", "p50", "p90", "p99", "p99.9", "max"} in µs (None when empty).

    ``exact_max_us``: the workers track the true maximum beside the histogram (HDR would
    report the top of the max's bucket); it replaces the histogram's when given.
    """
    count = histogram.get_total_count()
    if count == 0:
        return {"count": 0, "mean": None, **{k: None for k in PERCENTILES}, "max": None}
    out = {"count": count, "mean": round(histogram.get_mean_value(), 1)}
    top = exact_max_us if exact_max_us is not None else histogram.get_max_value()
    for key, q in PERCENTILES.items():
        # HDR answers with the top of the percentile's bucket, which can lie above the
        # true maximum: a p99.9 over the max would read as nonsense.
        out[key] = min(histogram.get_value_at_percentile(q), top)
    out["max"] = top
    return out
