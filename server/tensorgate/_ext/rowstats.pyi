"""Type stub for tensorgate._ext.rowstats (ext/rowstats.pyx): per-row sums and sums of
squares of float arrays in one pass, the GIL released."""

import numpy as np

def row_moments(arrays: list[np.ndarray], sums: np.ndarray, sumsq: np.ndarray) -> None:
    """Fill ``sums`` and ``sumsq`` with each row's sum and sum of squares, the rows of
    ``arrays`` (2-D float32/float64, rows each contiguous) in order; ValueError for
    anything else, before writing."""
