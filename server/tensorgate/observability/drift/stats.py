"""The statistics of drift: reference bins, histograms, PSI, KS, summaries.

Pure functions over numpy arrays, used by the profile (offline) and the monitor
(online, on its background thread), so both bin values the same way.

Bins. A reference's edges are its minimum, its 1/B .. (B-1)/B quantiles and the value
just above its maximum, duplicates removed (a feature with few distinct values gets
fewer bins). A value falls in bin ``searchsorted(edges, x, side="right")``: bin 0 is
below the reference's minimum and the last bin above its maximum (both open-ended, the
reference has nothing there), the others are ``[edge_i, edge_i+1)``. A constant
feature thus has three bins, and a shift of it lands in an outer bin. NaN sorts above
everything (the last bin); KS leaves NaN out.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 10
DEFAULT_SAMPLE = 1000  # reference values kept for KS
DEFAULT_CATEGORIES = 20  # BYTES: most frequent values kept, the rest is "other"
# PSI's least fraction per bin (an empty bin would make it infinite); see psi().
EPSILON = 1e-4


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Bin edges of a reference (see the module's docstring); empty when it has no
    finite value (then every value falls in one bin)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return np.empty(0, np.float64)
    inner = np.quantile(v, np.arange(1, bins) / bins) if bins > 1 else np.empty(0)
    top = np.nextafter(v.max(), np.inf)
    return np.unique(np.concatenate(([v.min()], inner, [top])))


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many ``values`` fall in each of the ``len(edges) + 1`` bins."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) + 1)


def code_counts(codes: np.ndarray, size: int) -> np.ndarray:
    """Category codes (0 .. size-1, the last being "other") counted."""
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=size)[:size]


def fractions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if not total:
        return np.zeros(len(counts), np.float64)
    return counts / float(total)


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = EPSILON,
        expected_rows: int = 0, actual_rows: int = 0) -> float:
    """Population stability index of ``actual`` against ``expected`` (bin fractions):
    sum of (a - e) * ln(a / e). 0 for identical distributions; commonly < 0.1 stable,
    0.1 .. 0.25 moderate, > 0.25 a shift. An empty bin would make it infinite: each
    side's fractions are floored at ``epsilon``, or at half a row of that side when its
    row count is given and that is more (a bin that saw no row out of n saw "under one
    row", not nothing; a 100-row window with one empty decile then adds about 0.29, not
    0.69)."""
    e = np.maximum(np.asarray(expected, np.float64), _floor(epsilon, expected_rows))
    a = np.maximum(np.asarray(actual, np.float64), _floor(epsilon, actual_rows))
    return float(np.sum((a - e) * np.log(a / e)))


def _floor(epsilon: float, rows: int) -> float:
    return max(epsilon, 0.5 / rows) if rows > 0 else epsilon


def ks(reference_sorted: np.ndarray, values: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest distance between the two
    empirical CDFs (0 .. 1). ``reference_sorted`` is sorted, without NaN; NaN in
    ``values`` is left out. nan when either side is empty."""
    r = reference_sorted
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[~np.isnan(x)])
    if not len(r) or not len(x):
        return math.nan
    both = np.concatenate((r, x))
    cdf_r = np.searchsorted(r, both, side="right") / len(r)
    cdf_x = np.searchsorted(x, both, side="right") / len(x)
    return float(np.max(np.abs(cdf_r - cdf_x)))


def reservoir(values: np.ndarray, size: int = DEFAULT_SAMPLE, seed: int = 0) -> np.ndarray:
    """A uniform sample of at most ``size`` values without NaN, sorted (KS's reference)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) > size:
        v = np.random.default_rng(seed).choice(v, size=size, replace=False)
    return np.sort(v)


def summary(values: np.ndarray) -> dict:
    """count, nan (non-finite values), mean, std, min, p01, p50, p99, max of the finite
    values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out: dict = {"count": int(len(v)), "nan": int(len(v) - len(finite))}
    if not len(finite):
        out.update(dict.fromkeys(("mean", "std", "min", "p01", "p50", "p99", "max")))
        return out
    p01, p50, p99 = np.quantile(finite, (0.01, 0.5, 0.99))
    out.update(mean=float(finite.mean()), std=float(finite.std()), min=float(finite.min()),
               p01=float(p01), p50=float(p50), p99=float(p99), max=float(finite.max()))
    return out


def top_categories(values, top: int = DEFAULT_CATEGORIES) -> list[str]:
    """The ``top`` most frequent values (ties: in sorted order)."""
    uniq, counts = np.unique(np.asarray(list(values), dtype=object).astype(str),
                             return_counts=True)
    order = sorted(range(len(uniq)), key=lambda i: (-counts[i], uniq[i]))
    return [str(uniq[i]) for i in order[:top]]
