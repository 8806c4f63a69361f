"""The Cython wire codec (tensorgate._ext.codec) against the protobuf library as oracle.

Requests are built with the generated pb2 classes, serialized by protobuf, then
rewritten at the wire level (unknown fields injected at every nesting level, packed
repeated fields unpacked, a tensor's contents split in two, a stale duplicate of a
singular field prepended). The oracle is protobuf parsing *those same bytes*, so the
rewriter below never has to be right about what the bytes mean.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from google.protobuf.message import DecodeError
from tensorgate._ext import codec
from tensorgate._proto.inference import grpc_service_pb2 as pb

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FAST, max_examples=40)

CONTENT_FIELDS = {  # InferTensorContents field -> the numpy dtype the codec returns
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
    "uint_contents": np.uint32, "uint64_contents": np.uint64,
    "fp32_contents": np.float32, "fp64_contents": np.float64, "bytes_contents": None,
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]

# ---------------------------------------------------------------------------------------
# Wire-level helpers (test side only).


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def wire_fields(data: bytes):
    """(field, wire type, payload) for each field of a well-formed message."""
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            _, end = read_varint(data, pos)
        elif wt == 2:
            size, pos = read_varint(data, pos)
            end = pos + size
        else:
            end = pos + (8 if wt == 1 else 4)
        yield field, wt, data[pos:end]
        pos = end


def reemit(field: int, wt: int, payload: bytes) -> bytes:
    return ld(field, payload) if wt == 2 else key(field, wt) + payload


SUBMESSAGES = {
    "request": {4: "entry", 5: "input", 6: "output"},
    "input": {4: "entry", 5: "contents"},
    "output": {2: "entry"},
    "entry": {2: "param"},
    "param": {},
    "contents": {},
}
PACKED = {  # message -> packed field -> element kind
    "input": {3: "varint"},
    "contents": {1: "varint", 2: "varint", 3: "varint", 4: "varint", 5: "varint",
                 6: "i32", 7: "i64"},
}


def unknown_field(rnd: random.Random) -> bytes:
    field = rnd.choice([9, 10, 15, 16, 100, 2047, 19000, (1 << 29) - 1])
    wt = rnd.choice([0, 1, 2, 5])
    if wt == 0:
        return key(field, 0) + varint(rnd.getrandbits(rnd.choice([1, 7, 35, 64])))
    if wt == 2:
        return ld(field, rnd.randbytes(rnd.randrange(12)))
    return key(field, wt) + rnd.randbytes(8 if wt == 1 else 4)


def unpack(field: int, kind: str, payload: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(payload):
        if kind == "varint":
            _, end = read_varint(payload, pos)
            out.append(key(field, 0) + payload[pos:end])
        else:
            end = pos + (4 if kind == "i32" else 8)
            out.append(key(field, 5 if kind == "i32" else 1) + payload[pos:end])
        pos = end
    return b"".join(out)


def rewrite(kind: str, data: bytes, rnd: random.Random) -> list[bytes]:
    """The fields of one message, re-encoded with the variations the codec must accept."""
    out = []
    for field, wt, payload in wire_fields(data):
        sub = SUBMESSAGES[kind].get(field) if wt == 2 else None
        if sub == "contents" and rnd.random() < 0.3:
            parts = rewrite(sub, payload, rnd)  # one message sent as two: they merge
            cut = rnd.randrange(len(parts) + 1)
            out += [ld(field, b"".join(parts[:cut])), ld(field, b"".join(parts[cut:]))]
        elif sub is not None:
            out.append(ld(field, b"".join(rewrite(sub, payload, rnd))))
        elif wt == 2 and field in PACKED.get(kind, {}) and rnd.random() < 0.5:
            out.append(unpack(field, PACKED[kind][field], payload))
        else:
            out.append(reemit(field, wt, payload))
        # upb moves a map entry holding an unknown field out of the map, so entries
        # get their unknown-field coverage in test_unknown_field_inside_map_entry.
        if kind != "entry" and rnd.random() < 0.3:
            out.append(unknown_field(rnd))
    if kind != "entry" and rnd.random() < 0.3:
        out.insert(0, unknown_field(rnd))
    if kind == "request" and rnd.random() < 0.3:
        out.insert(0, ld(rnd.choice([1, 2, 3]), "stale".encode()))  # last one wins
    return out

# ---------------------------------------------------------------------------------------
# Strategies: requests built with the pb2 classes.

texts = st.text(max_size=10)
param_values = st.one_of(
    st.tuples(st.just("bool_param"), st.booleans()),
    st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("string_param"), texts),
    st.tuples(st.just("double_param"), st.floats()),
    st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)),
    st.tuples(st.none(), st.none()),
)
param_maps = st.dictionaries(texts, param_values, max_size=3)
content_values = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
contents = st.fixed_dictionaries(
    {}, optional={name: st.lists(values, max_size=6) for name, values in content_values.items()})
inputs = st.fixed_dictionaries({
    "name": texts,
    "datatype": st.one_of(st.sampled_from(DATATYPES), texts),
    "shape": st.lists(st.one_of(st.integers(-1, 64), st.integers(-(2**63), 2**63 - 1)),
                      max_size=4),
    "parameters": param_maps,
    "contents": st.one_of(st.none(), contents),
})
outputs = st.fixed_dictionaries({"name": texts, "parameters": param_maps})


def set_params(target, params: dict) -> None:
    for name, (choice, value) in params.items():
        entry = target[name]  # creating the entry is enough for "no choice set"
        if choice is not None:
            setattr(entry, choice, value)


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=draw(texts), model_version=draw(texts),
                               id=draw(texts))
    set_params(msg.parameters, draw(param_maps))
    for spec in draw(st.lists(inputs, max_size=4)):
        tensor = msg.inputs.add(name=spec["name"], datatype=spec["datatype"],
                                shape=spec["shape"])
        set_params(tensor.parameters, spec["parameters"])
        if spec["contents"] is not None:
            tensor.contents.SetInParent()
            for name, values in spec["contents"].items():
                getattr(tensor.contents, name).extend(values)
    for spec in draw(st.lists(outputs, max_size=3)):
        set_params(msg.outputs.add(name=spec["name"]).parameters, spec["parameters"])
    msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=4)))
    return msg


@st.composite
def request_wires(draw) -> bytes:
    msg = draw(requests())
    rnd = draw(st.randoms(use_true_random=False))
    return b"".join(rewrite("request", msg.SerializeToString(), rnd))

# ---------------------------------------------------------------------------------------
# Comparison with the oracle.


def expected_param(value: pb.InferParameter):
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def assert_params(ours: dict, theirs) -> None:
    assert set(ours) == set(theirs.keys())
    for name in theirs:
        want, got = expected_param(theirs[name]), ours[name]
        assert type(got) is type(want), name
        if isinstance(want, float):
            assert struct.pack("<d", got) == struct.pack("<d", want), name
        else:
            assert got == want, name


def assert_contents(ours: dict, theirs: pb.InferTensorContents) -> None:
    present = {name for name in CONTENT_FIELDS if len(getattr(theirs, name))}
    assert set(ours) == present
    for name in present:
        want, got = list(getattr(theirs, name)), ours[name]
        if name == "bytes_contents":
            assert type(got) is list and got == want
            continue
        assert got.dtype == np.dtype(CONTENT_FIELDS[name]) and got.ndim == 1
        want = np.array(want, dtype=CONTENT_FIELDS[name])
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), name
        if got.dtype.kind == "f":
            assert np.array_equal(np.signbit(got), np.signbit(want)), name


def assert_request(ours: codec.InferRequest, theirs: pb.ModelInferRequest, data) -> None:
    assert (ours.model_name, ours.model_version, ours.id) == (
        theirs.model_name, theirs.model_version, theirs.id)
    assert_params(ours.parameters, theirs.parameters)
    assert len(ours.inputs) == len(theirs.inputs)
    for got, want in zip(ours.inputs, theirs.inputs):
        assert (got.name, got.datatype, got.shape) == (
            want.name, want.datatype, tuple(want.shape))
        assert_params(got.parameters, want.parameters)
        assert_contents(got.contents, want.contents)
    assert [o.name for o in ours.outputs] == [o.name for o in theirs.outputs]
    for got, want in zip(ours.outputs, theirs.outputs):
        assert_params(got.parameters, want.parameters)
    assert [bytes(v) for v in ours.raw_input_contents] == list(theirs.raw_input_contents)
    owner = data.obj if isinstance(data, memoryview) else data
    for view in ours.raw_input_contents:
        assert view.readonly and view.obj is owner  # a view into the request, not a copy

# ---------------------------------------------------------------------------------------
# Requests


@FAST
@given(request_wires())
def test_request_matches_protobuf(data: bytes) -> None:
    assert_request(codec.decode_infer_request(data), pb.ModelInferRequest.FromString(data), data)


@FEW
@given(requests())
def test_request_from_other_buffers(msg: pb.ModelInferRequest) -> None:
    wire = msg.SerializeToString()
    for data in (bytearray(wire), memoryview(wire), np.frombuffer(wire, np.uint8)):
        assert_request(codec.decode_infer_request(data), msg, data)


def test_raw_contents_are_not_copied() -> None:
    payload = np.arange(3 * 64 * 64, dtype=np.float32)
    msg = pb.ModelInferRequest(raw_input_contents=[payload.tobytes()])
    data = msg.SerializeToString()
    view = codec.decode_infer_request(data).raw_input_contents[0]
    assert view.obj is data and view.readonly
    assert 0 < np.frombuffer(view, np.float32).ctypes.data - id(data) < 64 + len(data)
    assert np.array_equal(np.frombuffer(view, np.float32), payload)


def test_packed_and_unpacked_repeated_fields_concatenate() -> None:
    contents = (ld(6, struct.pack("<2f", 1.0, 2.0)) + key(6, 5) + struct.pack("<f", 3.0)
                + key(3, 0) + varint(-7) + ld(3, varint(8) + varint(2**63))
                + key(7, 1) + struct.pack("<d", 0.5) + ld(1, b"\x00\x02"))
    tensor = (ld(3, varint(2)) + key(3, 0) + varint(3) + ld(5, contents[:15])
              + ld(5, contents[15:]))
    data = ld(5, tensor)
    got = codec.decode_infer_request(data).inputs[0]
    assert got.shape == (2, 3)
    assert got.contents["fp32_contents"].tolist() == [1.0, 2.0, 3.0]
    assert got.contents["int64_contents"].tolist() == [-7, 8, -(2**63)]
    assert got.contents["fp64_contents"].tolist() == [0.5]
    assert got.contents["bool_contents"].tolist() == [False, True]
    assert_request(codec.decode_infer_request(data), pb.ModelInferRequest.FromString(data), data)


def test_wrong_wire_type_for_a_known_field_is_skipped_like_protobuf() -> None:
    data = key(1, 0) + varint(5) + ld(5, key(1, 5) + b"abcd" + ld(2, b"FP32"))
    ours, theirs = codec.decode_infer_request(data), pb.ModelInferRequest.FromString(data)
    assert ours.model_name == "" and ours.inputs[0].datatype == "FP32"
    assert_request(ours, theirs, data)


def test_unknown_field_inside_map_entry() -> None:
    # Skipped and the entry kept. upb (protobuf's Python backend) instead moves such an
    # entry into the parent's unknown fields, so the oracle would drop it.
    entry = ld(1, b"k") + key(9, 0) + varint(1) + ld(2, key(2, 0) + varint(4))
    assert codec.decode_infer_request(ld(4, entry)).parameters == {"k": 4}


def test_map_entry_edge_cases_match_protobuf() -> None:
    for entry in (b"", ld(1, b"k"), ld(2, key(1, 0) + b"\x01"),
                  ld(1, b"k") + ld(2, key(1, 0) + b"\x01") + ld(2, key(2, 0) + b"\x07"),
                  ld(1, b"k") + ld(2, key(1, 0) + b"\x01") + ld(2, b""),
                  ld(1, b"a") + ld(1, b"b") + ld(2, ld(3, "é".encode()))):
        data = ld(4, entry) + ld(4, ld(1, b"z"))
        assert_request(codec.decode_infer_request(data),
                       pb.ModelInferRequest.FromString(data), data)


def test_empty_request() -> None:
    got = codec.decode_infer_request(b"")
    assert (got.model_name, got.parameters, got.inputs, got.raw_input_contents) == (
        "", {}, [], [])

# ---------------------------------------------------------------------------------------
# Malformed requests


def outcome(data):
    """Ours and protobuf's verdict on data: either both parse, or neither."""
    try:
        ours = codec.decode_infer_request(data)
    except codec.WireError:
        ours = None
    try:
        theirs = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        theirs = None
    return ours, theirs


@FEW
@given(request_wires())
def test_every_prefix_decodes_or_raises_wire_error_like_protobuf(data: bytes) -> None:
    for end in range(len(data)):
        prefix = data[:end]
        ours, theirs = outcome(prefix)
        assert (ours is None) == (theirs is None), end
        if ours is not None:
            assert_request(ours, theirs, prefix)


def assert_sane(ours, theirs, data) -> None:
    """Where we accept, protobuf accepts too and agrees. Not the reverse: protobuf skips
    groups, which we refuse. Parameters are left out: a random map entry may hold an
    unknown field (see test_unknown_field_inside_map_entry)."""
    if ours is None:
        return
    assert theirs is not None
    for part in (theirs, *theirs.inputs, *theirs.outputs):
        part.ClearField("parameters")
    for part in (ours, *ours.inputs, *ours.outputs):
        part.parameters.clear()
    assert_request(ours, theirs, data)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    assert_sane(*outcome(data), data)


@FAST
@given(request_wires(), st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)),
                                 min_size=1, max_size=4))
def test_mutated_requests(data: bytes, flips) -> None:
    buf = bytearray(data)
    for pos, byte in flips:
        if buf:
            buf[pos % len(buf)] = byte
    data = bytes(buf)
    assert_sane(*outcome(data), data)


TENSOR = ld(1, b"x") + ld(3, varint(1) + varint(16))


@pytest.mark.parametrize("data, message", [
    (ld(5, ld(3, b"\x01\x80")),
     "ModelInferRequest.inputs[0].shape: truncated varint at byte 5"),
    (ld(5, TENSOR) + ld(5, key(3, 0) + b"\xff"),
     "ModelInferRequest.inputs[1].shape: truncated varint at byte 12"),
    (key(9, 0) + b"\xff" * 10 + b"\x01",
     "ModelInferRequest (unknown field 9): varint longer than 10 bytes at byte 1"),
    (ld(1, b"m") + key(2, 2) + varint(5) + b"ab",
     "ModelInferRequest.model_version: length 5 exceeds the 2 bytes left at byte 4"),
    (ld(3, b"a\xffb"), "ModelInferRequest.id: invalid UTF-8 at byte 3"),
    (ld(1, b"\xed\xa0\x80"), "ModelInferRequest.model_name: invalid UTF-8 at byte 2"),
    (ld(6, ld(2, ld(1, b"\xc0\x80"))),
     "ModelInferRequest.outputs[0].parameters: invalid UTF-8 at byte 6"),
    (ld(4, ld(2, ld(3, b"\xff"))), "ModelInferRequest.parameters: invalid UTF-8 at byte 6"),
    (key(1, 3) + key(1, 4), "ModelInferRequest: unsupported wire type 3 (field 1) at byte 0"),
    (ld(1, b"m") + key(20, 4),
     "ModelInferRequest: unsupported wire type 4 (field 20) at byte 3"),
    (ld(5, TENSOR + key(3, 7)),
     "ModelInferRequest.inputs[0]: unsupported wire type 7 (field 3) at byte 9"),
    (b"\x00\x01", "ModelInferRequest: field number 0 at byte 0"),
    (b"\xf8\xff\xff\xff\x1f\x01", "ModelInferRequest: invalid tag at byte 0"),
    (ld(5, ld(5, ld(6, b"\x00\x00\x80"))),
     "ModelInferRequest.inputs[0].contents.fp32_contents: packed length 3 is not a "
     "multiple of 4 at byte 6"),
    (ld(5, ld(5, key(7, 1) + b"\x00" * 7)),
     "ModelInferRequest.inputs[0].contents.fp64_contents: truncated fixed64 at byte 5"),
    (ld(5, ld(5, key(30, 5) + b"\x00")),
     "ModelInferRequest.inputs[0].contents (unknown field 30): truncated fixed32 at byte 6"),
    (ld(7, b"ab") + key(7, 2) + varint(2**40),
     "ModelInferRequest.raw_input_contents: length 1099511627776 exceeds the 0 bytes "
     "left at byte 5"),
])
def test_exact_wire_errors(data: bytes, message: str) -> None:
    with pytest.raises(codec.WireError) as info:
        codec.decode_infer_request(data)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    if "wire type 3" not in message and "wire type 4" not in message:  # groups: skipped
        with pytest.raises(DecodeError):                             # by protobuf
            pb.ModelInferRequest.FromString(data)


def test_non_buffer_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        codec.decode_infer_request("not bytes")

# ---------------------------------------------------------------------------------------
# Responses

NUMERIC = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
           np.uint32, np.uint64, np.float16, np.float32, np.float64]
arrays = hnp.arrays(st.sampled_from(NUMERIC),
                    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
response_outputs = st.lists(st.tuples(texts, st.sampled_from(DATATYPES), arrays,
                                      st.booleans()), max_size=4)
shapes = st.one_of(st.none(), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3))
plain_params = st.dictionaries(texts, st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), texts),
    max_size=4)


def assert_response(data: bytes, name, version, rid, outs, params) -> None:
    theirs = pb.ModelInferResponse.FromString(data)
    assert (theirs.model_name, theirs.model_version, theirs.id) == (name, version, rid)
    assert [(o.name, o.datatype, tuple(o.shape)) for o in theirs.outputs] == [
        (n, d, tuple(s)) for n, d, s, _ in outs]
    assert list(theirs.raw_output_contents) == [
        x if isinstance(x, bytes) else x.tobytes() for *_, x in outs]
    assert all(not o.parameters and not o.HasField("contents") for o in theirs.outputs)
    got = {k: expected_param(v) for k, v in theirs.parameters.items()}
    assert set(got) == set(params or {})
    for k, want in (params or {}).items():
        assert type(got[k]) is type(want)
        if isinstance(want, float):
            assert struct.pack("<d", got[k]) == struct.pack("<d", want)
        else:
            assert got[k] == want


@FAST
@given(texts, texts, texts, response_outputs, shapes, st.one_of(st.none(), plain_params))
def test_response_matches_protobuf(name, version, rid, specs, shape, params) -> None:
    outs = [(n, d, tuple(a.shape) if shape is None else tuple(shape),
             a.tobytes() if as_bytes else a) for n, d, a, as_bytes in specs]
    data = codec.encode_infer_response(name, version, rid, outs, params)
    assert_response(data, name, version, rid, outs, params)
    if not params:  # no map, so protobuf's own encoding is deterministic: same bytes
        msg = pb.ModelInferResponse(model_name=name, model_version=version, id=rid)
        for n, d, s, x in outs:
            msg.outputs.add(name=n, datatype=d, shape=s)
            msg.raw_output_contents.append(x if isinstance(x, bytes) else x.tobytes())
        assert data == msg.SerializeToString()


def test_response_large_outputs() -> None:
    small = np.arange(8, dtype=np.float32).reshape(1, 8)
    big = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
    huge = np.ones((1 << 19,), np.float64)  # over the GIL-release threshold
    outs = [("a", "FP32", (1, 8), small), ("b", "FP32", (64, 1000), big),
            ("c", "FP64", huge.shape, huge)]
    data = codec.encode_infer_response("m", "1", "req-1", outs, {"k": 2**63})
    assert_response(data, "m", "1", "req-1", outs, {"k": 2**63})


def test_response_parameter_kinds() -> None:
    params = {"b": False, "i": -(2**63), "u": 2**64 - 1, "big": 2**63, "f": -0.0, "s": "é",
              "n": None}
    data = codec.encode_infer_response("", "", "", [], params)
    theirs = pb.ModelInferResponse.FromString(data).parameters
    assert {k: v.WhichOneof("parameter_choice") for k, v in theirs.items()} == {
        "b": "bool_param", "i": "int64_param", "u": "uint64_param", "big": "uint64_param",
        "f": "double_param", "s": "string_param", "n": None}
    assert_response(data, "", "", "", [], params)


@pytest.mark.parametrize("outputs, params, exc, message", [
    ([("x", "FP32", (2, 2), np.ones((2, 4), np.float32)[:, ::2])], None, ValueError,
     "output 'x': data must be C-contiguous"),
    ([("x", "FP32", (2,), np.ones(2, ">f4"))], None, ValueError,
     "output 'x': data must be little-endian"),
    ([("x", "FP32", (2,), [1.0, 2.0])], None, TypeError, "output 'x': data must be bytes"),
    ([("x", "FP32", (2,), np.array([None, None]))], None, TypeError,
     "output 'x': data must be bytes or a numeric numpy array"),
    ([("x", "FP32", (np.int64(2), True), b"")], None, None, None),
    ([("x", "FP32", (1.5,), b"")], None, TypeError, None),
    ([(b"x", "FP32", (1,), b"")], None, TypeError, "output 0: name and datatype"),
    ([("x", "FP32", (1,))], None, ValueError, None),
    ([], {"k": 2**64}, OverflowError, "parameter 'k': 18446744073709551616 is outside"),
    ([], {"k": -(2**63) - 1}, OverflowError, "parameter 'k'"),
    ([], {"k": [1]}, TypeError, "parameter 'k': expected bool, int, float, str or None"),
    ([], {1: 1}, TypeError, "parameter names must be str"),
])
def test_response_errors(outputs, params, exc, message) -> None:
    if exc is None:  # accepted: numpy integers and bools are indexes
        codec.encode_infer_response("m", "1", "", outputs, params)
        return
    with pytest.raises(exc) as info:
        codec.encode_infer_response("m", "1", "", outputs, params)
    if message:
        assert str(info.value).startswith(message)


@FAST
@given(st.one_of(st.none(), texts.map(lambda t: pb.ModelInferResponse(id=t).SerializeToString())),
       texts)
def test_stream_response(inner, error_message) -> None:
    data = codec.encode_stream_response(inner, error_message)
    theirs = pb.ModelStreamInferResponse.FromString(data)
    assert theirs.error_message == error_message
    assert theirs.HasField("infer_response") == (inner is not None)
    if inner is not None:
        assert data.endswith(inner)


def test_stream_response_wraps_an_encoded_response() -> None:
    inner = codec.encode_infer_response("m", "2", "r", [("y", "INT64", (1,), np.ones(1, np.int64))])
    theirs = pb.ModelStreamInferResponse.FromString(codec.encode_stream_response(inner))
    assert theirs.infer_response == pb.ModelInferResponse.FromString(inner)
    assert codec.encode_stream_response() == b""
    assert codec.encode_stream_response(error_message="boom") == ld(1, b"boom")

# ---------------------------------------------------------------------------------------
# BYTES tensors

elements = st.lists(st.one_of(st.binary(max_size=12), texts), max_size=12)


@FAST
@given(elements, st.integers(0, 2))
def test_bytes_tensor_round_trip(items, ndim) -> None:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    if ndim == 2 and len(items) % 2 == 0 and items:
        arr = arr.reshape(2, -1)
    wire = codec.encode_bytes_tensor(arr)
    want = [x if isinstance(x, bytes) else x.encode() for x in items]
    assert wire == b"".join(struct.pack("<I", len(x)) + x for x in want)
    got = codec.decode_bytes_tensor(wire, len(items))
    assert got.dtype == object and got.shape == (len(items),) and list(got) == want


@FEW
@given(elements)
def test_bytes_tensor_matches_tritonclient(items) -> None:
    utils = pytest.importorskip("tritonclient.utils")
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    if items:
        assert codec.encode_bytes_tensor(arr) == utils.serialize_byte_tensor(arr).item()


def test_bytes_tensor_fixed_width_dtypes() -> None:
    fixed = np.array([[b"a", b"bc\x00d"], [b"", b"xyz"]], dtype="S4")
    assert codec.encode_bytes_tensor(fixed) == codec.encode_bytes_tensor(
        np.array([b"a", b"bc\x00d", b"", b"xyz"], dtype=object))
    text = np.array(["é", "", "abc"])
    assert list(codec.decode_bytes_tensor(codec.encode_bytes_tensor(text), 3)) == [
        "é".encode(), b"", b"abc"]
    assert codec.encode_bytes_tensor(np.asfortranarray(fixed)) == codec.encode_bytes_tensor(fixed)
    assert codec.encode_bytes_tensor(["a", b"b"]) == b"\x01\x00\x00\x00a\x01\x00\x00\x00b"


def test_bytes_tensor_decode_accepts_buffers() -> None:
    wire = codec.encode_bytes_tensor(np.array([b"ab", b"c"], dtype=object))
    for data in (bytearray(wire), memoryview(wire)):
        assert list(codec.decode_bytes_tensor(data, 2)) == [b"ab", b"c"]
    assert codec.decode_bytes_tensor(b"", 0).shape == (0,)


WIRE4 = b"".join(struct.pack("<I", len(x)) + x for x in (b"a", b"bb", b"", b"dddd"))


@pytest.mark.parametrize("data, count, message", [
    (WIRE4[:-1], 4, "BYTES tensor: element 3 declares 4 bytes but only 3 remain"),
    (WIRE4[:15] + struct.pack("<I", 100) + b"x" * 12, 4,
     "BYTES tensor: element 3 declares 100 bytes but only 12 remain"),
    (WIRE4[:17], 4, "BYTES tensor: element 3 length prefix is cut short (2 of 4 bytes)"),
    (WIRE4, 5, "BYTES tensor holds 4 elements, expected 5"),
    (WIRE4, 3, "BYTES tensor holds 4 elements, expected 3"),
    (WIRE4 + b"\x00\x00\x00\x00", 4, "BYTES tensor holds 5 elements, expected 4"),
    (WIRE4 + b"\x07", 4, "BYTES tensor: 1 trailing bytes after 4 elements"),
    (WIRE4, -1, "BYTES tensor: count must be >= 0, got -1"),
    (b"", 1, "BYTES tensor holds 0 elements, expected 1"),
])
def test_bytes_tensor_errors(data, count, message) -> None:
    with pytest.raises(ValueError) as info:
        codec.decode_bytes_tensor(data, count)
    assert str(info.value) == message


@pytest.mark.parametrize("arr, exc, message", [
    (np.array([b"a", 3], dtype=object), TypeError,
     "BYTES tensor: element 1 is int, expected bytes or str"),
    (np.zeros(2, np.float32), TypeError, "BYTES tensor: expected an object"),
    (np.array(["\ud800"], dtype=object), UnicodeEncodeError, None),
])
def test_bytes_tensor_encode_errors(arr, exc, message) -> None:
    with pytest.raises(exc) as info:
        codec.encode_bytes_tensor(arr)
    if message:
        assert str(info.value).startswith(message)
