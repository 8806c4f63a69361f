"""Malformed inputs shared by the CI fuzz tests (test_fuzz.py, test_http_fuzz.py, through
hypothesis) and the fuzz run at scale (bench/fuzz_scale.py, through seeded ``random``
at a high rate): the models and datatypes to name, the shapes that overflow, the names
that try to escape, the mutations of a valid HTTP body, and plain-``random`` generators
of whole cases for the bench.
"""

from __future__ import annotations

import json
import random
import struct

from tensorgate._proto.inference import grpc_service_pb2 as pb

INFER_MODELS = ("identity_fp32", "identity_bytes", "identity_int64", "fixed_shape",
                "runtime_error", "add_sub")
DATATYPES = ("FP32", "BYTES", "INT64", "INT8", "BOOL", "FP16", "FP64", "UINT64", "", "fp32",
             "STRING", "\u00ff")
WIDTHS = {"FP32": 4, "INT64": 8, "INT8": 1, "BOOL": 1, "FP16": 2, "FP64": 8, "UINT64": 8}
HUGE_DIMS = (0, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63), -1)
BAD_PREFIXES = (2**32 - 1, 2**31, 100, 5)
CONTENT_FIELDS = ("fp32_contents", "int64_contents", "bytes_contents", "int_contents",
                  "bool_contents")
CONTENT_VALUES = {"fp32_contents": 0.5, "int64_contents": 7, "bytes_contents": b"ab",
                  "int_contents": -1, "bool_contents": True}

# Names a caller might send where a model, version or region name goes: escapes from the
# repository or /dev/shm, NUL bytes, control characters, huge and odd Unicode.
EVIL_NAMES = (
    "", ".", "..", "../x", "../../etc/passwd", "x/../../y", "/abs", "/dev/shm/x", "a/b",
    "x\0y", "\0", "identity_fp32\0", "identity_fp32/../add_sub", "%2e%2e%2fx", "~root",
    " ", "\t\n", "*", "\u202e\u0000", "\U0001f600", "con", "NUL", "x" * 256, "y" * 70_000,
    "identity_fp32/1", "identity_fp32 ", "-1", "1e9", "\\..\\x",
)

# Changes to a valid HTTP infer body: (key, value); None drops the key.
HTTP_MUTATIONS = (
    ("inputs", None), ("inputs", {}), ("inputs", [1]), ("name", 7), ("name", "NOPE"),
    ("shape", "x"), ("shape", [1, -3]), ("shape", [2 ** 40, 2 ** 40]), ("shape", []),
    ("shape", [1, 3, 1]), ("datatype", "BYTES"), ("datatype", "FP99"), ("datatype", None),
    ("data", "abc"), ("data", [[1, 2], [3]]), ("data", [True] * 3), ("data", [None] * 3),
    ("data", [1e300] * 3), ("data", []), ("parameters", []),
    ("parameters", {"binary_data_size": -1}), ("parameters", {"binary_data_size": 5}),
    ("outputs", [{"name": "NOPE"}]), ("outputs", [{"name": "OUTPUT0"}] * 2),
    ("outputs", [{"name": "OUTPUT0", "parameters": {"classification": "x"}}]),
    ("outputs", [{"name": "OUTPUT0", "parameters": {"binary_data": 3}}]),
    ("id", 5), ("id", "ok"),
)


def valid_http_body(rows: int = 1) -> dict:
    return {"inputs": [{"name": "INPUT0", "shape": [rows, 3], "datatype": "FP32",
                        "data": [0.5] * (3 * rows)}]}


def mutate_http_body(doc: dict, changes) -> dict:
    """Apply HTTP_MUTATIONS entries to the body (to its first input where they name an
    input's key and it has one)."""
    for key, value in changes:
        inputs = doc.get("inputs")
        first = inputs[0] if isinstance(inputs, list) and inputs else None
        top_level = key in ("inputs", "outputs", "id") or not isinstance(first, dict)
        target = doc if top_level else first
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


# ----------------------------------------------------------------------- plain random


def _dim(rng: random.Random) -> int:
    return rng.randint(-3, 9) if rng.random() < 0.7 else rng.choice(HUGE_DIMS)


def random_request(rng: random.Random) -> pb.ModelInferRequest:
    """A ModelInferRequest that is wrong in one or more ways (or, by chance, right)."""
    req = pb.ModelInferRequest(model_name=rng.choice(INFER_MODELS + ("no_such_model", "")))
    if rng.random() < 0.5:
        req.model_version = rng.choice(["1", "2", "x", "-1", "99999999999999999999"])
    use_raw = rng.random() < 0.5
    for _ in range(rng.randint(0, 3)):
        dtype = rng.choice(DATATYPES)
        shape = [_dim(rng) for _ in range(rng.randint(0, 4))]
        t = req.inputs.add(name=rng.choice(["INPUT0", "INPUT1", "INDICES", "nope", ""]),
                           datatype=dtype, shape=shape)
        count = 1
        for d in shape:
            count *= max(d, 0)
        payload = rng.choice(["exact", "random", "bad_bytes", "empty"])
        if payload == "exact" and count <= 64:
            if dtype == "BYTES":
                items = [rng.randbytes(rng.randint(0, 6)) for _ in range(count)]
                data = b"".join(struct.pack("<I", len(x)) + x for x in items)
            else:
                data = rng.randbytes(count * WIDTHS.get(dtype, 4))
        elif payload == "bad_bytes":
            data = struct.pack("<I", rng.choice(BAD_PREFIXES)) + b"abc"
        elif payload == "random":
            data = rng.randbytes(rng.randint(0, 64))
        else:
            data = b""
        if use_raw:
            req.raw_input_contents.append(data)
            if rng.random() < 0.1:  # mixed raw and typed
                t.contents.fp32_contents.extend([1.0, 2.0])
        else:
            field = rng.choice(CONTENT_FIELDS)
            getattr(t.contents, field).extend([CONTENT_VALUES[field]] * rng.randint(0, 8))
    if rng.random() < 0.2:
        req.outputs.add(name=rng.choice(["OUTPUT0", "OUTPUT1", "nope"]))
    if rng.random() < 0.2:
        param = req.parameters[rng.choice(["priority", "timeout", "other", "sequence_id"])]
        kind = rng.choice(["int64_param", "string_param", "bool_param"])
        setattr(param, kind, {"int64_param": -5, "string_param": "x", "bool_param": True}[kind])
    if rng.random() < 0.1:  # an extra raw entry nobody asked for
        req.raw_input_contents.append(b"\0" * 4)
    return req


HUGE_SHAPE_MODELS = ("identity_fp32", "identity_bytes", "runtime_error")
HUGE_SHAPE_DIMS = (2**40, 2**62, 2**63 - 1, 2**31, 3, 0, 1)


def huge_shape_request(rng: random.Random) -> pb.ModelInferRequest:
    shape = [rng.choice(HUGE_SHAPE_DIMS) for _ in range(rng.randint(1, 5))]
    return huge_shape_message(rng.choice(HUGE_SHAPE_MODELS), shape, rng.random() < 0.5)


def huge_shape_message(model: str, shape: list, typed: bool) -> pb.ModelInferRequest:
    """One input declared ``shape`` (huge) with one element's worth of data."""
    req = pb.ModelInferRequest(model_name=model)
    dtype = "BYTES" if model == "identity_bytes" else "FP32"
    t = req.inputs.add(name="INPUT0", datatype=dtype, shape=shape)
    if typed:
        if dtype == "BYTES":
            t.contents.bytes_contents.append(b"x")
        else:
            t.contents.fp32_contents.append(1.0)
    else:
        req.raw_input_contents.append(b"\1\0\0\0x" if dtype == "BYTES" else b"\0" * 4)
    return req


def bad_bytes_request(rng: random.Random) -> pb.ModelInferRequest:
    """A BYTES tensor whose length prefixes lie: too long, cut, trailing, huge."""
    n = rng.randint(1, 4)
    req = pb.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, n])
    parts = []
    for _ in range(n + rng.choice([-1, 0, 0, 1])):
        item = rng.randbytes(rng.randint(0, 5))
        declared = rng.choice([len(item), len(item), len(item) + 1, 2**32 - 1, 2**31 - 1])
        parts.append(struct.pack("<I", declared) + item)
    data = b"".join(parts)
    if rng.random() < 0.3:
        data = data[: rng.randint(0, len(data))]
    req.raw_input_contents.append(data)
    return req


SHM_SIZES = (0, 4, 8, 4092, 4096, 4097, 2**31, 2**63 - 1, -1, -(2**63))


# The models with their inputs' [batch, width] for the shared-memory cases.
SHM_MODELS = {"identity_fp32": (("INPUT0",), 2), "add_sub": (("INPUT0", "INPUT1"), 16)}


def shm_request(rng: random.Random, region: str) -> pb.ModelInferRequest:
    """Inputs and outputs in shared memory ``region`` (a registered 4 KiB region, or a
    name that is not one): mostly the right tensors at the right size, with offsets and
    sizes in, at and past its end, negative, huge."""
    model = rng.choice(sorted(SHM_MODELS))
    names, width = SHM_MODELS[model]
    req = pb.ModelInferRequest(model_name=model)
    for name in names if rng.random() < 0.9 else ("INPUT0", "INPUT9"):
        shape = [1, width] if rng.random() < 0.8 else rng.choice([[1, 1024], [2**40, width]])
        t = req.inputs.add(name=name, datatype="FP32", shape=shape)
        _shm_params(rng, t.parameters, region, 4 * width)
        if rng.random() < 0.05:
            t.contents.fp32_contents.append(1.0)  # shm and contents both
    if rng.random() < 0.5:
        out = req.outputs.add(name="OUTPUT0")
        _shm_params(rng, out.parameters, region, 4 * width)
        if rng.random() < 0.05:
            out.parameters["classification"].int64_param = 2
    return req


def _shm_params(rng: random.Random, params, region: str, size: int) -> None:
    params["shared_memory_region"].string_param = rng.choice([region] * 8 + ["no_such", ""])
    for key, right in (("shared_memory_byte_size", size), ("shared_memory_offset", 0)):
        roll = rng.random()
        if roll < 0.6:
            params[key].int64_param = right if key.endswith("size") else rng.choice(
                [0, 0, 64, 4096 - size])
        elif roll < 0.9:
            params[key].int64_param = rng.choice(SHM_SIZES)
        elif roll < 0.95:
            params[key].string_param = "8"  # the wrong type
        # else: left out


def flip(rng: random.Random, data: bytes, flips: int = 4) -> bytes:
    out = bytearray(data)
    if out:
        for _ in range(rng.randint(1, flips)):
            i = rng.randrange(len(out))
            out[i] = rng.randrange(256) if rng.random() < 0.5 else out[i] ^ (1 << rng.randrange(8))
    return bytes(out)


INFER_KINDS = ("random_bytes", "structured", "truncated", "mutated", "huge_shapes",
               "bad_bytes")


def infer_case(rng: random.Random) -> tuple[str, bytes]:
    """(kind, serialized ModelInferRequest-ish bytes) for ModelInfer or a stream message."""
    kind = rng.choice(INFER_KINDS)
    if kind == "random_bytes":
        return kind, rng.randbytes(rng.randint(0, 512))
    if kind == "huge_shapes":
        return kind, huge_shape_request(rng).SerializeToString()
    if kind == "bad_bytes":
        return kind, bad_bytes_request(rng).SerializeToString()
    data = random_request(rng).SerializeToString()
    if kind == "truncated":
        return kind, data[: rng.randint(0, max(0, len(data) - 1))]
    if kind == "mutated":
        return kind, flip(rng, data)
    return kind, data


def random_json(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, rng.randint(-2**70, 2**70), rng.random() * 1e9,
                           float("inf"), float("nan"), -0.0, "", "x" * rng.randint(0, 8),
                           rng.choice(EVIL_NAMES[:24]), rng.randint(-5, 5)])
    if roll < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["inputs", "outputs", "name", "shape", "datatype", "data", "parameters", "id",
            "key", "offset", "byte_size", "ready", "binary_data_size", "x", ""]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def http_infer_body(rng: random.Random) -> tuple[str, bytes, dict]:
    """(kind, body, extra headers) for POST .../infer."""
    kind = rng.choice(("json", "mutated", "binary", "random_body"))
    if kind == "json":
        return kind, json.dumps(random_json(rng)).encode(), {}
    if kind == "mutated":
        changes = [rng.choice(HTTP_MUTATIONS) for _ in range(rng.randint(1, 3))]
        return kind, json.dumps(mutate_http_body(valid_http_body(rng.randint(1, 4)),
                                                 changes)).encode(), {}
    if kind == "binary":
        size = rng.randint(-2, 64)
        header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32",
                                         "parameters": {"binary_data_size": size}}],
                             "outputs": [{"name": "OUTPUT0",
                                          "parameters": {"binary_data": rng.random() < 0.5}}]
                             }).encode()
        length = rng.choice([len(header), len(header), rng.randint(-5, 400), 2**63, -2**63])
        return kind, header + rng.randbytes(rng.randint(0, 64)), {
            "Inference-Header-Content-Length": str(length)}
    return kind, flip(rng, json.dumps(valid_http_body()).encode(), 8), {}
