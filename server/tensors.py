"""Request tensors -> validated numpy arrays; model outputs -> response tensors.

Everything here checks a request against the model version's specs computed at load
(``TensorSpec``), and every error names the tensor, what was expected and what came.
Raw contents become numpy views on the request bytes (no copy); typed contents are
converted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorgate._ext.codec import decode_bytes_tensor, encode_bytes_tensor
from tensorgate.dtypes import DType
from tensorgate.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a loaded model version, computed once at load."""

    name: str
    dtype: DType
    dims: tuple[int, ...]  # per-request shape without the batch dimension; -1 is dynamic
    model_dims: tuple[int, ...] | None  # config reshape: what the graph gets, if different
    optional: bool = False

    @property
    def fixed(self) -> bool:
        return all(d >= 0 for d in self.dims)


@dataclass(frozen=True)
class Limits:
    """Per-request bounds, checked before anything is allocated for a tensor."""

    max_elements: int = 256 << 20  # per input tensor; never 0 (the message size bounds it)
    max_bytes_element: int = 0  # longest BYTES element; 0 = unbounded
    elements_flag: str = "--max-message-mb"  # the flag that set max_elements, for errors


DEFAULT_LIMITS = Limits()


def _element_count(spec: TensorSpec, shape: tuple, limits: Limits) -> int:
    """The shape's product, refused as soon as it passes the limit (Python ints never
    overflow; the bound keeps every later size computation and allocation small)."""
    limit = limits.max_elements
    count = 1
    for d in shape:
        count *= d
        if count > limit:
            if any(x == 0 for x in shape):
                return 0
            raise InvalidArgument(
                f"input '{spec.name}': shape {_shape_str(shape)} holds more than {limit} "
                f"elements, the limit per tensor ({limits.elements_flag})"
            )
    return count


def _shape_str(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _expected_shape(spec: TensorSpec, batched: bool) -> str:
    return _shape_str(((-1,) if batched else ()) + spec.dims)


def _check_shape(spec: TensorSpec, shape: tuple, max_batch_size: int) -> int:
    """Validate a request shape; returns its batch size (1 when the model doesn't batch)."""
    batched = max_batch_size > 0
    expected_rank = len(spec.dims) + (1 if batched else 0)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{spec.name}': shape {_shape_str(shape)} has a negative dimension")
    if len(shape) != expected_rank:
        raise InvalidArgument(
            f"input '{spec.name}': shape {_shape_str(shape)} does not match the model's "
            f"{_expected_shape(spec, batched)}"
        )
    body = shape[1:] if batched else shape
    for got, want in zip(body, spec.dims):
        if want != -1 and got != want:
            raise InvalidArgument(
                f"input '{spec.name}': shape {_shape_str(shape)} does not match the model's "
                f"{_expected_shape(spec, batched)}"
            )
    if not batched:
        return 1
    rows = shape[0]
    if rows < 1 or rows > max_batch_size:
        raise InvalidArgument(
            f"input '{spec.name}': batch size {rows} is outside 1..{max_batch_size} "
            f"(the model's max_batch_size)"
        )
    return rows


def _from_raw(spec: TensorSpec, shape: tuple, raw, count: int) -> np.ndarray:
    dtype = spec.dtype
    if dtype.wire == "BYTES":
        try:
            flat = decode_bytes_tensor(raw, count)
        except ValueError as exc:
            raise InvalidArgument(f"input '{spec.name}': {exc}") from None
        return flat.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{spec.name}': raw_input_contents holds {len(raw)} bytes, expected "
            f"{expected} for shape {_shape_str(shape)} of {dtype.wire}"
        )
    return np.frombuffer(raw, dtype=dtype.numpy, count=count).reshape(shape)


def _from_typed(spec: TensorSpec, shape: tuple, contents: dict, count: int) -> np.ndarray:
    dtype = spec.dtype
    field = dtype.typed_field
    if field is None:
        raise InvalidArgument(
            f"input '{spec.name}': {dtype.wire} has no typed contents field; send it in "
            f"raw_input_contents"
        )
    others = [name for name in contents if name != field]
    if others:
        raise InvalidArgument(
            f"input '{spec.name}': contents.{others[0]} given for a {dtype.wire} tensor, "
            f"expected contents.{field}"
        )
    values = contents.get(field)
    got = 0 if values is None else len(values)
    if got != count:
        raise InvalidArgument(
            f"input '{spec.name}': contents.{field} holds {got} values, expected {count} for "
            f"shape {_shape_str(shape)}"
        )
    if dtype.wire == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = values if values is not None else []
        return arr.reshape(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype.numpy)
    return np.asarray(values).astype(dtype.numpy, copy=False).reshape(shape)


def _utf8_strings(spec: TensorSpec, arr: np.ndarray, max_len: int = 0) -> np.ndarray:
    """ONNX Runtime's string tensors hold UTF-8 text; it stringifies bytes objects.
    ``max_len`` > 0: refuse elements longer than that many bytes."""
    out = np.empty(arr.shape, dtype=object)
    flat_out = out.reshape(-1)
    for i, value in enumerate(arr.reshape(-1)):
        if max_len and len(value) > max_len:
            raise InvalidArgument(
                f"input '{spec.name}': BYTES element {i} holds {len(value)} bytes, the limit "
                f"is {max_len} (--max-bytes-element)"
            )
        try:
            flat_out[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"input '{spec.name}': BYTES element {i} is not valid UTF-8, which ONNX Runtime "
                f"string tensors require"
            ) from None
    return out


def request_inputs(
    request,
    specs: dict[str, TensorSpec],
    max_batch_size: int,
    model: str,
    limits: Limits = DEFAULT_LIMITS,
):
    """Validate a decoded request's inputs; returns (arrays by name, rows, shape key).

    The shape key groups requests that may share a batch: the non-batch shapes of all
    inputs (``None`` when every input has fixed dims, so every request matches).
    """
    inputs = request.inputs
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        for tensor in inputs:
            if tensor.contents:
                raise InvalidArgument(
                    f"input '{tensor.name}': typed contents given while raw_input_contents is "
                    f"used; send every input raw or none"
                )
        raise InvalidArgument(
            f"raw_input_contents holds {len(raw)} entries for {len(inputs)} inputs; send every "
            f"input raw or none"
        )
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    variable = False
    for i, tensor in enumerate(inputs):
        name = tensor.name
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected input '{name}' for model '{model}'; its inputs are: "
                + ", ".join(specs)
            )
        if name in arrays:
            raise InvalidArgument(f"input '{name}' appears more than once")
        if tensor.datatype != spec.dtype.wire:
            raise InvalidArgument(
                f"input '{name}': datatype {tensor.datatype or '(empty)'} does not match the "
                f"model's {spec.dtype.wire}"
            )
        shape = tensor.shape
        n = _check_shape(spec, shape, max_batch_size)
        count = _element_count(spec, shape, limits)
        if rows == -1:
            rows = n
        elif n != rows:
            raise InvalidArgument(
                f"input '{name}': batch size {n} differs from the other inputs' {rows}"
            )
        if raw:
            if tensor.contents:
                raise InvalidArgument(
                    f"input '{name}': contents given both in raw_input_contents and in typed "
                    f"contents"
                )
            arr = _from_raw(spec, shape, raw[i], count)
        else:
            arr = _from_typed(spec, shape, tensor.contents, count)
        if spec.dtype.wire == "BYTES":
            max_len = limits.max_bytes_element
            if max_len and raw and len(raw[i]) - 4 * count <= max_len:
                max_len = 0  # the payload is too small for any element to pass the limit
            arr = _utf8_strings(spec, arr, max_len)
        if spec.model_dims is not None:
            arr = arr.reshape(((n,) if max_batch_size > 0 else ()) + spec.model_dims)
        if not spec.fixed:
            variable = True
        arrays[name] = arr
    if len(arrays) != len(specs):
        missing = [n for n, s in specs.items() if n not in arrays and not s.optional]
        if missing:
            raise InvalidArgument(
                f"missing input '{missing[0]}' for model '{model}' (expected: "
                + ", ".join(specs) + ")"
            )
    shape_key = tuple(a.shape[1:] for a in arrays.values()) if variable else None
    return arrays, max(rows, 1), shape_key


def requested_outputs(request, outputs: dict[str, TensorSpec], model: str):
    """The output specs a request asked for, in its order; all outputs if it named none."""
    if not request.outputs:
        return None
    chosen = []
    for out in request.outputs:
        spec = outputs.get(out.name)
        if spec is None:
            raise InvalidArgument(
                f"unknown output '{out.name}' requested from model '{model}'; its outputs are: "
                + ", ".join(outputs)
            )
        chosen.append(spec)
    return chosen


def response_tensor(spec: TensorSpec, value: np.ndarray):
    """One (name, datatype, shape, data) entry for the codec's response encoder."""
    if spec.dtype.wire == "BYTES":
        return (spec.name, "BYTES", value.shape, encode_bytes_tensor(value))
    if value.dtype != spec.dtype.numpy:
        value = value.astype(spec.dtype.numpy)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    return (spec.name, spec.dtype.wire, value.shape, value)
