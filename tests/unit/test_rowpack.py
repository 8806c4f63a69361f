"""The prediction log's native column packing (ext/rowpack.pyx, and the batcher's
gather_bytes): row layouts, the copy, per-capture sizes, and the chunks the writer splits
a queue into."""

from __future__ import annotations

import numpy as np
import pytest

from tensorgate._ext.batcher import gather_bytes
from tensorgate._ext.rowpack import capture_bytes, row_layout


def test_row_layout_offsets_shapes_and_nulls():
    rows = [np.arange(6, dtype="<f4").reshape(2, 3), None, np.ones((1, 2), np.float32),
            np.array(7.0, np.float32)]
    offsets, shape_offsets, dims, valid = row_layout(rows, np.dtype("<f4"))
    assert offsets.dtype == np.int32 and offsets.tolist() == [0, 24, 24, 32, 36]
    assert shape_offsets.tolist() == [0, 2, 2, 4, 4]  # a 0-d row has no dimensions
    assert dims.dtype == np.int64 and dims.tolist() == [2, 3, 1, 2]
    assert valid.tolist() == [True, False, True, True]
    assert row_layout([np.zeros(2, np.float32)], np.float32)[3] is None  # no null row


def test_row_layout_declines_rows_whose_bytes_are_not_the_columns():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert row_layout([x, x.T], np.float32) is None  # a view: not C-contiguous
    assert row_layout([x.astype(">f4")], np.dtype("<f4")) is None  # another byte order
    assert row_layout([x.astype(np.float64)], np.float32) is None
    with pytest.raises(TypeError, match="row 1 is list"):
        row_layout([x, [1.0]], np.float32)


def test_gather_bytes_concatenates_rows_of_any_shape():
    rows = [np.arange(3, dtype=np.int32), None, np.array([[7, 8]], np.int32)]
    out = np.full(24, 255, np.uint8)
    assert gather_bytes(rows, out) == 20
    assert out[:20].view(np.int32).tolist() == [0, 1, 2, 7, 8]
    assert out[20:].tolist() == [255] * 4  # nothing past the rows is written
    with pytest.raises(ValueError, match="out has room for 8"):
        gather_bytes(rows, np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="source 0 is not C-contiguous"):
        gather_bytes([np.zeros((2, 2), np.float32).T], np.zeros(16, np.uint8))
    assert gather_bytes([None], np.zeros(0, np.uint8)) == 0


def test_capture_bytes_sums_the_tensor_dicts():
    a, b = np.zeros(4, np.float32), np.zeros((2, 3), np.float64)
    captures = [(1, {"x": a}, {"y": b}), (1, None, {"y": b}), (1, {}, None)]
    assert capture_bytes(captures, (1, 2)).tolist() == [64, 48, 0]
    assert capture_bytes(captures, (1,)).tolist() == [16, 0, 0]
    assert capture_bytes([], (1, 2)).tolist() == []


def test_chunks_split_by_bytes(monkeypatch):
    from tensorgate.observability import prediction_log as plog

    def cap(nbytes):
        arrays = {"x": np.zeros(nbytes, np.uint8)}
        return (1, 0, 0, "OK", None, None, None, None, arrays, None)

    sizes = [40, 30, 30, 100, 150, 10, 10]
    captures = [cap(n) for n in sizes]
    chunks = [[len(c[plog._INPUTS]["x"]) for c in chunk]
              for chunk in plog._chunks(captures, 100)]
    # As many captures as fit in 100 bytes; one too large for any chunk goes alone.
    assert chunks == [[40, 30, 30], [100], [150], [10, 10]]
