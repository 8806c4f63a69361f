"""The KServe v2 REST inference body, JSON and Triton's binary tensor data extension.

``decode_infer`` turns a request body into the request shape the data plane reads
(the same attributes the gRPC codec's request has), with every input as raw bytes: a
binary input is a view into the body (no copy), a JSON ``data`` array is converted
once into the model's datatype. ``encode_infer`` writes the answer: JSON
``data`` through orjson's numpy serializer (no Python lists for numeric tensors), or
raw bytes after the JSON header where the client asked for binary data.

Binary extension: the request header ``Inference-Header-Content-Length: N`` says the
first N bytes of the body are the JSON header; each input with the parameter
``binary_data_size`` takes that many bytes, in input order, from what follows. The
answer uses the same layout for outputs asked for with ``binary_data: true`` (or all,
with the request parameter ``binary_data_output: true``).

Numeric ``data`` arrays skip Python lists: tensorgate._ext.jsondata cuts them out of the
header, orjson parses the rest, and each array is parsed straight into its datatype's
bytes. Whatever that parser leaves to numpy (and every BYTES input) goes the way all
data went before, orjson then ``np.asarray``, so results and errors are the same.
"""

from __future__ import annotations

import json

import numpy as np
import orjson

from tensorgate._ext.codec import decode_bytes_tensor, encode_bytes_tensor
from tensorgate._ext.jsondata import parse_data, split_input_data
from tensorgate.dtypes import BY_WIRE
from tensorgate.errors import InvalidArgument
from tensorgate.shared_memory import uses_shared_memory

HEADER_LENGTH = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class HttpInferRequest:
    """What the data plane reads of a request (as of the gRPC codec's request)."""

    __slots__ = ("model_name", "model_version", "id", "parameters", "inputs", "outputs",
                 "raw_input_contents", "binary_output")

    def __init__(self, model_name: str, model_version: str) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = ""
        self.parameters: dict = {}
        self.inputs: list[HttpInput] = []
        self.outputs: list[HttpOutput] = []
        self.raw_input_contents: list = []
        self.binary_output = False  # request parameter binary_data_output


class HttpInput:
    __slots__ = ("name", "datatype", "shape", "parameters", "contents")

    def __init__(self, name: str, datatype: str, shape: tuple, parameters: dict) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.parameters = parameters
        self.contents: dict = {}  # always raw here: typed contents are a gRPC notion


class HttpOutput:
    __slots__ = ("name", "parameters", "binary", "shared_memory")

    def __init__(self, name: str, parameters: dict, binary: bool, shared_memory: bool) -> None:
        self.name = name
        self.parameters = parameters
        self.binary = binary
        self.shared_memory = shared_memory  # written into a region: no data in the answer


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be a JSON object")
    for key, item in value.items():
        if isinstance(item, (dict, list)) or item is None:
            raise InvalidArgument(
                f"{where}: parameter '{key}' must be a boolean, number or string"
            )
    return value


def _shape(value, name: str) -> tuple:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    return tuple(value)


def _flatten_strings(data, out: list) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten_strings(item, out)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise InvalidArgument(f"BYTES data must be strings, got {type(item).__name__}")


def _json_tensor(name: str, datatype: str, data) -> bytes:
    """A JSON ``data`` array as the raw bytes of its datatype."""
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat: list = []
        try:
            _flatten_strings(data, flat)
        except InvalidArgument as exc:
            raise InvalidArgument(f"input '{name}': {exc.message}") from None
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return encode_bytes_tensor(arr)
    dtype = BY_WIRE.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype}'")
    try:
        arr = np.asarray(data, dtype=dtype.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(
            f"input '{name}': 'data' does not hold {datatype} values ({exc})"
        ) from None
    if arr.dtype == object:
        raise InvalidArgument(f"input '{name}': 'data' is not a rectangular array")
    return arr.tobytes()


def _loads(text):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        error = exc
    try:  # NaN and Infinity, which JSON lacks but clients write for such floats
        return json.loads(bytes(text))
    except ValueError:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {error}") from None


def _split_data(header) -> tuple[dict, dict[int, bytes]] | None:
    """The request document with each numeric input's ``data`` parsed straight into
    tensor bytes: (doc, raw bytes by index into "inputs"). Inputs without raw bytes
    (BYTES ones, or data the parser leaves to numpy) get their ``data`` into doc from
    orjson, as before. None where the header is to be parsed whole, as before."""
    split = split_input_data(header)
    if split is None:
        return None
    rest, spans = split
    try:
        doc = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None  # whole, for today's error or the stdlib fallback
    inputs = doc["inputs"]  # the scan found "data" keys in its elements: dicts in a list
    raws: dict[int, bytes] = {}
    left = []
    nonfinite = False
    for index, start, end in spans:
        datatype = inputs[index].get("datatype")
        parsed = None
        if isinstance(datatype, str) and datatype != "BYTES":
            parsed = parse_data(header, start, end, datatype)
        if parsed is None:
            left.append((index, start, end))
        else:
            raws[index] = parsed[0]
            nonfinite = nonfinite or parsed[1]
    if nonfinite:
        # orjson refuses NaN and Infinity: such a header was parsed whole by the stdlib's
        # json, which reads some of the rest differently (ints past 64 bits stay ints).
        if left:
            return None
        try:
            doc = json.loads(rest)
        except ValueError:
            return None
        inputs = doc["inputs"]
    for index, start, end in left:
        try:
            inputs[index]["data"] = orjson.loads(header[start:end])
        except orjson.JSONDecodeError:
            return None
    return doc, raws


def decode_infer(
    body, header_length: int | None, model_name: str, model_version: str, *,
    split_data: bool = True,
) -> HttpInferRequest:
    """The request in ``body`` (bytes); ``header_length``: the binary extension's
    Inference-Header-Content-Length, or None for a JSON-only body. ``split_data=False``
    parses the header whole, every ``data`` through orjson and numpy: the reference
    that tests/unit/test_jsondata.py and bench/json_decode_micro.py hold the split to."""
    view = memoryview(body)
    size = len(view)
    if header_length is None:
        header_length = size
    elif not 0 <= header_length <= size:
        raise InvalidArgument(
            f"Inference-Header-Content-Length {header_length} is outside the body's "
            f"{size} bytes"
        )
    # Every size takes the split: it breaks even with orjson's lists at ~16 numbers
    # and costs ~0.1 µs below that (bench/json_decode_micro.py), not worth a second path.
    header = view[:header_length]
    split = _split_data(header) if split_data else None
    if split is None:
        doc = _loads(header)
        raws = {}
    else:
        doc, raws = split
    if not isinstance(doc, dict):
        raise InvalidArgument("the request JSON must be an object")
    req = HttpInferRequest(model_name, model_version)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    req.id = request_id
    req.parameters = _parameters(doc.get("parameters"), "request")
    binary_output = req.parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidArgument("parameter 'binary_data_output' must be a boolean")
    req.binary_output = binary_output
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the request JSON needs an 'inputs' array")
    offset = header_length
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise InvalidArgument("each element of 'inputs' must be an object")
        name = item.get("name")
        datatype = item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument("each input needs a 'name' and a 'datatype' (strings)")
        shape = _shape(item.get("shape"), name)
        params = _parameters(item.get("parameters"), f"input '{name}'")
        binary_size = params.pop("binary_data_size", None)
        if uses_shared_memory(params):
            given = [k for k, v in (("'data'", "data" in item),
                                    ("'binary_data_size'", binary_size is not None)) if v]
            if given:
                raise InvalidArgument(
                    f"input '{name}': Input must set only one of the following fields: "
                    "'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in "
                    f"'parameters'. But set {' '.join(given)} 'shared_memory_region'"
                )
            req.inputs.append(HttpInput(name, datatype, shape, params))
            continue  # its bytes come from the region (raw_input_contents skips it)
        if binary_size is not None:
            if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
                raise InvalidArgument(
                    f"input '{name}': 'binary_data_size' must be a non-negative integer"
                )
            if "data" in item:
                raise InvalidArgument(
                    f"input '{name}': both 'data' and the binary_data_size parameter given"
                )
            if offset + binary_size > size:
                raise InvalidArgument(
                    f"input '{name}': binary_data_size {binary_size} runs past the end of "
                    f"the body ({size - offset} bytes of binary data left)"
                )
            raw = view[offset:offset + binary_size]
            offset += binary_size
        elif "data" in item:
            raw = raws.get(index)
            if raw is None:
                raw = _json_tensor(name, datatype, item["data"])
        else:
            raise InvalidArgument(
                f"unable to find data for input tensor '{name}' for model '{model_name}' "
                "in request. (give 'data', or the binary_data_size parameter)"
            )
        req.inputs.append(HttpInput(name, datatype, shape, params))
        req.raw_input_contents.append(raw)
    if offset != size:
        raise InvalidArgument(
            f"the body holds {size - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidArgument("'outputs' must be an array")
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidArgument("each element of 'outputs' needs a 'name' (a string)")
            params = _parameters(item.get("parameters"), f"output '{item['name']}'")
            binary = params.pop("binary_data", None)
            if binary is not None and not isinstance(binary, bool):
                raise InvalidArgument(
                    f"output '{item['name']}': parameter 'binary_data' must be a boolean"
                )
            shm = uses_shared_memory(params)
            if shm:
                if binary:
                    raise InvalidArgument(
                        f"output '{item['name']}': Output can't set both "
                        "'shared_memory_region' and 'binary_data'"
                    )
                binary = False
            elif binary is None:
                binary = binary_output
            req.outputs.append(HttpOutput(item["name"], params, binary, shm))
    return req


class _NonFinite(Exception):
    pass


def _json_data(datatype: str, shape, data):
    if datatype == "BYTES":
        count = 1
        for d in shape:
            count *= d
        return [
            v.decode("utf-8", "backslashreplace") for v in decode_bytes_tensor(data, count)
        ]
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise _NonFinite  # orjson writes NaN and Infinity as null: the stdlib writes them
    return data.reshape(-1)


def encode_infer(result, request: HttpInferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) for an InferResult."""
    binary = {o.name for o in request.outputs if o.binary}
    if not request.outputs and request.binary_output:
        binary = {name for name, _, _, _ in result.tensors}
    in_shm = {o.name for o in request.outputs if o.shared_memory}
    outputs = []
    chunks = []
    nonfinite = False
    for name, datatype, shape, data in result.tensors:
        entry = {"name": name, "datatype": datatype, "shape": list(shape)}
        if name in in_shm:
            pass  # its data went into the shared-memory region the request named
        elif name in binary:
            raw = data if isinstance(data, bytes) else data.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            try:
                entry["data"] = _json_data(datatype, shape, data)
            except _NonFinite:
                nonfinite = True
                entry["data"] = data.reshape(-1)
        outputs.append(entry)
    doc = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        doc["id"] = result.id
    doc["outputs"] = outputs
    if nonfinite:
        for entry, (_, _, _, data) in zip(outputs, result.tensors):
            if "data" in entry and not isinstance(entry["data"], list):
                entry["data"] = entry["data"].tolist()
        header = json.dumps(doc, separators=(",", ":")).encode()
    else:
        header = orjson.dumps(doc, option=_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
