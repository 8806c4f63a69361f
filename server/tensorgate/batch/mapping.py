"""Table columns -> model inputs: checked once before any work, converted per chunk.

A model input takes the column of its own name, or the one ``--map COLUMN=INPUT``
names (``--map A,B,C=INPUT``: scalar columns side by side, one element each). A row
of a column becomes one tensor row of the input:

- a list column (any nesting, fixed-size or not) gives its values in order;
- a scalar column gives one value (an input of one element, e.g. dims [1]);
- a fixed-size binary or binary column gives its bytes as the input's datatype
  (little-endian), e.g. ``np.float32`` rows saved with ``tobytes()``;
- a string column gives, for a BYTES input, its strings, and for a numeric input a
  JSON list (``[1, 2.5, 3]``) or numbers separated by spaces or commas (CSV cells).

The row's values fill the input's dims (without the batch dimension; the whole shape
for a model with max_batch_size 0). One variable dimension (-1) is allowed: its length
is the row's value count divided by the product of the other dims.

Anything wrong with one row (null, wrong count, a value the datatype cannot hold, a
string that is not a number or not UTF-8) sets that row aside with the reason; the
column itself being unusable (missing, wrong kind of type) is a BatchError before any
work.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tensorgate.batch.common import BatchError
from tensorgate.tensors import TensorSpec

_SEPARATORS = re.compile(r"[\s,;]+")


# -- --map and --passthrough ------------------------------------------------------------


def parse_maps(items: list[str] | None) -> dict[str, list[str]]:
    """``COLUMN=INPUT`` (or ``C1,C2=INPUT``) items -> {input: [columns]}."""
    maps: dict[str, list[str]] = {}
    for item in items or []:
        columns, sep, name = item.rpartition("=")
        columns_list = [c.strip() for c in columns.split(",")] if sep else []
        if not sep or not name.strip() or not columns_list or not all(columns_list):
            raise BatchError(f"--map {item!r}: expected COLUMN=INPUT (or COL1,COL2=INPUT)")
        name = name.strip()
        if name in maps:
            raise BatchError(f"--map {item!r}: input '{name}' is mapped twice")
        maps[name] = columns_list
    return maps


@dataclass(frozen=True)
class InputMap:
    spec: TensorSpec
    columns: tuple[str, ...]
    row_shape: tuple[int, ...]  # dims of one row (-1: the variable one)

    @property
    def variable(self) -> bool:
        return -1 in self.row_shape

    @property
    def elements(self) -> int:
        """Values in one row (fixed shape), or the product of the fixed dims."""
        return int(np.prod([d for d in self.row_shape if d != -1], dtype=np.int64))


def _unwrap(t: pa.DataType) -> tuple[pa.DataType, int]:
    """The leaf type under list types, and how many list levels."""
    depth = 0
    while True:
        if pa.types.is_dictionary(t):
            t = t.value_type
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)
              or pa.types.is_fixed_size_list(t)):
            t, depth = t.value_type, depth + 1
        else:
            return t, depth


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t))


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _check_type(column: str, t: pa.DataType, m: InputMap, several: bool) -> None:
    leaf, depth = _unwrap(t)
    spec = m.spec
    want = f"input '{spec.name}' ({spec.dtype.wire} {list(m.row_shape)})"
    if spec.dtype.wire == "BYTES":
        if _is_text(leaf) or _is_binary(leaf) or pa.types.is_null(leaf):
            return
        raise BatchError(f"column '{column}' is {t}: {want} needs strings or binary values "
                         "(or lists of them)")
    if several:
        if depth or not (_is_number(leaf) or pa.types.is_null(leaf)):
            raise BatchError(f"column '{column}' is {t}: --map with several columns for "
                             f"{want} needs a scalar number in each column")
        return
    if _is_number(leaf) or pa.types.is_null(leaf) or (_is_text(leaf) and depth == 0):
        return
    if _is_binary(leaf) and depth == 0:
        return
    raise BatchError(f"column '{column}' is {t}: {want} needs numbers, lists of numbers, "
                     "raw bytes of the datatype, or number lists as text")


@dataclass
class Plan:
    """Which columns feed which inputs, which pass through; checked at build."""

    inputs: dict[str, InputMap]
    passthrough: list[str]
    batching: bool  # max_batch_size > 0
    read_columns: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, specs: dict[str, TensorSpec], output_names, max_batch_size: int,
              schema: pa.Schema, maps: dict[str, list[str]],
              passthrough: list[str] | None) -> "Plan":
        columns = list(schema.names)
        for name, cols in maps.items():
            if name not in specs:
                raise BatchError(f"--map ...={name}: the model has no input '{name}' "
                                 f"(inputs: {', '.join(specs)})")
            for col in cols:
                if col not in columns:
                    raise BatchError(f"--map {','.join(cols)}={name}: no column '{col}' in "
                                     f"the input (columns: {', '.join(columns)})")
        inputs: dict[str, InputMap] = {}
        for name, spec in specs.items():
            cols = maps.get(name) or ([name] if name in columns else None)
            if cols is None:
                if spec.optional:
                    continue
                raise BatchError(
                    f"no column for model input '{name}' ({spec.dtype.wire} "
                    f"{list(spec.dims)}): the input has columns {', '.join(columns)}; "
                    f"name one with --map COLUMN={name}")
            shape = tuple(spec.dims)
            if sum(1 for d in shape if d < 0) > 1:
                raise BatchError(f"model input '{name}' has dims {list(shape)}: batch "
                                 "inference takes at most one variable dimension per input")
            m = InputMap(spec, tuple(cols), shape)
            if len(cols) > 1 and (m.variable or m.elements != len(cols)):
                raise BatchError(f"--map {','.join(cols)}={name}: {len(cols)} columns, but "
                                 f"input '{name}' has dims {list(shape)}")
            for col in cols:
                _check_type(col, schema.field(col).type, m, len(cols) > 1)
            inputs[name] = m
        used = {c for m in inputs.values() for c in m.columns}
        if passthrough is None:
            kept = [c for c in columns if c not in used]
        else:
            missing = [c for c in passthrough if c not in columns]
            if missing:
                raise BatchError(f"--passthrough: no column {', '.join(repr(c) for c in missing)}"
                                 f" in the input (columns: {', '.join(columns)})")
            kept = list(dict.fromkeys(passthrough))
        clash = [c for c in kept if c in output_names]
        if clash:
            raise BatchError(
                f"column {', '.join(repr(c) for c in clash)} would pass through under the name "
                "of a model output; leave it out with --passthrough (the columns to keep)")
        read = [c for c in columns if c in used or c in kept]
        return cls(inputs, kept, max_batch_size > 0, read)

    # -- per chunk ----------------------------------------------------------------------

    def convert(self, table: pa.Table) -> "Converted":
        n = table.num_rows
        reasons = np.full(n, None, dtype=object)
        values: dict[str, tuple] = {}
        for name, m in self.inputs.items():
            if len(m.columns) == 1:
                vals, bounds = _column(table.column(m.columns[0]), m, reasons)
            else:
                vals, bounds = _columns(table, m, reasons)
            _check_counts(m, bounds, reasons)
            values[name] = (vals, bounds)
        bad = np.fromiter((r is not None for r in reasons), bool, n) if n else np.zeros(0, bool)
        ok = ~bad
        errors = [(int(i), reasons[i]) for i in np.flatnonzero(bad)]
        tensors = {name: _select(self.inputs[name], vals, bounds, ok)
                   for name, (vals, bounds) in values.items()}
        return Converted(n, ok, errors, tensors)


@dataclass
class Dense:
    """Every row the same shape: one array (rows, *row_shape)."""

    array: np.ndarray


@dataclass
class Ragged:
    """Rows of different lengths along one axis: flat values and each row's span."""

    values: np.ndarray
    starts: np.ndarray
    counts: np.ndarray  # values per row
    row_shape: tuple[int, ...]  # -1 at the variable axis

    def lengths(self) -> np.ndarray:
        other = int(np.prod([d for d in self.row_shape if d != -1], dtype=np.int64))
        return self.counts // other

    def row(self, i: int, length: int | None = None, pad=None) -> np.ndarray:
        """Row ``i`` in its shape; ``length``: padded to it along the variable axis."""
        own = int(self.counts[i])
        flat = self.values[self.starts[i]:self.starts[i] + own]
        other = int(np.prod([d for d in self.row_shape if d != -1], dtype=np.int64))
        shape = tuple(own // other if d == -1 else d for d in self.row_shape)
        out = flat.reshape(shape)
        if length is None or length == shape[self.row_shape.index(-1)]:
            return out
        axis = self.row_shape.index(-1)
        widths = [(0, 0)] * len(shape)
        widths[axis] = (0, length - shape[axis])
        return np.pad(out, widths, constant_values=pad)


@dataclass
class Converted:
    rows: int  # rows in the chunk
    ok: np.ndarray  # bool per row: converted
    errors: list[tuple[int, str]]  # (row in the chunk, reason) of the others
    tensors: dict[str, Dense | Ragged]  # the converted rows, in order

    @property
    def ok_rows(self) -> int:
        return self.rows - len(self.errors)


# -- conversion helpers ---------------------------------------------------------------------


def _note(reasons: np.ndarray, rows, text) -> None:
    """Record the first reason of each of ``rows`` (text, or a callable of the row)."""
    for r in np.unique(np.asarray(rows, dtype=np.int64)):
        if reasons[r] is None:
            reasons[r] = text(int(r)) if callable(text) else text


def _rows_of(bounds: np.ndarray, elements: np.ndarray) -> np.ndarray:
    return np.searchsorted(bounds, elements, side="right") - 1


def _column(col, m: InputMap, reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One column's values (numpy, in the input's datatype) and row bounds (n + 1)."""
    if isinstance(col, pa.ChunkedArray):
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    else:
        arr = col
    name = m.columns[0]
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    if arr.null_count:
        _note(reasons, np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)),
              f"column '{name}': null")
    leaf, bounds = _flatten(arr)
    wire = m.spec.dtype.wire
    if wire != "BYTES" and _is_binary(leaf.type) and bounds is None:
        return _from_bytes(leaf, m, reasons)
    if wire != "BYTES" and _is_text(leaf.type) and bounds is None:
        return _from_text(leaf, m, reasons)
    if bounds is None:
        bounds = np.arange(n + 1, dtype=np.int64)
    if pa.types.is_dictionary(leaf.type):
        leaf = leaf.dictionary_decode()
    if leaf.null_count:
        nulls = np.flatnonzero(leaf.is_null().to_numpy(zero_copy_only=False))
        _note(reasons, _rows_of(bounds, nulls), f"column '{name}': null value in the row")
    if wire == "BYTES":
        return _strings(leaf, bounds, name, reasons), bounds
    if pa.types.is_null(leaf.type):
        return np.zeros(len(leaf), m.spec.dtype.numpy), bounds
    raw = leaf.to_numpy(zero_copy_only=False)
    if leaf.null_count and raw.dtype.kind == "f":
        raw = np.nan_to_num(raw)  # rows already set aside; keep the cast quiet
    elif leaf.null_count and raw.dtype == object:
        raw = np.array([0 if v is None else v for v in raw])
    values, bad = _cast(raw, m.spec.dtype.numpy)
    if bad is not None:
        _note(reasons, _rows_of(bounds, np.flatnonzero(bad)),
              f"column '{name}': a value {m.spec.dtype.wire} cannot hold "
              f"(input '{m.spec.name}')")
    return values, bounds


def _flatten(arr: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """Unnest list levels: the leaf values (only the part the rows use) and each row's
    [start, end) in them; bounds None for a column without list levels."""
    bounds = None
    while True:
        t = arr.type
        if pa.types.is_fixed_size_list(t):
            size = t.list_size
            child = arr.values
            if bounds is None:
                bounds = np.arange(len(arr) + 1, dtype=np.int64)
            bounds = (bounds + arr.offset) * size
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            offsets = arr.offsets.to_numpy().astype(np.int64, copy=False)
            child = arr.values
            if bounds is None:
                bounds = np.arange(len(arr) + 1, dtype=np.int64)
            bounds = offsets[bounds]
        else:
            return arr, bounds
        lo, hi = int(bounds[0]), int(bounds[-1])
        arr = child.slice(lo, hi - lo)
        bounds = bounds - lo


def _cast(raw: np.ndarray, target: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """``raw`` in the target datatype; a mask of the values it cannot hold, or None."""
    target = np.dtype(target)
    if raw.dtype == target:
        return raw, None
    if raw.dtype == object:
        try:
            raw = raw.astype(np.float64 if target.kind in "fc" else np.int64)
        except (TypeError, ValueError):
            return np.zeros(len(raw), target), np.ones(len(raw), bool)
    bad = None
    if target.kind == "b":
        bad = (raw != 0) & (raw != 1)
    elif target.kind in "iu":
        info = np.iinfo(target)
        if raw.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(raw) | (raw != np.trunc(raw)) | (raw < info.min) | (raw > info.max)
        elif raw.dtype.kind in "iu":
            bad = (raw < info.min) | (raw > info.max)  # exact: numpy 2 compares ints exactly
    if bad is not None and not bad.any():
        bad = None
    with np.errstate(invalid="ignore", over="ignore"):
        values = raw.astype(target) if bad is None else np.where(bad, 0, raw).astype(target)
    return values, bad


def _strings(leaf: pa.Array, bounds, column: str, reasons) -> np.ndarray:
    """BYTES values as str (ONNX Runtime's Python API takes text only; see
    tensors._utf8_strings): binary values must be UTF-8."""
    values = leaf.to_numpy(zero_copy_only=False)
    if values.dtype != object:
        values = values.astype(object)
    if _is_binary(leaf.type):
        for i, v in enumerate(values):
            if v is None:
                values[i] = ""
                continue
            try:
                values[i] = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                _note(reasons, _rows_of(bounds, [i]),
                      f"column '{column}': value is not UTF-8 (byte {exc.start}); ONNX "
                      "Runtime takes string tensors as UTF-8 text")
                values[i] = ""
    elif leaf.null_count:
        values[values == None] = ""  # noqa: E711 (elementwise); rows already set aside
    return values


def _from_bytes(leaf: pa.Array, m: InputMap, reasons) -> tuple[np.ndarray, np.ndarray]:
    """Binary cells holding the raw little-endian bytes of a row."""
    dtype = np.dtype(m.spec.dtype.numpy)
    n = len(leaf)
    name = m.columns[0]
    if pa.types.is_fixed_size_binary(leaf.type) and leaf.type.byte_width % dtype.itemsize == 0:
        width = leaf.type.byte_width
        per = width // dtype.itemsize
        data = np.frombuffer(leaf.buffers()[1], np.uint8)[leaf.offset * width:(leaf.offset + n) * width]
        values = data.view(dtype) if data.size else np.zeros(0, dtype)
        return values, np.arange(n + 1, dtype=np.int64) * per
    parts, counts = [], np.zeros(n, np.int64)
    for i, v in enumerate(leaf.to_pylist()):
        if v is None:
            continue
        if len(v) % dtype.itemsize:
            _note(reasons, [i], f"column '{name}': {len(v)} bytes, not a whole number of "
                                f"{m.spec.dtype.wire} values ({dtype.itemsize} bytes each)")
            continue
        parts.append(np.frombuffer(v, dtype))
        counts[i] = len(v) // dtype.itemsize
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), bounds


def _parse_numbers(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        out: list = []

        def walk(v):
            if isinstance(v, list):
                for x in v:
                    walk(x)
            elif isinstance(v, (int, float)):  # bool is an int: true/false count as 1/0
                out.append(v)
            else:
                raise ValueError(f"{v!r} is not a number")
        walk(json.loads(text))
        return out
    return [json.loads(x) if x not in ("nan", "inf", "-inf") else float(x)
            for x in _SEPARATORS.split(text) if x]


def _from_text(leaf: pa.Array, m: InputMap, reasons) -> tuple[np.ndarray, np.ndarray]:
    """Text cells holding a row's numbers (CSV): a JSON list or separated numbers."""
    dtype = np.dtype(m.spec.dtype.numpy)
    name = m.columns[0]
    n = len(leaf)
    parts, counts = [], np.zeros(n, np.int64)
    for i, text in enumerate(leaf.to_pylist()):
        if text is None:
            continue
        try:
            numbers = _parse_numbers(text)
            raw = np.array(numbers, dtype=np.float64 if any(isinstance(x, float) for x in numbers)
                           else np.int64)
        except (ValueError, OverflowError, TypeError) as exc:
            _note(reasons, [i], f"column '{name}': not a list of numbers ({str(exc)[:80]})")
            continue
        values, bad = _cast(raw.reshape(-1), dtype)
        if bad is not None:
            _note(reasons, [i], f"column '{name}': a value {m.spec.dtype.wire} cannot hold "
                                f"(input '{m.spec.name}')")
            continue
        parts.append(values)
        counts[i] = len(values)
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), bounds


def _columns(table: pa.Table, m: InputMap, reasons) -> tuple[np.ndarray, np.ndarray]:
    """Several scalar columns side by side: one element each."""
    parts = []
    for col in m.columns:
        single = InputMap(m.spec, (col,), (1,))
        vals, bounds = _column(table.column(col), single, reasons)
        parts.append(vals)
    n = table.num_rows
    k = len(parts)
    return np.stack(parts, axis=1).reshape(-1), np.arange(n + 1, dtype=np.int64) * k


def _check_counts(m: InputMap, bounds: np.ndarray, reasons) -> None:
    counts = np.diff(bounds)
    column = ",".join(m.columns)
    where = f"column '{column}'" if len(m.columns) == 1 else f"columns {column}"
    if not m.variable:
        want = m.elements
        wrong = np.flatnonzero(counts != want)
        _note(reasons, wrong, lambda r: (
            f"{where}: {int(counts[r])} values, input '{m.spec.name}' takes {want} "
            f"(dims {list(m.row_shape)})"))
        return
    other = m.elements
    wrong = np.flatnonzero((counts == 0) | (counts % other != 0))
    _note(reasons, wrong, lambda r: (
        f"{where}: {int(counts[r])} values, input '{m.spec.name}' takes a positive multiple "
        f"of {other} (dims {list(m.row_shape)})"))


def _select(m: InputMap, values: np.ndarray, bounds: np.ndarray, ok: np.ndarray):
    if not m.variable:
        e = m.elements
        if ok.all():
            block = values[bounds[0]:bounds[-1]] if len(bounds) > 1 else values[:0]
        else:
            starts = bounds[:-1][ok]
            block = values[(starts[:, None] + np.arange(e)).reshape(-1)]
        return Dense(block.reshape((-1,) + m.row_shape))
    starts = bounds[:-1][ok]
    counts = np.diff(bounds)[ok]
    return Ragged(values, starts, counts, m.row_shape)
