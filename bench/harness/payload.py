"""Request bytes, built once before a run: the hot loop only ever sends these.

Every distinct request is a ModelInferRequest serialized here, so the load generator
does no protobuf work per request (a raw-bytes unary call sends them as they are).
Over HTTP, one v2 JSON body is built here instead, and wrk sends it (wrk.py).
Input shapes and datatypes come from the scenario, else from ModelMetadata (and
ModelConfig's max_batch_size decides whether the first dimension is the batch).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorgate._proto.inference import grpc_service_pb2 as pb

from bench.harness.scenario import Scenario, ScenarioError

# v2 datatype -> numpy dtype, little-endian as on the wire. BYTES is length-prefixed.
NP_DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


@dataclass(frozen=True)
class InputSpec:
    """One input as sent: ``shape`` is the whole request's, batch dimension included."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    batched: bool  # the first dimension is the batch (perf_analyzer's --shape drops it)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.batched else self.shape

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape),
                "batched": self.batched}


def resolve_inputs(scenario: Scenario, metadata: dict | None,
                   max_batch_size: int | None) -> list[InputSpec]:
    """The inputs to send: the scenario's, completed from the server's metadata.

    Batched when ModelConfig says max_batch_size > 0; without a config, when the
    metadata's first dimension is -1; without either, when the scenario's shapes are
    all that is known (shapes in a scenario exclude the batch dimension).
    """
    meta_inputs = {t["name"]: t for t in (metadata or {}).get("inputs", [])}
    names = list(meta_inputs) or list(scenario.inputs)
    if not names:
        raise ScenarioError(
            f"{scenario.model}: the server gives no ModelMetadata; name the inputs in the "
            "scenario (inputs: {NAME: {datatype: FP32, shape: [16]}})")
    unknown = set(scenario.inputs) - set(names)
    if unknown:
        raise ScenarioError(f"inputs {sorted(unknown)} are not inputs of {scenario.model} "
                            f"(it has {names})")
    specs = []
    for name in names:
        meta = meta_inputs.get(name)
        given = scenario.inputs.get(name)
        datatype = (given and given.datatype) or (meta and meta["datatype"])
        if not datatype or datatype not in NP_DTYPES:
            raise ScenarioError(f"input {name}: unsupported or unknown datatype {datatype!r}")
        if max_batch_size is not None:
            batched = max_batch_size > 0
        elif meta is not None:
            batched = bool(meta["shape"]) and meta["shape"][0] == -1
        else:
            batched = True
        if given is not None and given.shape is not None:
            sample = tuple(given.shape)
        elif meta is not None:
            sample = tuple(meta["shape"][1:] if batched else meta["shape"])
        else:
            raise ScenarioError(f"input {name}: no shape in the scenario or the metadata")
        if any(d < 0 for d in sample):
            raise ScenarioError(
                f"input {name}: shape {list(sample)} has a variable dimension; give the "
                "shape in the scenario (without the batch dimension)")
        if batched:
            shape = (scenario.batch_size, *sample)
        elif scenario.batch_size != 1:
            raise ScenarioError(f"{scenario.model} does not batch; batch_size must be 1")
        else:
            shape = sample
        specs.append(InputSpec(name, datatype, shape, batched))
    return specs


def _random_array(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    dtype = NP_DTYPES[spec.datatype]
    if spec.datatype == "BYTES":
        flat = [b"bench-%d" % rng.integers(1 << 30) for _ in range(int(np.prod(spec.shape)))]
        return np.array(flat, dtype=object).reshape(spec.shape)
    if spec.datatype == "BOOL":
        return rng.random(spec.shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 100, spec.shape).astype(dtype)
    return rng.standard_normal(spec.shape).astype(dtype)


def _zeros(spec: InputSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        return np.full(spec.shape, b"", dtype=object)
    return np.zeros(spec.shape, NP_DTYPES[spec.datatype])


def _fit(values, spec: InputSpec, source: str) -> list[np.ndarray]:
    """One array per distinct request: ``values`` is one request's tensor, or a stack."""
    arr = np.asarray(values)
    if spec.datatype == "BYTES":
        arr = np.vectorize(lambda v: v.encode() if isinstance(v, str) else bytes(v),
                           otypes=[object])(arr)
    else:
        arr = arr.astype(NP_DTYPES[spec.datatype])
    if arr.shape == spec.shape:
        return [arr]
    if arr.ndim == len(spec.shape) + 1 and arr.shape[1:] == spec.shape:
        return list(arr)
    if arr.size == int(np.prod(spec.shape)):
        return [arr.reshape(spec.shape)]  # JSON data is often flat, like perf_analyzer's
    raise ScenarioError(f"{source}: {spec.name} has shape {list(arr.shape)}; expected "
                        f"{list(spec.shape)} or [N, {', '.join(map(str, spec.shape))}]")


def _from_file(path: Path, specs: list[InputSpec]) -> list[dict[str, np.ndarray]]:
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise ScenarioError(f"{path}: a .npy file feeds one input; use .json for "
                                f"{[s.name for s in specs]}")
        return [{specs[0].name: a} for a in _fit(np.load(path), specs[0], str(path))]
    raw = json.loads(path.read_text())
    # Accept perf_analyzer's {"data": [{NAME: ...}, ...]}, a list of such dicts, or one.
    entries = raw.get("data", raw) if isinstance(raw, dict) else raw
    entries = entries if isinstance(entries, list) else [entries]
    out = []
    for entry in entries:
        request = {}
        for spec in specs:
            if spec.name not in entry:
                raise ScenarioError(f"{path}: an entry lacks input {spec.name}")
            value = entry[spec.name]
            value = value["content"] if isinstance(value, dict) else value
            fitted = _fit(value, spec, str(path))
            if len(fitted) != 1:
                raise ScenarioError(f"{path}: give one request per entry")
            request[spec.name] = fitted[0]
        out.append(request)
    if not out:
        raise ScenarioError(f"{path}: no data entries")
    return out


def make_arrays(specs: list[InputSpec], data: str, distinct: int,
                seed: int) -> list[dict[str, np.ndarray]]:
    """The distinct requests' tensors, name -> array, for the scenario's ``data``."""
    if data == "random":
        rng = np.random.default_rng(seed)
        return [{s.name: _random_array(s, rng) for s in specs} for _ in range(distinct)]
    if data == "zeros":
        return [{s.name: _zeros(s) for s in specs}]
    path = Path(data)
    if not path.exists():
        raise ScenarioError(f"data file not found: {path}")
    return _from_file(path, specs)


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The tensor's raw_input_contents: little-endian elements, or for BYTES each
    element as a 4-byte little-endian length and its bytes (the v2 convention)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.ravel())
    return np.ascontiguousarray(array, NP_DTYPES[datatype]).tobytes()


def encode_request(model: str, version: str, specs: list[InputSpec],
                   arrays: dict[str, np.ndarray], outputs: tuple[str, ...] = ()) -> bytes:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for spec in specs:
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        request.raw_input_contents.append(raw_bytes(arrays[spec.name], spec.datatype))
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def _json_values(array: np.ndarray, datatype: str) -> list:
    """A tensor's elements, flat, as the v2 JSON ``data`` field has them."""
    flat = array.ravel()
    if datatype == "BYTES":
        return [v.decode() for v in flat]  # UTF-8 strings; v2 JSON has no raw bytes
    if datatype in ("FP16", "FP32"):
        # The shortest decimal that reads back as the same float32/float16: str() of the
        # numpy scalar, as a Python float so json writes it as a number.
        return [float(str(v)) for v in flat]
    return flat.tolist()  # bool, ints, FP64: exact as Python values


def json_body(specs: list[InputSpec], arrays: dict[str, np.ndarray],
              outputs: tuple[str, ...] = ()) -> bytes:
    """One v2 HTTP/REST infer request as JSON (the KServe v2 JSON form, flat ``data``):
    ``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``.
    Every HTTP server takes this form; Triton's binary extension is not used, so each
    server parses the same bytes."""
    request: dict = {"inputs": [
        {"name": s.name, "shape": list(s.shape), "datatype": s.datatype,
         "data": _json_values(arrays[s.name], s.datatype)}
        for s in specs]}
    if outputs:
        request["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(request, separators=(",", ":"), allow_nan=False).encode()


def build_json_body(scenario: Scenario, specs: list[InputSpec]) -> bytes:
    """The scenario's first distinct request (the first of gRPC's payloads too) as a v2
    JSON body: wrk sends this one body on every request."""
    arrays = make_arrays(specs, scenario.data, 1, scenario.seed)[0]
    return json_body(specs, arrays, scenario.outputs)


def build_payloads(scenario: Scenario, specs: list[InputSpec]) -> list[bytes]:
    arrays = make_arrays(specs, scenario.data, scenario.distinct_requests, scenario.seed)
    return [encode_request(scenario.model, scenario.version, specs, a, scenario.outputs)
            for a in arrays]
