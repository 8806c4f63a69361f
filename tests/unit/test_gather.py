"""tensorgate._ext.batcher.gather against numpy.concatenate."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tensorgate._ext.batcher import gather

NUMERIC_DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
]


def _sources(dtype, trailing, rows, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for n in rows:
        values = rng.integers(0, 100, size=(n, *trailing))
        arrays.append(np.ascontiguousarray(values.astype(dtype)))
    return arrays


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("trailing", [(), (3,), (2, 5)], ids=str)
def test_matches_concatenate(dtype, trailing):
    sources = _sources(dtype, trailing, rows=[2, 1, 0, 4])
    expected = np.concatenate(sources)
    out = np.empty((8, *trailing), dtype=dtype)
    out[...] = np.ones((), dtype=dtype)  # rows past the gathered ones stay as they were

    written = gather(sources, out)

    assert written == expected.nbytes
    np.testing.assert_array_equal(out[:7], expected)
    np.testing.assert_array_equal(out[7:], np.ones((1, *trailing), dtype=dtype))


def test_large_copy_and_exact_fit():
    # Large enough to take the GIL-released path.
    sources = _sources(np.float32, (256,), rows=[100, 60, 96], seed=1)
    out = np.empty((256, 256), dtype=np.float32)
    assert gather(sources, out) == out.nbytes
    np.testing.assert_array_equal(out, np.concatenate(sources))


def test_bytes_dtype_and_tuple_of_sources():
    sources = (np.array([b"ab", b"c"], dtype="S2"), np.array([b"xy"], dtype="S2"))
    out = np.empty(3, dtype="S2")
    assert gather(sources, out) == 6
    assert out.tolist() == [b"ab", b"c", b"xy"]


def test_no_sources():
    assert gather([], np.empty((2, 2), dtype=np.int8)) == 0


def test_native_and_explicit_byte_order_are_the_same_dtype():
    source = np.arange(4, dtype="=i4")
    out = np.zeros(4, dtype="<i4")
    assert gather([source], out) == 16
    np.testing.assert_array_equal(out, source)


def _raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def test_dtype_mismatch():
    out = np.empty((4, 2), dtype=np.float32)
    sources = [np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float64)]
    with _raises(ValueError, "source 1: dtype float64 does not match out dtype float32"):
        gather(sources, out)


def test_byte_order_mismatch():
    out = np.empty(2, dtype="<f4")
    with _raises(ValueError, "source 0: dtype >f4 does not match out dtype float32"):
        gather([np.zeros(2, dtype=">f4")], out)


def test_trailing_shape_mismatch():
    out = np.empty((4, 3), dtype=np.int32)
    sources = [np.zeros((1, 3), np.int32), np.zeros((2, 4), np.int32)]
    with _raises(ValueError, "source 1: shape (2, 4) does not match out.shape[1:] (3,)"):
        gather(sources, out)


def test_rank_mismatch():
    out = np.empty((4, 3), dtype=np.int32)
    with _raises(ValueError, "source 0: shape (3,) does not match out.shape[1:] (3,)"):
        gather([np.zeros(3, np.int32)], out)


def test_non_contiguous_source():
    out = np.empty((4, 2), dtype=np.int16)
    strided = np.zeros((2, 4), np.int16)[:, ::2]
    with _raises(ValueError, "source 1 is not C-contiguous"):
        gather([np.zeros((1, 2), np.int16), strided], out)
    transposed = np.zeros((2, 2), np.int16).T
    with _raises(ValueError, "source 0 is not C-contiguous"):
        gather([transposed], out)


def test_too_many_rows():
    out = np.empty((4, 2), dtype=np.uint8)
    sources = [np.zeros((3, 2), np.uint8), np.zeros((2, 2), np.uint8)]
    with _raises(ValueError, "sources hold 5 rows, out has room for 4"):
        gather(sources, out)


def test_bad_out():
    with _raises(ValueError, "out is not C-contiguous"):
        gather([], np.empty((4, 4), np.int8)[:, ::2])
    readonly = np.empty((4, 2), np.int8)
    readonly.flags.writeable = False
    with _raises(ValueError, "out is read-only"):
        gather([], readonly)
    with _raises(ValueError, "out must have at least one dimension"):
        gather([], np.empty((), np.int8))
    with _raises(ValueError, "gather cannot copy arrays of dtype object"):
        gather([np.empty(1, object)], np.empty(2, object))


def test_source_must_be_an_array():
    with _raises(TypeError, "source 0 is list, not numpy.ndarray"):
        gather([[1, 2]], np.empty(2, np.int64))
