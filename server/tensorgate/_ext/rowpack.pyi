"""Type stub for tensorgate._ext.rowpack (ext/rowpack.pyx): one tensor's arrays over many
rows as Arrow's binary layout (offsets and one buffer), for the prediction log."""

import numpy as np

def row_layout(
    arrays: list[np.ndarray | None], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(offsets int32[n+1], shape_offsets int32[n+1], dims int64, valid bool[n] or None);
    None when a row is not C-contiguous or not of ``dtype``."""

def capture_bytes(captures: list[tuple], fields: tuple[int, ...]) -> np.ndarray:
    """Per capture, the summed bytes of the arrays in the dicts at ``fields`` (int64)."""
