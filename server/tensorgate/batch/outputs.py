"""Model outputs -> Arrow columns: one column per output, named as the output.

A row's tensor becomes nested lists, one level per dimension: a fixed dimension is a
fixed-size list, a variable one (-1) a list; a row with no dimensions is a plain
value. BYTES outputs are strings. The type depends only on the output's spec, so every
part file of a run has the same schema.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tensorgate.tensors import TensorSpec


def leaf_type(spec: TensorSpec) -> pa.DataType:
    if spec.dtype.wire == "BYTES":
        return pa.string()
    return pa.from_numpy_dtype(spec.dtype.numpy)


def output_type(spec: TensorSpec) -> pa.DataType:
    t = leaf_type(spec)
    for d in reversed(spec.dims):
        t = pa.list_(t, d) if d >= 0 else pa.list_(t)
    return t


def _leaf(spec: TensorSpec, flat: np.ndarray) -> pa.Array:
    if spec.dtype.wire == "BYTES":
        return pa.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                         for v in flat.tolist()], type=pa.string())
    return pa.array(np.ascontiguousarray(flat).astype(spec.dtype.numpy, copy=False))


def to_arrow(spec: TensorSpec, data) -> pa.Array:
    """``data``: an array (rows, *dims), or a list of per-row arrays."""
    dims = tuple(spec.dims)
    if isinstance(data, np.ndarray):
        if data.ndim != len(dims) + 1:
            data = list(data)
        else:
            shapes = None
            rows = data.shape[0]
    if not isinstance(data, np.ndarray):
        rows = len(data)
        data = [np.asarray(r) for r in data]
        if any(r.ndim != len(dims) for r in data):
            got = next(r.shape for r in data if r.ndim != len(dims))
            raise ValueError(f"output '{spec.name}': a row of shape {list(got)}, the model's "
                             f"config says dims {list(dims)}")
        shapes = np.array([r.shape for r in data], np.int64).reshape(rows, len(dims))
    if rows == 0:
        return pa.array([], type=output_type(spec))
    if shapes is None:
        arr = _leaf(spec, data.reshape(-1))
        shape = data.shape[1:]
        for k in reversed(range(len(dims))):
            if dims[k] >= 0:
                arr = pa.FixedSizeListArray.from_arrays(arr, dims[k])
            else:
                count = rows * int(np.prod(shape[:k], dtype=np.int64))
                offsets = np.arange(count + 1, dtype=np.int32) * shape[k]
                arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
        return arr
    flat = np.concatenate([r.reshape(-1) for r in data]) if rows else np.zeros(0)
    arr = _leaf(spec, flat)
    for k in reversed(range(len(dims))):
        if dims[k] >= 0:
            if np.any(shapes[:, k] != dims[k]):
                raise ValueError(f"output '{spec.name}': dimension {k} is not {dims[k]} in "
                                 "every row, as the model's config says")
            arr = pa.FixedSizeListArray.from_arrays(arr, dims[k])
        else:
            before = np.prod(shapes[:, :k], axis=1, dtype=np.int64) if k else np.ones(rows, np.int64)
            counts = np.repeat(shapes[:, k], before)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    return arr
