"""Column -> tensor row conversion (tensorgate.batch.mapping) without a model: every
Arrow column kind a row can come in, and the reason a bad row is set aside with."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tensorgate.batch.common import BatchError
from tensorgate.batch.mapping import Dense, Plan, Ragged, parse_maps
from tensorgate.dtypes import BY_WIRE
from tensorgate.tensors import TensorSpec


def _plan(table: pa.Table, wire: str, dims, maps=None, batching=True) -> Plan:
    specs = {"X": TensorSpec("X", BY_WIRE[wire], tuple(dims), None)}
    return Plan.build(specs, ["Y"], 8 if batching else 0, table.schema, parse_maps(maps), None)


def _convert(column, wire="FP32", dims=(2, 3), name="X"):
    table = pa.table({name: column, "id": list(range(len(column)))})
    return _plan(table, wire, dims, [f"{name}=X"] if name != "X" else None).convert(table)


def test_nested_lists_of_any_kind_fill_the_dims():
    rows = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    for t in (pa.list_(pa.list_(pa.float64())), pa.large_list(pa.list_(pa.int32(), 3)),
              pa.list_(pa.list_(pa.float32()), 2)):
        conv = _convert(pa.array(rows, t))
        assert conv.errors == []
        tensor = conv.tensors["X"]
        assert isinstance(tensor, Dense) and tensor.array.dtype == np.float32
        np.testing.assert_array_equal(tensor.array, np.array(rows, np.float32))


def test_sliced_and_dictionary_columns():
    full = pa.array([[float(i)] * 6 for i in range(10)], pa.list_(pa.float32(), 6))
    conv = _convert(full.slice(3, 4))
    np.testing.assert_array_equal(conv.tensors["X"].array[:, 0, 0], [3, 4, 5, 6])
    words = pa.array(["a", "bb", "a"]).dictionary_encode()
    conv = _convert(words, "BYTES", (1,))
    assert conv.tensors["X"].array.ravel().tolist() == ["a", "bb", "a"]


def test_bad_rows_are_set_aside_with_their_reason():
    conv = _convert(pa.array([[1.0] * 6, None, [1.0] * 5, [1.0, None, 1, 1, 1, 1], [2.0] * 6]))
    assert [r for r, _ in conv.errors] == [1, 2, 3]
    reasons = dict(conv.errors)
    assert "null" in reasons[1] and "5 values" in reasons[2] and "null value" in reasons[3]
    assert conv.ok.tolist() == [True, False, False, False, True]
    np.testing.assert_array_equal(conv.tensors["X"].array[:, 0, 0], [1.0, 2.0])


@pytest.mark.parametrize("wire, values, bad", [
    ("UINT8", [0, 255, 256, -1], [2, 3]),
    ("INT8", [-128, 127, 128], [2]),
    ("INT32", [1.0, 2.5, float("inf")], [1, 2]),
    ("BOOL", [0, 1, 2], [2]),
    ("UINT64", [2**63, 5], []),
    ("INT64", [2**63, 5], [0]),
])
def test_values_the_datatype_cannot_hold(wire, values, bad):
    t = pa.uint64() if wire.endswith("64") else None
    conv = _convert(pa.array(values, t), wire, (1,))
    assert [r for r, _ in conv.errors] == bad
    assert all("cannot hold" in reason for _, reason in conv.errors)


def test_text_cells_and_raw_bytes():
    conv = _convert(pa.array(["[1, 2, 3]", "4 5 6", "7,8;9", "[1, x]", "nan 1 2"]), "FP32", (3,))
    assert [r for r, _ in conv.errors] == [3]
    assert conv.tensors["X"].array[:3].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert np.isnan(conv.tensors["X"].array[3, 0])
    raw = np.arange(6, dtype="<f4")
    conv = _convert(pa.array([raw.tobytes(), raw.tobytes()[:10]], pa.binary()), "FP32", (-1,))
    assert [r for r, _ in conv.errors] == [1]  # 10 bytes is not a whole number of FP32s
    assert isinstance(conv.tensors["X"], Ragged) and conv.tensors["X"].row(0).tolist() == raw.tolist()
    fixed = pa.array([raw.tobytes()] * 3, pa.binary(24))
    conv = _convert(fixed.slice(1), "FP32", (2, 3))
    np.testing.assert_array_equal(conv.tensors["X"].array, np.stack([raw.reshape(2, 3)] * 2))


def test_bytes_inputs_must_be_utf8():
    conv = _convert(pa.array([b"ok", b"\xff\xfe"], pa.binary()), "BYTES", (1,))
    assert [r for r, _ in conv.errors] == [1] and "UTF-8" in conv.errors[0][1]


def test_variable_dimension_and_several_columns():
    conv = _convert(pa.array([[1, 2, 3, 4], [5, 6], [7, 8, 9]]), "INT64", (-1, 2))
    assert [r for r, _ in conv.errors] == [2]  # 3 values is no whole number of rows of 2
    tensor = conv.tensors["X"]
    assert tensor.lengths().tolist() == [2, 1] and tensor.row(0).tolist() == [[1, 2], [3, 4]]
    assert tensor.row(1, 3, 0).tolist() == [[5, 6], [0, 0], [0, 0]]
    table = pa.table({"a": [1.0, 2.0], "b": [3, None], "c": [5.0, 6.0]})
    conv = _plan(table, "FP32", (3,), ["a,b,c=X"]).convert(table)
    assert [r for r, _ in conv.errors] == [1]
    assert conv.tensors["X"].array.tolist() == [[1, 3, 5]]


@pytest.mark.parametrize("maps, column, message", [
    (["a,b=X"], pa.array([1.0]), "2 columns, but input 'X' has dims [3]"),
    (None, pa.array([{"x": 1}]), "needs numbers"),
    (["X=Nope"], pa.array([1.0]), "no input 'Nope'"),
])
def test_a_mapping_that_cannot_work_is_refused(maps, column, message):
    table = pa.table({"X": column, "a": [1.0], "b": [2.0]})
    with pytest.raises(BatchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _plan(table, "FP32", (3,), maps)
