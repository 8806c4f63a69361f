# cython: language_level=3
"""One tensor's arrays over many rows as Arrow's binary layout: offsets and one buffer.

The prediction log stores each logged tensor as a binary value (its raw little-endian
bytes) and its shape as a list. Done in Python, laying out a column cost several
attribute reads, a reshape and a list entry per row, with the GIL held, on a thread
beside the event loop: about 3 us of a logged convnet request's 5 us of writer Python
(perf, bench.logging_cost). ``row_layout`` reads every row's size and shape in one C
loop (the batcher's ``gather_bytes`` then copies the bytes, the GIL released), and
``capture_bytes`` sizes a queue's captures.
"""

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

import numpy as np

cnp.import_array()

# Offsets are int32 (Arrow's binary type): a column chunk holds less than this.
cdef int64_t _MAX_BYTES = 2147483647


def row_layout(list arrays, object dtype):
    """The layout of ``arrays`` (one numpy array per row, or None for a null row) as one
    binary column: ``(offsets, shape_offsets, dims, valid)`` where ``offsets`` (int32,
    n + 1) bound each row's bytes, ``shape_offsets`` (int32, n + 1) bound each row's
    dimensions in ``dims`` (int64), and ``valid`` is a bool array (False: a null row),
    or None when no row is null.

    Returns None instead when a row is not C-contiguous or not of ``dtype`` (its bytes
    are not the column's as they are): the caller converts such rows and asks again.
    ValueError when the column would hold 2 GiB or more (int32 offsets)."""
    cdef Py_ssize_t n = len(arrays), i, axis, ndim, nulls = 0, rank_total = 0
    cdef cnp.dtype want = np.dtype(dtype)
    cdef cnp.ndarray array
    cdef object item
    cdef int64_t total = 0, dim_at = 0
    cdef cnp.npy_intp* dims_of
    for i in range(n):
        item = arrays[i]
        if item is None:
            nulls += 1
            continue
        if not isinstance(item, cnp.ndarray):
            raise TypeError(f"row {i} is {type(item).__name__}, not numpy.ndarray")
        array = <cnp.ndarray>item
        if not cnp.PyArray_IS_C_CONTIGUOUS(array) or not (
                array.descr is want or cnp.PyArray_EquivTypes(array.descr, want)):
            return None
        total += cnp.PyArray_NBYTES(array)
        rank_total += cnp.PyArray_NDIM(array)
    if total > _MAX_BYTES:
        raise ValueError(f"{total} bytes do not fit one binary column chunk (int32 offsets)")
    cdef cnp.ndarray offsets = np.empty(n + 1, np.int32)
    cdef cnp.ndarray shape_offsets = np.empty(n + 1, np.int32)
    cdef cnp.ndarray dims = np.empty(rank_total, np.int64)
    cdef int32_t* off = <int32_t*>cnp.PyArray_DATA(offsets)
    cdef int32_t* shape_off = <int32_t*>cnp.PyArray_DATA(shape_offsets)
    cdef int64_t* dim = <int64_t*>cnp.PyArray_DATA(dims)
    cdef object valid = None
    cdef cnp.ndarray valid_array
    cdef char* flags = NULL
    if nulls:
        valid_array = np.ones(n, np.bool_)
        flags = <char*>cnp.PyArray_DATA(valid_array)
        valid = valid_array
    total = 0
    off[0] = 0
    shape_off[0] = 0
    for i in range(n):
        item = arrays[i]
        if item is not None:
            array = <cnp.ndarray>item
            total += cnp.PyArray_NBYTES(array)
            ndim = cnp.PyArray_NDIM(array)
            dims_of = cnp.PyArray_DIMS(array)
            for axis in range(ndim):
                dim[dim_at] = dims_of[axis]
                dim_at += 1
        else:
            flags[i] = 0
        off[i + 1] = <int32_t>total
        shape_off[i + 1] = <int32_t>dim_at
    return offsets, shape_offsets, dims, valid


def capture_bytes(list captures, tuple fields):
    """Per capture (a tuple), the bytes of the arrays in its ``fields`` (indices of
    dicts of numpy arrays, or None), summed: an int64 array. What the prediction log
    splits a queue's captures into chunks by, without Python per capture."""
    cdef Py_ssize_t n = len(captures), i
    cdef cnp.ndarray sizes = np.zeros(n, np.int64)
    cdef int64_t* size = <int64_t*>cnp.PyArray_DATA(sizes)
    cdef object capture, tensors, value
    cdef int64_t total
    for i in range(n):
        capture = captures[i]
        total = 0
        for field in fields:
            tensors = capture[field]
            if tensors is None:
                continue
            for value in (<dict?>tensors).values():
                if isinstance(value, cnp.ndarray):
                    total += cnp.PyArray_NBYTES(<cnp.ndarray>value)
        size[i] = total
    return sizes
