"""Request tensors -> validated numpy arrays; model outputs -> response tensors.

Everything here checks a request against the model version's specs computed at load
(``TensorSpec``), and every error names the tensor, what was expected and what came.
Each message begins with Triton's own words for the same condition (clients and scripts
match them), then adds TensorGate's detail. Raw contents become numpy views on the
request bytes (no copy); typed contents are converted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorgate._ext.codec import BytesTensorError, decode_bytes_tensor, encode_bytes_tensor
from tensorgate.classification import classification_count, top_classes
from tensorgate.dtypes import DType
from tensorgate.errors import InvalidArgument
from tensorgate.shared_memory import uses_shared_memory


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


def _check_shape(spec: TensorSpec, shape: tuple, max_batch_size: int, model: str) -> int:
    """Validate a request shape; returns its batch size (1 when the model doesn't batch)."""
    batched = max_batch_size > 0
    expected_rank = len(spec.dims) + (1 if batched else 0)
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"All input dimensions should be specified for input '{spec.name}' for model "
            f"'{model}', got {_shape_str(shape)}"
        )
    body = shape[1:] if batched else shape
    if len(shape) != expected_rank or any(
        want != -1 and got != want for got, want in zip(body, spec.dims)
    ):
        note = ""
        if batched and len(shape) == len(spec.dims):
            note = (" (the model batches: prepend the batch dimension to the shape, or set "
                    "max_batch_size 0 to give the full shape)")
        raise InvalidArgument(
            f"unexpected shape for input '{spec.name}' for model '{model}'. Expected "
            f"{_expected_shape(spec, batched)}, got {_shape_str(shape)}{note}"
        )
    if not batched:
        return 1
    rows = shape[0]
    if rows > max_batch_size:
        raise InvalidArgument(
            f"inference request batch-size must be <= {max_batch_size} for '{model}' "
            f"(input '{spec.name}' has batch size {rows})"
        )
    if rows < 1:
        raise InvalidArgument(
            f"inference request batch-size must be >= 1 for '{model}' (input '{spec.name}' "
            f"has batch size {rows})"
        )
    return rows


def _string_count_error(spec: TensorSpec, model: str, count: int, found: int, where: str):
    """Triton's two messages for a BYTES tensor with the wrong number of elements (it
    stops counting at the first element past the expected count)."""
    if found < count:
        return InvalidArgument(
            f"expected {count} string elements for inference input '{spec.name}' for model "
            f"'{model}', got {found}"
        )
    return InvalidArgument(
        f"unexpected number of string elements {count + 1} for inference input "
        f"'{spec.name}' for model '{model}', expecting {count} ({where} holds {found})"
    )


def _bytes_tensor_error(spec: TensorSpec, model: str, count: int, exc: BytesTensorError):
    if exc.kind in ("fewer", "more"):
        return _string_count_error(spec, model, count, exc.found, "raw_input_contents")
    if exc.left < 4:  # a length prefix cut short, after the last element or at one
        return InvalidArgument(
            f"incomplete string length indicator for inference input '{spec.name}' for "
            f"model '{model}', expecting 4 bytes but only {exc.left} bytes available ({exc})"
        )
    if exc.kind == "trailing":
        return _string_count_error(spec, model, count, count + 1, "raw_input_contents")
    return InvalidArgument(f"inference input '{spec.name}' for model '{model}': {exc}")


def _from_raw(spec: TensorSpec, shape: tuple, raw, count: int, model: str) -> np.ndarray:
    dtype = spec.dtype
    if dtype.wire == "BYTES":
        try:
            flat = decode_bytes_tensor(raw, count)
        except BytesTensorError as exc:
            raise _bytes_tensor_error(spec, model, count, exc) from None
        return flat.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input byte size mismatch for input '{spec.name}' for model '{model}'. Expected "
            f"{expected}, got {len(raw)} (shape {_shape_str(shape)} of {dtype.wire})"
        )
    return np.frombuffer(raw, dtype=dtype.numpy, count=count).reshape(shape)


# The datatype Triton names for a typed contents field (int_contents and uint_contents
# carry the 8- and 16-bit types too).
_FIELD_TYPES = {
    "bool_contents": "BOOL", "int_contents": "INT32", "int64_contents": "INT64",
    "uint_contents": "UINT32", "uint64_contents": "UINT64", "fp32_contents": "FP32",
    "fp64_contents": "FP64", "bytes_contents": "BYTES",
}


def _from_typed(
    spec: TensorSpec, shape: tuple, contents: dict, count: int, model: str
) -> np.ndarray:
    dtype = spec.dtype
    field = dtype.typed_field
    for given in contents:
        if given != field:
            raise InvalidArgument(
                f"unexpected explicit tensor data for input tensor '{spec.name}' for model "
                f"'{model}' of type '{_FIELD_TYPES.get(given, given)}', expected datatype "
                f"'{dtype.wire}' (contents.{given} given"
                + (f"; {dtype.wire} goes in contents.{field})" if field else
                   f"; {dtype.wire} has no typed contents field: send it in raw_input_contents)")
            )
    values = contents.get(field) if field is not None else None
    got = 0 if values is None else len(values)
    if got != count:
        if got == 0:
            raise InvalidArgument(
                f"unable to find data for input tensor '{spec.name}' for model '{model}' in "
                f"request. (shape {_shape_str(shape)} needs {count} elements"
                + (f" in contents.{field} or raw_input_contents)" if field else
                   " in raw_input_contents)")
            )
        if dtype.wire == "BYTES":
            raise _string_count_error(spec, model, count, got, f"contents.{field}")
        raise InvalidArgument(
            f"input byte size mismatch for input '{spec.name}' for model '{model}'. Expected "
            f"{count * dtype.itemsize}, got {got * dtype.itemsize} (contents.{field} holds "
            f"{got} values, shape {_shape_str(shape)} needs {count})"
        )
    if dtype.wire == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = values if values is not None else []
        return arr.reshape(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype.numpy)
    return np.asarray(values).astype(dtype.numpy, copy=False).reshape(shape)


def _utf8_strings(spec: TensorSpec, arr: np.ndarray, model: str, max_len: int = 0) -> np.ndarray:
    """ONNX Runtime's Python API takes string tensor elements as text only: it encodes
    each str as UTF-8, turns a bytes object into its repr and refuses non-UTF-8 bytes
    arrays (checked on onnxruntime 1.31), so the elements are decoded here and anything
    that is not UTF-8 is refused by name. Triton's C++ backend can hand ONNX Runtime
    raw bytes; a Python server cannot. ``max_len`` > 0: refuse longer elements."""
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
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"inference input '{spec.name}' for model '{model}': BYTES element {i} is not "
                f"valid UTF-8 (byte {exc.start}: {value[exc.start:exc.start + 1]!r}); ONNX "
                f"Runtime's Python API, which runs this model, takes string tensor elements "
                f"only as UTF-8 text"
            ) from None
    return out


def _quoted(names) -> str:
    """Triton's list form: ['A','B']."""
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def _count_error(
    inputs, specs: dict[str, TensorSpec], model: str, required: int
) -> InvalidArgument:
    """Triton's message for a request with too few or too many inputs."""
    given = [t.name for t in inputs]
    missing = [n for n, s in specs.items() if not s.optional and n not in given]
    extra = [n for n in given if n not in specs]
    expected = (
        f"expected {len(specs)} inputs" if required == len(specs)
        else f"expected number of inputs between {required} and {len(specs)}"
    )
    text = f"{expected} but got {len(given)} inputs for model '{model}'. Got input(s) {_quoted(given)}"
    if missing:
        text += (f", but missing required input(s) {_quoted(missing)}. Please provide all "
                 "required input(s).")
    if extra:
        text += f" Unexpected input(s) {_quoted(extra)}."
    return InvalidArgument(text)


def request_inputs(
    request,
    specs: dict[str, TensorSpec],
    max_batch_size: int,
    model: str,
    limits: Limits = DEFAULT_LIMITS,
    shared_memory=None,
):
    """Validate a decoded request's inputs; returns (arrays by name, rows, shape key).
    ``shared_memory``: the server's ``SystemSharedMemory``, for inputs that name a
    region (views into it, no copy).

    The shape key groups requests that may share a batch: the non-batch shapes of all
    inputs (``None`` when every input has fixed dims, so every request matches).
    """
    inputs = request.inputs
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs) and len(raw) != sum(
        1 for t in inputs if not uses_shared_memory(t.parameters)
    ):  # raw_input_contents has one entry per input not in shared memory
        for tensor in inputs:
            if tensor.contents:
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{model}' (send every input raw or none)"
                )
        if len(raw) < len(inputs):
            raise InvalidArgument(
                f"unable to find data for input tensor '{inputs[len(raw)].name}' for model "
                f"'{model}' in request. (raw_input_contents holds {len(raw)} entries for "
                f"{len(inputs)} inputs; send every input raw or none)"
            )
        raise InvalidArgument(
            f"raw_input_contents holds {len(raw)} entries for {len(inputs)} inputs for model "
            f"'{model}'; send one per input"
        )
    if len(inputs) != len(specs):
        required = sum(1 for s in specs.values() if not s.optional)
        if not required <= len(inputs) <= len(specs):
            names = [t.name for t in inputs]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise InvalidArgument(f"input '{name}' already exists in request")
            raise _count_error(inputs, specs, model, required)
    arrays: dict[str, np.ndarray] = {}
    rows = -1
    variable = False
    next_raw = 0  # raw_input_contents skips inputs in shared memory
    for tensor in inputs:
        name = tensor.name
        if name in arrays:
            raise InvalidArgument(f"input '{name}' already exists in request")
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{name}' for model '{model}'; its inputs are: "
                + ", ".join(specs)
            )
        if tensor.datatype != spec.dtype.wire:
            raise InvalidArgument(
                f"inference input '{name}' data-type is '{tensor.datatype or '(empty)'}', but "
                f"model '{model}' expects '{spec.dtype.wire}'"
            )
        shape = tensor.shape
        n = _check_shape(spec, shape, max_batch_size, model)
        count = _element_count(spec, shape, limits)
        if rows == -1:
            rows = n
        elif n != rows:
            raise InvalidArgument(
                f"input '{name}' batch size does not match other inputs for '{model}' "
                f"({n}, the inputs before it: {rows})"
            )
        params = tensor.parameters
        data = None
        if params and uses_shared_memory(params):
            if tensor.contents:
                raise InvalidArgument(
                    f"unexpected 'content' provided when using shared memory for input "
                    f"tensor '{name}' for model '{model}'"
                )
            if shared_memory is None:
                raise InvalidArgument(
                    f"input '{name}' names a shared memory region: this path takes none"
                )
            data = shared_memory.input_bytes(name, params)
            arr = _from_raw(spec, shape, data, count, model)
        elif raw:
            if tensor.contents:
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model}'"
                )
            data = raw[next_raw]
            next_raw += 1
            arr = _from_raw(spec, shape, data, count, model)
        else:
            arr = _from_typed(spec, shape, tensor.contents, count, model)
        if spec.dtype.wire == "BYTES":
            max_len = limits.max_bytes_element
            if max_len and data is not None and len(data) - 4 * count <= max_len:
                max_len = 0  # the payload is too small for any element to pass the limit
            arr = _utf8_strings(spec, arr, model, max_len)
        if spec.model_dims is not None:
            arr = arr.reshape(((n,) if max_batch_size > 0 else ()) + spec.model_dims)
        if not spec.fixed:
            variable = True
        arrays[name] = arr
    if len(arrays) != len(specs):
        if any(n not in arrays and not s.optional for n, s in specs.items()):
            required = sum(1 for s in specs.values() if not s.optional)
            raise _count_error(inputs, specs, model, required)
    shape_key = tuple(a.shape[1:] for a in arrays.values()) if variable else None
    return arrays, max(rows, 1), shape_key


def requested_outputs(
    request, outputs: dict[str, TensorSpec], model: str, shared_memory=None
):
    """The outputs a request asked for, in its order, as (spec, class count, span)
    triples (class count 0: the tensor itself; k > 0: Triton's classification
    extension, the top k; span: where in shared memory it goes, else None); None when
    it named none (all outputs, as they are)."""
    if not request.outputs:
        return None
    chosen = []
    seen = set()
    for out in request.outputs:
        name = out.name
        spec = outputs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference output '{name}' for model '{model}'; its outputs are: "
                + ", ".join(outputs)
            )
        if name in seen:
            raise InvalidArgument(f"output '{name}' already exists in request")
        seen.add(name)
        params = out.parameters
        if not params:
            chosen.append((spec, 0, None))
            continue
        span = None
        if uses_shared_memory(params):
            if "classification" in params:
                raise InvalidArgument(
                    "output can't set both 'shared_memory_region' and 'classification'"
                )
            if shared_memory is None:
                raise InvalidArgument(
                    f"output '{name}' names a shared memory region: this path takes none"
                )
            span = shared_memory.output_span(name, params)
        chosen.append((spec, classification_count(params, spec), span))
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


def classes_tensor(spec: TensorSpec, value: np.ndarray, k: int, model):
    """The response entry of an output asked for as its top ``k`` classes."""
    arr = top_classes(value, k, model.max_batch_size > 0, model.labels.get(spec.name))
    return (spec.name, "BYTES", arr.shape, encode_bytes_tensor(arr))
