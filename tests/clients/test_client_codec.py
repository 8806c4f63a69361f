"""The Python client's tensor codec, per datatype, against tritonclient as the oracle
(np_to_triton_dtype, serialize_byte_tensor, deserialize_bytes_tensor), and its message
converters against tritonclient's own copy of the protocol messages."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import (
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from clients_support import import_client

import_client()
from tensorgate_client import TensorGateError, messages, tensors  # noqa: E402

NUMERIC = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16,
           np.int32, np.int64, np.float16, np.float32, np.float64]  # fmt: skip


def sample(dtype) -> np.ndarray:
    """A 2x3 array using the dtype's extremes, so truncation or sign errors show."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    return np.array([[info.min, 0, info.max], [1, 2, info.max // 2 if dtype.kind != "f" else -1.5]],
                    dtype=dtype)  # fmt: skip


def test_the_datatype_table_covers_the_protocol():
    assert set(tensors.DATATYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_numeric_encode_and_decode_match_tritonclient(dtype):
    array = sample(dtype)
    datatype, raw = tensors.encode(array)
    assert datatype == np_to_triton_dtype(array.dtype)
    assert raw == array.tobytes()  # what tritonclient's set_data_from_numpy sends (x86)
    assert tensors.numpy_dtype(datatype) == np.dtype(triton_to_np_dtype(datatype))
    decoded = tensors.decode(datatype, array.shape, raw)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    np.testing.assert_array_equal(decoded, np.frombuffer(raw, triton_to_np_dtype(datatype)).reshape(2, 3))


@pytest.mark.parametrize("dtype", [">u2", ">i4", ">i8", ">f2", ">f4", ">f8"])
def test_big_endian_arrays_go_out_little_endian(dtype):
    array = np.arange(6, dtype=dtype).reshape(2, 3)
    datatype, raw = tensors.encode(array)
    assert raw == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(tensors.decode(datatype, (2, 3), raw), array)


def test_non_contiguous_arrays_are_sent_row_major():
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran order view
    _, raw = tensors.encode(array)
    assert raw == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.array([b"abc", b"", b"\x00\xff"], dtype=object),
        np.array([["x", "\u00e9t\u00e9"], ["", "z" * 300]], dtype=object),
        np.array([b"fixed", b"w"], dtype="S5"),
        np.array(["unicode", "\u4e2d\u6587"], dtype="U7"),
        np.empty((0, 3), dtype=object),
    ],
    ids=["object-bytes", "object-str-2d", "S-dtype", "U-dtype", "empty"],
)
def test_bytes_encode_matches_tritonclient(array):
    datatype, raw = tensors.encode(array)
    # tritonclient maps only object and bytes_ arrays to BYTES; str arrays (U) are ours,
    # sent as UTF-8 exactly as the same elements in an object array.
    as_object = array.astype(object)
    assert datatype == "BYTES" == np_to_triton_dtype(as_object.dtype)
    oracle = serialize_byte_tensor(as_object)
    assert raw == (oracle.item() if oracle.size else b"")
    decoded = tensors.decode("BYTES", array.shape, raw)
    assert decoded.dtype == object and decoded.shape == array.shape
    if array.size:
        np.testing.assert_array_equal(decoded.reshape(-1), deserialize_bytes_tensor(raw))


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_round_trip_any_content(items):
    array = np.empty(len(items), dtype=object)  # a 1-D object array of exactly these
    array[:] = items
    raw = tensors.serialize_bytes(array)
    assert raw == (serialize_byte_tensor(array).item() if items else b"")
    assert list(tensors.deserialize_bytes(raw, (len(items),))) == items


@pytest.mark.parametrize(
    ("raw", "shape", "needle"),
    [
        (b"\x05\x00\x00\x00abc", (1,), "runs past"),
        (b"\x01\x00", (1,), "inside the length"),
        (b"\x01\x00\x00\x00ab", (1,), "left after"),
        (b"\x00" * 12, (2, 2), "needs 16 bytes"),
    ],
)
def test_malformed_contents_are_refused(raw, shape, needle):
    datatype = "BYTES" if needle != "needs 16 bytes" else "FP32"
    with pytest.raises(ValueError, match=needle):
        tensors.decode(datatype, shape, raw)


def test_what_has_no_datatype_is_refused():
    with pytest.raises(TypeError, match="complex128"):
        tensors.encode(np.zeros(2, np.complex128))
    with pytest.raises(TypeError, match="bytes or str, not int"):
        tensors.encode(np.array([b"a", 5], dtype=object))
    with pytest.raises(ValueError, match="BF16"):
        tensors.numpy_dtype("BF16")


def test_infer_request_reads_back_with_tritonclients_messages():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = np.array([b"a", b"bc"], dtype=object)
    request = messages.infer_request(
        "m", {"X": x, "T": text}, outputs=["Y"], version="3", route_key="canary",
        request_id="7", parameters={"priority": 2, "flag": True, "ratio": 0.5, "tag": "t"},
    )  # fmt: skip
    parsed = triton_pb.ModelInferRequest.FromString(request.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "3", "7")
    assert [(i.name, i.datatype, list(i.shape)) for i in parsed.inputs] == [
        ("X", "FP32", [2, 3]), ("T", "BYTES", [2])
    ]  # fmt: skip
    assert parsed.raw_input_contents[0] == x.tobytes()
    assert parsed.raw_input_contents[1] == serialize_byte_tensor(text).item()
    assert [o.name for o in parsed.outputs] == ["Y"]
    params = parsed.parameters
    assert params["route_key"].string_param == "canary"
    assert params["priority"].int64_param == 2 and params["flag"].bool_param is True
    assert params["ratio"].double_param == 0.5 and params["tag"].string_param == "t"


def _response(**outputs) -> bytes:
    """A ModelInferResponse built with tritonclient's messages, raw contents."""
    response = triton_pb.ModelInferResponse(model_name="m")
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
        raw = serialize_byte_tensor(array).item() if array.dtype == object else array.tobytes()
        response.raw_output_contents.append(raw)
    return response.SerializeToString()


def _ours(data: bytes):
    from tensorgate_client._proto.inference import grpc_service_pb2

    return grpc_service_pb2.ModelInferResponse.FromString(data)


def test_infer_outputs_decode_every_datatype():
    arrays = {f"O{i}": sample(dt) for i, dt in enumerate(NUMERIC)}
    arrays["TEXT"] = np.array([[b"x", b"yz"]], dtype=object)
    result = messages.infer_outputs(_ours(_response(**arrays)))
    assert list(result) == list(arrays)
    for name, array in arrays.items():
        assert result[name].dtype == array.dtype
        np.testing.assert_array_equal(result[name], array)


def test_typed_contents_are_decoded_too():
    response = triton_pb.ModelInferResponse()
    out = response.outputs.add(name="Y", datatype="INT32", shape=[2, 2])
    out.contents.int_contents.extend([1, -2, 3, -4])
    text = response.outputs.add(name="T", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hi")
    result = messages.infer_outputs(_ours(response.SerializeToString()))
    np.testing.assert_array_equal(result["Y"], np.array([[1, -2], [3, -4]], np.int32))
    assert result["Y"].dtype == np.int32 and result["T"].tolist() == [b"hi"]


def test_a_malformed_response_raises_internal():
    response = triton_pb.ModelInferResponse()
    response.outputs.add(name="Y", datatype="FP32", shape=[4])
    response.raw_output_contents.append(b"\x00" * 8)
    with pytest.raises(TensorGateError) as info:
        messages.infer_outputs(_ours(response.SerializeToString()))
    assert info.value.code == grpc.StatusCode.INTERNAL and "output Y" in info.value.message


def test_error_pickles_with_its_code():
    import pickle

    err = pickle.loads(pickle.dumps(TensorGateError(grpc.StatusCode.NOT_FOUND, "no model")))
    assert (err.code, err.message, str(err)) == (grpc.StatusCode.NOT_FOUND, "no model", "NOT_FOUND: no model")
